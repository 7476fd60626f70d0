"""Shared pieces of the sync benchmarks: scratch database, sandbox process, seeding, results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def machine() -> dict[str, Any]:
    """Facts about the machine a figure was measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
    }


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def scratch_database(server: str | None = None) -> Iterator[str]:
    """A fresh, migrated database on the server; dropped afterwards. Yields its asyncpg URL."""
    from app.migrate import upgrade_head

    admin = server or os.environ.get("BENCH_DATABASE_URL") or DEFAULT_SERVER
    name = f"audience_sync_bench_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = make_url(admin).set(database=name, drivername="postgresql+asyncpg")
    rendered = url.render_as_string(hide_password=False)
    try:
        upgrade_head(rendered)
        yield rendered
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class SandboxProcess:
    """The sandbox in its own process (so its CPU is not ours)."""

    url: str
    proc: subprocess.Popen[bytes]

    def configure(self, **changes: Any) -> None:
        """PATCH /_control/config."""
        httpx.patch(f"{self.url}/_control/config", json=changes, timeout=30).raise_for_status()

    def requests(self) -> dict[str, Any]:
        """The request log."""
        return dict(httpx.get(f"{self.url}/_control/requests", timeout=60).json())

    def reset(self) -> None:
        """Empty state, default account and audience back; the config (latency…) is kept."""
        config = httpx.get(f"{self.url}/_control/config", timeout=30).json()
        httpx.post(f"{self.url}/_control/reset", timeout=30).raise_for_status()
        for transient in ("outage_seconds", "outage_remaining_seconds"):
            config.pop(transient, None)
        httpx.patch(f"{self.url}/_control/config", json=config, timeout=30).raise_for_status()
        httpx.delete(f"{self.url}/_control/requests", timeout=30)

    def member_count(self, list_id: str) -> int:
        """Members in the audience (every status)."""
        body = httpx.get(f"{self.url}/_control/lists/{list_id}/members", timeout=120).json()
        return int(body["total_items"])


@contextlib.contextmanager
def sandbox_process(**flags: Any) -> Iterator[SandboxProcess]:
    """`audience-sync sandbox mailchimp` on a free port."""
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "sandbox", "mailchimp", "--port", str(port)]
    for key, value in flags.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        yield SandboxProcess(url, proc)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()


def bench_settings(database_url: str, sandbox_url: str, **overrides: Any) -> Any:
    """Settings for an engine in a benchmark."""
    from app.config import Environment, Settings

    values: dict[str, Any] = {
        "ENVIRONMENT": Environment.test,
        "DATABASE_URL": database_url,
        "AUTH_JWT_SECRET": "bench-" + "x" * 40,
        "ENCRYPTION_KEYS": [Fernet.generate_key().decode()],
        "MAILCHIMP_MODE": "sandbox",
        "MAILCHIMP_SANDBOX_URL": sandbox_url,
        "WORKER_IN_PROCESS": False,
        "AUTO_MIGRATE": False,
        "LOG_LEVEL": "WARNING",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def connect_owner(engine: Any, settings: Any, owner: str) -> uuid.UUID:
    """Connect `owner` to the sandbox's default audience; returns the connection id."""
    from app.connections.service import connection_service
    from app.db import make_sessionmaker, session_scope
    from app.providers import registry
    from app.providers.base import Audience
    from app.providers.mailchimp.connect import api_key_account
    from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID

    account = api_key_account(settings, DEFAULT_API_KEY)
    account.account_name = "bench"
    async with session_scope(make_sessionmaker(engine)) as session:
        row = await connection_service.save(
            session,
            provider=registry.get("mailchimp"),
            settings=settings,
            owner_id=owner,
            account=account,
            audience=Audience(id=DEFAULT_LIST_ID, name="bench", member_count=0),
        )
    return uuid.UUID(str(row["id"]))


async def seed(
    engine: Any, owner: str, n: int, *, connection_id: uuid.UUID | None, priority: int = 0
) -> None:
    """n consenting contacts (and queue rows when a connection is given), set-based."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO contacts (owner_id, email, email_key, first_name, last_name, tags,
                                      newsletter_opt_in, newsletter_changed_at)
                SELECT :owner, 'p' || g || '@example.com', 'p' || g || '@example.com',
                       'First' || g, 'Last' || g,
                       ARRAY['t' || (g % 5)], true, now()
                FROM generate_series(1, :n) AS g
                """
            ),
            {"owner": owner, "n": n},
        )
        if connection_id is not None:
            await conn.execute(
                text(
                    """
                    INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id,
                        priority)
                    SELECT :conn, :conn, email_key, id, :prio FROM contacts WHERE owner_id = :owner
                    """
                ),
                {"conn": connection_id, "owner": owner, "prio": priority},
            )


async def fresh_backlog(
    engine: Any, settings: Any, owner: str, n: int, *, priority: int = 0
) -> uuid.UUID:
    """Empty tables, `owner` connected to the sandbox, n queued contacts; the connection id."""
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE contacts, sync_queue, sync_state, connections CASCADE"))
    conn_id = await connect_owner(engine, settings, owner)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM sync_queue"))  # the connect's own initial queue
    await seed(engine, owner, n, connection_id=conn_id, priority=priority)
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))
    return conn_id


async def queue_depth(engine: Any) -> int:
    """Rows in sync_queue."""
    from sqlalchemy import text

    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM sync_queue"))).scalar_one())


_DRAINED_POLL = """
import asyncio, sys
import asyncpg

async def main(url, every):
    conn = await asyncpg.connect(url)
    try:
        while await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sync_queue)"):
            await asyncio.sleep(every)
    finally:
        await conn.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


async def wait_drained(db_url: str, *, every: float = 0.05) -> None:
    """Return once sync_queue is empty; a child process polls it on one asyncpg connection.

    The benchmark process's CPU is reported as the worker's, so the poll runs elsewhere: in
    this process, 20 polls a second (each a timer wake-up and a round trip, ~0.5 ms of CPU on
    the 2-vCPU VM) were booked as ~0.05 ms a member of a 100 ms drain. Its CPU still shows
    in `RUSAGE_CHILDREN` once it has exited (B1 reports both figures).
    """
    url = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DRAINED_POLL, url, str(every)
    )
    try:
        if await proc.wait() != 0:
            raise RuntimeError(f"the drained poll exited with {proc.returncode}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def running_engine(sync_engine: Any) -> AsyncIterator[Any]:
    """Run a SyncEngine in the background for the block."""
    task = asyncio.create_task(sync_engine.run(grace_seconds=5))
    try:
        yield sync_engine
    finally:
        sync_engine.stop()
        await task
        await sync_engine.aclose()


def default_list_id() -> str:
    """The sandbox's default audience id."""
    from app.sandbox.mailchimp import DEFAULT_LIST_ID

    return str(DEFAULT_LIST_ID)


def wire_figures(requests: list[dict[str, Any]]) -> dict[str, float]:
    """From the sandbox's log: mean requests in flight while the drain ran, mean time each took.

    Occupancy below the cap means the client left slots idle; a server time above L0 means
    the time went to the sandbox (and the machine), not to the client.
    """
    if not requests:
        return {"occupancy": 0.0, "server_ms": 0.0}
    busy = sum(r["end"] - r["start"] for r in requests)
    span = max(r["end"] for r in requests) - min(r["start"] for r in requests)
    return {"occupancy": busy / span if span else 0.0, "server_ms": 1000 * busy / len(requests)}


def median(values: list[float]) -> float:
    """The median."""
    return float(statistics.median(values))


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>-<timestamp>.json with the machine facts."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2))
    return path
