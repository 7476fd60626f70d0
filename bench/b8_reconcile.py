"""B8 — reconcile ("Sync Now") of N contacts already in sync: seconds, write calls.

The sandbox (its own process, L0 = 0) is filled through batch calls with N members equal to
N seeded contacts (names, tags, consent). Two cases, each run `--runs` times:

- adopt:  no mirror rows — the first sync into an audience that already holds everyone; every
          member is adopted into the mirror (N sync_state rows written), no write call;
- steady: mirror rows present — a later Sync Now with everything in sync.

Each run is one reconcile (claim → list every page → stage with COPY → diff in SQL → done),
timed from claim to done, with the write calls the sandbox saw meanwhile. In the same run, the
bare listing (the same GETs, no database) is timed, so the ratio says what the service adds.

    .venv/bin/python -m bench.b8_reconcile --contacts 100000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
from sqlalchemy import text

from app.db import create_engine
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from app.sync.engine import SyncEngine
from app.sync.reconcile import PAGE_SIZE, Reconciler
from bench import harness

OWNER = "bench"
BAR_SECONDS = 30.0


async def fill_sandbox(url: str, n: int) -> None:
    """N subscribed members equal to what `harness.seed` puts in the CRM, 500 a call."""
    sem = asyncio.Semaphore(8)

    async def batch(client: httpx.AsyncClient, start: int) -> None:
        members = [
            {
                "email_address": f"p{g}@example.com",
                "status": "subscribed",
                "merge_fields": {"FNAME": f"First{g}", "LNAME": f"Last{g}"},
                "tags": [f"t{g % 5}"],
            }
            for g in range(start, min(start + 500, n + 1))
        ]
        async with sem:
            r = await client.post(
                f"/3.0/lists/{DEFAULT_LIST_ID}",
                json={"members": members, "update_existing": True},
            )
        r.raise_for_status()
        assert r.json()["error_count"] == 0, r.text[:500]

    async with httpx.AsyncClient(
        base_url=url, auth=("bench", DEFAULT_API_KEY), timeout=120
    ) as client:
        await asyncio.gather(*(batch(client, s) for s in range(1, n + 1, 500)))


async def bare_listing(url: str, n: int) -> float:
    """Seconds to GET every page as the reconcile does, with nothing else."""
    fields = (
        "members.id,members.email_address,members.status,members.tags,members.last_changed,"
        "members.merge_fields,total_items"
    )
    async with httpx.AsyncClient(
        base_url=url, auth=("bench", DEFAULT_API_KEY), timeout=120
    ) as client:
        start = time.perf_counter()
        for offset in range(0, n, PAGE_SIZE):
            r = await client.get(
                f"/3.0/lists/{DEFAULT_LIST_ID}/members",
                params={"count": PAGE_SIZE, "offset": offset, "fields": fields},
            )
            r.raise_for_status()
        return time.perf_counter() - start


async def one_run(
    db_url: str, sandbox: harness.SandboxProcess, settings: Any, *, keep_mirror: bool
) -> dict[str, Any]:
    """Queue a run (dropping the mirror unless `keep_mirror`), execute it, measure it."""
    engine = create_engine(db_url, pool_size=5)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM sync_runs"))
            await conn.execute(text("DELETE FROM sync_queue"))
            if not keep_mirror:
                await conn.execute(text("DELETE FROM sync_state"))
            await conn.execute(
                text(
                    """
                    INSERT INTO sync_runs (connection_id, owner_id, kind, progress)
                    SELECT id, owner_id, 'sync_now',
                        jsonb_build_object('audience_id', audience_id, 'pages_done', 0,
                                           'staged', 0)
                    FROM connections WHERE owner_id = :o
                    """
                ),
                {"o": OWNER},
            )
        async with httpx.AsyncClient(timeout=30) as control:
            await control.delete(f"{sandbox.url}/_control/requests")
        sync = SyncEngine(engine, settings)
        stop = asyncio.Event()
        slots = asyncio.create_task(sync.slots.run(stop))
        try:
            start = time.perf_counter()
            cpu = time.process_time()
            run_id = await Reconciler(settings).run_once(sync)
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu
        finally:
            stop.set()
            sync.slots.wake.set()
            await slots
            await sync.aclose()
        async with engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        text("SELECT state, counts FROM sync_runs WHERE id = :id"), {"id": run_id}
                    )
                )
                .mappings()
                .one()
            )
            queued = int((await conn.execute(text("SELECT count(*) FROM sync_queue"))).scalar_one())
            mirror = int((await conn.execute(text("SELECT count(*) FROM sync_state"))).scalar_one())
    finally:
        await engine.dispose()
    log = sandbox.requests()
    # Member writes (PUT/PATCH/POST/DELETE on members, batch calls); the webhook check is
    # counted apart: with nothing listening at PUBLIC_BASE_URL here, its creation is retried
    # (and refused by the validating GET) on every run.
    calls = [r for r in log["requests"] if r["method"] != "GET"]
    webhook_calls = [r for r in calls if "/webhooks" in r["path"]]
    writes = [r for r in calls if "/webhooks" not in r["path"]]
    member_gets = [r for r in log["requests"] if r["path"].endswith("/members")]
    assert row["state"] == "done", row
    return {
        "seconds": seconds,
        "cpu_seconds_service": cpu_seconds,
        "write_calls": len(writes),
        "webhook_calls": len(webhook_calls),
        "list_calls": len(member_gets),
        "max_in_flight_seen": log["max_in_flight_seen"],
        "queued_after": queued,
        "mirror_rows_after": mirror,
        "counts": row["counts"],
    }


async def setup(db_url: str, sandbox: harness.SandboxProcess, settings: Any, n: int) -> None:
    engine = create_engine(db_url, pool_size=5)
    try:
        await harness.seed(engine, OWNER, n, connection_id=None)
        await harness.connect_owner(engine, settings, OWNER)
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    await fill_sandbox(sandbox.url, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.contacts
    results: dict[str, Any] = {"contacts": n, "page_size": PAGE_SIZE, "bar_seconds": BAR_SECONDS}
    with harness.scratch_database() as db_url, harness.sandbox_process() as sandbox:
        sandbox.configure(latency_ms=0, latency_per_member_ms=0)
        started = time.perf_counter()
        # One settings object: the credentials are encrypted under its (random) key.
        settings = harness.bench_settings(db_url, sandbox.url)
        asyncio.run(setup(db_url, sandbox, settings, n))
        results["setup_seconds"] = time.perf_counter() - started
        assert sandbox.member_count(DEFAULT_LIST_ID) == n
        for case, keep in (("adopt", False), ("steady", True)):
            runs = []
            listing = []
            for _ in range(args.runs):
                listing.append(asyncio.run(bare_listing(sandbox.url, n)))
                runs.append(asyncio.run(one_run(db_url, sandbox, settings, keep_mirror=keep)))
                r = runs[-1]
                print(
                    f"  {case}: {r['seconds']:.2f} s, {r['write_calls']} write calls,"
                    f" matched {r['counts']['matched']}, to_push {r['counts']['to_push']}",
                    flush=True,
                )
            med = harness.median([r["seconds"] for r in runs])
            bare = harness.median(listing)
            results[case] = {
                "runs": runs,
                "median_seconds": med,
                "bare_listing_seconds": listing,
                "median_bare_listing_seconds": bare,
                "ratio_to_bare_listing": med / bare if bare else None,
                "write_calls": max(r["write_calls"] for r in runs),
            }
            print(
                f"B8 {case}: reconcile of {n} in-sync contacts: median {med:.2f} s"
                f" (bar ≤ {BAR_SECONDS:.0f} s), write calls {results[case]['write_calls']}"
                f" (bar 0); bare listing {bare:.2f} s, ratio {med / bare:.2f}",
                flush=True,
            )
    path = harness.write_result("b8_reconcile", results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
