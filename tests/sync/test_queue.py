"""Queue statements under concurrency: claim and compare-and-delete against a writer."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from app.main import Runtime
from app.sync.queue import Outcome, QueueRepository
from tests.conftest import fetch
from tests.support.plans import buffers_read, capturing

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
    with capturing(runtime, lambda sql: "contacts" in sql or "sync_state" in sql) as captured:
        async with runtime.engine.begin() as conn:
            data = await QueueRepository(conn).load(
                connection_id=conn_id,
                mapping_id=conn_id,
                owner_id=owner,
                keys=keys,
                contact_ids=[moved["id"]],
                hashes=[],
            )
    # What it loads: the keys' contacts, the hinted id's contact, and their mirror rows.
    assert sorted(data.contacts_by_key) == sorted(keys[:-1] + ["p900@example.com"])
    assert data.contacts_by_id[moved["id"]]["email_key"] == "p900@example.com"
    assert sorted(data.mirrors) == sorted(keys[:-1] + ["p900@example.com"])

    total = sum([await buffers_read(runtime, sql, params) for sql, params in captured])
    assert len(captured) == 2
    # Walking the owner's contacts and the mapping's mirror rows: ~750 buffers (100 now).
    assert total < 300, total


async def other_connection(runtime: Runtime, connection: dict[str, Any]) -> Any:
    """A copy of `connection` under another owner and account."""
    (other,) = await fetch(
        runtime,
        """
        INSERT INTO connections
        SELECT (jsonb_populate_record(NULL::connections, to_jsonb(c) || jsonb_build_object(
            'id', gen_random_uuid(), 'owner_id', gen_random_uuid(),
            'account_key', 'other-account', 'webhook_token', gen_random_uuid()::text))).*
        FROM connections c WHERE c.id = :c
        RETURNING id, account_key
        """,
        c=connection["id"],
    )
    return other


async def test_the_claim_reads_the_rows_it_claims_not_a_skipped_accounts(
    runtime: Runtime, connection: dict[str, Any]
) -> None:
    # 3,000 due rows of a blocked account ahead in (priority, due) order, three of another
    # account behind them, and no statistics: the claim must not walk the skipped account's
    # rows to reach the others (P6, 3 December: 1,222 rows read to claim 13).
    conn_id = connection["id"]
    other = await other_connection(runtime, connection)
    await fetch(
        runtime,
        """
        INSERT INTO sync_queue (connection_id, mapping_id, email_key, priority, available_at)
        SELECT CAST(:c AS uuid), CAST(:c AS uuid), 'p' || g || '@example.com', 0,
               now() - interval '1 hour' + g * interval '1 ms'
        FROM generate_series(1, 3000) g
        UNION ALL
        SELECT CAST(:o AS uuid), CAST(:o AS uuid), 'o' || g || '@example.com', 0,
               now() - interval '1 minute'
        FROM generate_series(1, 3) g
        """,
        c=conn_id,
        o=other["id"],
    )
    await fetch(runtime, "DELETE FROM pg_statistic WHERE starelid = 'sync_queue'::regclass")
    skipped = [connection["account_key"]]
    with capturing(runtime, lambda sql: "sync_queue" in sql) as captured:
        async with runtime.engine.begin() as conn:
            claimed = await QueueRepository(conn).claim(
                me="worker-1", limit=10, lease_seconds=60, skip_accounts=skipped
            )
    assert sorted(r.email_key for r in claimed) == [f"o{n}@example.com" for n in (1, 2, 3)]
    await fetch(runtime, "UPDATE sync_queue SET lease_until = NULL, leased_by = NULL")

    assert len(captured) == 1
    total = await buffers_read(runtime, *captured[0])
    # Walking the skipped account's 3,000 rows in ix_sync_queue_ready order: thousands.
    assert total < 100, total


async def test_the_claim_takes_the_first_rows_across_connections_live_first(
    runtime: Runtime, connection: dict[str, Any]
) -> None:
    # Per-connection reads, one global order: live before bulk, then due time, :limit in all.
    conn_id = connection["id"]
    other = await other_connection(runtime, connection)
    await fetch(
        runtime,
        """
        INSERT INTO sync_queue (connection_id, mapping_id, email_key, priority, available_at)
        VALUES (:c, :c, 'a-bulk-old', 1, now() - interval '9 minutes'),
               (:o, :o, 'b-live-new', 0, now() - interval '1 minute'),
               (:c, :c, 'c-live-old', 0, now() - interval '5 minutes'),
               (:o, :o, 'd-live-mid', 0, now() - interval '3 minutes'),
               (:o, :o, 'e-bulk-new', 1, now() - interval '2 minutes'),
               (:c, :c, 'f-later', 0, now() + interval '1 minute')
        """,
        c=conn_id,
        o=other["id"],
    )
    async with runtime.engine.begin() as conn:
        first = await QueueRepository(conn).claim(
            me="worker-1", limit=4, lease_seconds=60, skip_accounts=[]
        )
    assert sorted(r.email_key for r in first) == [
        "a-bulk-old",
        "b-live-new",
        "c-live-old",
        "d-live-mid",
    ]
    async with runtime.engine.begin() as conn:
        rest = await QueueRepository(conn).claim(
            me="worker-2", limit=4, lease_seconds=60, skip_accounts=[]
        )
        live_only = await QueueRepository(conn).claim(
            me="worker-3", limit=4, lease_seconds=60, skip_accounts=[], max_priority=0
        )
    assert [r.email_key for r in rest] == ["e-bulk-new"]
    assert live_only == []
