"""Paused connections are probed when due, not looked for twice a second (issue 12)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app.main import Runtime
from app.sync.engine import PROBE_SWEEP_SECONDS, SyncEngine, probe_delay
from tests.conftest import fetch
from tests.support.sync import Sandbox, running, wait_for

pytestmark = pytest.mark.usefixtures("connection")


async def status(runtime: Runtime, connection_id: Any) -> str:
    rows = await fetch(runtime, "SELECT status FROM connections WHERE id = :id", id=connection_id)
    return str(rows[0]["status"])


def test_probe_delay_waits_for_the_next_probe_but_at_most_a_sweep() -> None:
    assert probe_delay(None) == PROBE_SWEEP_SECONDS  # nothing paused: the sweep only
    assert probe_delay(1.5) == 1.5
    assert probe_delay(-0.2) == 0.0  # overdue: at once
    assert probe_delay(3600.0) == PROBE_SWEEP_SECONDS  # a quota pause: still swept for others


async def test_probe_paused_says_when_the_next_probe_is_due(
    runtime: Runtime, connection: dict[str, Any], make_engine: Callable[..., SyncEngine]
) -> None:
    engine = make_engine()
    try:
        assert await engine.probe_paused() is None  # nothing paused
        await fetch(
            runtime,
            "UPDATE connections SET status = 'paused', next_probe_at = now() + interval '1 hour'"
            " WHERE id = :id",
            id=connection["id"],
        )
        later = await engine.probe_paused()
        assert later is not None and 3500 < later <= 3600
        assert await status(runtime, connection["id"]) == "paused"  # not due: not probed
    finally:
        await engine.aclose()


async def test_a_failed_probe_reports_its_retry_as_the_next_due(
    runtime: Runtime,
    sandbox: Sandbox,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
) -> None:
    await sandbox.configure(outage_seconds=60)
    engine = make_engine(SYNC_PROBE_MAX_INTERVAL_SECONDS=2.0)
    await fetch(
        runtime,
        "UPDATE connections SET status = 'paused', next_probe_at = now() WHERE id = :id",
        id=connection["id"],
    )
    stop = asyncio.Event()
    slots = asyncio.create_task(engine.slots.run(stop))  # the ping needs a request slot
    try:
        later = await engine.probe_paused()
    finally:
        stop.set()
        engine.slots.wake.set()
        await slots
        await engine.aclose()
    assert await status(runtime, connection["id"]) == "paused"
    assert later is not None and 0 < later <= 2.0  # the probe's back-off, not the sweep


async def test_a_connection_paused_elsewhere_is_still_probed_and_resumed(
    runtime: Runtime, connection: dict[str, Any], make_engine: Callable[..., SyncEngine]
) -> None:
    """Another process paused it (this worker never did): the sweep finds it."""
    engine = make_engine()
    async with running(engine):
        await asyncio.sleep(0.2)  # the first pass has run and found nothing paused
        await fetch(
            runtime,
            "UPDATE connections SET status = 'paused', next_probe_at = now() WHERE id = :id",
            id=connection["id"],
        )
        await wait_for(lambda: _active(runtime, connection["id"]), within=PROBE_SWEEP_SECONDS + 20)


async def test_own_pause_wakes_the_maintenance_loop(
    runtime: Runtime, connection: dict[str, Any], make_engine: Callable[..., SyncEngine]
) -> None:
    """A pause this worker makes asks for a probe pass; the pass resumes the connection."""
    engine = make_engine()
    try:
        assert not engine._probe_soon.is_set()
        await engine._set_status(connection["id"], "paused", "unavailable", "503s", probe=True)
        assert engine._probe_soon.is_set()
        assert await status(runtime, connection["id"]) == "paused"
    finally:
        await engine.aclose()
    async with running(make_engine()):
        await wait_for(lambda: _active(runtime, connection["id"]), within=20)


async def _active(runtime: Runtime, connection_id: Any) -> bool:
    return await status(runtime, connection_id) == "active"
