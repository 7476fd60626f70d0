"""Queries of the contacts domain; every one is scoped to an owner."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import AudienceMapping, Connection
from app.contacts.models import Contact, ContactChange
from app.emailkey import email_key
from app.providers.mapping import AudienceRule, rule_sql
from app.sync.models import SyncQueue, SyncState
from app.sync.outbox import ENQUEUE_CTES, announce, enqueue_params

contacts = cast(Table, Contact.__table__)
changes = cast(Table, ContactChange.__table__)

# The tail of every write (DESIGN §4 steps 2-4) as one statement: the audit row, the queue
# upsert for each connection with an audience, its NOTIFY (or, in the service, the cue for
# its notifier to send one after the commit: see app.sync.outbox), and the contact's sync
# line per connection for the response. A data-modifying CTE always runs to
# completion, whether or not the final SELECT reads it; `notified` is read (so it runs) only
# when the owner has connections, which is the only case where anything was queued.
# The mirror row is a LATERAL subquery kept apart by OFFSET 0, so it is planned bound to its
# full key: as a plain join, with no statistics on sync_state (autovacuum off or behind), the
# planner could bind the connection and the key alone and walk every mirror row of the
# connection per write (P6, 3 December; app.sync.outbox, _API_ROWS).
_RECORD_CHANGE = text(
    f"""
    WITH change AS (
        INSERT INTO contact_changes (contact_id, owner_id, op, fields, source, actor)
        VALUES (CAST(:change_contact_id AS uuid), :owner_id, :op, :fields, :source, :actor)
    ),
    {ENQUEUE_CTES}
    SELECT c.id AS connection_id, c.provider, COALESCE(m.audience_id, c.audience_id) AS audience_id,
           m.id AS mapping_id, m.audience_name, m.kinds, m.tags_any, m.tags_all,
           queued.connection_id IS NOT NULL AS in_queue,
           queued.state, queued.last_error,
           s.connection_id IS NOT NULL AS in_mirror,
           s.remote_status, s.last_synced_at, s.error_kind, s.error,
           (SELECT count(*) FROM queued) AS queued_rows,
           (SELECT count(*) FROM notified) AS notified
    FROM connections c
    LEFT JOIN audience_mappings m ON m.connection_id = c.id
    LEFT JOIN queued ON queued.connection_id = c.id AND queued.mapping_id = m.id
        AND queued.email_key = :sync_key
    LEFT JOIN LATERAL (
        SELECT * FROM sync_state s
        WHERE s.connection_id = c.id AND s.mapping_id = m.id AND s.email_key = :sync_key
        OFFSET 0
    ) s ON true
    WHERE c.owner_id = :owner_id
    ORDER BY c.provider, m.id <> c.id, m.created_at
    """
).bindparams(bindparam("fields", type_=JSONB))

Row = RowMapping


# The statements of the write path are built once, with bind parameters: building a Core
# statement per request (coercing each value, computing its cache key) cost more CPU than
# executing it. Inserts and updates are cached per set of columns written.
_OWNED = (contacts.c.owner_id == bindparam("key_owner_id")) & (contacts.c.id == bindparam("key_id"))
_GET = select(contacts).where(_OWNED)
_GET_FOR_UPDATE = _GET.with_for_update()
_DELETE = delete(contacts).where(_OWNED).returning(*contacts.c)


@lru_cache(maxsize=128)
def _insert_stmt(columns: tuple[str, ...]) -> Any:
    return (
        pg_insert(contacts)
        .values({c: bindparam(c, type_=contacts.c[c].type) for c in ("owner_id", *columns)})
        .on_conflict_do_nothing(index_elements=["owner_id", "email_key"])
        .returning(*contacts.c)
    )


@lru_cache(maxsize=128)
def _update_stmt(columns: tuple[str, ...]) -> Any:
    return (
        update(contacts)
        .where(_OWNED)
        .values(
            {
                **{c: bindparam(c, type_=contacts.c[c].type) for c in columns},
                "version": contacts.c.version + 1,
                "updated_at": func.now(),
            }
        )
        .returning(*contacts.c)
    )


def _with_key(values: Mapping[str, Any]) -> Mapping[str, Any]:
    # The key is written with the email, always: the one normalisation (app.emailkey).
    if "email" in values:
        return {**values, "email_key": email_key(values["email"])}
    return values


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ContactRepository:
    """Reads and writes of `contacts` and `contact_changes`."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, owner_id: str, values: Mapping[str, Any]) -> Row | None:
        """Insert a contact; None when the owner already has this email."""
        values = _with_key(values)
        stmt = _insert_stmt(tuple(sorted(values)))
        return (
            (await self.session.execute(stmt, {**values, "owner_id": owner_id})).mappings().first()
        )

    async def id_by_email_key(
        self, owner_id: str, key: str, *, exclude: uuid.UUID | None = None
    ) -> uuid.UUID | None:
        """The id of the owner's contact with this email key."""
        stmt = select(contacts.c.id).where(
            contacts.c.owner_id == owner_id, contacts.c.email_key == key
        )
        if exclude is not None:
            stmt = stmt.where(contacts.c.id != exclude)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def get(
        self, owner_id: str, contact_id: uuid.UUID, *, for_update: bool = False
    ) -> Row | None:
        """One contact of the owner."""
        stmt = _GET_FOR_UPDATE if for_update else _GET
        params = {"key_owner_id": owner_id, "key_id": contact_id}
        return (await self.session.execute(stmt, params)).mappings().first()

    async def update(self, owner_id: str, contact_id: uuid.UUID, values: Mapping[str, Any]) -> Row:
        """Write `values`, bump the version, return the new row."""
        values = _with_key(values)
        stmt = _update_stmt(tuple(sorted(values)))
        params = {**values, "key_owner_id": owner_id, "key_id": contact_id}
        return (await self.session.execute(stmt, params)).mappings().one()

    async def delete(self, owner_id: str, contact_id: uuid.UUID) -> Row | None:
        """Delete and return the contact."""
        params = {"key_owner_id": owner_id, "key_id": contact_id}
        return (await self.session.execute(_DELETE, params)).mappings().first()

    async def page(
        self,
        owner_id: str,
        *,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        q: str | None,
        tag: str | None,
        kind: str | None,
        company: str | None = None,
        rule: AudienceRule | None = None,
    ) -> Sequence[Row]:
        """A page of the owner's contacts in creation order, `limit + 1` rows at most
        (`rule`: only the contacts with an email an audience mapping's rule selects)."""
        stmt = select(contacts).where(contacts.c.owner_id == owner_id)
        if rule is not None:
            stmt = stmt.where(
                contacts.c.email_key.is_not(None),
                text(rule_sql("contacts")).bindparams(**rule.sql_params()),
            )
        if after is not None:
            stmt = stmt.where(tuple_(contacts.c.created_at, contacts.c.id) > tuple_(*after))
        if q:
            pattern = f"%{_escape_like(q.strip())}%"
            full_name = func.concat_ws(" ", contacts.c.first_name, contacts.c.last_name)
            stmt = stmt.where(
                or_(
                    contacts.c.email.ilike(pattern),
                    contacts.c.first_name.ilike(pattern),
                    contacts.c.last_name.ilike(pattern),
                    full_name.ilike(pattern),
                    contacts.c.company.ilike(pattern),
                )
            )
        if tag:
            stmt = stmt.where(contacts.c.tags.contains([tag]))
        if kind:
            stmt = stmt.where(contacts.c.kind == kind)
        if company and company.strip():
            stmt = stmt.where(func.lower(contacts.c.company) == company.strip().lower())
        stmt = stmt.order_by(contacts.c.created_at, contacts.c.id).limit(limit + 1)
        return (await self.session.execute(stmt)).mappings().all()

    async def mapping(self, owner_id: str, mapping_id: uuid.UUID) -> Row | None:
        """An audience mapping of one of the owner's connections (None: unknown, or not
        the owner's)."""
        mapping = cast(Table, AudienceMapping.__table__)
        conn = cast(Table, Connection.__table__)
        stmt = (
            select(mapping)
            .join(conn, conn.c.id == mapping.c.connection_id)
            .where(mapping.c.id == mapping_id, conn.c.owner_id == owner_id)
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def add_change(
        self,
        *,
        owner_id: str,
        contact_id: uuid.UUID,
        op: str,
        fields: Mapping[str, Any],
        source: str,
        actor: str | None,
    ) -> None:
        """Append one audit row (writers that queue sync work their own way use this)."""
        await self.session.execute(
            insert(changes).values(
                owner_id=owner_id,
                contact_id=contact_id,
                op=op,
                fields=dict(fields),
                source=source,
                actor=actor,
            )
        )

    async def record_change(
        self,
        *,
        owner_id: str,
        contact_id: uuid.UUID,
        op: str,
        fields: Mapping[str, Any],
        source: str,
        actor: str | None,
        queue_keys: Sequence[str | None],
        queue_contact_id: uuid.UUID | None,
        forget: bool = False,
        sync_key: str | None = None,
    ) -> tuple[list[Row], int]:
        """The audit row, the outbox rows (and their NOTIFY) and the sync lines, in one round trip.

        Returns one row per connection of the owner with its queue and mirror state for
        `sync_key` (the contact's current email key), and the number of queue rows written.
        """
        params = enqueue_params(
            owner_id=owner_id, keys=queue_keys, contact_id=queue_contact_id, forget=forget
        )
        params.update(
            change_contact_id=str(contact_id),
            op=op,
            fields=dict(fields),
            source=source,
            actor=actor,
            sync_key=sync_key,
        )
        lines = list((await self.session.execute(_RECORD_CHANGE, params)).mappings())
        if not lines:
            return lines, 0
        announce(self.session, params, int(lines[0]["notified"]))
        return lines, int(lines[0]["queued_rows"])

    async def erase_history(self, owner_id: str, contact_id: uuid.UUID) -> None:
        """GDPR: the audit keeps that changes happened, never what the person's data was."""
        await self.session.execute(
            update(changes)
            .where(changes.c.owner_id == owner_id, changes.c.contact_id == contact_id)
            .values(fields=text("'{}'::jsonb"))
        )

    async def sync_rows(
        self, owner_id: str, keys: Sequence[str]
    ) -> tuple[list[Row], dict[tuple[uuid.UUID, str], Row], dict[tuple[uuid.UUID, str], Row]]:
        """The owner's connections, one row per audience mapping (`mapping_id` None for a
        connection without an audience), and the mappings' queue and mirror rows for `keys`,
        by (mapping id, key)."""
        conn = cast(Table, Connection.__table__)
        mapping = cast(Table, AudienceMapping.__table__)
        queue = cast(Table, SyncQueue.__table__)
        state = cast(Table, SyncState.__table__)
        connections = list(
            (
                await self.session.execute(
                    select(
                        conn.c.id,
                        conn.c.provider,
                        func.coalesce(mapping.c.audience_id, conn.c.audience_id).label(
                            "audience_id"
                        ),
                        mapping.c.id.label("mapping_id"),
                        mapping.c.audience_name,
                        mapping.c.kinds,
                        mapping.c.tags_any,
                        mapping.c.tags_all,
                    )
                    .select_from(conn.outerjoin(mapping, mapping.c.connection_id == conn.c.id))
                    .where(conn.c.owner_id == owner_id)
                    .order_by(conn.c.provider, mapping.c.id != conn.c.id, mapping.c.created_at)
                )
            ).mappings()
        )
        if not connections or not keys:
            return connections, {}, {}
        ids = list({c["id"] for c in connections})
        queued = await self.session.execute(
            select(queue.c.mapping_id, queue.c.email_key, queue.c.state, queue.c.last_error).where(
                queue.c.connection_id.in_(ids), queue.c.email_key.in_(keys)
            )
        )
        mirrored = await self.session.execute(
            select(
                state.c.mapping_id,
                state.c.email_key,
                state.c.remote_status,
                state.c.last_synced_at,
                state.c.error_kind,
                state.c.error,
            ).where(state.c.connection_id.in_(ids), state.c.email_key.in_(keys))
        )
        return (
            connections,
            {(r["mapping_id"], r["email_key"]): r for r in queued.mappings()},
            {(r["mapping_id"], r["email_key"]): r for r in mirrored.mappings()},
        )
