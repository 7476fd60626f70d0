"""Queries of the inbound side: the inbox, the token lookup, contacts and mirror rows by key."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import AudienceMapping, Connection
from app.contacts.models import Contact
from app.sync.models import SyncState, SyncTombstone
from app.webhooks.models import WEBHOOK_TOKEN_HASH, WebhookEvent

connections = cast(Table, Connection.__table__)
mappings = cast(Table, AudienceMapping.__table__)
contacts = cast(Table, Contact.__table__)
events = cast(Table, WebhookEvent.__table__)
mirror = cast(Table, SyncState.__table__)
tombstones = cast(Table, SyncTombstone.__table__)

MIRROR_COLUMNS = (
    "contact_id",
    "remote_preferences_at",
    "remote_id",
    "remote_refs",
    "pushed_email",
    "pushed_digest",
    "pushed_tags",
    "remote_status",
    "remote_changed_at",
    "error_kind",
    "error",
)

# The latest time each field was written, per the audit: inbound rows carry the provider's
# event time (`event_at`), local rows their own commit time.
_FIELD_TIMES = text(
    """
    SELECT k.field, max(COALESCE(CAST(c.fields->>'event_at' AS timestamptz), c.created_at)) AS at
    FROM contact_changes c
    CROSS JOIN LATERAL jsonb_object_keys(
        CASE WHEN jsonb_typeof(c.fields->'after') = 'object' THEN c.fields->'after'
             ELSE '{}'::jsonb END
    ) AS k(field)
    WHERE c.owner_id = :owner AND c.contact_id = :contact AND k.field = ANY(:fields)
    GROUP BY k.field
    """
)


def token_digest(token: str) -> bytes:
    """The lookup key of a webhook token (see WEBHOOK_TOKEN_HASH)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


class InboundRepository:
    """Reads and writes of the inbound side, inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- connections and the inbox ---------------------------------------------------------

    async def connections_by_token_hash(self, provider: str, digest: bytes) -> Sequence[RowMapping]:
        """Connections whose token hashes to `digest` (the caller compares tokens itself)."""
        token_hash = WEBHOOK_TOKEN_HASH
        stmt = select(
            connections.c.id,
            connections.c.owner_id,
            connections.c.provider,
            connections.c.audience_id,
            connections.c.status,
            connections.c.webhook_token,
            connections.c.credentials,  # a signing provider's secret (decrypted in memory)
        ).where(token_hash == digest, connections.c.provider == provider)
        return (await self.session.execute(stmt)).mappings().all()

    async def insert_event(self, values: Mapping[str, Any]) -> int | None:
        """Store an event; None when its dedupe key is already in the inbox."""
        stmt = (
            pg_insert(events)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(events.c.id)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def finish_event(self, event_id: int, outcome: str) -> None:
        """Record what the event did."""
        await self.session.execute(
            update(events)
            .where(events.c.id == event_id)
            .values(outcome=outcome, processed_at=func.now())
        )

    # --- contacts ---------------------------------------------------------------------------

    async def contact_by_key(
        self, owner_id: str, key: str, *, exclude: uuid.UUID | None = None
    ) -> RowMapping | None:
        """The owner's contact with this email key, locked for the rest of the transaction."""
        stmt = (
            select(contacts)
            .where(contacts.c.owner_id == owner_id, contacts.c.email_key == key)
            .with_for_update()
        )
        if exclude is not None:
            stmt = stmt.where(contacts.c.id != exclude)
        return (await self.session.execute(stmt)).mappings().first()

    async def field_times(
        self, owner_id: str, contact_id: uuid.UUID, fields: Sequence[str]
    ) -> dict[str, datetime]:
        """When each of `fields` was last written (absent: never since the audit began)."""
        result = await self.session.execute(
            _FIELD_TIMES, {"owner": owner_id, "contact": contact_id, "fields": list(fields)}
        )
        return {row.field: row.at for row in result}

    # --- the mirror -------------------------------------------------------------------------

    async def mapping_for(
        self, connection_id: uuid.UUID, audience_id: str | None
    ) -> RowMapping | None:
        """The connection's audience mapping of `audience_id`; a delivery that names no
        audience (Mautic's) is the default mapping's, whose rule and preference map then
        apply (None: unknown)."""
        if not audience_id:
            stmt = select(mappings).where(mappings.c.id == connection_id)
        else:
            stmt = select(mappings).where(
                mappings.c.connection_id == connection_id, mappings.c.audience_id == audience_id
            )
        return (await self.session.execute(stmt)).mappings().first()

    async def mappings_naming(
        self, connection_id: uuid.UUID, interest_ids: Iterable[str]
    ) -> list[RowMapping]:
        """The connection's audience mappings whose preference map names one of
        `interest_ids` (a delivery naming no audience, Mautic's segment change, is read with
        each of them)."""
        wanted = set(interest_ids)
        stmt = (
            select(mappings)
            .where(mappings.c.connection_id == connection_id)
            .order_by(mappings.c.id)
        )
        rows = (await self.session.execute(stmt)).mappings().all()
        return [m for m in rows if wanted & {str(i.get("id")) for i in m["interests"] or ()}]

    def mirror_of(self, mapping_id: uuid.UUID) -> MappingMirror:
        """The mirror rows of one audience mapping."""
        return MappingMirror(self.session, mapping_id)

    async def is_tombstoned(self, connection_id: uuid.UUID, remote_id: str) -> bool:
        """True when the address was permanently deleted at the provider by us."""
        stmt = select(tombstones.c.remote_id).where(
            tombstones.c.connection_id == connection_id, tombstones.c.remote_id == remote_id
        )
        return (await self.session.execute(stmt)).first() is not None

    async def drop_tombstone(self, connection_id: uuid.UUID, remote_id: str) -> None:
        """Forget a tombstone (the person signed up again by themselves)."""
        await self.session.execute(
            delete(tombstones).where(
                tombstones.c.connection_id == connection_id, tombstones.c.remote_id == remote_id
            )
        )


class MappingMirror:
    """The mirror rows (sync_state) of one audience mapping, inside the caller's transaction.

    `connection_id` is the connection the mapping belongs to: the default mapping has the
    connection's id, and every other one is looked up with the row it writes.
    """

    def __init__(self, session: AsyncSession, mapping_id: uuid.UUID) -> None:
        self.session = session
        self.mapping_id = mapping_id

    def _where(self, connection_id: uuid.UUID, key: str) -> Any:
        return (
            (mirror.c.connection_id == connection_id)
            & (mirror.c.mapping_id == self.mapping_id)
            & (mirror.c.email_key == key)
        )

    async def mirror(self, connection_id: uuid.UUID, key: str) -> RowMapping | None:
        """The mirror row of a key, locked."""
        stmt = select(mirror).where(self._where(connection_id, key)).with_for_update()
        return (await self.session.execute(stmt)).mappings().first()

    async def save_mirror(
        self, connection_id: uuid.UUID, key: str, values: Mapping[str, Any]
    ) -> None:
        """Write the whole mirror row of a key (insert or replace)."""
        row = {c: values.get(c) for c in MIRROR_COLUMNS}
        row["pushed_tags"] = list(values.get("pushed_tags") or [])
        row["remote_refs"] = dict(values.get("remote_refs") or {})
        stmt = pg_insert(mirror).values(
            connection_id=connection_id,
            mapping_id=self.mapping_id,
            email_key=key,
            last_synced_at=func.now(),
            **row,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connection_id", "mapping_id", "email_key"],
            set_={**{c: stmt.excluded[c] for c in MIRROR_COLUMNS}, "last_synced_at": func.now()},
        )
        await self.session.execute(stmt)

    async def delete_mirror(self, connection_id: uuid.UUID, key: str) -> None:
        """Drop the mirror row of a key."""
        await self.session.execute(delete(mirror).where(self._where(connection_id, key)))

    async def mirror_by_remote_id(
        self, connection_id: uuid.UUID, remote_id: str
    ) -> RowMapping | None:
        """The mirror row of the provider's person id (the first, should two claim it)."""
        stmt = (
            select(mirror)
            .where(
                mirror.c.connection_id == connection_id,
                mirror.c.mapping_id == self.mapping_id,
                mirror.c.remote_id == remote_id,
            )
            .order_by(mirror.c.email_key)
            .limit(1)
        )
        return (await self.session.execute(stmt)).mappings().first()
