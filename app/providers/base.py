"""The provider interface: neutral types, the spec a provider declares, and the error tree.

A provider is one package, `app/providers/<id>/`, registered by one line in
`app/providers/registry.py` (DESIGN §14). The core (engine, reconcile, pull, webhook receiver,
connections) speaks only the types below; everything a provider's HTTP API means lives in its
package. A new provider implements:

- `spec.py`: a `ProviderSpec` (id, display name, how it connects, limits, capabilities, status
  map);
- `client.py`: a class satisfying `ProviderClient` (every failure mapped onto the error tree);
- `mapping.py`: `from_settings(settings) -> app.providers.mapping.MappingConfig`: the
  provider's FIELD_MAP rules (contact field → its field id, typed), its consent defaults and
  its comparison of fields read back (the planner, reconcile and inbound only use that);
- `inbound.py`: an `InboundAdapter` (verify and parse webhooks into `InboundEvent`s, keep our
  webhook registered, or say that only the scheduled pull brings changes back);
- `connect.py`: a `ConnectFlow` (credentials check and/or OAuth, token refresh, host rule) and
  the `ClientFactory` that builds a client for a stored connection.

Error tree (what the engine does with each):

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

import contextlib
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from app import metrics
from app.providers.transport import (
    Answer,
    ExchangeFailed,
    ExchangeTimeout,
    LeanTransport,
)

if TYPE_CHECKING:
    import httpx
    from pydantic import BaseModel

    from app.config import Settings

# --- errors ---------------------------------------------------------------------------------


class ErrorKind(StrEnum):
    """Why a member was refused for good."""

    invalid_email = "invalid_email"
    compliance = "compliance"  # the provider holds the person as opted out: consent follows
    forgotten = "forgotten"  # erased at the provider: never pushed again (tombstone)
    merge_fields = "merge_fields"  # a field value the provider refuses (any provider's fields)
    member_exists = "member_exists"  # a move onto an address the audience already has
    # A move the provider would turn into a merge of two people (Mautic merges a contact
    # edited onto another's address): refused, the old person left as they are; the new
    # address is not written to until the contact's address changes again.
    collision = "collision"
    not_found = "not_found"  # the person is not (or no longer) at the provider
    invalid = "invalid"


class ProviderError(Exception):
    """Base of every failure a provider call can raise."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ThrottledError(ProviderError):
    """Too many requests for the account; `retry_after` seconds when the provider says.

    `scope` names the limit that was hit when the provider says so (e.g. Constant Contact's
    `quota_exceeded` is the application's daily quota, not the account's rate).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.scope = scope


class QuotaExhausted(ThrottledError):
    """The provider says the daily quota is spent (Constant Contact's `quota_exceeded`): the
    engine pauses the quota's whole scope, every tenant, until 00:00 UTC (DESIGN §14.3)."""


class TransientError(ProviderError):
    """A failure that may pass by itself (5xx, timeout, connection error)."""


class AuthError(ProviderError):
    """The credentials are not (or no longer) accepted (401, `invalid_grant`, revoked)."""


class AudienceMissing(ProviderError):
    """The audience the connection points at does not exist."""


class PermanentError(ProviderError):
    """This member cannot be sent as it is; `kind` says why."""

    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.kind = kind


# --- neutral vocabulary (DESIGN §14.2) ------------------------------------------------------


class RemoteStatus(StrEnum):
    """A person's status in the audience, in every provider's terms (`spec.status_map`).

    These are the values `sync_state.remote_status` holds.
    """

    subscribed = "subscribed"
    pending = "pending"  # waiting for the person's confirmation (double opt-in, resubscribe)
    unsubscribed = "unsubscribed"  # the person (or we) opted out
    cleaned = "cleaned"  # bounced for good
    complained = "complained"  # marked our mail as spam
    archived = "archived"  # removed from the audience without a consent decision
    forgotten = "forgotten"  # erased (GDPR); never pushed again
    rejected = "rejected"  # refused by the provider (mirror only; `error_kind` says why)
    absent = "absent"  # not in the audience
    # Present without a marketing decision (Mailchimp `transactional`): may be subscribed
    # directly when the contact consents later, unlike `unsubscribed`.
    transactional = "transactional"


#: Statuses under which the person exists in the audience and can be updated.
PRESENT_STATUSES = frozenset(
    {
        RemoteStatus.subscribed,
        RemoteStatus.unsubscribed,
        RemoteStatus.cleaned,
        RemoteStatus.complained,
        RemoteStatus.pending,
        RemoteStatus.transactional,
    }
)


def tombstone_key(email_key: str) -> str:
    """The one-way key a forgotten address is remembered by (MD5 of the email key).

    Shared by every provider: a tombstone must never need the address itself. (It equals
    Mailchimp's subscriber hash, which the first tombstones stored.)
    """
    return hashlib.md5(email_key.encode(), usedforsecurity=False).hexdigest()


@dataclass(slots=True)
class ContactPayload:
    """What we want the person to look like at the provider (built by the planner).

    - `fields`: the provider's own field ids → typed values, as the provider's mapping rules
      produced them (merge tags, custom field UUIDs or ids, aliases); lists stay lists, the
      client renders them its own way; the core never interprets them, it only digests them.
    - `tags`: tag *names* the contact carries; a provider whose tags have ids resolves them
      (and reports the ids it set in `RemoteMember.refs`).
    - `consent_if_new`: the status a *new* person gets (`subscribed`, `pending` for a
      confirmation path, `unsubscribed` to create without consent — only ever for an update of
      someone already present).
    - `consent`: a status change for a person who already exists (`None`: leave consent as
      it is at the provider — never re-subscribe anyone by omission). `pending` means "through
      the provider's confirmation path" (Mailchimp double opt-in, Constant Contact's
      resubscribe email); the planner only asks for it when `Capabilities.reoptin` has one.
    - list membership: the audience id passed beside the payload to every client call is the
      list the person must be on (Mailchimp audience, Constant Contact list, ActiveCampaign
      list, Mautic segment).
    - `campaigns`: campaigns the person newly qualifies for under the provider's enrollment
      rules (`MappingConfig.campaigns`; Mautic's MAUTIC_ENROLLMENT) and that we never enrolled
      them in: the client adds them once and reports each in `RemoteMember.refs` as
      `campaign_ref(id): True`, so the planner never asks again (never re-added, never removed).
    """

    email_address: str
    fields: dict[str, Any]
    consent_if_new: str
    consent: str | None = None
    tags: list[str] = field(default_factory=list)
    # Interest groups (Mailchimp): only the mapped interest ids, each chosen or not; ids we
    # do not map are never sent, so the provider keeps them as the person set them.
    interests: dict[str, bool] = field(default_factory=dict)
    campaigns: list[str] = field(default_factory=list)
    # Never pushed by us: the mirror has no row for the person and no send of ours that could
    # have created them was cut short. A hint only (someone else may have created them at the
    # provider): a client that takes tags as its own on create must still check it created
    # the person.
    unseen: bool = False


def campaign_ref(campaign_id: str) -> str:
    """The mirror's `remote_refs` key that records our enrollment in a campaign (one key per
    campaign: refs merge key by key)."""
    return f"campaign:{campaign_id}"


@dataclass(slots=True, frozen=True)
class RemoteRef:
    """How the provider knows a person we already pushed (read from the mirror).

    `remote_id` is the provider's own id (Mailchimp subscriber hash, Constant Contact contact
    UUID, ActiveCampaign / Mautic numeric id); `refs` are the ids of what *we* set there
    (e.g. `{"tags": {"vip": "17"}, "list_membership": "42", "dnc": true}`), exactly as the
    client returned them in `RemoteMember.refs`. Clients that address people by email
    (Mailchimp) may ignore it; clients that cannot must raise PermanentError(not_found) when
    it is missing rather than guess.
    """

    email: str
    remote_id: str | None = None
    refs: Mapping[str, Any] = field(default_factory=dict)
    # An archive of a contact the CRM still holds (a rule or SYNC_KINDS leaves it out): leave
    # the audience only; never delete the person, even one we created.
    keep_person: bool = False
    # Tags another audience of the same account still pushes for the person (where tags are
    # the person's, `Capabilities.shared_tags`): a leave never removes them.
    keep_tags: frozenset[str] = frozenset()


@dataclass(slots=True)
class RemoteMember:
    """What the provider holds for a person after a call (or on a page of members).

    `status` is a neutral `RemoteStatus` value (mapped with `spec.status_map`); `fields` are the
    provider's field ids → values (compared with `MappingConfig.matches`); `refs`
    carry ids of what we set, stored in the mirror and handed back in `RemoteRef.refs`.
    """

    email_address: str
    remote_id: str
    status: str
    tags: list[str]
    last_changed: datetime | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    refs: dict[str, Any] = field(default_factory=dict)
    interests: dict[str, bool] | None = None  # interest id -> chosen (None: not read)


@dataclass(slots=True)
class BatchOutcome:
    """One member's outcome in a batch call: its new state, or the error that refused it."""

    email_key: str
    state: RemoteMember | None = None
    error: PermanentError | None = None


@dataclass(slots=True)
class Audience:
    """The list-like thing chosen at connect (audience, contact list, list, segment)."""

    id: str
    name: str
    member_count: int


@dataclass(slots=True)
class Interest:
    """An interest group a person may choose in an audience (Mailchimp: an interest of a
    category); a contact's preference names map onto them."""

    id: str
    name: str
    category: str


class InterestGroups(Protocol):
    """The interest groups of an audience, for a provider that has them (Mailchimp)."""

    async def list_interests(self, audience_id: str) -> list[Interest]:
        """Every interest of every category of the audience."""

    async def create_interest(self, audience_id: str, name: str, *, category: str) -> Interest:
        """Add an interest (and its category when missing)."""


@dataclass(slots=True)
class MemberPage:
    """One page of members as the reconcile and the pull read them."""

    members: list[RemoteMember]
    total_items: int


# --- the spec (DESIGN §14.1) -----------------------------------------------------------------


ConnectKind = Literal["oauth", "credentials"]


@dataclass(frozen=True, slots=True)
class CredentialField:
    """One field of a provider's credentials form (`POST …/credentials`)."""

    name: str
    label: str
    kind: Literal["text", "url", "secret"] = "text"
    help: str = ""


@dataclass(frozen=True, slots=True)
class ConnectSpec:
    """How an owner connects: an OAuth popup and/or a credentials form.

    `kinds` lists the ways in order of preference (Mailchimp: oauth, then an API key).
    `credentials` are the form's fields (empty when only OAuth exists); the body the API
    validates is `ConnectFlow.credentials_model`.
    """

    kinds: tuple[ConnectKind, ...]
    credentials: tuple[CredentialField, ...] = ()
    pkce: bool = False
    scopes: tuple[str, ...] = ()
    token_expires: bool = False  # access tokens must be refreshed (§14.4)


@dataclass(frozen=True, slots=True)
class EndpointRate:
    """A lower rate for one operation (`op` as the client labels its requests)."""

    op: str
    requests: int
    per_seconds: float


@dataclass(frozen=True, slots=True)
class Limits:
    """A provider's limits (DESIGN §14.3); the limits layer enforces them, the engine asks it.

    Every value is `None` when the provider has no such limit. Account scope = one connected
    account (`connections.account_key`); application scope = every tenant of this deployment
    together (one OAuth application), shared fairly.
    """

    concurrency_per_account: int | None = None  # requests in flight (Mailchimp 10)
    rate_per_account: float | None = None  # requests a second (ActiveCampaign 5)
    rate_per_application: float | None = None  # requests a second (Constant Contact 4)
    daily_quota_per_application: int | None = None  # requests a UTC day (Constant Contact 10k)
    bulk_quota_share: float = 1.0  # the share of the daily quota bulk work may spend
    endpoint_rates: tuple[EndpointRate, ...] = ()  # ActiveCampaign bulk_import 100/min
    # Ops (the clients' request labels) that finish work already sent — the second step of a
    # batch: at the account's gate they go ahead of new bulk requests, since the rows they
    # complete are held until they land (Mautic's segment add after a batch).
    first_ops: frozenset[str] = frozenset()
    # Ops that only learn the outcome of work the provider already holds (Constant Contact's
    # activity status reads): every tenant's go as one shared tenant of a shared rate, never
    # in the turn of a tenant whose new work waits (nothing reaches the provider sooner
    # for them).
    background_ops: frozenset[str] = frozenset()


Reoptin = Literal["double_opt_in", "resubscribe_email", "none"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the engine may ask of the provider.

    - `batch_size`: members a batch upsert takes (0: no batch endpoint, single calls only);
    - `bulk_import`: an asynchronous import job carries backlogs (polled to completion);
    - `reoptin`: the way back after a person's unsubscribe — `double_opt_in` (status pending),
      `resubscribe_email` (one confirmation email, once), `none` (stays unsubscribed; the
      contact's `sync` says `blocked`);
    - `tag_model`: `names` (tags addressed by name) or `ids` (created when missing, removed by
      the id we set, from `RemoteRef.refs`);
    - `shared_tags`: tags belong to the person, not to one audience (ActiveCampaign, Mautic,
      Constant Contact: one contact for every list/segment of the account), so a tag another
      mapping of the connection still pushes is never removed by this one; Mailchimp's are
      per audience member;
    - `inbound`: `webhook` (events arrive; the pull catches what they miss), `pull` (no
      webhooks exist: only the scheduled pull brings changes back);
    - `webhook_signature`: deliveries carry a signature the adapter verifies;
    - `joins_creates`: the client joins a connection's live creates waiting at once into one
      request (Constant Contact: one import per turn of a shared application rate), so the
      engine keeps each such connection's live rows on one worker.
    """

    batch_size: int = 0
    bulk_import: bool = False
    reoptin: Reoptin = "none"
    tag_model: Literal["names", "ids"] = "names"
    shared_tags: bool = False
    inbound: Literal["webhook", "pull"] = "pull"
    webhook_signature: bool = False
    joins_creates: bool = False


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Everything the core needs to know about a provider without importing its package.

    `status_map` maps the provider's own status words onto `RemoteStatus`; the client applies
    it before anything leaves the package.
    """

    id: str
    display_name: str
    connect: ConnectSpec
    limits: Limits
    capabilities: Capabilities
    status_map: Mapping[str, RemoteStatus]
    audience_noun: str = "audience"  # audience, contact list, list, segment


# --- the operations ---------------------------------------------------------------------------


class RequestLimiter(Protocol):
    """Admits one provider request at a time per slot (the account's limits, §14.3)."""

    def slot(self, op: str | None = None) -> AbstractAsyncContextManager[None]:
        """Held for exactly the request on the wire: sent, answered, body read.

        `op` is the client's label of the request; a spec's `EndpointRate` with that `op`
        applies to it besides the account's and the application's limits.
        """


async def send(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request | Callable[[], httpx.Request],
    *,
    provider: str,
    op: str,
    limiter: RequestLimiter | None,
    timeout_seconds: float,
    authorize: Callable[[httpx.Request], Awaitable[None]] | None = None,
) -> httpx.Response:
    """One request on the wire, under the limiter's slot (held until the body is read).

    The request carries its own timeouts (its extensions; `timeout_seconds` names them in the
    message). Timeouts and connection errors become TransientError; the request's latency and those
    outcomes are counted per provider and `op`. The caller counts the answer: `answered_ok`,
    or `refused` with the error its status means. `authorize` sets the request's credentials
    once the slot is ours: a token taken before a wait for the shared rate could expire in it.
    `request` may be a builder, called once the slot (and the rate's token) is held: a body that
    joins whatever waits by then (Constant Contact's waiting creates as one import).
    """
    slot = limiter.slot(op) if limiter is not None else contextlib.nullcontext()
    start = time.perf_counter()
    try:
        async with slot:
            if callable(request):
                request = request()
            if authorize is not None:
                await authorize(request)
            response = await transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
    except httpx.TimeoutException as exc:
        _requests(provider, op, "timeout").inc()
        message = f"timeout after {timeout_seconds:.0f}s ({type(exc).__name__})"
        raise TransientError(message) from exc
    except httpx.HTTPError as exc:
        _requests(provider, op, "connection_error").inc()
        raise TransientError(f"connection error: {type(exc).__name__}: {exc}") from exc
    finally:
        _latency(provider, op).observe(time.perf_counter() - start)
    return response


async def exchange(
    transport: httpx.AsyncBaseTransport,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    content: bytes | None,
    provider: str,
    op: str,
    limiter: RequestLimiter | None,
    timeout_seconds: float,
) -> Answer:
    """`send()` for a client on a hot path: on a `LeanTransport` the request goes out without
    httpx's objects; on any other transport (respx, httpx's own) it is an httpx.Request.

    The same contract as `send()`: the limiter's slot covers the wire, timeouts and connection
    errors become TransientError, latency and those outcomes are counted.
    """
    if not isinstance(transport, LeanTransport):
        request = httpx.Request(
            method,
            url,
            headers=headers,
            content=content,
            extensions={"timeout": dict.fromkeys(_TIMEOUTS, timeout_seconds)},
        )
        return await send(
            transport,
            request,
            provider=provider,
            op=op,
            limiter=limiter,
            timeout_seconds=timeout_seconds,
        )
    slot = limiter.slot(op) if limiter is not None else contextlib.nullcontext()
    start = time.perf_counter()
    try:
        async with slot:
            return await transport.exchange(
                method, url, headers=headers, content=content, timeout_seconds=timeout_seconds
            )
    except ExchangeTimeout as exc:
        _requests(provider, op, "timeout").inc()
        raise TransientError(f"timeout after {timeout_seconds:.0f}s ({exc})") from exc
    except ExchangeFailed as exc:
        _requests(provider, op, "connection_error").inc()
        raise TransientError(f"connection error: {exc}") from exc
    finally:
        _latency(provider, op).observe(time.perf_counter() - start)


_TIMEOUTS = ("connect", "read", "write", "pool")


# A metric's child per label tuple, looked up once: `labels()` costs more than the increment.
@functools.cache
def _requests(provider: str, op: str, outcome: str) -> Any:
    return metrics.PROVIDER_REQUESTS.labels(provider, op, outcome)


@functools.cache
def _latency(provider: str, op: str) -> Any:
    return metrics.PROVIDER_LATENCY.labels(provider, op)


def answered_ok(provider: str, op: str) -> None:
    """Count a request the provider answered as asked."""
    _requests(provider, op, "ok").inc()


def refused(provider: str, op: str, error: ProviderError) -> ProviderError:
    """Count a request the provider refused, by the error's class (a throttle also as a
    throttle event); the error, to raise."""
    outcome = type(error).__name__.removesuffix("Error").lower()
    _requests(provider, op, outcome).inc()
    if isinstance(error, ThrottledError):
        metrics.THROTTLE_EVENTS.labels(provider).inc()
    return error


class ProviderClient(Protocol):
    """The neutral operations the engine, reconcile and pull drive (one account's API).

    Every method raises only the error tree above. `audience_id` is the connection's chosen
    audience; `remote` is what the mirror knows of the person (None: never pushed). Statuses in
    and out are `RemoteStatus` values. Requests go through the `RequestLimiter` the factory was
    given, so the account's limits hold across processes.
    """

    name: str

    async def ping(self) -> None:
        """Succeed when the API answers for these credentials (the paused-connection probe)."""

    async def list_audiences(self) -> list[Audience]:
        """Every audience of the account."""

    async def get_audience(self, audience_id: str) -> Audience:
        """One audience; AudienceMissing when it does not exist."""

    async def upsert_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """Create or update the person and put them on the audience.

        Never changes consent of an existing person unless `member.consent` says so; a new
        person gets `member.consent_if_new`. Tags apply on create; for existing people the
        engine calls `update_tags` with the difference.
        """

    async def update_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """Update an existing person only (never creates); PermanentError(not_found) if absent."""

    async def batch_upsert(
        self, audience_id: str, members: list[ContactPayload]
    ) -> list[BatchOutcome]:
        """Create or update up to `capabilities.batch_size` people in one call, in order;
        per-member refusals come back as BatchOutcome.error, one by one."""

    async def update_tags(
        self,
        audience_id: str,
        email: str,
        *,
        add: list[str],
        remove: list[str],
        remote: RemoteRef | None = None,
    ) -> Mapping[str, Any] | None:
        """Add `add` and remove `remove` (only tags we set) on the person, nothing else.

        Returns the refs to keep in the mirror when tags have ids (None: nothing to record).
        """

    async def move_member(
        self,
        audience_id: str,
        old_email: str,
        member: ContactPayload,
        *,
        remote: RemoteRef | None = None,
    ) -> RemoteMember:
        """Change the person's address keeping their history; PermanentError(member_exists)
        when the new address is taken, (not_found) when the old one is gone."""

    async def archive_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> bool:
        """Take the person off our audience the least destructive way, never touching consent
        (Mailchimp archive; Constant Contact / ActiveCampaign / Mautic: leave our list or
        segment). False when they were already gone."""

    async def forget_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> None:
        """Erase the person permanently (GDPR); absent is fine."""

    async def list_members(
        self,
        audience_id: str,
        *,
        offset: int = 0,
        count: int = 1000,
        since_last_changed: datetime | None = None,
        status: str | None = None,
    ) -> MemberPage:
        """One page of the audience's members, oldest change first when `since_last_changed`
        is given (the reconcile pages all; the pull reads changes since its watermark)."""


#: The credentials keys of an expiring access token (DESIGN §14.4): the token, and when it
#: expires (seconds since the epoch, wall clock: every process reads the same row).
ACCESS_TOKEN = "access_token"
EXPIRES_AT = "expires_at"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What a client factory gets to build a client for one stored connection.

    `api_endpoint` and `dc` are the connection row's; `credentials` are decrypted in memory
    only. `sandbox` is true when the provider's traffic goes to the built-in emulator (the
    host rule is then skipped).
    """

    transport: httpx.AsyncBaseTransport
    api_endpoint: str
    credentials: Mapping[str, Any]
    timeout: float
    sandbox: bool
    dc: str | None = None
    limiter: RequestLimiter | None = None
    # Expiring access tokens (`ConnectSpec.token_expires`): the core's renewal, one process
    # at a time per connection (app/connections/tokens.py); None: `credentials` as stored.
    tokens: TokenSource | None = None


class TokenSource(Protocol):
    """A connection's live access token, renewed by the core before it expires (§14.4)."""

    async def access_token(self, *, stale: str | None = None) -> str:
        """The token to send now; `stale` is a token the provider just refused (401): renew
        it unless someone already did. AuthError when the connection must be reconnected."""


#: Builds a client; raises ValueError when the stored host breaks the provider's host rule.
ClientFactory = Callable[[ClientConfig], ProviderClient]


# --- inbound (DESIGN §7) -----------------------------------------------------------------------


class InboundKind(StrEnum):
    """The neutral inbound events every provider's deliveries become."""

    unsubscribe = "unsubscribe"
    archived = "archived"  # removed from the audience at the provider (not an opt-out)
    cleaned = "cleaned"  # bounced
    complained = "complained"
    subscribe = "subscribe"  # signup or re-subscribe
    profile = "profile"  # data edited at the provider
    email_change = "email_change"
    ignored = "ignored"  # stored for the record, no effect (campaign events, …)


@dataclass(slots=True, frozen=True)
class InboundEvent:
    """One neutral event.

    `type` is the provider's own event name (kept for the inbox and metrics); `fields` holds
    the provider's fields the delivery carries (merge tags, field ids), mapped back to contact
    columns by the mapping's rules (`MappingConfig.contact_fields`);
    `audience_id` is the list the event is about when the delivery says (events for another
    audience are ignored); `payload` is what the inbox stores.
    """

    kind: InboundKind
    type: str
    fired_at: datetime
    payload: dict[str, Any]
    email: str | None = None
    new_email: str | None = None
    reason: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    audience_id: str | None = None
    # The interest names the person has chosen, when the delivery says (None: it does not).
    interests: list[str] | None = None
    # The same by the provider's ids (Constant Contact: the lists the person is on), when
    # the delivery names them by id rather than by name (None: it does not say).
    interest_ids: list[str] | None = None
    # A change rather than the whole choice (Mautic: one segment joined or left): interest
    # id → chosen now. The interests it does not name stay as the contact has them.
    interest_changes: dict[str, bool] | None = None
    # The provider's id of the person when the delivery carries it (Mautic's contact id): a
    # profile event whose address differs from what the mirror holds for that id is an
    # address changed at the provider (Mautic sends no "email changed" event).
    person_id: str | None = None


class MalformedPayload(ValueError):
    """The body is not a delivery of this provider (400, nothing stored)."""


class BadSignature(ValueError):
    """The delivery's signature is missing or wrong (401, nothing stored)."""


WebhookCall = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class InboundAdapter(Protocol):
    """A provider's webhooks: parsing, verification, and keeping our webhook registered.

    Providers without webhooks (`capabilities.inbound == "pull"`) implement `parse` by raising
    MalformedPayload and the webhook methods as no-ops returning None / 0.
    """

    event_types: frozenset[str]
    media_type: str  # what deliveries are posted as (others: 415, nothing stored)

    def parse(
        self, body: bytes, *, headers: Mapping[str, str], secret: str | None
    ) -> list[InboundEvent]:
        """Verify (BadSignature) and parse (MalformedPayload) one delivery into events.

        `secret` is the connection's webhook signing secret when the provider signs.
        """

    def dedupe_key(self, connection_id: str, event: InboundEvent, body: bytes) -> str:
        """The inbox key that makes a redelivery a duplicate."""

    async def ensure_webhook(
        self,
        client: Any,
        audience_id: str,
        *,
        url: str,
        webhook_token: str,
        call: WebhookCall,
    ) -> str | None:
        """Make the audience carry exactly one webhook of ours at `url`; its id (None: the
        provider has no webhooks). Raises the provider's errors."""

    async def remove_webhooks(
        self,
        client: Any,
        audience_id: str,
        *,
        webhook_token: str,
        known_id: str | None,
        call: WebhookCall,
    ) -> int:
        """Delete our webhook(s) (disconnect, audience change); how many were removed."""


# --- connect (DESIGN §8, §14.4) ---------------------------------------------------------------


@dataclass(slots=True)
class Account:
    """Where and how to reach one provider account, ready to be stored on a connection.

    `account_key` identifies the account across owners (the limits' account scope);
    `credentials` are encrypted before they are stored and never leave the service.
    """

    api_base: str
    account_key: str
    credentials: dict[str, Any]
    auth_kind: str
    dc: str | None = None
    account_name: str | None = None


class ConnectRefused(ValueError):
    """A connect step that cannot go on: credentials the provider's rules refuse (`field`
    names the input), or an OAuth answer that is refused or failed (`code` says why, shown to
    the user; `status_code` the HTTP status the API answers with)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str = "refused",
        status_code: int = 422,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class SandboxSeed:
    """The built-in emulator's default account, for development without any credentials.

    The registry reads it from the provider's sandbox package (provider packages never import
    sandboxes): `credentials` connect the demo owner, `oauth_client` is the emulator's OAuth app.
    """

    credentials: Mapping[str, Any]
    audience_id: str
    audience_name: str
    account_name: str
    oauth_client: tuple[str, str] | None = None


class ConnectFlow(Protocol):
    """How an owner connects a provider account (§8, §14.5).

    - `credentials_model`: the pydantic body of `POST /api/integrations/{id}/credentials`
      (None: only OAuth);
    - `account_from_credentials`: validate the body into an Account (host rule, key format;
      ConnectRefused otherwise) — no remote call; the service then calls `ping` and
      `list_audiences` through the factory before anything is stored;
    - `authorize_url` / `exchange_code`: the OAuth popup (NotImplementedError without OAuth);
      `exchange_code` returns the Account the grant reaches (refresh token in `credentials`);
    - `sandbox` / `timeout`: the provider's mode and request timeout from Settings;
    - `configured`: a single-tenant connection from the environment, or None;
    - `refresh`: renew an expiring access token (None when tokens do not expire);
    - `prepare_audience` / `check_mapping`: the field map's provider fields (§14.7).
    """

    credentials_model: type[BaseModel] | None

    def account_from_credentials(self, settings: Settings, body: BaseModel) -> Account:
        """The account a credentials body reaches (ConnectRefused when refused)."""

    async def authorize_url(self, settings: Settings, *, state: str) -> str:
        """The provider's authorize page for this app, redirect URI and `state`."""

    async def exchange_code(
        self, settings: Settings, *, code: str, limiter: RequestLimiter | None = None
    ) -> Account:
        """Code → tokens → the account they reach (calls to the API under `limiter`)."""

    def sandbox(self, settings: Settings) -> bool:
        """True when this provider's traffic goes to its built-in emulator (`<ID>_MODE`)."""

    def timeout(self, settings: Settings) -> float:
        """Seconds one request may take."""

    def configured(
        self, settings: Settings, seed: SandboxSeed | None
    ) -> tuple[str, Account, Audience] | None:
        """(owner, account, audience) configured by the environment for a single-tenant
        deployment; given `seed` (development, sandbox mode) the emulator's default account
        when nothing is configured; None otherwise. No remote call."""

    async def refresh(
        self, settings: Settings, credentials: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """New credentials (with `ACCESS_TOKEN` and `EXPIRES_AT`, and a rotated refresh token
        where the provider rotates them), or None when nothing expires. Called by the core
        only (`app.connections.tokens`), one process per connection at a time; AuthError when
        the grant is refused (`invalid_grant`, a revoked client)."""

    async def prepare_audience(self, client: Any, audience_id: str, mapping: Any) -> list[str]:
        """Create the provider fields `mapping` (a MappingConfig) needs and the audience lacks,
        on connect, audience choice and every reconcile; the ids created. A field that cannot
        hold its entry raises app.fieldmap.FieldsRefused naming the entry."""

    def check_mapping(self, settings: Settings) -> list[str]:
        """Every problem this provider has with the deployment's FIELD_MAP, naming entries
        (start-up refuses to run on any)."""
