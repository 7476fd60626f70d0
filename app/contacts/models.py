"""Tables of the contacts domain: contacts and their append-only audit."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

CONTACT_KINDS = ("client", "lead", "contact")
EMAIL_STATUSES = ("ok", "bounced", "complained")


class Contact(Base):
    """One person per owner; the CRM is the source of truth for these fields."""

    __tablename__ = "contacts"
    __table_args__ = (
        # email_key is app.emailkey.email_key(email), written with the email: unique per
        # owner, NULLs (no email) allowed.
        Index("uq_contacts_owner_id_email_key", "owner_id", "email_key", unique=True),
        CheckConstraint("(email IS NULL) = (email_key IS NULL)", name="email_key"),
        Index("ix_contacts_owner_id_created_at_id", "owner_id", "created_at", "id"),
        Index("ix_contacts_tags", "tags", postgresql_using="gin"),
        CheckConstraint(f"kind IN {CONTACT_KINDS}", name="kind"),
        CheckConstraint(f"email_status IN {EMAIL_STATUSES}", name="email_status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    owner_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, server_default="contact")
    email: Mapped[str | None] = mapped_column(Text)
    email_key: Mapped[str | None] = mapped_column(Text)
    first_name: Mapped[str | None] = mapped_column(Text)
    last_name: Mapped[str | None] = mapped_column(Text)
    company: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    addr1: Mapped[str | None] = mapped_column(Text)
    addr2: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(Text)
    zip: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    # The person's preferences (names an audience mapping may map to Mailchimp interests),
    # and when they last changed here or at the provider (the newer side wins).
    preferences: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    preferences_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    notes: Mapped[str | None] = mapped_column(Text)
    newsletter_opt_in: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    newsletter_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    newsletter_unsubscribed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    email_status: Mapped[str] = mapped_column(Text, server_default="ok")
    lead_status: Mapped[str | None] = mapped_column(Text)
    referral: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ContactChange(Base):
    """Append-only audit of every contact change, whoever made it."""

    __tablename__ = "contact_changes"
    __table_args__ = (
        Index("ix_contact_changes_owner_id_contact_id_id", "owner_id", "contact_id", "id"),
        Index("ix_contact_changes_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # No foreign key: the audit outlives the contact it describes.
    contact_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    owner_id: Mapped[str] = mapped_column(Text)
    op: Mapped[str] = mapped_column(Text)
    fields: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    source: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
