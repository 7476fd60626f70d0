"""Queue statements under concurrency: claim and compare-and-delete against a writer."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from app.main import Runtime
from app.sync.queue import Outcome, QueueRepository
from tests.conftest import fetch

KEY = "hot@example.com"


async def claim(runtime: Runtime, me: str) -> list[Any]:
    async with runtime.engine.begin() as conn:
        return await QueueRepository(conn).claim(
            me=me, limit=10, lease_seconds=60, skip_accounts=[]
        )


async def test_a_row_changed_while_its_completion_waits_is_released(
    runtime: Runtime, connection: dict[str, Any]
) -> None:
    await fetch(
        runtime,
        "INSERT INTO sync_queue (connection_id, mapping_id, email_key, priority)"
        " VALUES (:c, :c, :k, 0)",
        c=connection["id"],
        k=KEY,
    )
    claimed = await claim(runtime, "worker-1")
    assert [(r.email_key, r.seq) for r in claimed] == [(KEY, 1)]

    # A writer re-arms the row (a new change: seq moves on) and holds its lock a moment.
    writer = await runtime.engine.connect()
    tx = await writer.begin()
    await writer.execute(
        text("UPDATE sync_queue SET seq = seq + 1 WHERE email_key = :k"), {"k": KEY}
    )

    async def complete() -> dict[str, int]:
        async with runtime.engine.begin() as conn:
            return await QueueRepository(conn).complete(
                me="worker-1",
                connection_id=connection["id"],
                mapping_id=connection["id"],
                owner_id=connection["owner_id"],
                claimed=claimed,
                outcomes={KEY: Outcome(KEY, "done")},
                max_attempts=5,
            )

    completing = asyncio.create_task(complete())
    await asyncio.sleep(0.3)
    assert not completing.done()  # waiting for the writer's row lock
    await tx.commit()
    await writer.close()
    await completing

    # The newer change stays queued, and no longer leased: any worker may send it now.
    rows = await fetch(runtime, "SELECT seq, state, leased_by, lease_until FROM sync_queue")
    assert rows == [{"seq": 2, "state": "ready", "leased_by": None, "lease_until": None}]
    assert [(r.email_key, r.seq) for r in await claim(runtime, "worker-2")] == [(KEY, 2)]
