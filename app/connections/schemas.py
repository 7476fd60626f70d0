"""Request and response shapes of the integrations API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ConnectionStatus = Literal["needs_audience", "active", "paused", "error"]


class ApiKeyConnect(BaseModel):
    """Body of POST /api/integrations/mailchimp/api-key (the alias of …/credentials)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    api_key: str = Field(min_length=8, max_length=100, description="<32 hex>-<dc>, e.g. …-us1")
    audience_id: str | None = Field(default=None, min_length=1, max_length=64)


class AudienceRef(BaseModel):
    """An audience by id and name."""

    id: str
    name: str | None


class SyncRunOut(BaseModel):
    """A reconcile run: its state, what it found (counts) and how far it got (progress)."""

    id: uuid.UUID
    kind: str
    dry_run: bool
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    counts: dict[str, int] = Field(default_factory=dict)
    progress: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class IntegrationStatus(BaseModel):
    """What the Settings page shows for one provider."""

    provider: str
    connected: bool
    connection_id: uuid.UUID | None = None
    account_name: str | None = None
    audience: AudienceRef | None = None
    status: ConnectionStatus | None = None
    notice: str | None = None
    last_synced_at: datetime | None = None
    pending: int = 0
    failed: int = 0
    last_full_sync_at: datetime | None = None
    webhook_registered: bool = False
    webhook_error: str | None = Field(
        default=None, description="Why the webhook is not registered (None once it is)."
    )
    last_run: SyncRunOut | None = None


class CredentialFieldOut(BaseModel):
    """One field of a provider's credentials form."""

    name: str
    label: str
    kind: Literal["text", "url", "secret"] = "text"
    help: str = ""


class ConnectMethod(BaseModel):
    """One way to connect a provider: the OAuth popup (`POST …/connect`), or a credentials
    form (`POST …/credentials` with `fields`)."""

    kind: Literal["oauth", "credentials"]
    fields: list[CredentialFieldOut] = Field(default_factory=list)


class IntegrationEntry(IntegrationStatus):
    """One provider on the Settings page's list: its name and how it connects."""

    name: str
    available: bool
    audience_noun: str = "audience"
    connect: list[ConnectMethod] = Field(default_factory=list)


class IntegrationList(BaseModel):
    """Every provider's state (GET /api/integrations)."""

    items: list[IntegrationEntry]


class ConnectStart(BaseModel):
    """Where the popup goes to connect the provider, and until when that link works."""

    authorize_url: str
    expires_at: datetime


class AudienceOut(BaseModel):
    """An audience of the connected account."""

    id: str
    name: str
    member_count: int


class AudienceChoice(BaseModel):
    """Body of PUT /api/integrations/{provider}/audience."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    audience_id: str = Field(min_length=1, max_length=64)


class RunAccepted(BaseModel):
    """A reconcile run was queued (or one was already under way)."""

    run_id: uuid.UUID
    state: str
    dry_run: bool


class OAuthOutcome(BaseModel):
    """The JSON answer of the OAuth callback (the page posts the same object to the opener)."""

    type: str = Field(default="audience-sync:mailchimp", description="audience-sync:<provider>")
    ok: bool
    status: ConnectionStatus | None = None
    account_name: str | None = None
    audience: AudienceRef | None = None
    audiences: int = 0
    error: str | None = None
    detail: str | None = None
