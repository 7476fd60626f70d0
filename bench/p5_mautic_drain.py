"""P5 — Mautic bulk drain: a backlog of queued contacts through `contacts/batch/new`.

The Mautic sandbox (its own process) answers in L(b) = 100 ms + 1 ms·b; the engine holds at
most MAUTIC_MAX_CONCURRENCY (4) requests in flight, 200 contacts a batch. Bound (BENCHMARKS.md):
cap · 200 / L(200) = 4 · 200 / 0.3 s ≈ 2,667 contacts/s. New people also need segment adds
(L(1) = 101 ms each), shared by the batches that finish while one is on the wire: k batches an
add cost 300 ms + 101 ms / k of slot time per 200 contacts. `two_request_bound_per_s` is the
old one-add-a-batch ceiling (k = 1, 0.75 of the bound).

    .venv/bin/python -m bench.p5_mautic_drain --contacts 50000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil

from app.db import create_engine
from app.sync.engine import SyncEngine
from app.sync.models import PRIORITY_BULK
from bench import harness

OWNER = "bench"
CAP, BATCH = 4, 200
L0_MS, C_MS = 100.0, 1.0


SANDBOX_PID: list[int] = []


@contextlib.contextmanager
def mautic_process() -> Iterator[str]:
    """`audience-sync sandbox mautic` on a free port (its CPU is not ours); its root URL."""
    port = harness.free_port()
    cmd = [sys.executable, "-m", "app.cli", "sandbox", "mautic", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=harness.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    SANDBOX_PID[:] = [proc.pid]
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_control/config", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the Mautic sandbox did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()


def new_segment(url: str) -> str:
    """A fresh segment, created through the API as an admin's client would."""
    from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    token = httpx.post(
        f"{url}/oauth/v2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        },
        timeout=30,
    ).json()["access_token"]
    r = httpx.post(
        f"{url}/api/segments/new",
        json={"name": "bench"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["list"]["id"])


async def engine_run(db_url: str, url: str, n: int) -> dict[str, float]:
    """Seconds for the engine to drain n queued contacts into a fresh segment."""
    from sqlalchemy import text

    from app.config import MauticMode
    from app.connections.service import connection_service
    from app.db import make_sessionmaker, session_scope
    from app.providers import registry
    from app.providers.base import Audience
    from app.providers.mautic.connect import MauticCredentials
    from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    settings = harness.bench_settings(
        db_url,
        "http://127.0.0.1:9",  # no Mailchimp here
        MAUTIC_MODE=MauticMode.sandbox,
        MAUTIC_SANDBOX_URL=url,
        MAUTIC_MAX_CONCURRENCY=CAP,
        SYNC_CLAIM_SIZE=2000,
        SYNC_BATCH_SIZE=BATCH,
    )
    httpx.post(f"{url}/_control/reset", timeout=30).raise_for_status()
    httpx.patch(
        f"{url}/_control/config",
        json={"latency_ms": L0_MS, "latency_per_item_ms": C_MS, "max_in_flight": 50},
        timeout=30,
    ).raise_for_status()
    segment = new_segment(url)
    engine = create_engine(db_url, pool_size=20)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("TRUNCATE contacts, sync_queue, sync_state, connections CASCADE")
            )
        provider = registry.get("mautic")
        body = MauticCredentials(
            base_url=url, client_id=DEFAULT_CLIENT_ID, client_secret=DEFAULT_CLIENT_SECRET
        )
        account = provider.connect.account_from_credentials(settings, body)
        async with session_scope(make_sessionmaker(engine)) as session:
            row = await connection_service.save(
                session,
                provider=provider,
                settings=settings,
                owner_id=OWNER,
                account=account,
                audience=Audience(id=segment, name="bench", member_count=0),
            )
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM sync_queue"))
            await conn.execute(text("DELETE FROM sync_runs"))
        await harness.seed(engine, OWNER, n, connection_id=row["id"], priority=PRIORITY_BULK)
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
        httpx.delete(f"{url}/_control/requests", timeout=30)
        sync = SyncEngine(engine, settings)
        sandbox = psutil.Process(SANDBOX_PID[0])
        cpu0, sandbox0 = time.process_time(), sandbox.cpu_times()
        wall0 = time.time()
        start = time.perf_counter()
        async with harness.running_engine(sync):
            while await harness.queue_depth(engine) > 0:
                await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - start
        engine_cpu = time.process_time() - cpu0
        sandbox1 = sandbox.cpu_times()
        sandbox_cpu = sandbox1.user + sandbox1.system - sandbox0.user - sandbox0.system
    finally:
        await engine.dispose()
    log = httpx.get(f"{url}/_control/requests", timeout=120).json()["requests"]
    contacts = httpx.get(f"{url}/_control/contacts", timeout=300).json()
    in_segment = sum(1 for c in contacts["contacts"] if int(segment) in c["segments"])
    paths: dict[str, int] = {}
    for r in log:
        kind = str(r["path"]).split("?")[0]
        kind = "batch" if "batch" in kind else "segment_add" if "segments" in kind else kind
        paths[kind] = paths.get(kind, 0) + 1
    return {
        "seconds": elapsed,
        "contacts_per_s": n / elapsed,
        "in_segment": in_segment,
        "requests": len(log),
        "requests_by_kind": paths,  # type: ignore[dict-item]
        **harness.wire_figures(log),
        # The engine's start (claim, load, plan of the first group) and the steady middle:
        # occupancy over the whole span counts the ramp and the tail too.
        "first_request_after_s": min(r["start"] for r in log) - wall0,
        "occupancy_middle": _middle_occupancy(log),
        # CPU seconds during the drain: this process (the engine, and the harness's polling)
        # and the sandbox's process; both share the machine's cores with PostgreSQL.
        "engine_cpu_ms_per_contact": 1000 * engine_cpu / n,
        "sandbox_cpu_ms_per_request": 1000 * sandbox_cpu / max(1, len(log)),
    }


def _middle_occupancy(log: list[dict[str, Any]]) -> float:
    """Mean requests in flight over the middle 80 % of the drain's span."""
    t0 = min(r["start"] for r in log)
    t1 = max(r["end"] for r in log)
    lo, hi = t0 + 0.1 * (t1 - t0), t0 + 0.9 * (t1 - t0)
    busy = sum(max(0.0, min(r["end"], hi) - max(r["start"], lo)) for r in log)
    return busy / (hi - lo) if hi > lo else 0.0


def worker_setup() -> Any:
    """This process as `audience-sync worker` runs: its collector tuned; uvloop's factory."""
    import uvloop

    from app.sync.runner import tune_gc

    tune_gc()
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--as-worker",
        action="store_true",
        help="set this process up as `audience-sync worker` sets its own: the engine on"
        " uvloop, the worker's collector thresholds (app.sync.runner.tune_gc)",
    )
    args = parser.parse_args()
    loop_factory = worker_setup() if args.as_worker else None
    bound = CAP * BATCH / ((L0_MS + C_MS * BATCH) / 1000.0)
    two_requests = CAP * BATCH / ((L0_MS + C_MS * BATCH + L0_MS + C_MS) / 1000.0)
    out: dict[str, Any] = {
        "contacts": args.contacts,
        "latency_model_ms": {"L0": L0_MS, "c": C_MS},
        "cap": CAP,
        "batch": BATCH,
        "bound_per_s": bound,
        "two_request_bound_per_s": two_requests,
        "as_worker": args.as_worker,
        "load_before": os.getloadavg(),
        "runs": [],
    }
    with harness.scratch_database() as db_url, mautic_process() as url:
        for _ in range(args.runs):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(engine_run(db_url, url, args.contacts))
            result["ratio_to_bound"] = result["contacts_per_s"] / bound
            out["runs"].append(result)
            print(result, flush=True)
    out["load_after"] = os.getloadavg()
    print(harness.write_result("p5_mautic_drain", out))


if __name__ == "__main__":
    main()
