"""Response shapes of the admin API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class Audience(BaseModel):
    """The provider audience (list) a connection syncs into."""

    id: str
    name: str | None


class QueueDepth(BaseModel):
    """Sync-queue rows by state; the three buckets are disjoint and add up to `total`."""

    ready: int = Field(description="Waiting to be sent (state ready, not leased by a worker).")
    leased: int = Field(description="In flight: state ready and leased by a worker right now.")
    parked: int = Field(
        description="Gave up after SYNC_MAX_ATTEMPTS; retried by itself on a slow schedule"
        " (SYNC_PARKED_RETRY_SECONDS, backing off to SYNC_PARKED_RETRY_MAX_SECONDS)."
    )
    total: int


class ConnectionSyncStatus(BaseModel):
    """The sync health of one connection."""

    connection_id: uuid.UUID
    owner_id: str
    provider: str
    account_name: str | None
    audience: Audience | None
    status: str
    status_reason: str | None
    status_since: datetime
    notice: str | None = Field(description="What the owner's Settings page shows, if anything.")
    queue: QueueDepth
    oldest_ready_age_seconds: float | None = Field(
        description="Seconds since the oldest not-yet-sent row (ready or leased) was enqueued."
    )
    parked: int
    parked_since: datetime | None = Field(
        None, description="When the longest-parked row first parked (it is retried by itself)."
    )
    next_parked_retry_at: datetime | None = Field(
        None, description="When the next parked rows are re-armed (SYNC_PARKED_RETRY_SECONDS)."
    )
    rejected: int = Field(description="Subscribers the provider refused (sync_state.error_kind).")
    last_synced_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


class SyncStatusTotals(BaseModel):
    """Sums across every connection."""

    connections: int
    by_status: dict[str, int]
    queue: QueueDepth
    oldest_ready_age_seconds: float | None
    parked: int
    rejected: int
    last_synced_at: datetime | None


class SyncStatus(BaseModel):
    """GET /api/admin/sync-status."""

    generated_at: datetime
    connections: list[ConnectionSyncStatus]
    totals: SyncStatusTotals


class RetryResult(BaseModel):
    """POST /api/admin/connections/{id}/retry."""

    connection_id: uuid.UUID
    requeued: int = Field(description="Parked rows made ready again.")
    status: str = Field(description="The connection's status; rows only move while active.")
    notice: str | None


class ParkedRow(BaseModel):
    """A queue row that gave up after SYNC_MAX_ATTEMPTS (Retry makes it ready again)."""

    email_key: str
    contact_id: uuid.UUID | None
    attempts: int
    last_error: str | None
    enqueued_at: datetime


class RejectedRow(BaseModel):
    """A subscriber the provider refused; editing the contact (or the provider) fixes it."""

    email_key: str
    contact_id: uuid.UUID | None
    error_kind: str
    error: str | None
    remote_status: str | None
    last_synced_at: datetime | None


class ConnectionFailures(BaseModel):
    """GET /api/admin/connections/{id}/failures: the rows behind `parked` and `rejected`."""

    connection_id: uuid.UUID
    parked: list[ParkedRow]
    rejected: list[RejectedRow]
    limit: int = Field(description="At most this many of each are listed (oldest parked first).")
