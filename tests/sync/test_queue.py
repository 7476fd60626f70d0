"""Queue statements under concurrency: claim and compare-and-delete against a writer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import event, text

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


async def test_a_groups_load_reads_its_own_rows_only(
    runtime: Runtime, connection: dict[str, Any]
) -> None:
    # 3,000 contacts of the owner, each with a mirror row, and no statistics (autovacuum off
    # or behind): the load of a group of 15 must not walk them all (P6, 3 December).
    conn_id, owner = connection["id"], connection["owner_id"]
    await fetch(
        runtime,
        """
        INSERT INTO contacts (owner_id, email, email_key)
        SELECT :owner, 'p' || g || '@example.com', 'p' || g || '@example.com'
        FROM generate_series(1, 3000) g
        """,
        owner=owner,
    )
    await fetch(
        runtime,
        """
        INSERT INTO sync_state (connection_id, mapping_id, email_key, contact_id, remote_status)
        SELECT :c, :c, email_key, id, 'subscribed' FROM contacts
        """,
        c=conn_id,
    )
    await fetch(
        runtime,
        "DELETE FROM pg_statistic WHERE starelid IN ('contacts'::regclass, 'sync_state'::regclass)",
    )
    keys = [f"p{n}@example.com" for n in range(100, 115)] + ["gone@example.com"]
    (moved,) = await fetch(
        runtime, "SELECT id, email_key FROM contacts WHERE email_key = 'p900@example.com'"
    )
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "contacts" in statement or "sync_state" in statement:
            captured.append((statement, parameters))

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with runtime.engine.begin() as conn:
            data = await QueueRepository(conn).load(
                connection_id=conn_id,
                mapping_id=conn_id,
                owner_id=owner,
                keys=keys,
                contact_ids=[moved["id"]],
                hashes=[],
            )
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", capture)
    # What it loads: the keys' contacts, the hinted id's contact, and their mirror rows.
    assert sorted(data.contacts_by_key) == sorted(keys[:-1] + ["p900@example.com"])
    assert data.contacts_by_id[moved["id"]]["email_key"] == "p900@example.com"
    assert sorted(data.mirrors) == sorted(keys[:-1] + ["p900@example.com"])

    total = 0
    async with runtime.engine.connect() as conn:
        for statement, parameters in captured:
            result = await conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters
            )
            raw = result.scalar_one()
            plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
            total += int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])
    assert len(captured) == 2
    # Walking the owner's contacts and the mapping's mirror rows: ~750 buffers (100 now).
    assert total < 300, total
