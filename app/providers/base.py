"""The provider interface the sync engine drives, and its error tree.

ProviderError
 ├── ThrottledError     the account is over its limit (429, 403 without a body): cool the
 │                      connection down; the row's attempts are not spent
 ├── TransientError     5xx, timeouts, connection errors: retry with backoff, park after N
 ├── AuthError          401, revoked or wrong credentials: the connection goes to `error`
 │                      and nothing is retried until it is reconnected
 ├── AudienceMissing    the audience no longer exists: like AuthError, a connection problem
 └── PermanentError     this member can never be sent as it is (kind says why); the row
                        completes as `rejected` and is not retried until the contact changes
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


class ErrorKind(StrEnum):
    """Why a member was refused for good."""

    invalid_email = "invalid_email"
    compliance = "compliance"
    forgotten = "forgotten"
    merge_fields = "merge_fields"
    member_exists = "member_exists"
    not_found = "not_found"
    invalid = "invalid"


class ProviderError(Exception):
    """Base of every failure a provider call can raise."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ThrottledError(ProviderError):
    """Too many requests for the account; `retry_after` seconds when the provider says."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class TransientError(ProviderError):
    """A failure that may pass by itself (5xx, timeout, connection error)."""


class AuthError(ProviderError):
    """The credentials are not (or no longer) accepted."""


class AudienceMissing(ProviderError):
    """The audience the connection points at does not exist."""


class PermanentError(ProviderError):
    """This member cannot be sent as it is; `kind` says why."""

    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.kind = kind


@dataclass(slots=True)
class MemberPayload:
    """What we want a member to look like at the provider."""

    email_address: str
    merge_fields: dict[str, Any]
    status_if_new: str
    status: str | None = None  # only when the status must change for an existing member
    tags: list[str] = field(default_factory=list)  # applied by the provider on create only


@dataclass(slots=True)
class MemberState:
    """What the provider holds for a member after a call."""

    email_address: str
    remote_id: str
    status: str
    tags: list[str]
    last_changed: datetime | None = None
    merge_fields: dict[str, Any] = field(default_factory=dict)
    created: bool = False


@dataclass(slots=True)
class BatchOutcome:
    """One member's outcome in a batch call: its new state, or the error that refused it."""

    email_key: str
    state: MemberState | None = None
    error: PermanentError | None = None


@dataclass(slots=True)
class Audience:
    """An audience (list) of the account."""

    id: str
    name: str
    member_count: int


@dataclass(slots=True)
class MemberPage:
    """One page of members as the reconcile and the pull read them."""

    members: list[MemberState]
    total_items: int


class RequestLimiter(Protocol):
    """Admits one provider request at a time per slot (the per-account concurrency cap)."""

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Held for exactly the request on the wire: sent, answered, body read."""


class AudienceProvider(Protocol):
    """The operations the sync engine needs from an email-marketing provider."""

    name: str

    async def ping(self) -> None:
        """Succeed when the API answers for these credentials."""

    async def list_audiences(self) -> list[Audience]:
        """Every audience of the account."""

    async def upsert_member(self, audience_id: str, member: MemberPayload) -> MemberState:
        """Create or update one member (never re-subscribes unless `status` says so)."""

    async def update_member(self, audience_id: str, member: MemberPayload) -> MemberState:
        """Update an existing member only; NotFound (PermanentError not_found) if absent."""

    async def batch_upsert(
        self, audience_id: str, members: list[MemberPayload]
    ) -> list[BatchOutcome]:
        """Create or update many members in one call; per-member errors come back one by one."""

    async def update_tags(
        self, audience_id: str, email: str, *, add: list[str], remove: list[str]
    ) -> None:
        """Activate `add` and deactivate `remove` on the member, nothing else."""

    async def move_member(
        self, audience_id: str, old_email: str, member: MemberPayload
    ) -> MemberState:
        """Change a member's address, keeping its history; member_exists when it is taken."""

    async def archive_member(self, audience_id: str, email: str) -> bool:
        """Archive; False when it was already gone (archived, cleaned, pending or absent)."""

    async def forget_member(self, audience_id: str, email: str) -> None:
        """Erase the member permanently (GDPR); absent is fine."""

    async def list_members(
        self,
        audience_id: str,
        *,
        offset: int = 0,
        count: int = 1000,
        since_last_changed: datetime | None = None,
        status: str | None = None,
    ) -> MemberPage:
        """One page of members, oldest change first when `since_last_changed` is given."""
