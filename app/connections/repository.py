"""Queries of the connections domain; every one is scoped to an owner."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.models import Connection, OAuthState
from app.connections.notices import PARKED_NOTICE_AFTER_SECONDS
from app.sync.models import ReconcileMember, SyncRun

connections = cast(Table, Connection.__table__)
oauth_states = cast(Table, OAuthState.__table__)
sync_runs = cast(Table, SyncRun.__table__)
staging = cast(Table, ReconcileMember.__table__)
ACTIVE_RUN_STATES = ("queued", "running")

_COUNTS = text(
    """
    SELECT
      (SELECT count(*) FROM sync_queue WHERE connection_id = :id AND state = 'ready') AS pending,
      (SELECT count(*) FROM sync_queue WHERE connection_id = :id AND state = 'parked')
      + (SELECT count(*) FROM sync_state WHERE connection_id = :id AND error_kind IS NOT NULL)
        AS failed,
      EXISTS (SELECT FROM sync_queue WHERE connection_id = :id AND state = 'parked'
              AND parked_at < now() - make_interval(secs => :stuck_after)) AS stuck
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

    async def all_credentials(self) -> list[RowMapping]:
        """Every connection's id and ciphertext (key rotation)."""
        stmt = select(connections.c.id, connections.c.credentials).with_for_update()
        return list((await self.session.execute(stmt)).mappings())

    async def set_credentials(self, connection_id: uuid.UUID, ciphertext: str) -> None:
        """Store re-encrypted credentials."""
        await self.session.execute(
            update(connections)
            .where(connections.c.id == connection_id)
            .values(credentials=ciphertext)
        )

    async def credentials_of(
        self, connection_id: uuid.UUID, *, lock: bool = False, lock_timeout: float = 0.0
    ) -> RowMapping | None:
        """The connection's status and ciphertext; with `lock`, the row is locked until the
        transaction ends (one token renewal per connection at a time, DESIGN §14.4) and the
        wait gives up after `lock_timeout` seconds (0: no limit)."""
        stmt = select(connections.c.id, connections.c.status, connections.c.credentials).where(
            connections.c.id == connection_id
        )
        if lock:
            if lock_timeout > 0:
                # A lock held longer than a token request means something is stuck: fail
                # (the send retries) rather than hang a worker.
                ms = int(lock_timeout * 1000)
                await self.session.execute(text(f"SET LOCAL lock_timeout = {ms}"))
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).mappings().first()

    async def set_address(
        self, connection_id: uuid.UUID, *, api_endpoint: str, account_key: str, credentials: str
    ) -> None:
        """Aim the connection at another address of the same account; the failures and
        cooling learnt at the old address are forgotten."""
        await self.session.execute(
            update(connections)
            .where(connections.c.id == connection_id)
            .values(
                api_endpoint=api_endpoint,
                account_key=account_key,
                credentials=credentials,
                cooldown_until=None,
                consecutive_failures=0,
                probe_attempts=0,
                next_probe_at=None,
                updated_at=func.now(),
            )
        )

    async def by_id(self, connection_id: uuid.UUID) -> RowMapping | None:
        """A connection by id (background work that was handed the id)."""
        stmt = select(connections).where(connections.c.id == connection_id)
        return (await self.session.execute(stmt)).mappings().first()

    async def upsert(self, owner_id: str, provider: str, values: dict[str, Any]) -> RowMapping:
        """Create the connection, or replace its credentials and account (reconnect)."""
        ins = pg_insert(connections).values(owner_id=owner_id, provider=provider, **values)
        # A reconnect keeps the webhook token: the URL registered at Mailchimp stays valid.
        changes: dict[str, Any] = {k: ins.excluded[k] for k in values if k != "webhook_token"}
        changes["updated_at"] = func.now()
        stmt = ins.on_conflict_do_update(
            index_elements=["owner_id", "provider"], set_=changes
        ).returning(*connections.c)
        return (await self.session.execute(stmt)).mappings().one()

    async def drop_sync_rows(self, connection_id: uuid.UUID) -> None:
        """Forget the queue and the mirror of the connection's default mapping, and its
        tombstones (its audience changed); other mappings keep theirs."""
        for table in ("sync_queue", "sync_state"):
            await self.session.execute(
                text(f"DELETE FROM {table} WHERE connection_id = :id AND mapping_id = :id"),
                {"id": connection_id},
            )
        await self.session.execute(
            text("DELETE FROM sync_tombstones WHERE connection_id = :id"), {"id": connection_id}
        )

    async def drop_other_mappings(self, connection_id: uuid.UUID) -> None:
        """Remove every mapping but the default one, with their queue and mirror rows (a
        reconnect into another audience starts afresh)."""
        await self.session.execute(
            text("DELETE FROM audience_mappings WHERE connection_id = :id AND id <> :id"),
            {"id": connection_id},
        )

    async def counts(self, connection_id: uuid.UUID) -> RowMapping:
        """Pending (queued) and failed (parked or rejected) counts."""
        params = {"id": connection_id, "stuck_after": PARKED_NOTICE_AFTER_SECONDS}
        return (await self.session.execute(_COUNTS, params)).mappings().one()

    async def lock(self, connection_id: uuid.UUID) -> RowMapping | None:
        """The connection row, locked until the transaction ends (serialises Sync Now)."""
        stmt = select(connections).where(connections.c.id == connection_id).with_for_update()
        return (await self.session.execute(stmt)).mappings().first()

    async def set_audience(
        self, connection_id: uuid.UUID, *, audience_id: str, audience_name: str
    ) -> RowMapping:
        """Point the connection at an audience; it is active from now on."""
        stmt = (
            update(connections)
            .where(connections.c.id == connection_id)
            .values(
                audience_id=audience_id,
                audience_name=audience_name,
                webhook_id=None,
                status="active",
                status_reason=None,
                status_since=func.now(),
                last_full_sync_at=None,
                updated_at=func.now(),
            )
            .returning(*connections.c)
        )
        return (await self.session.execute(stmt)).mappings().one()

    async def set_error(self, connection_id: uuid.UUID, *, reason: str, error: str) -> None:
        """The connection cannot be used until it is reconnected (`error`, with why)."""
        stmt = (
            update(connections)
            .where(connections.c.id == connection_id)
            .values(
                status="error",
                status_reason=reason,
                status_since=func.now(),
                last_error=error[:500],
                last_error_at=func.now(),
                next_probe_at=None,
            )
        )
        await self.session.execute(stmt)

    async def set_webhook(
        self,
        connection_id: uuid.UUID,
        *,
        audience_id: str,
        webhook_id: str | None,
        error: str | None,
    ) -> None:
        """Record the registered webhook (or why registering it failed), for that audience."""
        values: dict[str, Any] = {"webhook_id": webhook_id, "webhook_error": error}
        if error is not None:
            values |= {"last_error": error[:500], "last_error_at": func.now()}
        await self.session.execute(
            update(connections)
            .where(connections.c.id == connection_id, connections.c.audience_id == audience_id)
            .values(**values)
        )

    async def delete(self, connection_id: uuid.UUID) -> None:
        """Remove the connection: credentials, queue, mirror, tombstones and runs go with it."""
        run_ids = select(sync_runs.c.id).where(sync_runs.c.connection_id == connection_id)
        await self.session.execute(delete(staging).where(staging.c.run_id.in_(run_ids)))
        await self.session.execute(delete(connections).where(connections.c.id == connection_id))

    # --- OAuth states ----------------------------------------------------------------------

    async def add_state(
        self, *, nonce: str, owner_id: str, provider: str, expires_at: datetime
    ) -> None:
        """Remember a connect attempt's nonce (and forget long-expired ones)."""
        await self.session.execute(
            delete(oauth_states).where(oauth_states.c.expires_at < func.now() - timedelta(days=1))
        )
        await self.session.execute(
            insert(oauth_states).values(
                nonce=nonce, owner_id=owner_id, provider=provider, expires_at=expires_at
            )
        )

    async def state(self, nonce: str) -> RowMapping | None:
        """A nonce's row, with `expired` computed by the database clock."""
        stmt = select(
            oauth_states, (oauth_states.c.expires_at <= func.now()).label("expired")
        ).where(oauth_states.c.nonce == nonce)
        return (await self.session.execute(stmt)).mappings().first()

    async def consume_state(self, *, nonce: str, owner_id: str) -> bool:
        """Use the nonce once: True only for the first caller, before it expires."""
        stmt = (
            update(oauth_states)
            .where(
                oauth_states.c.nonce == nonce,
                oauth_states.c.owner_id == owner_id,
                oauth_states.c.used_at.is_(None),
                oauth_states.c.expires_at > func.now(),
            )
            .values(used_at=func.now())
            .returning(oauth_states.c.nonce)
        )
        return (await self.session.execute(stmt)).first() is not None

    # --- reconcile runs ----------------------------------------------------------------------

    async def create_run(
        self,
        *,
        connection_id: uuid.UUID,
        owner_id: str,
        kind: str,
        dry_run: bool,
        audience_id: str,
        mapping_id: uuid.UUID | None = None,
    ) -> RowMapping | None:
        """Queue a run of a mapping (default: the connection's default mapping); None when
        one of that kind (live or dry) is already under way for it."""
        stmt = (
            pg_insert(sync_runs)
            .values(
                connection_id=connection_id,
                mapping_id=mapping_id or connection_id,
                owner_id=owner_id,
                kind=kind,
                dry_run=dry_run,
                progress={"audience_id": audience_id, "pages_done": 0, "staged": 0},
            )
            .on_conflict_do_nothing(
                index_elements=["connection_id", "mapping_id", "dry_run"],
                # A literal predicate: the planner must prove it implies the partial index's.
                index_where=text("state IN ('queued', 'running')"),
            )
            .returning(*sync_runs.c)
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def active_run(
        self, connection_id: uuid.UUID, *, dry_run: bool, mapping_id: uuid.UUID | None = None
    ) -> RowMapping | None:
        """The queued or running run of a mapping of the connection (live or dry)."""
        stmt = select(sync_runs).where(
            sync_runs.c.connection_id == connection_id,
            sync_runs.c.mapping_id == (mapping_id or connection_id),
            sync_runs.c.dry_run == dry_run,
            sync_runs.c.state.in_(ACTIVE_RUN_STATES),
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def last_requested_run(
        self,
        connection_id: uuid.UUID,
        *,
        dry_run: bool,
        kind: str,
        mapping_id: uuid.UUID | None = None,
    ) -> RowMapping | None:
        """The newest run of this kind the user asked for, with its age in seconds."""
        age = func.extract("epoch", func.now() - sync_runs.c.created_at).label("age_seconds")
        stmt = (
            select(sync_runs, age)
            .where(
                sync_runs.c.connection_id == connection_id,
                sync_runs.c.mapping_id == (mapping_id or connection_id),
                sync_runs.c.dry_run == dry_run,
                sync_runs.c.kind == kind,
            )
            .order_by(sync_runs.c.created_at.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def last_run(self, connection_id: uuid.UUID) -> RowMapping | None:
        """The newest run of the connection, whatever its kind."""
        stmt = (
            select(sync_runs)
            .where(sync_runs.c.connection_id == connection_id)
            .order_by(sync_runs.c.created_at.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).mappings().first()

    async def run(self, owner_id: str, run_id: uuid.UUID) -> RowMapping | None:
        """One run of the owner's."""
        stmt = select(sync_runs).where(sync_runs.c.id == run_id, sync_runs.c.owner_id == owner_id)
        return (await self.session.execute(stmt)).mappings().first()

    async def cancel_runs(self, connection_id: uuid.UUID, reason: str) -> None:
        """Stop the connection's queued and running runs (a worker notices at its next page)."""
        await self.session.execute(
            update(sync_runs)
            .where(
                sync_runs.c.connection_id == connection_id,
                sync_runs.c.state.in_(ACTIVE_RUN_STATES),
            )
            .values(
                state="cancelled",
                error=reason,
                finished_at=func.now(),
                leased_by=None,
                lease_until=None,
            )
        )
