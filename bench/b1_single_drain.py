"""B1 — single-member drain: N distinct queued contacts, one PUT each, 10 in flight.

Figure: members/s ÷ (10 / L0), for the engine and, in the same run, for pgqueuer,
procrastinate and a plain asyncio loop doing the same job against the same sandbox.

    .venv/bin/python -m bench.b1_single_drain --latency-ms 20 100 --contacts 5000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from typing import Any

from app.db import create_engine
from app.sync.engine import SyncEngine
from bench import harness, peers

OWNER = "bench"
LAST_CPU = [0.0]  # CPU seconds per member of the last engine run (this process only)
LAST_POLL_CPU = [0.0]  # of the harness's drained poll (a child process), per member
LAST_SHUTDOWN = [0.0]  # seconds from the empty queue to the engine's exit (included in the time)
CAP = 10


async def engine_run(db_url: str, sandbox: harness.SandboxProcess, n: int) -> float:
    """Seconds for the engine to drain n queued contacts with single PUTs."""
    settings = harness.bench_settings(
        db_url,
        sandbox.url,
        MAILCHIMP_MAX_CONCURRENCY=CAP,
        SYNC_BATCH_THRESHOLD=10**9,  # B1 measures the single-member path
        SYNC_CLAIM_SIZE=200,
    )
    engine = create_engine(db_url, pool_size=10)
    try:
        await harness.fresh_backlog(engine, settings, OWNER, n)
        sync = SyncEngine(engine, settings)
        start = time.perf_counter()
        cpu = time.process_time()
        children = _children_cpu()
        async with harness.running_engine(sync):
            await harness.wait_drained(db_url)
            drained = time.perf_counter() - start
        elapsed = time.perf_counter() - start
        LAST_CPU[0] = (time.process_time() - cpu) / n
        LAST_POLL_CPU[0] = (_children_cpu() - children) / n
        LAST_SHUTDOWN[0] = elapsed - drained
    finally:
        await engine.dispose()
    return elapsed


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[20.0, 100.0])
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--runners", nargs="+", default=["engine", "pgqueuer", "procrastinate", "asyncio"]
    )
    parser.add_argument(
        "--engine-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the engine's event loop (the peers always run on asyncio's); `audience-sync"
        " worker` and `serve` run on uvloop",
    )
    parser.add_argument(
        "--worker-gc",
        action="store_true",
        help="the collector as `audience-sync worker` sets it (app.sync.runner.tune_gc: start-up"
        " frozen, young collections at 50,000); it holds for this whole process, peers included",
    )
    args = parser.parse_args()
    if args.worker_gc:
        from app.sync.runner import tune_gc

        tune_gc()
    loop_factory = None
    if args.engine_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    results: dict[str, Any] = {
        "contacts": args.contacts,
        "cap": CAP,
        "engine_loop": args.engine_loop,
        "worker_gc": args.worker_gc,
        "by_latency": {},
    }
    with (
        harness.scratch_database() as db_url,
        harness.sandbox_process(max_in_flight=CAP) as sandbox,
    ):
        for l0 in args.latency_ms:
            sandbox.configure(latency_ms=l0, latency_per_member_ms=0)
            bound = CAP / (l0 / 1000.0) if l0 else None
            row: dict[str, Any] = {"bound_per_s": bound}
            for runner in args.runners:
                times, cpu, poll_cpu, wire, shutdown = [], [], [], [], []
                for _ in range(args.runs):
                    sandbox.reset()
                    if runner == "engine":
                        with asyncio.Runner(loop_factory=loop_factory) as runner_loop:
                            seconds = runner_loop.run(engine_run(db_url, sandbox, args.contacts))
                        cpu.append(LAST_CPU[0] * 1000)
                        poll_cpu.append(LAST_POLL_CPU[0] * 1000)
                        shutdown.append(LAST_SHUTDOWN[0])
                    else:
                        seconds = peers.run_peer(
                            runner, db_url, sandbox.url, args.contacts, cap=CAP
                        )
                    times.append(seconds)
                    log = sandbox.requests()
                    assert log["max_in_flight_seen"] <= CAP, log["max_in_flight_seen"]
                    wire.append(harness.wire_figures(log["requests"]))
                rate = args.contacts / harness.median(times)
                ratio = rate / bound if bound else None
                row[runner] = {"seconds": times, "members_per_s": rate, "ratio_to_bound": ratio}
                if cpu:
                    row[runner]["cpu_ms_per_member"] = harness.median(cpu)
                    row[runner]["cpu_ms_per_member_runs"] = cpu
                    # The harness's drained poll, a child process since 3 December.
                    row[runner]["poll_cpu_ms_per_member"] = harness.median(poll_cpu)
                    row[runner]["shutdown_s"] = harness.median(shutdown)
                occupancy = harness.median([w["occupancy"] for w in wire])
                server_ms = harness.median([w["server_ms"] for w in wire])
                row[runner] |= {"wire_occupancy": occupancy, "server_ms": server_ms}
                print(
                    f"B1 L0={l0:g}ms {runner}: {rate:.0f} members/s"
                    + (f" = {ratio:.2f} of the {bound:.0f}/s bound" if ratio else "")
                    + (
                        f", worker CPU {harness.median(cpu):.2f} ms/member"
                        f" (the harness's poll {harness.median(poll_cpu):.2f} more)"
                        if cpu
                        else ""
                    )
                    + f"; at the sandbox {occupancy:.1f} requests in flight on average,"
                    f" {server_ms:.1f} ms each",
                    flush=True,
                )
            results["by_latency"][str(l0)] = row
    path = harness.write_result("b1_single_drain", results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
