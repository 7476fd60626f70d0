"""Peers on the same job (BENCHMARKS.md): pgqueuer, procrastinate, a plain asyncio loop.

The job, for every runner: one job per changed contact; the handler reads the contact row and
PUTs it to the sandbox through one httpx client limited to 10 connections. The peers get the
same aiohttp-backed httpx transport as the engine, so the comparison is about the queue and the
loop, not the HTTP stack. Jobs are enqueued before the clock starts, like the engine's queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from sqlalchemy.engine import make_url

from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID

OWNER = "bench"


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _seed(pool: asyncpg.Pool, n: int) -> list[str]:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE contacts, sync_queue, sync_state, connections CASCADE")
        await conn.execute(
            """
            INSERT INTO contacts (owner_id, email, email_key, first_name, last_name,
                                  newsletter_opt_in)
            SELECT $1, 'p' || g || '@example.com', 'p' || g || '@example.com', 'First' || g,
                   'Last' || g, true
            FROM generate_series(1, $2) AS g
            """,
            OWNER,
            n,
        )
        rows = await conn.fetch("SELECT id::text FROM contacts WHERE owner_id = $1", OWNER)
    return [r["id"] for r in rows]


def _handler(
    pool: asyncpg.Pool, http: httpx.AsyncClient, sandbox_url: str
) -> Callable[[str], Awaitable[None]]:
    base = f"{sandbox_url}/3.0/lists/{DEFAULT_LIST_ID}/members/"

    async def push(contact_id: str) -> None:
        row = await pool.fetchrow(
            "SELECT email, first_name, last_name FROM contacts WHERE id = $1::uuid", contact_id
        )
        assert row is not None
        body = {
            "email_address": row["email"],
            "status_if_new": "subscribed",
            "merge_fields": {"FNAME": row["first_name"], "LNAME": row["last_name"]},
        }
        digest = hashlib.md5(row["email"].lower().encode()).hexdigest()
        response = await http.put(base + digest, content=orjson.dumps(body))
        response.raise_for_status()

    return push


def _client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        auth=("bench", DEFAULT_API_KEY),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


async def _asyncio_loop(db: str, sandbox_url: str, n: int, cap: int) -> float:
    pool = await asyncpg.create_pool(_libpq(db), min_size=2, max_size=cap)
    ids = await _seed(pool, n)
    async with _client() as http:
        push = _handler(pool, http, sandbox_url)
        sem = asyncio.Semaphore(cap)

        async def one(contact_id: str) -> None:
            async with sem:
                await push(contact_id)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in ids))
        elapsed = time.perf_counter() - start
    await pool.close()
    return elapsed


async def _pgqueuer(db: str, sandbox_url: str, n: int, cap: int) -> float:
    from pgqueuer import AsyncpgDriver, PgQueuer, Queries
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    pool = await asyncpg.create_pool(_libpq(db), min_size=2, max_size=cap)
    ids = await _seed(pool, n)
    conn = await asyncpg.connect(_libpq(db))
    queries = Queries(AsyncpgDriver(conn))
    try:
        await queries.install()
    except asyncpg.DuplicateObjectError:
        await queries.clear_queue()
    await queries.enqueue(["sync_contact"] * n, [i.encode() for i in ids], [0] * n)
    async with _client() as http:
        push = _handler(pool, http, sandbox_url)
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("sync_contact", concurrency_limit=cap)
        async def sync_contact(job: Job) -> None:
            assert job.payload is not None
            await push(job.payload.decode())

        start = time.perf_counter()
        await pgq.run(mode=QueueExecutionMode.drain, batch_size=cap, max_concurrent_tasks=2 * cap)
        elapsed = time.perf_counter() - start
    await conn.close()
    await pool.close()
    return elapsed


async def _procrastinate(db: str, sandbox_url: str, n: int, cap: int) -> float:
    import procrastinate

    pool = await asyncpg.create_pool(_libpq(db), min_size=2, max_size=cap)
    ids = await _seed(pool, n)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_libpq(db)))
    async with _client() as http:
        push = _handler(pool, http, sandbox_url)

        @app.task(name="sync_contact")
        async def sync_contact(contact_id: str) -> None:
            await push(contact_id)

        async with app.open_async():
            try:
                await app.schema_manager.apply_schema_async()
            except Exception:  # already there from an earlier run
                async with pool.acquire() as c:
                    await c.execute("DELETE FROM procrastinate_jobs")
            await sync_contact.batch_defer_async(*({"contact_id": i} for i in ids))
            start = time.perf_counter()
            await app.run_worker_async(concurrency=cap, wait=False, install_signal_handlers=False)
            elapsed = time.perf_counter() - start
    await pool.close()
    return elapsed


RUNNERS: dict[str, Callable[[str, str, int, int], Awaitable[float]]] = {
    "asyncio": _asyncio_loop,
    "pgqueuer": _pgqueuer,
    "procrastinate": _procrastinate,
}


def run_peer(name: str, db_url: str, sandbox_url: str, n: int, *, cap: int) -> float:
    """Seconds for `name` to push n contacts, one PUT each, `cap` in flight."""
    return asyncio.run(RUNNERS[name](db_url, sandbox_url, n, cap))


def describe() -> dict[str, Any]:
    """Versions of the peers, for the results file."""
    from importlib.metadata import version

    return {name: version(name) for name in ("pgqueuer", "procrastinate", "httpx", "aiohttp")}
