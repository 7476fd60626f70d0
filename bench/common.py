"""Shared benchmark helpers: machine facts, scratch databases, service processes, load.

Benchmarks print one line per figure and write JSON to bench/results/ (BENCHMARKS.md).
The load generator runs in its own process so its CPU does not come out of the server's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- machine -----------------------------------------------------------------------------


def machine_facts(database_url: str | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if database_url:
        facts["postgres"] = asyncio.run(_fetchval(database_url, "SHOW server_version"))
    return facts


async def _fetchval(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(libpq(url))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def libpq(url: str) -> str:
    """`url` without a SQLAlchemy driver suffix (asyncpg.connect wants that)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- databases ---------------------------------------------------------------------------


@contextmanager
def scratch_database(server_url: str | None, prefix: str) -> Iterator[str]:
    """A fresh, migrated database on `server_url`'s server, dropped afterwards.

    With DATABASE_URL given instead (`server_url` None and the variable set), that database
    is used as is and left alone.
    """
    if server_url is None and os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        _migrate(url)
        yield libpq(url)
        return
    admin = libpq(server_url or DEFAULT_SERVER)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        _migrate(url)
        yield url
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _migrate(url: str) -> None:
    from app.db import to_async_url
    from app.migrate import upgrade_head

    upgrade_head(to_async_url(url))


async def execute(url: str, sql: str, *args: Any) -> Any:
    """Run one statement on `url` (setup and cleanup between runs)."""
    conn = await asyncpg.connect(libpq(url))
    try:
        return await conn.execute(sql, *args)
    finally:
        await conn.close()


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A server process started by a benchmark."""

    base_url: str
    process: subprocess.Popen[bytes]
    command: str


@contextmanager
def service(
    argv: Sequence[str], *, port: int, env: dict[str, str], health: str = "/healthz"
) -> Iterator[Service]:
    """Start `argv` (which must listen on `port`), wait until `health` answers, stop it after."""
    import urllib.request

    full_env = {**os.environ, **env}
    log = open(Path(tempfile.gettempdir()) / f"bench-service-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(list(argv), env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(base + health, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not become healthy; see {log.name}")
            time.sleep(0.2)
        yield Service(base, process, shlex.join(argv))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# --- load --------------------------------------------------------------------------------


@dataclass
class LoadSpec:
    """What each client sends, for how long.

    `kind` is "post" (a new contact each request) or "patch" (each client cycles through its
    own contacts in `ids[client]`, changing the first name every time).
    """

    url: str
    kind: str
    token: str
    clients: int
    duration: float
    warmup: float
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    ids: list[list[str]] = field(default_factory=list)
    # Open loop: send `rate` requests per second on a fixed schedule (at most `clients` in
    # flight) and time each from its scheduled start, so a slow server cannot hide its
    # queueing by slowing the senders down. None: closed loop, `clients` back to back.
    rate: float | None = None


@dataclass
class LoadResult:
    """Requests completed inside the measured window, and their latencies."""

    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: dict[str, int]
    loadgen_cpu_seconds: float


def run_load(spec: LoadSpec) -> LoadResult:
    """Drive the load from a separate process and return what it measured."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        raw = pool.apply(_load_process, (asdict(spec),))
    return LoadResult(**raw)


def _load_process(spec: dict[str, Any]) -> dict[str, Any]:
    cpu0 = time.process_time()
    result = asyncio.run(_drive(LoadSpec(**spec)))
    result["loadgen_cpu_seconds"] = time.process_time() - cpu0
    return result


async def _drive(spec: LoadSpec) -> dict[str, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {spec.token}", "Content-Type": "application/json"}
    start = time.perf_counter()
    measure_from = start + spec.warmup
    stop_at = measure_from + spec.duration
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0

    def request(session: aiohttp.ClientSession, n: int, i: int) -> Any:
        if spec.kind == "post":
            body = json.dumps(
                {
                    "email": f"b4-{spec.tag}-{n}-{i}@example.com",
                    "first_name": "Bench",
                    "last_name": f"Client {n}",
                    "tags": ["bench", "b4"],
                    "newsletter_opt_in": True,
                }
            )
            return session.post(spec.url, data=body, headers=headers)
        mine = spec.ids[n]
        body = json.dumps({"first_name": f"Bench {i}"})
        return session.patch(f"{spec.url}/{mine[i % len(mine)]}", data=body, headers=headers)

    async def one(session: aiohttp.ClientSession, n: int, i: int, t0: float) -> None:
        nonlocal errors
        try:
            async with request(session, n, i) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        t1 = time.perf_counter()
        if t0 >= measure_from and (t1 <= stop_at or spec.rate):
            latencies.append(t1 - t0)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status >= 400 or status == 0:
                errors += 1

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while (t0 := time.perf_counter()) < stop_at:
            i += 1
            await one(session, n, i, t0)

    async def scheduler(session: aiohttp.ClientSession) -> None:
        assert spec.rate
        slots = asyncio.Semaphore(spec.clients)
        tasks = set()

        async def fire(k: int, due: float) -> None:
            async with slots:
                await one(session, k % spec.clients, k, due)

        k = 0
        while (due := start + k / spec.rate) < stop_at:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(fire(k, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        await asyncio.gather(*tasks)

    connector = aiohttp.TCPConnector(limit=spec.clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        if spec.rate:
            await scheduler(session)
        else:
            await asyncio.gather(*(client(n, session) for n in range(spec.clients)))
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "errors": errors,
        "seconds": spec.duration,
        "rps": count / spec.duration,
        "p50_ms": _pct(latencies, 50) * 1000,
        "p90_ms": _pct(latencies, 90) * 1000,
        "p99_ms": _pct(latencies, 99) * 1000,
        "statuses": statuses,
    }


def _pct(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


# --- reporting ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (benchmarks report medians of several runs)."""
    return statistics.median(values)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>-<utc timestamp>.json, and <name>-latest.json next to it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {
        "benchmark": name,
        "finished_at": stamp,
        "command": shlex.join([sys.executable, *sys.argv]),
        **payload,
    }
    path = RESULTS / f"{name}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    (RESULTS / f"{name}-latest.json").write_text(text)
    return path
