"""B4 — the write path: POST and PATCH /api/contacts at 32 concurrent clients.

Arms, each measured in every round, rounds repeated (medians reported):

- ``post/outbox``: the owner has a Mailchimp connection with an audience, so each request
  commits the contact, its ``contact_changes`` row and a ``sync_queue`` row, then NOTIFY;
- ``post/no-outbox``: the same endpoint for an owner without a connection (no queue row);
- ``patch/outbox`` and ``patch/no-outbox``: the same for PATCH (each client changes the
  first name of its own contacts in turn);
- ``post/sync-in-request``: what a hand-rolled integration does instead of an outbox — a
  bench-only app runs the real create, commits, then calls the provider (a local server that
  answers after 100 ms) before answering. It is never part of the production app.

The service is the real one, ``audience-sync serve --no-worker``, on a real PostgreSQL: a
scratch database on ``--server-url`` (default 127.0.0.1:5432), created and dropped by the
benchmark, or the database in DATABASE_URL. The load comes from a separate process.

    .venv/bin/python bench/b4_write_path.py                   # 3 rounds of 30 s per arm
    .venv/bin/python bench/b4_write_path.py --duration 5 --runs 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
from fastapi import Request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Module level: FastAPI resolves the bench route's (string) annotations in these globals.
from app.auth.deps import OwnerDep
from app.contacts.schemas import ContactCreate, ContactOut
from bench.common import (
    LoadSpec,
    execute,
    free_port,
    machine_facts,
    median,
    run_load,
    scratch_database,
    service,
    write_results,
)

OUTBOX_OWNER = "b4-outbox"
PLAIN_OWNER = "b4-no-connection"
PATCH_CONTACTS_PER_CLIENT = 50
BARS = {"throughput_ratio": 0.80, "sync_p50_ratio": 10.0}
SYNC_PATH = "/bench/sync-in-request/contacts"


# --- the two bench-only processes ------------------------------------------------------------


def serve_provider(port: int, latency_ms: float) -> None:
    """A provider that answers every PUT after `latency_ms` (a stand-in for Mailchimp)."""
    from aiohttp import web

    async def put_member(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(latency_ms / 1000)
        return web.json_response({"id": request.match_info["member"], "status": "subscribed"})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_put("/3.0/lists/{list_id}/members/{member}", put_member)
    app.router.add_get("/healthz", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_sync_in_request(port: int, provider: str) -> None:
    """The service plus one bench-only route: create, commit, call the provider, answer."""
    import httpx
    import uvicorn

    from app.config import get_settings
    from app.contacts.service import contact_service
    from app.db import session_scope
    from app.main import create_app

    app = create_app(get_settings())
    clients: dict[str, httpx.AsyncClient] = {}

    @app.post(SYNC_PATH, status_code=201, response_model=ContactOut)
    async def create_and_push(body: ContactCreate, owner_id: OwnerDep, request: Request) -> Any:
        rt = request.state.runtime
        # The contact is committed before the provider call, as a careful hand-rolled
        # integration would (no database connection held while the provider thinks).
        async with session_scope(rt.sessionmaker) as session:
            written = await contact_service.create(
                session, owner_id=owner_id, data=body, actor=owner_id
            )
        row = written.row
        http = clients.get("http")
        if http is None:  # one keep-alive client per process, made inside the loop
            http = clients["http"] = httpx.AsyncClient(
                base_url=provider, limits=httpx.Limits(max_connections=200), timeout=10
            )
        member = hashlib.md5(row["email_key"].encode()).hexdigest()  # Mailchimp's member id
        response = await http.put(
            f"/3.0/lists/bench/members/{member}",
            json={"email_address": row["email"], "status_if_new": "subscribed"},
        )
        response.raise_for_status()
        return written.out

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


# --- the benchmark ------------------------------------------------------------------------


async def _setup_owners(url: str, mappings: int = 1) -> None:
    await execute(
        url,
        """
        INSERT INTO connections (owner_id, provider, auth_kind, credentials, account_key,
                                 api_endpoint, audience_id, audience_name, webhook_token, status)
        VALUES ($1, 'mailchimp', 'api_key', 'bench', 'bench-account',
                'http://127.0.0.1:9/3.0', 'bench-audience', 'Bench', $2, 'active')
        """,
        OUTBOX_OWNER,
        uuid.uuid4().hex,
    )
    # More audiences of the same connection (issue 17): each write queues a row per mapping.
    await execute(
        url,
        """
        INSERT INTO audience_mappings (connection_id, audience_id, audience_name)
        SELECT c.id, 'bench-audience-' || n, 'Bench ' || n
        FROM connections c, generate_series(2, $2) AS n WHERE c.owner_id = $1
        """,
        OUTBOX_OWNER,
        mappings,
    )


async def _reset(url: str) -> None:
    # Every arm starts from the same table sizes; a growing index would favour the first.
    await execute(url, "TRUNCATE contacts, contact_changes, sync_queue")
    await execute(url, "VACUUM ANALYZE contacts, contact_changes, sync_queue")


async def _patch_targets(url: str, owner: str, clients: int) -> list[list[str]]:
    """Contacts for PATCH, each client its own (no row-lock contention between clients)."""
    import asyncpg

    from bench.common import libpq

    conn = await asyncpg.connect(libpq(url))
    try:
        rows = await conn.fetch(
            """
            INSERT INTO contacts (owner_id, email, email_key, first_name, tags)
            SELECT $1, 'patch-' || g || '@example.com', 'patch-' || g || '@example.com', 'Start',
                   ARRAY['bench']
            FROM generate_series(1, $2) AS g
            RETURNING id
            """,
            owner,
            clients * PATCH_CONTACTS_PER_CLIENT,
        )
    finally:
        await conn.close()
    ids = [str(r["id"]) for r in rows]
    return [ids[i::clients] for i in range(clients)]


def _measure(
    *,
    base: str,
    path: str,
    kind: str,
    token: str,
    args: argparse.Namespace,
    db: str,
    owner: str,
    pid: int,
    rate: float | None,
) -> dict[str, Any]:
    asyncio.run(_reset(db))
    ids = asyncio.run(_patch_targets(db, owner, args.clients)) if kind == "patch" else []
    server = psutil.Process(pid)
    cpu0 = sum(server.cpu_times()[:2])
    spec = LoadSpec(
        url=base + path,
        kind=kind,
        token=token,
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        ids=ids,
        rate=rate,
    )
    result = run_load(spec)
    server_cpu = sum(server.cpu_times()[:2]) - cpu0
    out = dict(vars(result))
    total = args.duration + args.warmup
    out["server_cpu_share"] = server_cpu / total  # 1.0 = one core busy the whole time
    out["server_cpu_ms_per_request"] = server_cpu * 1000 / max(1, result.rps * total)
    out["load_average_after"] = os.getloadavg()[0]  # other work on a shared machine shows here
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per arm")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--runs", type=int, default=3, help="rounds (every arm in each)")
    parser.add_argument("--provider-latency-ms", type=float, default=100.0)
    parser.add_argument(
        "--mappings", type=int, default=1, help="audiences of the outbox owner's connection"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="open-loop req/s of the equal-load latency comparison (below both capacities)",
    )
    parser.add_argument(
        "--server-url",
        default=None,
        help="PostgreSQL server for the scratch database (default 127.0.0.1:5432; "
        "DATABASE_URL, when set, is used as is instead)",
    )
    parser.add_argument("--serve-provider", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-sync-app", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--provider-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_provider:
        serve_provider(args.serve_provider, args.provider_latency_ms)
        return
    if args.serve_sync_app:
        serve_sync_in_request(args.serve_sync_app, args.provider_url)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    from cryptography.fernet import Fernet

    from app.auth.tokens import issue_token
    from app.config import Settings

    with scratch_database(args.server_url, "audience_sync_b4") as db:
        asyncio.run(_setup_owners(db, args.mappings))
        secret = secrets.token_urlsafe(48)
        env = {
            "DATABASE_URL": db,
            "ENVIRONMENT": "production",
            "AUTH_JWT_SECRET": secret,
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "AUTO_MIGRATE": "false",
            "WORKER_IN_PROCESS": "false",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
        }
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        tokens = {o: issue_token(settings, o) for o in (OUTBOX_OWNER, PLAIN_OWNER)}
        api_port, sync_port, provider_port = free_port(), free_port(), free_port()
        py = sys.executable
        script = str(Path(__file__).resolve())
        api_cmd = [
            str(Path(py).parent / "audience-sync"),
            "serve",
            "--no-worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(api_port),
        ]
        provider_cmd = [
            py,
            script,
            "--serve-provider",
            str(provider_port),
            "--provider-latency-ms",
            str(args.provider_latency_ms),
        ]
        sync_cmd = [
            py,
            script,
            "--serve-sync-app",
            str(sync_port),
            "--provider-url",
            f"http://127.0.0.1:{provider_port}",
        ]
        rate = args.rate
        arms: list[tuple[str, str, str, str, float | None]] = [
            # name, kind, path, owner, open-loop rate (None: closed loop)
            ("post/outbox", "post", "/api/contacts", OUTBOX_OWNER, None),
            ("post/no-outbox", "post", "/api/contacts", PLAIN_OWNER, None),
            ("patch/outbox", "patch", "/api/contacts", OUTBOX_OWNER, None),
            ("patch/no-outbox", "patch", "/api/contacts", PLAIN_OWNER, None),
            ("post/sync-in-request", "post", SYNC_PATH, PLAIN_OWNER, None),
            (f"post/outbox@{rate:g}/s", "post", "/api/contacts", OUTBOX_OWNER, rate),
            (f"post/sync-in-request@{rate:g}/s", "post", SYNC_PATH, PLAIN_OWNER, rate),
        ]
        rounds: list[dict[str, Any]] = []
        with (
            service(api_cmd, port=api_port, env=env) as api,
            service(provider_cmd, port=provider_port, env=env),
            service(sync_cmd, port=sync_port, env={**env, "PORT": str(sync_port)}) as sync,
        ):
            for n in range(args.runs):
                # Alternate the order, so slow drift (autovacuum, caches) hits every arm.
                order = arms if n % 2 == 0 else list(reversed(arms))
                figures: dict[str, Any] = {}
                for name, kind, path, owner, arm_rate in order:
                    target = sync if path == SYNC_PATH else api
                    figures[name] = _measure(
                        base=target.base_url,
                        path=path,
                        kind=kind,
                        token=tokens[owner],
                        args=args,
                        db=db,
                        owner=owner,
                        pid=target.process.pid,
                        rate=arm_rate,
                    )
                    r = figures[name]
                    print(
                        f"  round {n + 1} {name:28} {r['rps']:8.0f} req/s  "
                        f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                        f"errors {r['errors']}  server CPU {r['server_cpu_share']:.2f} "
                        f"({r['server_cpu_ms_per_request']:.2f} ms/req)  "
                        f"load {r['load_average_after']:.1f}",
                        flush=True,
                    )
                figures["ratios"] = {
                    "post_throughput_outbox_vs_no_outbox": figures["post/outbox"]["rps"]
                    / figures["post/no-outbox"]["rps"],
                    "patch_throughput_outbox_vs_no_outbox": figures["patch/outbox"]["rps"]
                    / figures["patch/no-outbox"]["rps"],
                    "post_p50_sync_in_request_vs_outbox": figures["post/sync-in-request"]["p50_ms"]
                    / figures["post/outbox"]["p50_ms"],
                    "post_p50_sync_in_request_vs_outbox_at_rate": figures[
                        f"post/sync-in-request@{rate:g}/s"
                    ]["p50_ms"]
                    / figures[f"post/outbox@{rate:g}/s"]["p50_ms"],
                }
                rounds.append(figures)
            api_command = api.command
        summary = _summarise(rounds, [a[0] for a in arms])
        summary["load_average_max"] = max(
            r[a[0]]["load_average_after"] for r in rounds for a in arms
        )
        facts = machine_facts(db)

    _print_summary(summary, args)
    path = write_results(
        "b4_write_path",
        {
            "machine": facts,
            "parameters": {
                "clients": args.clients,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "runs": args.runs,
                "provider_latency_ms": args.provider_latency_ms,
                "open_loop_rate": args.rate,
                "mappings": args.mappings,
                "service_command": api_command,
            },
            "bars": BARS,
            "summary": summary,
            "rounds": rounds,
        },
    )
    print(f"results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def _summarise(rounds: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for arm in arms:
        summary[arm] = {
            key: median([r[arm][key] for r in rounds])
            for key in ("rps", "p50_ms", "p99_ms", "server_cpu_share", "server_cpu_ms_per_request")
        }
        summary[arm]["errors"] = sum(r[arm]["errors"] for r in rounds)
    summary["ratios"] = {
        key: median([r["ratios"][key] for r in rounds]) for key in rounds[0]["ratios"]
    }
    return summary


def _print_summary(s: dict[str, Any], args: argparse.Namespace) -> None:
    runs = f"median of {args.runs}"
    print(f"B4 write path: {args.clients} clients, {args.duration:.0f} s per arm, {runs}")
    for arm in ("post/outbox", "post/no-outbox", "patch/outbox", "patch/no-outbox"):
        f = s[arm]
        print(
            f"B4 {arm:28} {f['rps']:8.0f} req/s  p50 {f['p50_ms']:6.1f} ms  "
            f"p99 {f['p99_ms']:6.1f} ms  errors {f['errors']}"
        )
    f = s["post/sync-in-request"]
    print(
        f"B4 {'post/sync-in-request':28} {f['rps']:8.0f} req/s  p50 {f['p50_ms']:6.1f} ms  "
        f"p99 {f['p99_ms']:6.1f} ms  errors {f['errors']}  "
        f"(provider {args.provider_latency_ms:.0f} ms)"
    )
    for arm in (f"post/outbox@{args.rate:g}/s", f"post/sync-in-request@{args.rate:g}/s"):
        f = s[arm]
        print(
            f"B4 {arm:28} {f['rps']:8.0f} req/s  p50 {f['p50_ms']:6.1f} ms  "
            f"p99 {f['p99_ms']:6.1f} ms  errors {f['errors']}  (open loop)"
        )
    r = s["ratios"]
    bar = BARS["throughput_ratio"]
    for verb in ("post", "patch"):
        value = r[f"{verb}_throughput_outbox_vs_no_outbox"]
        verdict = "meets" if value >= bar else "BELOW"
        label = f"{verb.upper()} throughput outbox / no-outbox"
        print(f"B4 {label}   {value:.2f}  ({verdict} bar ≥ {bar})")
    value = r["post_p50_sync_in_request_vs_outbox"]
    bar = BARS["sync_p50_ratio"]
    verdict = "meets" if value >= bar else "BELOW"
    print(
        f"B4 POST p50 sync-in-request / outbox, {args.clients} clients   {value:.1f}×  "
        f"({verdict} bar ≥ {bar:.0f}×)"
    )
    value = r["post_p50_sync_in_request_vs_outbox_at_rate"]
    verdict = "meets" if value >= bar else "BELOW"
    print(
        f"B4 POST p50 sync-in-request / outbox, both at {args.rate:g} req/s   {value:.1f}×  "
        f"({verdict} bar ≥ {bar:.0f}×)"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
