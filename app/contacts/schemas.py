"""Request and response shapes of the contacts API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, field_validator

Kind = Literal["client", "lead", "contact"]
SyncStatus = Literal["pending", "synced", "failed", "rejected", "not_synced"]

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)]
CustomValue = str | int | float | bool | None

MAX_TAGS = 100
MAX_CUSTOM_FIELDS = 50


def normalise_email(value: str | None) -> str | None:
    """Check the syntax and normalise (trim, lower-case domain); None and "" mean no email."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return result.normalized


def contains_nul(value: Any) -> bool:
    """True when a string anywhere in `value` (keys included) holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(v) for v in value)
    return False


def clean_tags(values: list[str]) -> list[str]:
    """Trimmed, empty ones dropped, deduplicated case-insensitively, first spelling kept."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in values:
        tag = " ".join(raw.split())
        if tag and tag.casefold() not in seen:
            seen.add(tag.casefold())
            out.append(tag)
    return out


class _ContactFields(BaseModel):
    """Fields a client may write; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: Annotated[str, StringConstraints(max_length=254)] | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    company: ShortText | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    addr1: ShortText | None = None
    addr2: ShortText | None = None
    city: ShortText | None = None
    state: ShortText | None = None
    zip: Annotated[str, StringConstraints(strip_whitespace=True, max_length=20)] | None = None
    country: ShortText | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    preferences: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="The person's preferences (names an audience may map to interest groups).",
    )
    custom_fields: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)],
        CustomValue,
    ] = Field(default_factory=dict, max_length=MAX_CUSTOM_FIELDS)
    notes: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    # Strict: JSON true/false only (lax parsing took 0, 1 and "yes" for the boolean).
    newsletter_opt_in: StrictBool = False
    lead_status: ShortText | None = None
    referral: ShortText | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold \x00: refuse it here (422), not at INSERT time (500).
        if contains_nul(value):
            raise ValueError("text must not contain NUL (\\u0000) characters")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return normalise_email(value)

    @field_validator("tags", "preferences")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return clean_tags(value)

    @field_validator("custom_fields")
    @classmethod
    def _custom(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # PATCH allows null (clears the fields); the base model never sees None.
        for item in (value or {}).values():
            if isinstance(item, str) and len(item) > 1000:
                raise ValueError("custom field values are at most 1000 characters")
        return value

    @field_validator(
        "first_name",
        "last_name",
        "company",
        "phone",
        "addr1",
        "addr2",
        "city",
        "state",
        "zip",
        "country",
        "notes",
        "lead_status",
        "referral",
    )
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None


class ContactCreate(_ContactFields):
    """Body of POST /api/contacts."""

    kind: Kind = "contact"


class ContactUpdate(_ContactFields):
    """Body of PATCH /api/contacts/{id}: only the fields sent change; null clears."""

    kind: Kind | None = None
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)  # type: ignore[assignment]
    preferences: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)  # type: ignore[assignment]
    custom_fields: (
        dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], CustomValue] | None
    ) = Field(default=None, max_length=MAX_CUSTOM_FIELDS)  # type: ignore[assignment]
    newsletter_opt_in: StrictBool | None = None  # type: ignore[assignment]

    @field_validator("tags", "preferences")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:  # type: ignore[override]
        return None if value is None else clean_tags(value)


class ContactSync(BaseModel):
    """The sync state of one contact in one audience mapping of a connection."""

    connection_id: uuid.UUID
    provider: str
    audience_id: str | None
    mapping_id: uuid.UUID | None = Field(
        default=None, description="The audience mapping (None: no audience chosen yet)."
    )
    audience_name: str | None = None
    in_audience: bool | None = Field(
        default=None, description="Whether the mapping's rule selects the contact now."
    )
    status: SyncStatus
    remote_status: str | None = None
    last_synced_at: datetime | None = None
    error: str | None = None
    error_kind: str | None = None


class ContactOut(BaseModel):
    """A contact as the API returns it."""

    id: uuid.UUID
    kind: Kind
    email: str | None
    first_name: str | None
    last_name: str | None
    company: str | None
    phone: str | None
    addr1: str | None
    addr2: str | None
    city: str | None
    state: str | None
    zip: str | None
    country: str | None
    tags: list[str]
    preferences: list[str] = Field(default_factory=list)
    preferences_changed_at: datetime | None = None
    custom_fields: dict[str, Any]
    notes: str | None
    newsletter_opt_in: bool
    newsletter_changed_at: datetime | None
    newsletter_unsubscribed_at: datetime | None
    email_status: Literal["ok", "bounced", "complained"]
    lead_status: str | None
    referral: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    sync: list[ContactSync] = Field(default_factory=list)


class ContactPage(BaseModel):
    """One page of contacts and the cursor of the next one."""

    items: list[ContactOut]
    next_cursor: str | None


class ForgetResult(BaseModel):
    """The outcome of a GDPR erase."""

    id: uuid.UUID
    forgotten: bool
    queued_connections: int


class ImportRowError(BaseModel):
    """Why one row of an imported file was rejected."""

    row: int = Field(
        description="The row number a spreadsheet shows for it: the header is row 1, "
        "so the first data row is row 2."
    )
    reason: str


class ImportResult(BaseModel):
    """The outcome of a CSV import; `rows` = created + updated + unchanged + rejected."""

    rows: int = Field(description="Data rows read (entirely blank rows are skipped).")
    created: int
    updated: int
    unchanged: int = Field(description="Rows matching a contact that already held the values.")
    rejected: int
    queued: int = Field(description="Sync-queue rows written (bulk priority).")
    errors: list[ImportRowError] = Field(description="One entry per rejected row, in file order.")
    errors_truncated: bool = Field(
        description="True when there were more rejected rows than `errors` lists."
    )
    columns: dict[str, str] = Field(description="Header of the file → contact field it fills.")
    ignored_columns: list[str] = Field(description="Headers that match no field (not imported).")
    encoding: str
