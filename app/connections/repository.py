"""Queries of the connections domain; every one is scoped to an owner."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import Table, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection
from app.sync.models import PRIORITY_BULK
from app.sync.outbox import NOTIFY_CHANNEL

connections = cast(Table, Connection.__table__)

_COUNTS = text(
    """
    SELECT
      (SELECT count(*) FROM sync_queue WHERE connection_id = :id AND state = 'ready') AS pending,
      (SELECT count(*) FROM sync_queue WHERE connection_id = :id AND state = 'parked')
      + (SELECT count(*) FROM sync_state WHERE connection_id = :id AND error_kind IS NOT NULL)
        AS failed
    """
)

_ENQUEUE_ALL = text(
    """
    WITH ins AS (
        INSERT INTO sync_queue AS q (connection_id, email_key, contact_id, priority)
        SELECT :conn, c.email_key, c.id, :priority
        FROM contacts c
        WHERE c.owner_id = :owner AND c.email_key IS NOT NULL
        ON CONFLICT (connection_id, email_key) DO UPDATE SET
            seq = q.seq + 1, state = 'ready', attempts = 0, available_at = now(),
            contact_id = EXCLUDED.contact_id
        RETURNING 1
    )
    SELECT count(*), CASE WHEN count(*) > 0 THEN pg_notify(:channel, '') END FROM ins
    """
)


class ConnectionRepository:
    """Reads and writes of `connections` (and the per-connection sync rows)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, owner_id: str, provider: str) -> RowMapping | None:
        """The owner's connection to a provider."""
        stmt = select(connections).where(
            connections.c.owner_id == owner_id, connections.c.provider == provider
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def upsert(self, owner_id: str, provider: str, values: dict[str, Any]) -> RowMapping:
        """Create the connection, or replace its credentials and account (reconnect)."""
        insert = pg_insert(connections).values(owner_id=owner_id, provider=provider, **values)
        # A reconnect keeps the webhook token: the URL registered at Mailchimp stays valid.
        update: dict[str, Any] = {k: insert.excluded[k] for k in values if k != "webhook_token"}
        update["updated_at"] = func.now()
        stmt = insert.on_conflict_do_update(
            index_elements=["owner_id", "provider"], set_=update
        ).returning(*connections.c)
        return (await self.session.execute(stmt)).mappings().one()

    async def drop_sync_rows(self, connection_id: uuid.UUID) -> None:
        """Forget the queue and the mirror of a connection (audience change, disconnect)."""
        for table in ("sync_queue", "sync_state", "sync_tombstones"):
            await self.session.execute(
                text(f"DELETE FROM {table} WHERE connection_id = :id"), {"id": connection_id}
            )

    async def counts(self, connection_id: uuid.UUID) -> RowMapping:
        """Pending (queued) and failed (parked or rejected) counts."""
        return (await self.session.execute(_COUNTS, {"id": connection_id})).mappings().one()

    async def enqueue_all(self, *, owner_id: str, connection_id: uuid.UUID) -> int:
        """Queue every contact with an email for the connection, at bulk priority."""
        result = await self.session.execute(
            _ENQUEUE_ALL,
            {
                "conn": connection_id,
                "owner": owner_id,
                "priority": PRIORITY_BULK,
                "channel": NOTIFY_CHANNEL,
            },
        )
        return int(result.scalar_one())
