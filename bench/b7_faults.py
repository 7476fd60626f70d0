"""B7 — faults: 5 % 429, 2 % 503, 1 % permanent 400, a 30 s outage inside a 20,000 backlog.

The backlog drains through the batch endpoint (L(b) = 200 ms + 2 ms·b, 10 in flight). The
outage starts a few seconds into the drain. Figures: members lost (must be 0); the rejected set
against the injected permanent set (must be equal); drain time outside the outage ÷ (backlog /
bound); requests sent while the outage lasted (a handful: the failures that pause the
connection, then the probes).

    .venv/bin/python -m bench.b7_faults --contacts 20000 --outage 30
    .venv/bin/python -m bench.b7_faults --single --contacts 5000 --runs 3

`--single`: the single-`PUT` path (L0 = 20 ms), 10 % each of 429, 503 and timeouts, against a
fault-free run in the same run: drain time ÷ fault-free, members lost, rows left or parked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import httpx
from sqlalchemy import text

from app.db import create_engine
from app.sync.engine import SyncEngine
from app.sync.models import PRIORITY_BULK
from bench import harness

OWNER = "bench"
CAP = 10
L0_MS, C_MS, BATCH = 200.0, 2.0, 500


async def run(
    db_url: str,
    sandbox: harness.SandboxProcess,
    n: int,
    outage: float,
    seed: int,
    probe_max_interval: float = 2.0,
) -> dict[str, Any]:
    settings = harness.bench_settings(
        db_url,
        sandbox.url,
        MAILCHIMP_MAX_CONCURRENCY=CAP,
        SYNC_CLAIM_SIZE=BATCH,
        MAILCHIMP_TIMEOUT_SECONDS=10.0,
        SYNC_PROBE_MAX_INTERVAL_SECONDS=probe_max_interval,
    )
    rng = random.Random(seed)
    permanent = {f"p{i}@example.com" for i in rng.sample(range(1, n + 1), n // 100)}
    sandbox.configure(
        latency_ms=L0_MS,
        latency_per_member_ms=C_MS,
        seed=seed,
        fault_rates={"429": 0.05, "503": 0.02},
        fail_emails=dict.fromkeys(sorted(permanent), "fake"),
    )
    engine = create_engine(db_url, pool_size=20)
    try:
        await harness.fresh_backlog(engine, settings, OWNER, n, priority=PRIORITY_BULK)
        sync = SyncEngine(engine, settings)
        start = time.perf_counter()
        async with harness.running_engine(sync):
            await asyncio.sleep(3.0)
            outage_start = time.time()
            await asyncio.to_thread(sandbox.configure, outage_seconds=outage)
            outage_end = outage_start + outage
            paused_seen = False
            remaining_at_end: int | None = None
            while (depth := await harness.queue_depth(engine)) > 0:
                if remaining_at_end is None and time.time() >= outage_end:
                    remaining_at_end = depth
                async with engine.connect() as conn:
                    status = (await conn.execute(text("SELECT status FROM connections"))).scalar()
                paused_seen |= status == "paused"
                await asyncio.sleep(0.1)
            done_at = time.time()
        elapsed = time.perf_counter() - start
        async with engine.connect() as conn:
            rejected = {
                r
                for (r,) in await conn.execute(
                    text("SELECT email_key FROM sync_state WHERE error_kind IS NOT NULL")
                )
            }
            parked = (await conn.execute(text("SELECT count(*) FROM sync_queue"))).scalar_one()
    finally:
        await engine.dispose()
    log = sandbox.requests()["requests"]
    during = [e for e in log if outage_start <= e["start"] < outage_end]
    members = httpx.get(
        f"{sandbox.url}/_control/lists/{harness.default_list_id()}/members", timeout=120
    ).json()["members"]
    present = {m["email_address"].lower() for m in members if m.get("status") == "subscribed"}
    expected = {f"p{i}@example.com" for i in range(1, n + 1)} - permanent
    bound = CAP * BATCH / ((L0_MS + C_MS * BATCH) / 1000.0)
    return {
        "contacts": n,
        "outage_s": outage,
        "seconds": elapsed,
        "members_lost": len(expected - present),
        "rejected_equals_injected": rejected == permanent,
        "rejected": len(rejected),
        "injected": len(permanent),
        "left_in_queue": parked,
        "paused_seen": paused_seen,
        "requests_during_outage": len(during),
        # Which calls they were: failed sends (before the pause) and /ping probes.
        "during_outage_by_kind": {
            kind: sum(1 for e in during if ("/ping" in e["path"]) == (kind == "probe"))
            for kind in ("probe", "send")
        },
        # Time from the outage's end to an empty queue, over what the backlog left at that
        # moment needs at the bound; and the whole run outside the outage over n / bound.
        "recovery_ratio": (done_at - outage_end) / ((remaining_at_end or 0) / bound)
        if remaining_at_end
        else None,
        "remaining_at_outage_end": remaining_at_end,
        "whole_run_ratio": (elapsed - outage) / (n / bound),
        # Where recovery time goes: the first answered probe, the first member write after it.
        "first_ok_probe_after_outage_s": min(
            (
                e["start"] - outage_end
                for e in log
                if e["start"] >= outage_end and "/ping" in e["path"] and e["status"] == 200
            ),
            default=None,
        ),
        "first_ok_write_after_outage_s": min(
            (
                e["start"] - outage_end
                for e in log
                if e["start"] >= outage_end and "/ping" not in e["path"] and e["status"] == 200
            ),
            default=None,
        ),
        "writes_after_outage": sum(
            1 for e in log if e["start"] >= outage_end and "/ping" not in e["path"]
        ),
        "statuses": {
            str(s): sum(1 for e in log if e["status"] == s)
            for s in sorted({e["status"] for e in log})
        },
    }


SINGLE_L0_MS = 20.0
SINGLE_FAULTS = {"429": 0.1, "503": 0.1, "timeout": 0.1}  # 30 % of requests fail
# Ten requests' latency: held longer, the timeouts alone take more than 3x the fault-free time
# (10 % of requests × the hold ÷ 10 slots), whatever the engine does about 429s.
TIMEOUT_HOLD_S = 0.2


async def run_single(
    db_url: str,
    sandbox: harness.SandboxProcess,
    n: int,
    seed: int,
    *,
    faults: bool,
    rates: dict[str, float] = SINGLE_FAULTS,
) -> dict[str, Any]:
    """The single-`PUT` path (no batches) with or without 30 % faults; no outage."""
    overrides: dict[str, Any] = {
        "MAILCHIMP_MAX_CONCURRENCY": CAP,
        "SYNC_BATCH_THRESHOLD": 10**9,
        "MAILCHIMP_TIMEOUT_SECONDS": 10.0,
    }
    settings = harness.bench_settings(db_url, sandbox.url, **overrides)
    rearms = "SYNC_PARKED_RETRY_SECONDS" in type(settings).model_fields
    if rearms:
        # Parked rows come back by themselves; a short schedule keeps the run short.
        settings = settings.model_copy(update={"SYNC_PARKED_RETRY_SECONDS": 5})
    sandbox.configure(
        latency_ms=SINGLE_L0_MS,
        latency_per_member_ms=0,
        seed=seed,
        # A timeout is held TIMEOUT_HOLD_S, then 504: its slot is busy all that time.
        timeout_seconds=TIMEOUT_HOLD_S,
        fault_rates=rates if faults else dict.fromkeys(rates, 0.0),
        fail_emails={},
    )
    engine = create_engine(db_url, pool_size=20)
    try:
        await harness.fresh_backlog(engine, settings, OWNER, n, priority=PRIORITY_BULK)
        sync = SyncEngine(engine, settings)
        start = time.perf_counter()
        parked_peak = 0
        async with harness.running_engine(sync):
            deadline = start + 900
            while time.perf_counter() < deadline:
                async with engine.connect() as conn:
                    ready, parked = (
                        await conn.execute(
                            text(
                                "SELECT count(*) FILTER (WHERE state = 'ready'),"
                                " count(*) FILTER (WHERE state = 'parked') FROM sync_queue"
                            )
                        )
                    ).one()
                parked_peak = max(parked_peak, parked)
                if not ready and (not parked or not rearms):
                    break  # drained; or only parked rows left and nothing re-arms them
                await asyncio.sleep(0.1)
            cooldowns = sum(1 for g in sync.slots.gates.values() if g.cooldown_step)
        elapsed = time.perf_counter() - start
        left = await harness.queue_depth(engine)
    finally:
        await engine.dispose()
    sandbox.configure(fault_rates=dict.fromkeys(rates, 0.0))
    log = sandbox.requests()["requests"]
    members = httpx.get(
        f"{sandbox.url}/_control/lists/{harness.default_list_id()}/members", timeout=120
    ).json()["members"]
    present = {m["email_address"].lower() for m in members if m.get("status") == "subscribed"}
    expected = {f"p{i}@example.com" for i in range(1, n + 1)}
    return {
        "contacts": n,
        "faults": rates if faults else {},
        "seconds": elapsed,
        "members_lost": len(expected - present),
        "left_in_queue": left,
        "parked_peak": parked_peak,
        "cooling_at_end": cooldowns,
        "requests": len(log),
        "statuses": {
            str(st): sum(1 for e in log if e["status"] == st)
            for st in sorted({e["status"] for e in log})
        },
    }


def main_single(args: argparse.Namespace) -> None:
    """Fault-free and 30 % faults on the single path, in the same run, `--runs` times."""
    runs = []
    with (
        harness.scratch_database() as db_url,
        harness.sandbox_process(max_in_flight=CAP) as sandbox,
    ):
        for i in range(args.runs):
            pair = {}
            for faults in (False, True):
                sandbox.reset()
                pair["faults" if faults else "clean"] = asyncio.run(
                    run_single(
                        db_url,
                        sandbox,
                        args.contacts,
                        seed=200 + i,
                        faults=faults,
                        rates=json.loads(args.fault_rates),
                    )
                )
            pair["ratio"] = pair["faults"]["seconds"] / pair["clean"]["seconds"]
            runs.append(pair)
            f = pair["faults"]
            print(
                f"B7 single run {i + 1} ({args.fault_rates}): fault-free"
                f" {pair['clean']['seconds']:.1f} s, with faults {f['seconds']:.1f} s, ratio {pair['ratio']:.2f}, lost {f['members_lost']},"
                f" left {f['left_in_queue']}, parked peak {f['parked_peak']}, statuses"
                f" {f['statuses']}",
                flush=True,
            )
    payload = {"fault_rates": json.loads(args.fault_rates), "timeout_hold_s": TIMEOUT_HOLD_S}
    print(f"results: {harness.write_result('b7_single_faults', payload | {'runs': runs})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--probe-max-interval",
        type=float,
        default=2.0,
        help="SYNC_PROBE_MAX_INTERVAL_SECONDS: fewer probes into an outage vs. a faster resume",
    )
    parser.add_argument(
        "--single",
        action="store_true",
        help="the single-PUT path with 30 %% faults against a fault-free run (no outage)",
    )
    parser.add_argument(
        "--fault-rates",
        default=json.dumps(SINGLE_FAULTS),
        help="with --single: the sandbox's fault_rates as JSON (default 10 %% each of 429,"
        " 503 and timeout)",
    )
    args = parser.parse_args()
    if args.single:
        main_single(args)
        return
    runs = []
    with (
        harness.scratch_database() as db_url,
        harness.sandbox_process(max_in_flight=CAP) as sandbox,
    ):
        for i in range(args.runs):
            sandbox.reset()
            result = asyncio.run(
                run(
                    db_url,
                    sandbox,
                    args.contacts,
                    args.outage,
                    seed=100 + i,
                    probe_max_interval=args.probe_max_interval,
                )
            )
            runs.append(result)
            print(
                f"B7 run {i + 1}: lost {result['members_lost']}, rejected==injected"
                f" {result['rejected_equals_injected']} ({result['rejected']}/{result['injected']}),"
                f" recovery ratio {result['recovery_ratio'] or 0:.2f}, whole-run ratio"
                f" {result['whole_run_ratio']:.2f}, requests during outage"
                f" {result['requests_during_outage']} {result['during_outage_by_kind']},"
                f" first answered probe {result['first_ok_probe_after_outage_s']} s after the"
                f" outage, paused {result['paused_seen']}",
                flush=True,
            )
    print(
        f"results: {harness.write_result('b7_faults', {'probe_max_interval': args.probe_max_interval, 'runs': runs})}"
    )


if __name__ == "__main__":
    main()
