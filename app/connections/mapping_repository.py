"""Queries of audience mappings (a connection's audiences and their rules)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import AudienceMapping
from app.providers.base import PRESENT_STATUSES

mappings = cast(Table, AudienceMapping.__table__)

# One row per mapping with its counts: present members, pending and failed rows, its last run.
_LIST = text(
    """
    SELECT m.*, m.id = m.connection_id AS is_default,
        -- The default mapping's webhook is the connection's (registered on connect).
        CASE WHEN m.id = m.connection_id
             THEN (SELECT c.webhook_id FROM connections c WHERE c.id = m.connection_id)
             ELSE m.webhook_id END AS registered_webhook,
        (SELECT count(*) FROM sync_state s
         WHERE s.connection_id = m.connection_id AND s.mapping_id = m.id
           AND s.remote_status = ANY(CAST(:present AS text[]))) AS members,
        (SELECT count(*) FROM sync_queue q
         WHERE q.connection_id = m.connection_id AND q.mapping_id = m.id AND q.state = 'ready')
            AS pending,
        (SELECT count(*) FROM sync_queue q
         WHERE q.connection_id = m.connection_id AND q.mapping_id = m.id AND q.state = 'parked')
        + (SELECT count(*) FROM sync_state s
           WHERE s.connection_id = m.connection_id AND s.mapping_id = m.id
             AND s.error_kind IS NOT NULL) AS failed,
        (SELECT to_jsonb(r) FROM sync_runs r WHERE r.mapping_id = m.id
         ORDER BY r.created_at DESC LIMIT 1) AS last_run
    FROM audience_mappings m
    WHERE m.connection_id = :conn AND (CAST(:id AS uuid) IS NULL OR m.id = CAST(:id AS uuid))
    ORDER BY m.id <> m.connection_id, m.created_at, m.id
    """
)


class MappingRepository:
    """Reads and writes of `audience_mappings`, always within one connection."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(
        self, connection_id: uuid.UUID, mapping_id: uuid.UUID | None = None
    ) -> list[RowMapping]:
        """The connection's mappings (or the one with `mapping_id`), default first, counted."""
        params = {
            "conn": connection_id,
            "id": str(mapping_id) if mapping_id else None,
            "present": sorted(PRESENT_STATUSES),
        }
        return list((await self.session.execute(_LIST, params)).mappings())

    async def get(self, connection_id: uuid.UUID, mapping_id: uuid.UUID) -> RowMapping | None:
        """One mapping of the connection, locked for the rest of the transaction."""
        stmt = (
            select(mappings)
            .where(mappings.c.connection_id == connection_id, mappings.c.id == mapping_id)
            .with_for_update()
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def by_audience(self, connection_id: uuid.UUID, audience_id: str) -> RowMapping | None:
        """The connection's mapping of an audience."""
        stmt = select(mappings).where(
            mappings.c.connection_id == connection_id, mappings.c.audience_id == audience_id
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def by_id_for_owner(self, owner_id: str, mapping_id: uuid.UUID) -> RowMapping | None:
        """A mapping of any of the owner's connections (None: none such, or another owner's)."""
        stmt = text(
            """
            SELECT m.* FROM audience_mappings m JOIN connections c ON c.id = m.connection_id
            WHERE m.id = :id AND c.owner_id = :owner
            """
        )
        result = await self.session.execute(stmt, {"id": mapping_id, "owner": owner_id})
        return result.mappings().first()

    async def insert(
        self,
        connection_id: uuid.UUID,
        *,
        audience_id: str,
        audience_name: str | None,
        rule: dict[str, Any],
    ) -> RowMapping | None:
        """Add a mapping; None when the connection already maps that audience."""
        stmt = (
            pg_insert(mappings)
            .values(
                connection_id=connection_id,
                audience_id=audience_id,
                audience_name=audience_name,
                **rule,
            )
            .on_conflict_do_nothing(index_elements=["connection_id", "audience_id"])
            .returning(*mappings.c)
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def update(self, mapping_id: uuid.UUID, **values: Any) -> RowMapping:
        """Change a mapping (its audience or rule); the worker's context follows at once."""
        stmt = (
            update(mappings)
            .where(mappings.c.id == mapping_id)
            .values(**values, updated_at=func.now())
            .returning(*mappings.c)
        )
        return (await self.session.execute(stmt)).mappings().one()

    async def drop_rows(self, connection_id: uuid.UUID, mapping_id: uuid.UUID) -> None:
        """Forget a mapping's queue and mirror rows (its audience changed)."""
        for table in ("sync_queue", "sync_state"):
            await self.session.execute(
                text(f"DELETE FROM {table} WHERE connection_id = :conn AND mapping_id = :id"),
                {"conn": connection_id, "id": mapping_id},
            )

    async def cancel_runs(self, mapping_id: uuid.UUID, reason: str) -> None:
        """Stop the mapping's queued and running runs (a worker notices at its next page)."""
        await self.session.execute(
            text(
                """
                UPDATE sync_runs SET state = 'cancelled', error = :reason, finished_at = now(),
                    leased_by = NULL, lease_until = NULL
                WHERE mapping_id = :id AND state IN ('queued', 'running')
                """
            ),
            {"id": mapping_id, "reason": reason},
        )

    async def delete(self, mapping_id: uuid.UUID) -> None:
        """Remove a mapping; its queue, mirror and runs go with it (members stay)."""
        await self.session.execute(
            text(
                "DELETE FROM reconcile_members WHERE run_id IN"
                " (SELECT id FROM sync_runs WHERE mapping_id = :id)"
            ),
            {"id": mapping_id},
        )
        await self.session.execute(delete(mappings).where(mappings.c.id == mapping_id))
