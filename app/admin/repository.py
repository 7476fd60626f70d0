"""Queries of the admin API: aggregates over every owner's connections and queues."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.connections.notices import PARKED_NOTICE_AFTER_SECONDS
from app.sync.outbox import NOTIFY_CHANNEL

# One statement, whatever the number of connections: the queue and the mirror are each
# aggregated once (GROUP BY connection_id), then joined to the connections. A row leased by
# a worker is still state 'ready' in the table; it counts as `leased` here while its lease
# is live, and as `ready` again once the lease has expired (another worker may claim it).
_STATUS = text(
    """
    WITH q AS (
        SELECT connection_id,
               count(*) FILTER (WHERE state = 'ready'
                                  AND (lease_until IS NULL OR lease_until <= now())) AS ready,
               count(*) FILTER (WHERE state = 'ready' AND lease_until > now()) AS leased,
               count(*) FILTER (WHERE state = 'parked') AS parked,
               min(enqueued_at) FILTER (WHERE state = 'ready') AS oldest_ready_at,
               min(parked_at) FILTER (WHERE state = 'parked') AS parked_since,
               min(available_at) FILTER (WHERE state = 'parked') AS next_parked_retry_at,
               bool_or(parked_at < now() - make_interval(secs => :stuck_after))
                   AS stuck
        FROM sync_queue
        GROUP BY connection_id
    ), r AS (
        SELECT connection_id, count(*) AS rejected
        FROM sync_state
        WHERE error_kind IS NOT NULL
        GROUP BY connection_id
    )
    SELECT c.id, c.owner_id, c.provider, c.account_name, c.audience_id, c.audience_name,
           c.status, c.status_reason, c.status_since, c.last_synced_at, c.last_error,
           c.last_error_at,
           COALESCE(q.ready, 0) AS ready,
           COALESCE(q.leased, 0) AS leased,
           COALESCE(q.parked, 0) AS parked,
           EXTRACT(EPOCH FROM now() - q.oldest_ready_at)::float8 AS oldest_ready_age_seconds,
           COALESCE(r.rejected, 0) AS rejected,
           q.parked_since, q.next_parked_retry_at, COALESCE(q.stuck, false) AS stuck
    FROM connections c
    LEFT JOIN q ON q.connection_id = c.id
    LEFT JOIN r ON r.connection_id = c.id
    ORDER BY c.owner_id, c.provider, c.id
    """
)

# Parked rows become due now with a fresh attempt budget. `last_error` is kept on purpose:
# until the retry succeeds (the row is deleted) or fails again (the worker overwrites it),
# the last known failure is still the best explanation an operator or the contact page has.
# `seq` is untouched: it counts changes of the contact, and a retry is not one.
_RETRY = text(
    """
    WITH moved AS (
        UPDATE sync_queue
        SET state = 'ready', attempts = 0, available_at = now(), parks = 0,
            lease_until = NULL, leased_by = NULL
        WHERE connection_id = :connection_id AND state = 'parked'
        RETURNING 1
    )
    SELECT count(*) AS n, CASE WHEN count(*) > 0 THEN pg_notify(:channel, '') END AS notified
    FROM moved
    """
)


# The rows an operator looks at: oldest first, a page at a time (a broken connection can park
# a million rows; the counts come from the status query).
_PARKED = text(
    """
    SELECT email_key, contact_id, attempts, last_error, enqueued_at, available_at
    FROM sync_queue
    WHERE connection_id = :connection_id AND state = 'parked'
    ORDER BY enqueued_at, email_key
    LIMIT :limit
    """
)
_REJECTED = text(
    """
    SELECT email_key, contact_id, error_kind, error, remote_status, last_synced_at
    FROM sync_state
    WHERE connection_id = :connection_id AND error_kind IS NOT NULL
    ORDER BY email_key
    LIMIT :limit
    """
)


class AdminRepository:
    """Cross-owner reads and operator writes; only the admin API uses these."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def now(self) -> datetime:
        """The database's clock (the one every age is measured with)."""
        return (await self.session.execute(text("SELECT now()"))).scalar_one()

    async def connection_statuses(self) -> Sequence[RowMapping]:
        """Every connection with its queue and mirror aggregates."""
        return (
            (await self.session.execute(_STATUS, {"stuck_after": PARKED_NOTICE_AFTER_SECONDS}))
            .mappings()
            .all()
        )

    async def connection_status(self, connection_id: uuid.UUID) -> RowMapping | None:
        """The status columns of one connection; None when it does not exist."""
        result = await self.session.execute(
            text("SELECT id, provider, status, status_reason FROM connections WHERE id = :id"),
            {"id": connection_id},
        )
        return result.mappings().first()

    async def requeue_parked(self, connection_id: uuid.UUID) -> int:
        """Make the connection's parked rows ready; NOTIFY workers when any moved."""
        result = await self.session.execute(
            _RETRY, {"connection_id": connection_id, "channel": NOTIFY_CHANNEL}
        )
        return int(result.scalar_one())

    async def parked_rows(self, connection_id: uuid.UUID, limit: int) -> Sequence[RowMapping]:
        """The connection's parked queue rows, oldest first."""
        result = await self.session.execute(
            _PARKED, {"connection_id": connection_id, "limit": limit}
        )
        return result.mappings().all()

    async def rejected_rows(self, connection_id: uuid.UUID, limit: int) -> Sequence[RowMapping]:
        """The connection's subscribers the provider refused, by email."""
        result = await self.session.execute(
            _REJECTED, {"connection_id": connection_id, "limit": limit}
        )
        return result.mappings().all()
