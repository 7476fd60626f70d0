"""Running the worker: in-process beside the API, or alone (`audience-sync worker`)."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from app import metrics
from app.config import Settings
from app.logging import configure_logging
from app.startup import check_config
from app.sync import outbox
from app.sync.engine import SyncEngine

if TYPE_CHECKING:
    from app.runtime import Runtime

log = structlog.get_logger(__name__)

GAUGE_REFRESH_SECONDS = 15.0
# A worker's heap: what start-up built stays for good, and a drain's claimed rows, plans and
# answers live for a second or a few. At Python's default thresholds anything alive past a
# few thousand allocations (a batch's answer waiting for its segment add, every row in hand)
# reaches the old generation, whose collections re-scan all of it: a 50,000-contact Mautic
# drain (P5) spent a quarter of its time in the collector, in pauses of up to 0.75 s in
# which no answer was read and no freed slot was used. Rarer young collections let those
# die young; start-up's objects are frozen out of every scan.
WORKER_GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Set the worker process's collector for a drain's heap (called once, after start-up)."""
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def periodic_jobs(rt: Runtime) -> list[tuple[float, Callable[[SyncEngine], Awaitable[None]]]]:
    """Jobs every worker runs on a schedule (reconcile runs, scheduled pulls)."""
    from app.sync.pull import check_interval, pull_due
    from app.sync.reconcile import Reconciler

    jobs: list[tuple[float, Callable[[SyncEngine], Awaitable[None]]]] = [
        (Reconciler.POLL_SECONDS, Reconciler(rt.settings))
    ]
    pull_every = check_interval(rt.settings)
    if pull_every is not None:
        jobs.append((pull_every, pull_due))
    return jobs


def configure_engine(engine: SyncEngine, rt: Runtime) -> None:
    """Register the periodic jobs every worker runs (reconcile runs, scheduled pulls)."""
    for every, job in periodic_jobs(rt):
        engine.add_periodic(every, job)


async def start_in_process(rt: Runtime) -> SyncEngine:
    """Start the worker as a task of the API process (WORKER_IN_PROCESS)."""
    engine = SyncEngine(rt.engine, rt.settings, transport=rt.extras.get("transport"))
    configure_engine(engine, rt)
    rt.extras["engine"] = engine
    rt.tasks.append(asyncio.create_task(engine.run(), name="sync-worker"))
    return engine


async def _main(settings: Settings) -> None:
    from app.runtime import start_runtime

    # No ping before each checkout: the worker's transactions are short and many (a claim, a
    # group's loads, its completion), and the ping was a round trip more for each, 10-14 % of
    # the worker's CPU samples in P6. A connection the database dropped fails the step that
    # used it, which the loop retries (a claim, orphans given back), and SQLAlchemy recycles
    # the pool's other connections of before the drop.
    rt = await start_runtime(settings, pre_ping=False)
    if settings.METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(settings.METRICS_PORT)
        log.info("worker.metrics", port=settings.METRICS_PORT)
    engine = SyncEngine(rt.engine, settings)
    configure_engine(engine, rt)

    async def refresh(_: SyncEngine) -> None:
        await metrics.refresh_gauges(rt)

    engine.add_periodic(GAUGE_REFRESH_SECONDS, refresh)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # SIGTERM finishes in-flight sends, gives back leases and slots, then exits.
        loop.add_signal_handler(sig, engine.stop)
    try:
        await engine.run()
    finally:
        await engine.aclose()
        await rt.engine.dispose()


def run_worker_process(settings: Settings) -> None:
    """`audience-sync worker`: the worker alone until SIGTERM/SIGINT."""
    check_config(settings)
    configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL)
    outbox.configure(settings.SYNC_COALESCE_SECONDS)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        pass
    tune_gc()
    asyncio.run(_main(settings))
