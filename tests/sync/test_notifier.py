"""The NOTIFY of the service's writes, sent after their commit by the process's notifier."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.db import to_libpq_url
from app.main import Runtime
from app.sync.engine import SyncEngine
from app.sync.outbox import CommitNotifier
from tests.conftest import fetch
from tests.support.sync import Sandbox, wait_for
from tests.sync.conftest import OWNER

pytestmark = pytest.mark.usefixtures("connection")

Engine = Callable[..., SyncEngine]


def notifier_of(runtime: Runtime) -> CommitNotifier:
    """The running service's notifier."""
    notifier = runtime.extras["notifier"]
    assert isinstance(notifier, CommitNotifier)
    return notifier


async def create(api: httpx.AsyncClient, token: str, email: str) -> None:
    """POST a consenting contact of OWNER."""
    response = await api.post(
        "/api/contacts",
        json={"email": email, "newsletter_opt_in": True},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text


async def in_sandbox(sandbox: Sandbox, email: str) -> bool:
    """True once the sandbox holds the member."""
    return email in await sandbox.members()


@contextlib.asynccontextmanager
async def running(engine: SyncEngine, runtime: Runtime) -> AsyncIterator[SyncEngine]:
    """The worker's loop, idle and listening before the body runs."""
    task = asyncio.create_task(engine.run(grace_seconds=5))

    async def listener_idle() -> bool:
        rows = await fetch(
            runtime,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%' AND state = 'idle'",
        )
        return bool(rows)

    try:
        await wait_for(listener_idle, within=30, every=0.02)
        await asyncio.sleep(0.1)  # the wake-up it sets on connecting has been spent
        yield engine
    finally:
        engine.stop()
        await task
        await engine.aclose()


@contextlib.asynccontextmanager
async def listening(database_url: str) -> AsyncIterator[list[str]]:
    """The payloads of every NOTIFY on sync_queue while the body runs."""
    heard: list[str] = []

    def on_notify(connection: Any, pid: int, channel: str, payload: str) -> None:
        heard.append(payload)

    listener = await asyncpg.connect(to_libpq_url(database_url))
    try:
        await listener.add_listener("sync_queue", on_notify)
        yield heard
    finally:
        await listener.close()


async def test_a_write_wakes_an_idle_worker_without_the_poll(
    api: httpx.AsyncClient,
    sync_app: FastAPI,
    token_for: Callable[..., str],
    sandbox: Sandbox,
    make_engine: Engine,
    runtime: Runtime,
) -> None:
    # With nothing due and an hour's poll interval, only a NOTIFY starts the worker's next
    # claim: the change reaches the sandbox because the notifier sent one after the commit.
    async with running(make_engine(SYNC_POLL_INTERVAL_SECONDS=3600), runtime):
        sent = notifier_of(runtime).sent
        await create(api, token_for(OWNER), "woken@example.com")
        await wait_for(lambda: in_sandbox(sandbox, "woken@example.com"), within=30)
    assert notifier_of(runtime).sent > sent


async def test_the_write_itself_sends_no_notify(
    api: httpx.AsyncClient,
    sync_app: FastAPI,
    token_for: Callable[..., str],
    runtime: Runtime,
    database_url: str,
) -> None:
    # The NOTIFY left the write's transaction (its commit no longer takes PostgreSQL's
    # notify lock): with the notifier stopped, a committed write is heard by nobody.
    notifier = notifier_of(runtime)
    async with listening(database_url) as heard:
        task = notifier._task
        assert task is not None
        task.cancel()  # the notifier crashed
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await create(api, token_for(OWNER), "unheard@example.com")
        # Notifications arrive in commit order: once the marker is here, any other is.
        await fetch(runtime, "SELECT pg_notify('sync_queue', 'marker')")
        await wait_for(lambda: _true("marker" in heard), within=30)
        assert heard == ["marker"]
    notifier._task = None
    rows = await fetch(runtime, "SELECT email_key, state FROM sync_queue")
    assert rows == [{"email_key": "unheard@example.com", "state": "ready"}]


async def test_a_crashed_notifier_loses_nothing_the_poll_sends_it(
    api: httpx.AsyncClient,
    sync_app: FastAPI,
    token_for: Callable[..., str],
    sandbox: Sandbox,
    make_engine: Engine,
    runtime: Runtime,
) -> None:
    notifier = notifier_of(runtime)
    task = notifier._task
    assert task is not None
    task.cancel()  # no NOTIFY will follow the commit
    with contextlib.suppress(asyncio.CancelledError):
        await task
    notifier._task = None
    sent = notifier.sent
    async with running(make_engine(SYNC_POLL_INTERVAL_SECONDS=0.2), runtime):
        await create(api, token_for(OWNER), "polled@example.com")
        await wait_for(lambda: in_sandbox(sandbox, "polled@example.com"), within=30)
    assert notifier.sent == sent  # no NOTIFY: the worker's poll found the committed row


async def test_the_notifier_replaces_a_dropped_connection(
    api: httpx.AsyncClient,
    sync_app: FastAPI,
    token_for: Callable[..., str],
    runtime: Runtime,
    database_url: str,
) -> None:
    notifier = notifier_of(runtime)
    token = token_for(OWNER)
    await create(api, token, "first@example.com")
    await notifier.flush()  # connected and sent once
    await fetch(
        runtime,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'audience-sync-notifier' AND datname = current_database()",
    )
    async with listening(database_url) as heard:
        await create(api, token, "second@example.com")
        await asyncio.wait_for(notifier.flush(), timeout=30)
        await fetch(runtime, "SELECT pg_notify('sync_queue', 'marker')")
        await wait_for(lambda: _true("marker" in heard), within=30)
    assert heard == ["", "marker"]


async def _true(value: bool) -> bool:
    return value
