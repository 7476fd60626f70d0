"""B2 — bulk drain: a backlog of queued contacts through the batch endpoint.

The sandbox answers in L(b) = L0 + c·b (200 ms + 2 ms per member), 10 requests in flight.
Bound: 10 · 500 / L(500) members/s. The peers push one PUT per contact (L(1) = 202 ms), so
their rate is measured on a smaller backlog (it is a steady state) and compared as members/s.

    .venv/bin/python -m bench.b2_bulk_drain --contacts 100000 --peer-contacts 2000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from app.db import create_engine
from app.sync.engine import SyncEngine
from app.sync.models import PRIORITY_BULK
from bench import harness, peers

OWNER = "bench"
CAP = 10
L0_MS, C_MS, BATCH = 200.0, 2.0, 500


async def engine_run(db_url: str, sandbox: harness.SandboxProcess, n: int) -> dict[str, float]:
    """Seconds (and CPU per member of this process) for the engine to drain n contacts."""
    settings = harness.bench_settings(
        db_url, sandbox.url, MAILCHIMP_MAX_CONCURRENCY=CAP, SYNC_CLAIM_SIZE=BATCH
    )
    engine = create_engine(db_url, pool_size=20)
    try:
        await harness.fresh_backlog(engine, settings, OWNER, n, priority=PRIORITY_BULK)
        sync = SyncEngine(engine, settings)
        start = time.perf_counter()
        cpu = time.process_time()
        async with harness.running_engine(sync):
            while await harness.queue_depth(engine) > 0:
                await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - start
        cpu_per_member = (time.process_time() - cpu) / n
    finally:
        await engine.dispose()
    return {"seconds": elapsed, "cpu_ms_per_member": cpu_per_member * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--peer-contacts", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer-runs", type=int, default=1)
    parser.add_argument(
        "--runners", nargs="+", default=["engine", "pgqueuer", "procrastinate", "asyncio"]
    )
    args = parser.parse_args()
    bound = CAP * BATCH / ((L0_MS + C_MS * BATCH) / 1000.0)
    out: dict[str, Any] = {
        "contacts": args.contacts,
        "peer_contacts": args.peer_contacts,
        "latency_model_ms": {"L0": L0_MS, "c": C_MS},
        "bound_per_s": bound,
        "peers": peers.describe(),
        "runners": {},
    }
    with (
        harness.scratch_database() as db_url,
        harness.sandbox_process(max_in_flight=CAP) as sandbox,
    ):
        sandbox.configure(latency_ms=L0_MS, latency_per_member_ms=C_MS)
        for runner in args.runners:
            results = []
            n = args.contacts if runner == "engine" else args.peer_contacts
            for _ in range(args.runs if runner == "engine" else args.peer_runs):
                sandbox.reset()
                if runner == "engine":
                    results.append(asyncio.run(engine_run(db_url, sandbox, n)))
                else:
                    results.append(
                        {"seconds": peers.run_peer(runner, db_url, sandbox.url, n, cap=CAP)}
                    )
                log = sandbox.requests()
                assert log["max_in_flight_seen"] <= CAP
                assert sandbox.member_count(harness.default_list_id()) == n
            seconds = harness.median([r["seconds"] for r in results])
            rate = n / seconds
            out["runners"][runner] = {
                "runs": results,
                "members_per_s": rate,
                "ratio_to_bound": rate / bound,
            }
            print(
                f"B2 {runner}: {rate:.0f} members/s = {rate / bound:.2f} of the {bound:.0f}/s bound",
                flush=True,
            )
    engine_rate = out["runners"].get("engine", {}).get("members_per_s")
    if engine_rate:
        for runner, row in out["runners"].items():
            if runner != "engine":
                row["engine_speedup"] = engine_rate / row["members_per_s"]
                print(f"B2 engine speedup over {runner}: {row['engine_speedup']:.0f}x", flush=True)
    print(f"results: {harness.write_result('b2_bulk_drain', out)}")


if __name__ == "__main__":
    main()
