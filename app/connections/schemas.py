"""Request and response shapes of the integrations API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.config import ContactKind

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
    mappings: list[MappingOut] = Field(
        default_factory=list,
        description="Every audience mapping of the connection (the default one first).",
    )


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


Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class AudienceRuleIn(BaseModel):
    """Which contacts an audience holds: `{"all": true}`, or any of `kinds`, `tags_any`
    (at least one of the tags), `tags_all` (every one of them); given together, each holds."""

    model_config = ConfigDict(extra="forbid")

    all: bool | None = None
    kinds: list[ContactKind] | None = Field(default=None, max_length=3)
    tags_any: list[Tag] | None = Field(default=None, max_length=100)
    tags_all: list[Tag] | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        constrained = bool(self.kinds or self.tags_any or self.tags_all)
        if self.all and constrained:
            raise ValueError("a rule is either all, or kinds and tags, not both")
        if not self.all and not constrained:
            raise ValueError(
                'the rule is empty: give {"all": true}, or kinds, tags_any or tags_all'
            )
        return self

    def columns(self) -> dict[str, list[str] | None]:
        """The rule as audience_mappings columns (None: unconstrained)."""
        if self.all:
            return {"kinds": None, "tags_any": None, "tags_all": None}
        return {
            "kinds": sorted({k.value for k in self.kinds}) if self.kinds else None,
            "tags_any": sorted({t.lower() for t in self.tags_any}) if self.tags_any else None,
            "tags_all": sorted({t.lower() for t in self.tags_all}) if self.tags_all else None,
        }


class AudienceRuleOut(BaseModel):
    """A mapping's rule as stored."""

    all: bool
    kinds: list[str] | None = None
    tags_any: list[str] | None = None
    tags_all: list[str] | None = None


InterestId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class MappingCreate(BaseModel):
    """Body of POST /api/integrations/{provider}/audiences/mappings."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    audience_id: str = Field(min_length=1, max_length=64)
    rule: AudienceRuleIn
    interests: dict[Tag, InterestId | None] = Field(
        default_factory=dict,
        max_length=100,
        description="Preference name → what the person chooses it by: a Mailchimp interest id"
        " of the audience, another Constant Contact list id, another Mautic segment id;"
        " null creates one of that name.",
    )


class MappingUpdate(MappingCreate):
    """Body of PUT /api/integrations/{provider}/audiences/mappings/{id}: the whole mapping."""


class MappingOut(BaseModel):
    """One audience of the connection, the rule choosing its contacts, and its sync state."""

    id: uuid.UUID
    audience: AudienceRef
    rule: AudienceRuleOut
    default: bool = Field(description="The connection's own audience (PUT …/audience moves it).")
    members: int = Field(description="Contacts the mirror says are present in this audience.")
    pending: int = 0
    failed: int = 0
    webhook_registered: bool = False
    last_run: SyncRunOut | None = None
    interests: dict[str, str] = Field(
        default_factory=dict, description="Preference name → interest id."
    )


class MappingList(BaseModel):
    """GET /api/integrations/{provider}/audiences/mappings."""

    items: list[MappingOut]


# The status models name MappingOut before it is defined.
IntegrationStatus.model_rebuild()
IntegrationEntry.model_rebuild()
