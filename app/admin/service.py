"""Admin use cases: the sync status of every connection, and retrying parked rows."""

from __future__ import annotations

import uuid
from collections import Counter

from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.repository import AdminRepository
from app.admin.schemas import (
    Audience,
    ConnectionFailures,
    ConnectionSyncStatus,
    ParkedRow,
    QueueDepth,
    RejectedRow,
    RetryResult,
    SyncStatus,
    SyncStatusTotals,
)
from app.connections.notices import notice_for_provider
from app.errors import NotFound


class AdminService:
    """What an operator needs to see and do across all owners."""

    async def sync_status(self, session: AsyncSession) -> SyncStatus:
        """Every connection's status, queue depth, ages and failures, with totals."""
        repo = AdminRepository(session)
        generated_at = await repo.now()
        items = [
            ConnectionSyncStatus(
                connection_id=row["id"],
                owner_id=row["owner_id"],
                provider=row["provider"],
                account_name=row["account_name"],
                audience=(
                    Audience(id=row["audience_id"], name=row["audience_name"])
                    if row["audience_id"]
                    else None
                ),
                status=row["status"],
                status_reason=row["status_reason"],
                status_since=row["status_since"],
                notice=notice_for_provider(
                    row["status"], row["status_reason"], row["provider"], stuck=row["stuck"]
                ),
                queue=QueueDepth(
                    ready=row["ready"],
                    leased=row["leased"],
                    parked=row["parked"],
                    total=row["ready"] + row["leased"] + row["parked"],
                ),
                oldest_ready_age_seconds=row["oldest_ready_age_seconds"],
                parked=row["parked"],
                parked_since=row["parked_since"],
                next_parked_retry_at=row["next_parked_retry_at"],
                rejected=row["rejected"],
                last_synced_at=row["last_synced_at"],
                last_error=row["last_error"],
                last_error_at=row["last_error_at"],
            )
            for row in await repo.connection_statuses()
        ]
        return SyncStatus(generated_at=generated_at, connections=items, totals=_totals(items))

    async def failures(
        self, session: AsyncSession, *, connection_id: uuid.UUID, limit: int
    ) -> ConnectionFailures:
        """The connection's parked and rejected rows with their errors; 404 if unknown."""
        repo = AdminRepository(session)
        if await repo.connection_status(connection_id) is None:
            raise NotFound(f"Connection {connection_id} does not exist.")
        parked = await repo.parked_rows(connection_id, limit)
        rejected = await repo.rejected_rows(connection_id, limit)
        return ConnectionFailures(
            connection_id=connection_id,
            parked=[ParkedRow.model_validate(dict(r)) for r in parked],
            rejected=[RejectedRow.model_validate(dict(r)) for r in rejected],
            limit=limit,
        )

    async def retry_parked(self, session: AsyncSession, *, connection_id: uuid.UUID) -> RetryResult:
        """Parked rows of the connection → ready (attempts reset, due now); 404 if unknown."""
        repo = AdminRepository(session)
        conn = await repo.connection_status(connection_id)
        if conn is None:
            raise NotFound(f"Connection {connection_id} does not exist.")
        requeued = await repo.requeue_parked(connection_id)
        return RetryResult(
            connection_id=connection_id,
            requeued=requeued,
            status=conn["status"],
            notice=notice_for_provider(conn["status"], conn["status_reason"], conn["provider"]),
        )


def _totals(items: list[ConnectionSyncStatus]) -> SyncStatusTotals:
    ready = sum(i.queue.ready for i in items)
    leased = sum(i.queue.leased for i in items)
    parked = sum(i.queue.parked for i in items)
    ages = [i.oldest_ready_age_seconds for i in items if i.oldest_ready_age_seconds is not None]
    synced = [i.last_synced_at for i in items if i.last_synced_at is not None]
    return SyncStatusTotals(
        connections=len(items),
        by_status=dict(Counter(i.status for i in items)),
        queue=QueueDepth(ready=ready, leased=leased, parked=parked, total=ready + leased + parked),
        oldest_ready_age_seconds=max(ages, default=None),
        parked=parked,
        rejected=sum(i.rejected for i in items),
        last_synced_at=max(synced, default=None),
    )


admin_service = AdminService()
