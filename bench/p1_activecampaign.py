"""P1 + P2 — ActiveCampaign: a bulk drain at the account's limits, and live latency meanwhile.

P1: N queued contacts (two custom fields, two tags each) drained into the ActiveCampaign
sandbox (its own process) at its real limits: 5 requests/s per account, bulk imports 100 and
20 a minute, 250 contacts / 400,000 bytes an import. Bound: min(5, 100/60) · 250 ≈ 417
contacts/s; Census publishes about 37,000 contacts an hour.

P2: while P1's backlog drains, one new contact a second is created through the contacts
service (what `POST /api/contacts` runs, committed like it); its latency is from that commit
to the worker's completion of its send (the sandbox had answered by then: an upper bound of
"the contact is at the sandbox").

    .venv/bin/python -m bench.p1_activecampaign --contacts 20000
    .venv/bin/python -m bench.p1_activecampaign --contacts 20000 --no-live   # P1 alone
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from app.db import create_engine
from app.sync.engine import SyncEngine
from app.sync.models import PRIORITY_BULK
from bench import harness

OWNER = "bench"
BOUND = min(5.0, 100 / 60) * 250
CENSUS_PER_HOUR = 37_000
FIELD_MAP = {
    "activecampaign": {
        "custom_fields.dietary": {"field": "DIETARY", "type": "list"},
        "custom_fields.badge_name": {"field": "BADGE_NAME"},
    }
}


@contextlib.contextmanager
def ac_sandbox() -> Iterator[str]:
    """`audience-sync sandbox activecampaign` on a free port, at its real limits."""
    port = harness.free_port()
    cmd = [sys.executable, "-m", "app.cli", "sandbox", "activecampaign", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=harness.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_control", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the sandbox did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()


async def connect(engine: Any, settings: Any, url: str) -> uuid.UUID:
    """The bench owner connected to the sandbox's list, its custom fields created."""
    from app.connections.service import connection_service
    from app.db import make_sessionmaker, session_scope
    from app.providers import registry
    from app.providers.activecampaign.client import ActiveCampaignClient
    from app.providers.activecampaign.connect import _account, ensure_fields
    from app.providers.base import Audience
    from app.sandbox.activecampaign import DEFAULT_API_KEY, DEFAULT_LIST_ID

    provider = registry.get("activecampaign")
    async with httpx.AsyncHTTPTransport() as transport:
        client = ActiveCampaignClient(transport, api_url=url, api_key=DEFAULT_API_KEY)
        await ensure_fields(client, provider.mapping(settings).fields)
    async with session_scope(make_sessionmaker(engine)) as session:
        row = await connection_service.save(
            session,
            provider=provider,
            settings=settings,
            owner_id=OWNER,
            account=_account(url, DEFAULT_API_KEY),
            audience=Audience(id=DEFAULT_LIST_ID, name="bench", member_count=0),
        )
    return uuid.UUID(str(row["id"]))


async def seed(engine: Any, conn_id: uuid.UUID, n: int) -> None:
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM sync_queue"))
        await conn.execute(
            text(
                """
                INSERT INTO contacts (owner_id, email, email_key, first_name, last_name, tags,
                                      custom_fields, newsletter_opt_in, newsletter_changed_at)
                SELECT :owner, 'p' || g || '@example.com', 'p' || g || '@example.com',
                       'First' || g, 'Last' || g, ARRAY['t' || (g % 5), 'event-2026'],
                       jsonb_build_object('dietary', 'vegan;nut free', 'badge_name', 'B' || g),
                       true, now()
                FROM generate_series(1, :n) AS g
                """
            ),
            {"owner": OWNER, "n": n},
        )
        await conn.execute(
            text(
                """
                INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id,
                                        priority)
                SELECT :conn, :conn, email_key, id, :prio FROM contacts WHERE owner_id = :owner
                """
            ),
            {"conn": conn_id, "owner": OWNER, "prio": PRIORITY_BULK},
        )
        await conn.execute(text("ANALYZE"))


async def live_changes(engine: Any, stop: asyncio.Event, out: list[float]) -> None:
    """One new contact a second through the contacts service; latency to its completion."""
    from sqlalchemy import text

    from app.contacts.schemas import ContactCreate
    from app.contacts.service import contact_service
    from app.db import make_sessionmaker, session_scope

    maker = make_sessionmaker(engine)
    pending: dict[str, float] = {}
    i = 0
    while not stop.is_set() or pending:
        if not stop.is_set():
            email = f"live{i}@example.com"
            i += 1
            async with session_scope(maker) as session:
                await contact_service.create(
                    session,
                    owner_id=OWNER,
                    data=ContactCreate(email=email, first_name="Live", newsletter_opt_in=True),
                    actor=OWNER,
                )
            pending[email] = time.time()
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT email_key, extract(epoch FROM last_synced_at) AS t FROM sync_state"
                    " WHERE email_key = ANY(:keys) AND remote_status = 'subscribed'"
                ),
                {"keys": list(pending)},
            )
            for key, t in rows.all():
                out.append(float(t) - pending.pop(key))
        await asyncio.sleep(1.0)


async def run(db_url: str, url: str, n: int, *, live: bool = True) -> dict[str, Any]:
    from app.fieldmap import load_field_map

    settings = harness.bench_settings(
        db_url,
        "http://127.0.0.1:9",
        ACTIVECAMPAIGN_MODE="sandbox",
        FIELD_MAP=load_field_map(FIELD_MAP),
        SYNC_COALESCE_SECONDS=0,
        SYNC_PULL_INTERVAL_SECONDS=0,
    )
    engine = create_engine(db_url, pool_size=20)
    latencies: list[float] = []
    try:
        conn_id = await connect(engine, settings, url)
        await seed(engine, conn_id, n)
        httpx.delete(f"{url}/_control/requests", timeout=30)
        sync = SyncEngine(engine, settings)
        stop = asyncio.Event()
        start = time.perf_counter()
        async with harness.running_engine(sync):
            # P2's trickle spends ~2 of the account's 5 requests a second: without it P1
            # is measured alone.
            trickle = asyncio.create_task(live_changes(engine, stop, latencies)) if live else None
            while await harness.queue_depth(engine) > 0 and time.perf_counter() - start < 3600:
                await asyncio.sleep(0.5)
                if await backlog_left(engine) == 0:
                    break
            elapsed = time.perf_counter() - start
            stop.set()
            if trickle is not None:
                await asyncio.wait_for(trickle, timeout=120)
    finally:
        await engine.dispose()
    log = httpx.get(f"{url}/_control/requests", timeout=120).json()["requests"]
    dump = httpx.get(f"{url}/_control/lists/1/contacts", timeout=300).json()["contacts"]
    statuses: dict[int, int] = {}
    by_path: dict[str, int] = {}
    for r in log:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        # Where the requests went: ids folded, so the bulk path's reads and polls show apart.
        path = re.sub(r"/\d+", "/{id}", str(r["path"]).split("?")[0])
        key = f"{r['method']} {path}"
        by_path[key] = by_path.get(key, 0) + 1
    latencies.sort()
    rate = n / elapsed
    return {
        "seconds": elapsed,
        "contacts_per_s": rate,
        "ratio_to_bound": rate / BOUND,
        "contacts_per_hour": rate * 3600,
        "ratio_to_census": rate * 3600 / CENSUS_PER_HOUR,
        "requests": len(log),
        "requests_per_1000_contacts": 1000 * len(log) / n,
        "statuses": statuses,
        "requests_by_path": dict(sorted(by_path.items(), key=lambda kv: -kv[1])),
        "on_list": len(dump),
        "tagged_twice": sum(1 for c in dump if len(c["tags"]) == 2),
        "with_fields": sum(1 for c in dump if len(c["fields"]) == 2),
        "p2_samples": len(latencies),
        "p2_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "p2_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies
        else None,
    }


async def backlog_left(engine: Any) -> int:
    from sqlalchemy import text

    async with engine.connect() as conn:
        q = "SELECT count(*) FROM sync_queue WHERE email_key LIKE 'p%'"
        return int((await conn.execute(text(q))).scalar_one())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument(
        "--no-live", action="store_true", help="P1 alone: no live change beside the drain (no P2)"
    )
    args = parser.parse_args()
    with harness.scratch_database() as db_url, ac_sandbox() as url:
        result = asyncio.run(run(db_url, url, args.contacts, live=not args.no_live))
    out = {"contacts": args.contacts, "live": not args.no_live, "bound_per_s": BOUND, **result}
    with contextlib.suppress(OSError):
        out["load_average"] = open("/proc/loadavg").read().split()[:3]  # noqa: SIM115
    path = harness.write_result("p1_activecampaign", out)
    print(path)
    for key, value in out.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
