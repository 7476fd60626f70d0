"""Issue 11's reliability defects on the sync path, each reproduced deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from app.config import Settings
from app.db import create_engine
from app.main import Runtime
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.support.dbproxy import database_proxy
from tests.support.sync import Sandbox, assert_mirrors_database, queue_empty, wait_for
from tests.sync.conftest import OWNER
from tests.sync.test_resilience import seed_contacts

pytestmark = pytest.mark.usefixtures("connection")


@asynccontextmanager
async def running(engine: SyncEngine) -> AsyncIterator[SyncEngine]:
    task = asyncio.create_task(engine.run(grace_seconds=5))
    try:
        yield engine
    finally:
        engine.stop()
        await task
        await engine.aclose()


async def _n(runtime: Runtime, sql: str) -> int:
    return int((await fetch(runtime, sql))[0]["n"])


async def test_rows_of_a_failed_completion_are_given_back_when_the_database_returns(
    runtime: Runtime,
    settings: Settings,
    sync_settings: Settings,
    sandbox: Sandbox,
    connection: dict[str, Any],
) -> None:
    """The database stops while sends are in flight: their completion fails. Once it is back
    the rows are released and sent at once, not renewed until the worker idles (lease 600 s:
    the old keeper would have held them ten minutes)."""
    await seed_contacts(runtime, connection["id"], 40)
    await sandbox.configure(latency_ms=1500)
    assert settings.DATABASE_URL
    async with database_proxy(settings.DATABASE_URL) as proxy:
        db = create_engine(proxy.url_for(settings.DATABASE_URL), pool_size=4, pool_timeout=2)
        engine = SyncEngine(
            db,
            sync_settings.model_copy(
                update={
                    "SYNC_LEASE_SECONDS": 600,
                    "SYNC_BATCH_THRESHOLD": 100000,
                    "SYNC_CLAIM_SIZE": 20,
                    "MAILCHIMP_TIMEOUT_SECONDS": 10,
                }
            ),
        )
        try:
            async with running(engine):
                leased = "SELECT count(*) AS n FROM sync_queue WHERE leased_by IS NOT NULL"
                await wait_for(lambda: _at_least(runtime, leased, 20), within=30)
                await wait_for(lambda: _has_groups(engine), within=30)  # sends in flight
                await proxy.stop()
                # Every group ends: its completion (and the release after it) failed.
                await wait_for(lambda: _no_groups(engine), within=30)
                assert await _n(runtime, leased) > 0, "the failed completion left leases"
                await sandbox.configure(latency_ms=0)
                await proxy.start()
                await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            await db.dispose()
    await assert_mirrors_database(runtime, sandbox, OWNER)


async def _at_least(runtime: Runtime, sql: str, n: int) -> bool:
    return await _n(runtime, sql) >= n


async def _no_groups(engine: SyncEngine) -> bool:
    return not engine._groups


async def _has_groups(engine: SyncEngine) -> bool:
    return bool(engine._groups)
