"""Tables of the webhooks domain: the inbox of provider events, and the token lookup index."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Table,
    Text,
    func,
    literal_column,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.connections.models import Connection
from app.db import Base


class WebhookEvent(Base):
    """One inbound event, stored once (dedupe_key) and applied in the same transaction."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("uq_webhook_events_dedupe_key", "dedupe_key", unique=True),
        Index("ix_webhook_events_connection_id_received_at", "connection_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    provider: Mapped[str] = mapped_column(Text)
    connection_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("connections.id", ondelete="SET NULL")
    )
    event_type: Mapped[str] = mapped_column(Text)
    fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    dedupe_key: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(Text)


_connections: Table = Connection.__table__  # type: ignore[assignment]

# Receivers find a connection by the SHA-256 of the URL token, never by the token itself: an
# index walk's timing can then only tell an attacker about a hash, which does not lead back
# to a token (the stored token is compared in constant time afterwards). Tokens are URL-safe
# ASCII (`secrets.token_urlsafe`), so decode(…, 'escape') yields exactly their UTF-8 bytes;
# it is used because convert_to() is not IMMUTABLE and cannot be indexed.
WEBHOOK_TOKEN_HASH = func.sha256(
    func.decode(_connections.c.webhook_token, literal_column("'escape'"))
)
Index("ix_connections_webhook_token_sha256", WEBHOOK_TOKEN_HASH)
