"""Tables of the connections domain: one connection per owner per provider."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

CONNECTION_STATUSES = ("needs_audience", "active", "paused", "error")


class Connection(Base):
    """A provider account connected by an owner, with its audience and sync health."""

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("owner_id", "provider"),
        UniqueConstraint("webhook_token"),
        Index("ix_connections_account_key", "account_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    owner_id: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    auth_kind: Mapped[str] = mapped_column(Text)  # oauth | api_key
    credentials: Mapped[str] = mapped_column(Text)  # Fernet ciphertext, never plaintext
    # Identifies the provider account behind the credentials: the concurrency cap is per account.
    account_key: Mapped[str] = mapped_column(Text)
    account_name: Mapped[str | None] = mapped_column(Text)
    dc: Mapped[str | None] = mapped_column(Text)
    api_endpoint: Mapped[str] = mapped_column(Text)
    audience_id: Mapped[str | None] = mapped_column(Text)
    audience_name: Mapped[str | None] = mapped_column(Text)
    webhook_token: Mapped[str] = mapped_column(Text)
    webhook_id: Mapped[str | None] = mapped_column(Text)
    # Why our webhook is not registered (None once it is): shown on the integration status.
    webhook_error: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="needs_audience")
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_since: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Throttling: the connection cools down as a whole, rows keep their attempts.
    cooldown_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    probe_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_probe_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_full_sync_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_pull_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AudienceMapping(Base):
    """One audience of a connection and the rule choosing which contacts it holds.

    The rule is evaluated at send time (desired state): `kinds`, `tags_any` and `tags_all`
    are each a constraint when set (NULL: unconstrained); all three NULL is the rule "all".
    The default mapping a connection gets with its first audience takes the connection's id,
    so the queue and mirror rows written before mappings existed keep their key.
    """

    __tablename__ = "audience_mappings"
    __table_args__ = (UniqueConstraint("connection_id", "audience_id"),)

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    connection_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("connections.id", ondelete="CASCADE")
    )
    audience_id: Mapped[str] = mapped_column(Text)
    audience_name: Mapped[str | None] = mapped_column(Text)
    kinds: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    tags_any: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    tags_all: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    # The operator's map of preference names to the audience's interests:
    # [{"name": preference, "id": interest id, "label": the interest's name there}].
    interests: Mapped[list[dict[str, str]]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )
    # Our webhook on this audience (the default mapping's lives on the connection row).
    webhook_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OAuthState(Base):
    """A connect attempt's `state` nonce: single use, bound to an owner, short-lived.

    The signed `state` itself proves who asked and until when; this row makes it usable once,
    across every API replica.
    """

    __tablename__ = "oauth_states"
    __table_args__ = (Index("ix_oauth_states_expires_at", "expires_at"),)

    nonce: Mapped[str] = mapped_column(Text, primary_key=True)
    owner_id: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
