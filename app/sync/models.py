"""Tables of the sync engine: the outbox queue, the mirror, tombstones, limits and runs."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

PRIORITY_LIVE = 0
PRIORITY_BULK = 1
REMOTE_STATUSES = (
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
    "archived",
    "forgotten",
    "rejected",
)


class SyncQueue(Base):
    """The outbox, coalesced: one row per connection and subscriber while work is owed."""

    __tablename__ = "sync_queue"
    __table_args__ = (
        # The claim scans only ready rows, in priority then due order.
        Index(
            "ix_sync_queue_ready",
            "priority",
            "available_at",
            postgresql_where=text("state = 'ready'"),
        ),
        # The claim reads each eligible connection's ready rows in that order, bound to it.
        Index(
            "ix_sync_queue_ready_connection",
            "connection_id",
            "priority",
            "available_at",
            postgresql_where=text("state = 'ready'"),
        ),
        # The re-arm of parked rows finds the due ones without scanning the queue.
        Index("ix_sync_queue_parked", "available_at", postgresql_where=text("state = 'parked'")),
        CheckConstraint("state IN ('ready', 'parked')", name="state"),
        {
            # Rows are deleted on completion: vacuum this small, hot table often.
            "postgresql_with": {
                "autovacuum_vacuum_scale_factor": "0.01",
                "autovacuum_vacuum_threshold": "1000",
                "autovacuum_analyze_scale_factor": "0.02",
            }
        },
    )

    connection_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    # The audience mapping the row is for (DESIGN §3: keyed per mapping).
    mapping_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("audience_mappings.id", ondelete="CASCADE"),
        primary_key=True,
    )
    email_key: Mapped[str] = mapped_column(Text, primary_key=True)
    contact_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    seq: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    priority: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default="ready")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_by: Mapped[str | None] = mapped_column(Text)
    forget: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Times the row parked since its last change, and when it first did: parked rows are
    # re-armed on a slow schedule (available_at), and the notice shows rows stuck for long.
    parks: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    parked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Tags a send was about to push, written before the call: if the worker dies after the
    # provider applied them but before the completion recorded them in sync_state, they are
    # still known to be ours, and a later removal removes them (issue 11, item 1).
    tag_intent: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    # A send about to create (or revive) the person at the provider, written before the call
    # like tag_intent: after a crash the mirror does not know the person exists, and a resend
    # for a contact that lost consent (or was deleted) meanwhile must still unsubscribe
    # (archive) them rather than treat them as never pushed (promise 2).
    create_intent: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    enqueued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class SyncState(Base):
    """The mirror: what we last told (or learned from) the provider for one subscriber."""

    __tablename__ = "sync_state"
    __table_args__ = (
        Index("ix_sync_state_contact_id", "contact_id"),
        # Inbound events naming the provider's person id (an address changed at Mautic).
        # remote_id before mapping_id: an index sharing the primary key's (connection_id,
        # mapping_id) prefix ties with it in the planner's estimates when the table has no
        # statistics (autovacuum off or behind), and the write path's key lookups then walked
        # every mirror row of the connection (P6, 3 December).
        Index(
            "ix_sync_state_connection_id_remote_id_mapping_id",
            "connection_id",
            "remote_id",
            "mapping_id",
        ),
        Index(
            "ix_sync_state_connection_id_error_kind",
            "connection_id",
            "error_kind",
            postgresql_where=text("error_kind IS NOT NULL"),
        ),
    )

    connection_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    mapping_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("audience_mappings.id", ondelete="CASCADE"),
        primary_key=True,
    )
    email_key: Mapped[str] = mapped_column(Text, primary_key=True)
    contact_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The provider's own id for the person (Mailchimp: the subscriber hash; Constant Contact:
    # the contact UUID; ActiveCampaign, Mautic: the numeric id).
    remote_id: Mapped[str | None] = mapped_column(Text)
    # Ids of what *we* set there (tag ids, list membership, our do-not-contact entry), as the
    # provider's client returned them (RemoteMember.refs); handed back in RemoteRef.refs.
    remote_refs: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    pushed_email: Mapped[str | None] = mapped_column(Text)
    pushed_digest: Mapped[str | None] = mapped_column(Text)
    # The tags *we* set: our ownership; tags added at the provider by others are never touched.
    pushed_tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    remote_status: Mapped[str | None] = mapped_column(Text)
    remote_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the provider's side of the person's preferences (interests) last changed, as seen.
    remote_preferences_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_kind: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class SyncTombstone(Base):
    """A forgotten subscriber: only the hash remains, so the address is never pushed again."""

    __tablename__ = "sync_tombstones"

    connection_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    remote_id: Mapped[str] = mapped_column(Text, primary_key=True)
    forgotten_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class ProviderSlot(Base):
    """One of the N request slots of a provider account, leased by a worker process."""

    __tablename__ = "provider_slots"

    account_key: Mapped[str] = mapped_column(Text, primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    holder: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LimitBucket(Base):
    """A rate or quota scope (DESIGN §14.3): the next free token time and the day's count."""

    __tablename__ = "limit_buckets"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    quota_day: Mapped[date | None] = mapped_column(Date)
    quota_used: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    paused_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pause_reason: Mapped[str | None] = mapped_column(Text)


class LimitWindowSlot(Base):
    """One of an application rate's R window slots: taken by a token until its request is
    answered, then free again `period` seconds later (DESIGN §14.3, app/sync/limits.py)."""

    __tablename__ = "limit_window"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    ticket: Mapped[str | None] = mapped_column(Text)  # the token holding it
    token_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    free_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LimitClaim(Base):
    """A worker's demand for a bucket's tokens on behalf of a tenant: fairness between them."""

    __tablename__ = "limit_claims"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text, primary_key=True)
    priority: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    worker: Mapped[str] = mapped_column(Text, primary_key=True)
    wanted: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    served_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SyncRun(Base):
    """A full reconciliation: Sync Now, the initial sync, or a dry run."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        Index("ix_sync_runs_connection_id_created_at", "connection_id", "created_at"),
        # At most one live run (and one dry run) per mapping, whichever replica asked.
        Index(
            "uq_sync_runs_connection_id_mapping_id_dry_run_active",
            "connection_id",
            "mapping_id",
            "dry_run",
            unique=True,
            postgresql_where=text("state IN ('queued', 'running')"),
        ),
        CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'cancelled')", name="state"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("connections.id", ondelete="CASCADE")
    )
    # The audience mapping the run reconciles (NULL only for runs older than mappings).
    mapping_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("audience_mappings.id", ondelete="CASCADE")
    )
    owner_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)  # sync_now | initial | audience_change | pull
    dry_run: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    state: Mapped[str] = mapped_column(Text, server_default="queued")
    counts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    leased_by: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReconcileMember(Base):
    """Staging of a reconcile run: the remote members it listed, one row per address.

    UNLOGGED: scratch data a crash may lose (the run then restarts its listing); written with
    COPY, page by page, in the same transaction as the run's progress.
    """

    __tablename__ = "reconcile_members"
    __table_args__ = ({"prefixes": ["UNLOGGED"]},)

    run_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    email_key: Mapped[str] = mapped_column(Text, primary_key=True)
    email: Mapped[str] = mapped_column(Text)
    remote_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text))
    last_changed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The contact with this address when the page was staged, and whether the member's
    # merge fields already equal what we would send for it (computed by desired.py).
    contact_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    desired_digest: Mapped[str | None] = mapped_column(Text)
    fields_equal: Mapped[bool] = mapped_column(Boolean)
