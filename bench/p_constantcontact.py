"""P3, P4 and P7 — Constant Contact under its application limits (BENCHMARKS.md).

P3: N consenting contacts queued for one tenant (bulk priority), then drained by 3 worker
    processes (`audience-sync worker`) against the Constant Contact sandbox in its own process
    (4 requests/s and 10,000 a day, by the application). Figures: requests per 1,000 contacts,
    the most requests in any 1 s window of the sandbox's log, requests beyond the day's bulk
    share (0.8 × 10,000).
P7: the sandbox's access tokens expire every 10 s (rotating refresh tokens); 4 worker
    processes drain a steady trickle of live changes for the run's length. Figures:
    `invalid_grant` answers of the token endpoint, connections left in `error`, requests
    refused for an expired token (401) per refresh.

P4: ten tenants; t0's N contacts at bulk priority, the nine others make live changes in
    rounds every `--tick` seconds once t0's import is under way. Figures: the nine's p99
    change → Constant Contact, slowest ÷ fastest tenant; `--dump FILE` also writes the request
    log, the latencies and a trace of live claims, limiter grants and window slots (triggers
    in the scratch database) for a breakdown of where live changes wait.

    .venv/bin/python -m bench.p_constantcontact p3 --contacts 100000
    .venv/bin/python -m bench.p_constantcontact p4 --contacts 100000 --seconds 60 --tick 3
    .venv/bin/python -m bench.p_constantcontact p7 --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from app.db import create_engine
from bench import harness

OWNER = "bench"
QUOTA, SHARE = 10_000, 0.8
BULK_ACCOUNT = "p07e1l8cdif9dl"  # the sandbox's default account: t0's


@contextmanager
def cc_sandbox(**flags: Any) -> Iterator[str]:
    """`audience-sync sandbox constantcontact` on a free port; its base URL."""
    port = harness.free_port()
    cmd = [sys.executable, "-m", "app.cli", "sandbox", "constantcontact", "--port", str(port)]
    for key, value in flags.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(
        cmd, cwd=harness.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/_control/config", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        httpx.patch(f"{url}/_control/config", json={"request_log_size": 1_000_000}, timeout=10)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def settings_for(db_url: str, cc_url: str) -> Any:
    from pydantic import SecretStr

    from app.sandbox.constantcontact import ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET

    return harness.bench_settings(
        db_url,
        "http://127.0.0.1:9/unused",
        CONSTANTCONTACT_MODE="sandbox",
        CONSTANTCONTACT_SANDBOX_URL=cc_url,
        CONSTANTCONTACT_CLIENT_ID=ROTATING_CLIENT_ID,
        CONSTANTCONTACT_CLIENT_SECRET=SecretStr(ROTATING_CLIENT_SECRET),
    )


async def connect(engine: Any, settings: Any, owner: str) -> uuid.UUID:
    """`owner` connected to the sandbox's account (its first token minted on first use)."""
    from sqlalchemy import text

    from app.connections.service import connection_service
    from app.db import make_sessionmaker, session_scope
    from app.providers import registry

    provider = registry.get("constantcontact")
    owner_, account, audience = provider.connect.configured(settings, provider.sandbox_seed())
    async with session_scope(make_sessionmaker(engine)) as session:
        row = await connection_service.save(
            session,
            provider=provider,
            settings=settings,
            owner_id=owner,
            account=account,
            audience=audience,
        )
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM sync_queue"))
        await conn.execute(text("DELETE FROM sync_runs"))  # measure the drain, not a reconcile
    return uuid.UUID(str(row["id"]))


async def seed(engine: Any, owner: str, n: int, conn_id: uuid.UUID, priority: int) -> None:
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO contacts (owner_id, email, email_key, first_name, last_name,
                                      newsletter_opt_in, newsletter_changed_at)
                SELECT :owner, 'p' || g || '@example.com', 'p' || g || '@example.com',
                       'First' || g, 'Last' || g, true, now()
                FROM generate_series(1, :n) AS g
                """
            ),
            {"owner": owner, "n": n},
        )
        await conn.execute(
            text(
                "INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id,"
                " priority) SELECT :conn, :conn, email_key, id, :prio FROM contacts"
                " WHERE owner_id = :owner"
            ),
            {"conn": conn_id, "owner": owner, "prio": priority},
        )
        await conn.execute(text("ANALYZE"))


def workers(db_url: str, settings: Any, cc_url: str, n: int) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": db_url,
        "AUTH_JWT_SECRET": settings.AUTH_JWT_SECRET.get_secret_value(),
        "ENCRYPTION_KEYS": settings.ENCRYPTION_KEYS[0].get_secret_value(),
        "MAILCHIMP_MODE": "sandbox",
        "CONSTANTCONTACT_MODE": "sandbox",
        "CONSTANTCONTACT_SANDBOX_URL": cc_url,
        "CONSTANTCONTACT_CLIENT_ID": settings.CONSTANTCONTACT_CLIENT_ID,
        "CONSTANTCONTACT_CLIENT_SECRET": settings.CONSTANTCONTACT_CLIENT_SECRET.get_secret_value(),
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": "WARNING",
        "SYNC_PULL_INTERVAL_SECONDS": "0",
        "DATA_DIR": tempfile.mkdtemp(prefix="p-cc-"),
    }
    return [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            cwd=harness.ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)


def api_log(cc_url: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{cc_url}/_control/requests", timeout=60).json()
    return [r for r in body["requests"] if str(r.get("path", "")).startswith("/v3/")]


def max_per_second(log: list[dict[str, Any]]) -> int:
    starts = sorted(float(r["start"]) for r in log)
    best, j = 0, 0
    for i, s in enumerate(starts):
        while starts[j] < s - 1.0 + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


def p3(args: argparse.Namespace) -> dict[str, Any]:
    from app.sync.models import PRIORITY_BULK

    with harness.scratch_database() as db_url, cc_sandbox() as cc_url:
        settings = settings_for(db_url, cc_url)
        engine = create_engine(db_url, pool_size=2)

        async def prepare() -> None:
            conn_id = await connect(engine, settings, OWNER)
            await seed(engine, OWNER, args.contacts, conn_id, PRIORITY_BULK)
            await engine.dispose()

        asyncio.run(prepare())
        start = time.perf_counter()
        procs = workers(db_url, settings, cc_url, args.workers)
        try:
            while True:
                depth = asyncio.run(_depth(db_url))
                if depth == 0 or time.perf_counter() - start > args.limit:
                    break
                time.sleep(1.0)
        finally:
            stop(procs)
        seconds = time.perf_counter() - start
        log = api_log(cc_url)
        contacts = httpx.get(f"{cc_url}/_control/contacts", timeout=120).json()["total_items"]
    used = len(log)
    return {
        "contacts": args.contacts,
        "workers": args.workers,
        "seconds": seconds,
        "left_in_queue": depth,
        "contacts_at_constant_contact": contacts,
        "requests": used,
        "requests_per_1000_contacts": used * 1000 / max(1, args.contacts),
        "max_requests_in_any_1s": max_per_second(log),
        "requests_beyond_bulk_share": max(0, used - int(QUOTA * SHARE)),
        "answers_429": sum(1 for r in log if r.get("status") == 429),
        "by_path": _by_path(log),
    }


def _by_path(log: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in log:
        path = str(r["path"])
        key = f"{r['method']} {'/v3/activities/{id}' if path.count('/') == 3 and '/activities/' in path and 'import' not in path else path}"
        out[key] = out.get(key, 0) + 1
    return out


async def _depth(db_url: str) -> int:
    engine = create_engine(db_url, pool_size=1)
    try:
        return await harness.queue_depth(engine)
    finally:
        await engine.dispose()


def p7(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import text

    with harness.scratch_database() as db_url, cc_sandbox() as cc_url:
        httpx.patch(
            f"{cc_url}/_control/config", json={"access_token_ttl_seconds": 10}, timeout=10
        ).raise_for_status()
        settings = settings_for(db_url, cc_url)
        engine = create_engine(db_url, pool_size=2)
        asyncio.run(_prepare_p7(engine, settings))
        procs = workers(db_url, settings, cc_url, args.workers)
        start = time.perf_counter()
        sent = 0
        try:
            while time.perf_counter() - start < args.seconds:
                asyncio.run(_live_changes(db_url, OWNER, sent, args.rate))
                sent += args.rate
                time.sleep(1.0)
            time.sleep(5.0)
        finally:
            stop(procs)
        grants = httpx.get(f"{cc_url}/_control/tokens", timeout=60).json()["grants"]
        log = api_log(cc_url)

        async def status() -> list[Any]:
            e = create_engine(db_url, pool_size=1)
            try:
                async with e.connect() as conn:
                    return list(
                        (await conn.execute(text("SELECT status FROM connections"))).scalars()
                    )
            finally:
                await e.dispose()

        states = asyncio.run(status())
    refreshes = sum(max(0, len(g["chain"]) - 1) for g in grants)
    refused = sum(1 for r in log if r.get("status") == 401)
    return {
        "seconds": args.seconds,
        "workers": args.workers,
        "live_changes": sent,
        "refreshes": refreshes,
        "grants_revoked": sum(1 for g in grants if g["revoked"]),
        "connections_in_error": sum(1 for s in states if s == "error"),
        "requests_401": refused,
        "refused_per_refresh": refused / max(1, refreshes),
        "api_requests": len(log),
    }


async def _prepare_p7(engine: Any, settings: Any) -> None:
    await connect(engine, settings, OWNER)
    await engine.dispose()


async def _live_changes(db_url: str, owner: str, offset: int, n: int) -> None:
    """n new consenting contacts (the outbox's own write path: contact + queue row)."""
    from sqlalchemy import text

    engine = create_engine(db_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            conn_id = (
                await conn.execute(
                    text("SELECT id FROM connections WHERE owner_id = :o"), {"o": owner}
                )
            ).scalar_one()
            await conn.execute(
                text(
                    """
                    WITH c AS (
                        INSERT INTO contacts (owner_id, email, email_key, newsletter_opt_in,
                                              newsletter_changed_at)
                        SELECT :owner, 'l' || g || '@example.com', 'l' || g || '@example.com',
                               true, now()
                        FROM generate_series(CAST(:a AS int), CAST(:b AS int)) AS g
                        RETURNING id, email_key)
                    INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id,
                        priority)
                    SELECT :conn, :conn, email_key, id, 0 FROM c
                    """
                ),
                {"owner": owner, "a": offset + 1, "b": offset + n, "conn": conn_id},
            )
            await conn.execute(text("SELECT pg_notify('sync_queue', '')"))
    finally:
        await engine.dispose()


def p4(args: argparse.Namespace) -> dict[str, Any]:
    """Ten tenants on one application: t0 imports `contacts`, t1..t9 make `rate` live
    changes a second each; change → Constant Contact latency (`arrival_*`, the bar's) from
    the sandbox's creation time of the contact minus the contact's creation here, and the
    mirror's `last_synced_at` (written once the outcome is known) minus the same (`p50`,
    `p99`)."""
    from sqlalchemy import text

    from app.sync.models import PRIORITY_BULK

    with harness.scratch_database() as db_url, cc_sandbox() as cc_url:
        settings = settings_for(db_url, cc_url)
        accounts = [
            httpx.post(
                f"{cc_url}/_control/accounts", json={"organization_name": f"T{i}"}, timeout=10
            ).json()
            for i in range(1, 10)
        ]
        engine = create_engine(db_url, pool_size=2)

        async def prepare() -> list[uuid.UUID]:
            ids = [await connect(engine, settings, "t0")]
            for i, acc in enumerate(accounts, start=1):
                lists = httpx.get(f"{cc_url}/_control/accounts", timeout=10).json()["accounts"]
                mine = next(
                    a for a in lists if a["encoded_account_id"] == acc["encoded_account_id"]
                )
                ids.append(
                    await connect_account(
                        engine,
                        settings,
                        f"t{i}",
                        mine["encoded_account_id"],
                        mine["lists"][0]["list_id"],
                    )
                )
            await seed(engine, "t0", args.contacts, ids[0], PRIORITY_BULK)
            await engine.dispose()
            return ids

        ids = asyncio.run(prepare())
        if args.dump:
            asyncio.run(_trace_on(db_url))
        procs = workers(db_url, settings, cc_url, args.workers)
        spawned = time.perf_counter()
        sent = 0
        try:
            # Live changes start once the import is under way (t0's first request at the
            # sandbox): the figure is about live work beside a backlog, not worker start-up.
            warmup = _bulk_started(cc_url, limit=args.warmup)
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                tick = time.perf_counter()
                asyncio.run(_live_for(db_url, ids[1:], sent, args.rate))
                sent += args.rate
                time.sleep(max(0.0, args.tick - (time.perf_counter() - tick)))
            time.sleep(args.settle)
        finally:
            stop(procs)

        async def latencies() -> list[Any]:
            e = create_engine(db_url, pool_size=1)
            try:
                async with e.connect() as conn:
                    return list(
                        (
                            await conn.execute(
                                text(
                                    """
                                    SELECT c.owner_id,
                                           EXTRACT(EPOCH FROM s.last_synced_at - c.created_at),
                                           EXTRACT(EPOCH FROM c.created_at),
                                           EXTRACT(EPOCH FROM s.last_synced_at),
                                           c.email_key
                                    FROM contacts c LEFT JOIN sync_state s
                                      ON s.contact_id = c.id
                                    WHERE c.owner_id <> 't0'
                                    """
                                )
                            )
                        ).all()
                    )
            finally:
                await e.dispose()

        rows = asyncio.run(latencies())
        log = api_log(cc_url)
        arrived = _arrivals(cc_url, [a["encoded_account_id"] for a in accounts])
        trace = asyncio.run(_trace_read(db_url)) if args.dump else {}
    if args.dump:
        import json

        with open(args.dump, "w") as fh:
            accs = {f"t{i}": a["encoded_account_id"] for i, a in enumerate(accounts, start=1)}
            dump = {
                "log": log,
                "rows": [[str(v) for v in r] for r in rows],
                "accounts": accs,
                "arrived": arrived,
            }
            json.dump(dump | trace, fh)
    done = sorted(float(r[1]) for r in rows if r[1] is not None)
    # Change → Constant Contact: the sandbox's creation time of the contact (a POST's answer,
    # or the end of the import activity that carried it) minus the contact's creation here.
    arrival: list[float] = []
    arrived_by_tenant: dict[str, int] = {}
    for owner, _, created, _, key in rows:
        at = arrived.get(str(key))
        if at is not None:
            arrival.append(at - float(created))
            arrived_by_tenant[owner] = arrived_by_tenant.get(owner, 0) + 1
    arrival.sort()
    by_arrival = sorted(arrived_by_tenant.values())
    live_log = [r for r in log if r.get("account") != BULK_ACCOUNT]
    per_tenant: dict[str, int] = {}
    for owner, lat, *_ in rows:
        if lat is not None:
            per_tenant[owner] = per_tenant.get(owner, 0) + 1
    p99 = done[min(len(done) - 1, int(len(done) * 0.99))] if done else None
    counts = sorted(per_tenant.values())
    return {
        "seconds": args.seconds,
        "warmup_seconds": warmup,
        "workers_started_to_first_bulk_request": start - spawned,
        "live_rate_per_tenant": args.rate / args.tick,
        "live_changes": len(rows),
        "live_arrived": len(arrival),
        "arrival_p50_seconds": arrival[len(arrival) // 2] if arrival else None,
        "arrival_p99_seconds": arrival[min(len(arrival) - 1, int(len(arrival) * 0.99))]
        if arrival
        else None,
        "arrival_slowest_over_fastest_tenant": (by_arrival[0] / by_arrival[-1])
        if by_arrival
        else None,
        "live_requests_by_kind": _by_path(live_log),
        "live_delivered": len(done),
        "p50_seconds": done[len(done) // 2] if done else None,
        "p99_seconds": p99,
        "slowest_over_fastest_tenant": (counts[0] / counts[-1]) if counts else None,
        "bulk_requests": sum(1 for r in log if r.get("account") == BULK_ACCOUNT),
        # t0's requests that arrived while some live change was waiting (created, not synced
        # yet): what live-before-bulk leaves to bulk work when live work is there.
        "bulk_requests_while_live_waited": _while_waiting(
            [float(r["start"]) for r in log if r.get("account") == BULK_ACCOUNT],
            [(float(r[2]), float(r[3]) if r[3] is not None else math.inf) for r in rows],
        ),
        "live_request_service_seconds_p50": _median(
            [
                float(r["end"]) - float(r["start"])
                for r in log
                if r.get("account") != BULK_ACCOUNT and "end" in r
            ]
        ),
        "requests": len(log),
        "max_requests_in_any_1s": max_per_second(log),
        "answers_429": sum(1 for r in log if r.get("status") == 429),
    } | (_trace_figures(trace["events"], args.tick) if trace else {})


def _trace_figures(events: list[list[str]], tick: float) -> dict[str, Any]:
    """From the `--dump` trace: live rows claimed more than once (given back unsent), and per
    round the seconds from its first live claim to the next live limiter grant (the engine's
    part between the outbox and the limiter)."""
    claims: dict[str, int] = {}
    claimed: list[float] = []
    grants: list[float] = []
    for kind, a, b, _, at in events:
        if kind == "claim":
            claims[a] = claims.get(a, 0) + 1
            claimed.append(float(at))
        elif kind == "served" and b == "0":
            grants.append(float(at))
    grants.sort()
    first: dict[int, float] = {}
    for t in claimed:  # rounds counted from the first claim, `tick` apart
        n = round((t - min(claimed)) / tick)
        first[n] = min(t, first.get(n, math.inf))
    gaps = []
    for t in first.values():
        later = [g for g in grants if g >= t]
        if later:
            gaps.append(later[0] - t)
    gaps.sort()
    return {
        "live_rows_claimed_more_than_once": sum(1 for n in claims.values() if n > 1),
        "round_claim_to_first_live_grant_p50": gaps[len(gaps) // 2] if gaps else None,
        "round_claim_to_first_live_grant_max": gaps[-1] if gaps else None,
    }


def _arrivals(cc_url: str, account_ids: list[str]) -> dict[str, float]:
    """email key → the sandbox's creation time of the contact, over the tenants' accounts."""
    out: dict[str, float] = {}
    for account_id in account_ids:
        body = httpx.get(
            f"{cc_url}/_control/contacts", params={"account_id": account_id}, timeout=120
        ).json()
        for contact in body["contacts"]:
            address = str((contact.get("email_address") or {}).get("address") or "").lower()
            if address and contact.get("created_epoch") is not None:
                out[address] = float(contact["created_epoch"])
    return out


def _bulk_started(cc_url: str, *, limit: float) -> float:
    """Wait until t0's first request reaches the sandbox (at most `limit` s); seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit:
        if any(r.get("account") == BULK_ACCOUNT for r in api_log(cc_url)):
            break
        time.sleep(0.2)
    return time.perf_counter() - began


_TRACE = [
    "CREATE TABLE trace_events (kind text, a text, b text, c text, at float8)",
    """
    CREATE FUNCTION trace_claim() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.leased_by IS NOT NULL AND NEW.leased_by IS DISTINCT FROM OLD.leased_by
         AND NEW.priority = 0 THEN
        INSERT INTO trace_events VALUES ('claim', NEW.email_key, NEW.leased_by, '',
                                         EXTRACT(EPOCH FROM clock_timestamp()));
      END IF;
      RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER trace_claim BEFORE UPDATE ON sync_queue FOR EACH ROW"
    " EXECUTE FUNCTION trace_claim()",
    """
    CREATE FUNCTION trace_served() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.served_at IS DISTINCT FROM OLD.served_at THEN
        INSERT INTO trace_events VALUES ('served', NEW.tenant, NEW.priority::text, NEW.worker,
                                         EXTRACT(EPOCH FROM clock_timestamp()));
      END IF;
      RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER trace_served BEFORE UPDATE ON limit_claims FOR EACH ROW"
    " EXECUTE FUNCTION trace_served()",
    """
    CREATE FUNCTION trace_window() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO trace_events VALUES (
        CASE WHEN NEW.ticket IS NOT NULL THEN 'take' ELSE 'report' END,
        NEW.slot::text, COALESCE(NEW.ticket, OLD.ticket),
        EXTRACT(EPOCH FROM COALESCE(CASE WHEN NEW.ticket IS NOT NULL THEN NEW.token_at
                                         ELSE NEW.free_at END, clock_timestamp()))::text,
        EXTRACT(EPOCH FROM clock_timestamp()));
      RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER trace_window BEFORE UPDATE ON limit_window FOR EACH ROW"
    " EXECUTE FUNCTION trace_window()",
]


async def _trace_on(db_url: str) -> None:
    """Triggers recording live claims, limiter grants and window slots (`--dump` only)."""
    from sqlalchemy import text

    engine = create_engine(db_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for stmt in _TRACE:
                await conn.execute(text(stmt))
    finally:
        await engine.dispose()


async def _trace_read(db_url: str) -> dict[str, Any]:
    from sqlalchemy import text

    engine = create_engine(db_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            events = (await conn.execute(text("SELECT * FROM trace_events ORDER BY at"))).all()
            tenants = (await conn.execute(text("SELECT id, owner_id FROM connections"))).all()
            return {
                "events": [list(map(str, e)) for e in events],
                "tenants": {str(t[0]): t[1] for t in tenants},
            }
    finally:
        await engine.dispose()


def _while_waiting(starts: list[float], spans: list[tuple[float, float]]) -> int:
    """How many of `starts` fall inside any of `spans` (from, to)."""
    return sum(1 for s in starts if any(a <= s < b for a, b in spans))


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


async def connect_account(
    engine: Any, settings: Any, owner: str, account_id: str, list_id: str
) -> uuid.UUID:
    from app.connections.service import connection_service
    from app.db import make_sessionmaker, session_scope
    from app.providers import registry
    from app.providers.base import Account, Audience

    provider = registry.get("constantcontact")
    account = Account(
        api_base=f"{settings.constantcontact_sandbox_url}/v3",
        account_key=f"constantcontact:account:{account_id}",
        credentials={"sandbox_seed": True, "account_id": account_id},
        auth_kind="oauth",
        account_name=owner,
    )
    async with session_scope(make_sessionmaker(engine)) as session:
        row = await connection_service.save(
            session,
            provider=provider,
            settings=settings,
            owner_id=owner,
            account=account,
            audience=Audience(id=list_id, name="list", member_count=0),
        )
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM sync_queue"))
        await conn.execute(text("DELETE FROM sync_runs"))
    return uuid.UUID(str(row["id"]))


async def _live_for(db_url: str, conn_ids: list[uuid.UUID], offset: int, n: int) -> None:
    from sqlalchemy import text

    engine = create_engine(db_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for conn_id in conn_ids:
                owner = (
                    await conn.execute(
                        text("SELECT owner_id FROM connections WHERE id = :i"), {"i": conn_id}
                    )
                ).scalar_one()
                await conn.execute(
                    text(
                        """
                        WITH c AS (
                            INSERT INTO contacts (owner_id, email, email_key, newsletter_opt_in,
                                                  newsletter_changed_at)
                            SELECT :owner, :owner || '-' || g || '@example.com',
                                   :owner || '-' || g || '@example.com', true, now()
                            FROM generate_series(CAST(:a AS int), CAST(:b AS int)) AS g
                            RETURNING id, email_key)
                        INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id,
                            priority)
                        SELECT :conn, :conn, email_key, id, 0 FROM c
                        """
                    ),
                    {"owner": owner, "a": offset + 1, "b": offset + n, "conn": conn_id},
                )
            await conn.execute(text("SELECT pg_notify('sync_queue', '')"))
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    a = sub.add_parser("p3")
    a.add_argument("--contacts", type=int, default=100_000)
    a.add_argument("--workers", type=int, default=3)
    a.add_argument("--limit", type=float, default=3600.0)
    c = sub.add_parser("p4")
    c.add_argument("--contacts", type=int, default=100_000)
    c.add_argument("--workers", type=int, default=3)
    c.add_argument("--seconds", type=float, default=60.0)
    c.add_argument("--rate", type=int, default=1)
    c.add_argument("--settle", type=float, default=20.0)
    c.add_argument("--tick", type=float, default=1.0, help="seconds between two rounds")
    c.add_argument("--dump", default="", help="write the request log and latencies here")
    c.add_argument("--warmup", type=float, default=30.0, help="most seconds to wait for t0")
    b = sub.add_parser("p7")
    b.add_argument("--seconds", type=float, default=300.0)
    b.add_argument("--workers", type=int, default=4)
    b.add_argument("--rate", type=int, default=1)
    args = parser.parse_args()
    facts = harness.machine() | {"loadavg_before": os.getloadavg()}
    figures = {"p3": p3, "p4": p4, "p7": p7}[args.which](args)
    facts["loadavg_after"] = os.getloadavg()
    out = {"benchmark": args.which.upper(), "machine": facts, **figures}
    for key, value in figures.items():
        print(f"{key}: {value}")
    print(harness.write_result(f"{args.which}_constantcontact", out))


if __name__ == "__main__":
    main()
