"""The worker's wake-up: a NOTIFY heard while a claim runs starts the next claim at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.main import Runtime
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.support.sync import wait_for


async def test_a_wake_during_the_claim_is_not_lost_while_groups_are_sending(
    runtime: Runtime, make_engine: Callable[..., SyncEngine]
) -> None:
    # With a group of the worker still sending, the idle wait reads no due time: only the
    # wake (a NOTIFY, a group's end) or the poll interval (an hour here) starts the next
    # claim. A live row committed while the claim ran announced itself then; clearing the
    # wake after the claim, not before it, lost that announcement until the poll.
    engine = make_engine(SYNC_POLL_INTERVAL_SECONDS=3600)
    sending = asyncio.Event()
    blocker = asyncio.create_task(sending.wait())  # a group still on the wire
    again = asyncio.Event()
    fills = 0
    real_fill = engine._fill

    async def fill() -> bool:
        nonlocal fills
        fills += 1
        if fills == 1:
            await real_fill()  # the claim itself (nothing queued yet)
            await listening()  # the listener's own wake-up on connecting is behind us
            engine._groups.add(blocker)
            engine._wake.set()  # the NOTIFY of a row committed meanwhile
            return False
        again.set()
        return False

    async def listener_idle() -> bool:
        rows = await fetch(
            runtime,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%' AND state = 'idle'",
        )
        return bool(rows)

    async def listening() -> None:
        await wait_for(listener_idle, within=30, every=0.02)
        await asyncio.sleep(0.05)  # its wake-up, set right after the LISTEN, has happened

    engine._fill = fill  # type: ignore[method-assign]
    task = asyncio.create_task(engine.run(grace_seconds=5))
    try:
        await asyncio.wait_for(again.wait(), timeout=30)
    finally:
        engine._groups.discard(blocker)
        sending.set()
        await blocker
        engine.stop()
        await task
        await engine.aclose()
    assert fills >= 2
