"""Mautic REST API client (4.x/5.x): the neutral operations and the error mapping.

Rules (reference §8, DESIGN §14.5): people are found with exact `where` filters, never
`search=email:` (a prefix LIKE); writes go through `POST /contacts/new` (an upsert on email)
with empty values left out and never `overwriteWithBlank`; tags are only ever added or
removed one by one (`-tag`); consent is the email channel's do-not-contact entry — ours is
reason 3 (manual) with our comment, and only ours is ever lifted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import orjson

from app.emailkey import email_key
from app.fieldmap import FieldRule, FieldsRefused
from app.providers.base import (
    Audience,
    AudienceMissing,
    AuthError,
    BatchOutcome,
    ContactPayload,
    ErrorKind,
    Interest,
    MemberPage,
    PermanentError,
    ProviderError,
    RemoteMember,
    RemoteRef,
    RemoteStatus,
    RequestLimiter,
    ThrottledError,
    TokenSource,
    TransientError,
    answered_ok,
    campaign_ref,
    refused,
    send,
)
from app.providers.mautic.mapping import field_value
from app.providers.mautic.spec import BATCH_SIZE, OUR_DNC_COMMENT, PROVIDER, STATUS_MAP

# The category a segment on the preference centre is offered under (a preference's map).
PREFERENCE_CENTRE = "Preference centre"
# A token is renewed this long before Mautic says it expires (clock skew, a slow request).
TOKEN_MARGIN_SECONDS = 60.0
# 401s one request may answer with a renewal and a retry (each for a different token).
RENEWALS_PER_REQUEST = 2
# Ids in one `segments/{id}/contacts/add`. The API sets no limit, but Mautic adds each id in
# PHP within the request's time: an add carries at most five batches of 200. Adds go one at a
# time per segment and carry what queued meanwhile, so their size follows the batch rate: at
# two batches an add (the bound before) they fell behind a drain at four requests in flight,
# and the last batches' rows waited for a tail of adds sent one by one.
SEGMENT_ADD_MAX_IDS = 5 * BATCH_SIZE
# An add waits while batches of its segment are under way (waiting for a slot or on the wire:
# their ids would join it) until it is full, at most this many times as long as its own batch
# took on the wire: every add costs a slot a request's fixed time (L0) whatever its ids, so an
# add carrying five batches instead of two or three leaves the slots to the batches (P5).
SEGMENT_ADD_WAIT_BATCHES = 2.0
REASON_VERBS = {1: "unsubscribed", 2: "bounced", 3: "manual"}
# A batch's contact ids waiting for a segment add, and where its answer goes.
Pending = tuple[list[int], "asyncio.Future[dict[str, Any]]"]
# FIELD_MAP types → the Mautic field types that hold them, and what a missing one is created as
# (a list is stored `|`-joined in a text field: multiselect needs its options declared first).
FIELD_ACCEPTS = {
    "text": ("text", "textarea", "email", "tel", "url", "select", "lookup", "multiselect"),
    "number": ("number",),
    "date": ("date", "datetime"),
    "list": ("text", "textarea", "multiselect"),
}
FIELD_CREATE_AS = {"text": "text", "number": "number", "date": "date", "list": "text"}
# Token-endpoint error types that mean the client id/secret are not (or no longer) accepted.
AUTH_TYPES = frozenset({"invalid_client", "unauthorized_client", "invalid_grant", "access_denied"})


def _errors(body: Any) -> list[dict[str, Any]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, dict):  # batch errors are keyed by index
        errors = list(errors.values())
    return [e for e in errors or [] if isinstance(e, dict)]


def _loads(content: bytes) -> Any:
    # A 429's body is JSON sent as text/html: parse by content, never by content type.
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None


class _AnswerFields(msgspec.Struct):
    all: dict[str, Any] | None = None


class _AnswerContact(msgspec.Struct):
    """What a batch answer's contact is read for (member_of, the DNC, the id)."""

    id: Any = None
    dateAdded: Any = None
    dateModified: Any = None
    fields: _AnswerFields | None = None
    tags: Any = None
    doNotContact: Any = None


class _BatchAnswer(msgspec.Struct):
    contacts: dict[str, _AnswerContact] | list[_AnswerContact] | None = None
    statusCodes: Any = None
    errors: Any = None


_BATCH_ANSWER = msgspec.json.Decoder(_BatchAnswer)


def _batch_loads(content: bytes) -> Any:
    """A `contacts/batch/new` answer with only the keys batch_upsert reads built. Each
    contact carries every field's metadata (about 1.3 MB for 200): building all of it was
    most of the engine's CPU in a bulk drain, the rest is skipped unbuilt. Anything of
    another shape (5.0's empty contacts, no `fields.all`) is parsed whole, as before."""
    try:
        answer = _BATCH_ANSWER.decode(content)
    except msgspec.DecodeError:
        return _loads(content)
    raw = answer.contacts or {}
    items = raw.items() if isinstance(raw, dict) else enumerate(raw)
    contacts: dict[Any, Any] = {}
    for key, c in items:
        if c.fields is None or c.fields.all is None:
            return _loads(content)
        contacts[key] = {
            "id": c.id,
            "dateAdded": c.dateAdded,
            "dateModified": c.dateModified,
            "fields": {"all": c.fields.all},
            "tags": c.tags or [],
            "doNotContact": c.doNotContact or [],
        }
    return {"contacts": contacts, "statusCodes": answer.statusCodes, "errors": answer.errors}


def classify(error: Mapping[str, Any]) -> ErrorKind:
    """A 400/422's kind from its `details` (field → messages), never from translated text."""
    details = error.get("details")
    fields = set(details) if isinstance(details, dict) else set()
    if "email" in fields:
        return ErrorKind.invalid_email
    if fields:
        return ErrorKind.merge_fields
    return ErrorKind.invalid


def error_from(status: int, body: Any, *, op: str) -> ProviderError:
    """The ProviderError a non-2xx Mautic answer means (status and `type`, never `message`)."""
    errors = _errors(body)
    first = errors[0] if errors else {}
    kind_type = str(first.get("type") or "")
    message = f"{status} {kind_type or 'error'}: {first.get('message') or ''}".strip()
    if status == 429:
        return ThrottledError(message, status=status)
    if status == 401 or (status == 400 and kind_type in AUTH_TYPES):
        return AuthError(message, status=status)
    if status == 403:
        # The API or Basic switched off, or the client's role may not write: a reconnect.
        return AuthError(message, status=status)
    if status >= 500 or not errors:
        # 5xx, and HTML pages of the web server in front of PHP (503 at its cap, 504).
        return TransientError(message, status=status)
    if status == 404:
        if op in ("audience", "segment_add"):
            return AudienceMissing(message, status=status)
        return PermanentError(ErrorKind.not_found, message, status=status)
    if status in (400, 422):
        return PermanentError(classify(first), message, status=status)
    return PermanentError(ErrorKind.invalid, message, status=status)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def email_dnc(contact: Mapping[str, Any]) -> dict[str, Any] | None:
    """The contact's do-not-contact entry for the email channel, or None."""
    for entry in contact.get("doNotContact") or []:
        if isinstance(entry, dict) and (entry.get("channel") or "email") == "email":
            return entry
    return None


def is_ours(dnc: Mapping[str, Any] | None) -> bool:
    """True for a DNC we set: reason manual with our comment (a person's is 1 or 2)."""
    return dnc is not None and dnc.get("reason") == 3 and dnc.get("comments") == OUR_DNC_COMMENT


def is_complaint(dnc: Mapping[str, Any] | None) -> bool:
    """True for a feedback-loop complaint: Mautic records it as reason 1 (unsubscribed) with
    the feedback's text (`abuse`, a spam report) as the comment."""
    if dnc is None or int(dnc.get("reason") or 0) != 1:
        return False
    comment = str(dnc.get("comments") or "").lower()
    return any(word in comment for word in ("abuse", "spam", "complain", "feedback loop"))


def status_of(contact: Mapping[str, Any]) -> RemoteStatus:
    """The neutral status of a contact in our segment: its email DNC reason, mapped (a
    complaint is told apart by its comment)."""
    dnc = email_dnc(contact)
    if is_complaint(dnc):
        return RemoteStatus.complained
    verb = "contactable" if dnc is None else REASON_VERBS.get(int(dnc.get("reason") or 1), "")
    return STATUS_MAP.get(verb or "unsubscribed", RemoteStatus.unsubscribed)


def contact_fields(contact: Mapping[str, Any]) -> dict[str, Any]:
    """A contact's field values by alias: `fields.all` (API), else the grouped entries
    (webhooks carry no `all`)."""
    fields = contact.get("fields") or {}
    if not isinstance(fields, dict):
        return {}
    flat = fields.get("all")
    if isinstance(flat, dict):
        return {k: v for k, v in flat.items() if k != "id"}
    out: dict[str, Any] = {}
    for group in fields.values():
        if isinstance(group, dict):
            for alias, entry in group.items():
                if isinstance(entry, dict):
                    out[alias] = entry.get("value")
    return out


def member_of(
    contact: Mapping[str, Any], *, created: bool = False, refs: Mapping[str, Any] | None = None
) -> RemoteMember:
    """A RemoteMember from a contact body; a contact without an id is Mautic 5.0's empty
    object bug (#13298): the write may have happened, so it is worth a retry, not a refusal."""
    if not contact.get("id"):
        raise TransientError("Mautic answered a contact without an id (5.0's empty-object bug)")
    fields = contact_fields(contact)
    return RemoteMember(
        email_address=str(fields.get("email") or ""),
        remote_id=str(contact["id"]),
        status=status_of(contact).value,
        tags=[t["tag"] for t in contact.get("tags") or [] if isinstance(t, dict) and "tag" in t],
        last_changed=_parse_time(contact.get("dateModified") or contact.get("dateAdded")),
        fields=fields,
        created=created,
        refs=dict(refs or {}),
    )


def contact_body(member: ContactPayload, *, tags: bool = True) -> dict[str, Any]:
    """The `/contacts/new` body: the address, our non-empty fields and our tags; never
    `overwriteWithBlank`, so an empty local value never erases Mautic's."""
    body: dict[str, Any] = {"email": member.email_address}
    for alias, value in member.fields.items():
        rendered = field_value(value)
        if rendered is not None:
            body[alias] = rendered
    if tags and member.tags:
        body["tags"] = list(member.tags)
    return body


class MauticClient:
    """One Mautic instance's API with a client_credentials token, over a shared transport."""

    name = PROVIDER

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        timeout: float = 30.0,
        limiter: RequestLimiter | None = None,
        tokens: TokenSource | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self._transport = transport
        # The secret our webhook's deliveries are signed with (kept in the credentials).
        self.webhook_secret = webhook_secret
        self._limiter = limiter
        self._tokens = tokens
        root = base_url.rstrip("/").removesuffix("/api")
        self._token_url = root + "/oauth/v2/token"
        self._base = root + "/api"
        self._client_id = client_id
        self._client_secret = client_secret
        self._token: str | None = None
        self._token_expires = 0.0
        # One fetch at a time: callers waiting on an expired token share the new one.
        self._token_lock = asyncio.Lock()
        # Segment adds of batches waiting for one in flight, by segment: the next add carries
        # them all (one request for several batches, not one each).
        self._adds: dict[str, list[Pending]] = {}
        self._add_locks: dict[str, asyncio.Lock] = {}
        # Batches of a segment under way (waiting for a slot or on the wire), and a wake-up
        # for the adds waiting for them: set when a batch is answered or a batch's ids queue.
        self._batches_out: dict[str, int] = {}
        self._add_news: dict[str, asyncio.Event] = {}
        self._timeout = timeout
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }

    # --- plumbing -----------------------------------------------------------------------

    async def _send(
        self,
        request: httpx.Request,
        *,
        op: str,
        authorize: bool = False,
        on_slot: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """One request within the limiter's slot. `authorize`: the token is taken once the slot
        is ours, so time spent waiting for a slot never sends a token that expired meanwhile
        (`request.extensions["token"]` says which one went); `on_slot` is told then too."""
        granted: Callable[[httpx.Request], Awaitable[None]] | None = None
        if on_slot is not None:
            granted = functools.partial(self._slot_taken, on_slot, authorize)
        elif authorize:
            granted = self._authorize
        return await send(
            self._transport,
            request,
            provider=PROVIDER,
            op=op,
            limiter=self._limiter,
            timeout_seconds=self._timeout,
            authorize=granted,
        )

    async def _slot_taken(
        self, on_slot: Callable[[], None], authorize: bool, request: httpx.Request
    ) -> None:
        on_slot()
        if authorize:
            await self._authorize(request)

    async def _authorize(self, request: httpx.Request) -> None:
        token = await self.fetch_token()
        request.headers["Authorization"] = f"Bearer {token}"
        request.extensions["token"] = token

    def _fail(self, response: httpx.Response, *, op: str) -> ProviderError:
        return refused(
            PROVIDER, op, error_from(response.status_code, _loads(response.content), op=op)
        )

    async def fetch_token(self) -> str:
        """The access token: the core's (`tokens`, renewed before expiry by one process per
        connection), else a client_credentials token of our own, cached until shortly before
        it expires (a connect check, before anything is stored)."""
        if self._tokens is not None:
            return await self._tokens.access_token()
        if self._token and time.monotonic() < self._token_expires:
            return self._token
        async with self._token_lock:
            if self._token and time.monotonic() < self._token_expires:
                return self._token
            return await self._fetch_token()

    async def _renew(self, rejected: str) -> None:
        # After a 401: the token expired early or was revoked; one new one, then AuthError.
        if self._tokens is not None:
            await self._tokens.access_token(stale=rejected)
        elif self._token == rejected:
            self._token = None

    async def _fetch_token(self) -> str:
        token, lifetime = await self.request_token()
        self._token = token
        self._token_expires = time.monotonic() + max(lifetime - TOKEN_MARGIN_SECONDS, 0.0)
        return token

    async def request_token(self) -> tuple[str, float]:
        """A new client_credentials token and its lifetime in seconds (no caching)."""
        # Credentials in the form body: Basic would meet the Basic-auth switch (403).
        request = httpx.Request(
            "POST",
            self._token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
            headers={"Accept": "application/json", "User-Agent": "audience-sync/0.1"},
            extensions=self._extensions,
        )
        response = await self._send(request, op="token")
        body = _loads(response.content)
        if response.status_code != 200 or not isinstance(body, dict):
            raise self._fail(response, op="token")
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TransientError("the token endpoint answered without an access token")
        answered_ok(PROVIDER, "token")
        return token, float(body.get("expires_in") or 3600)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        json: Any = None,
        params: Any = None,
        ok: tuple[int, ...] = (),
        decode: Callable[[bytes], Any] = _loads,
        on_slot: Callable[[], None] | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed body) of a 2xx (or `ok`) answer; the error tree otherwise. A 401
        renews the token it refused (expired or revoked early) and retries; a 401 of a token
        already refused, or beyond RENEWALS_PER_REQUEST renewals, is an AuthError. `on_slot`
        is called each time the request has its slot (before it goes on the wire)."""
        refused_tokens: set[str] = set()
        while True:
            headers = {"Accept": "application/json", "User-Agent": "audience-sync/0.1"}
            content = None
            if json is not None:
                content = orjson.dumps(json)
                headers["Content-Type"] = "application/json"
            request = httpx.Request(
                method,
                self._base + path,
                params=params,
                headers=headers,
                content=content,
                extensions=dict(self._extensions),
            )
            response = await self._send(request, op=op, authorize=True, on_slot=on_slot)
            token = str(request.extensions.get("token") or "")
            if (
                response.status_code == 401
                and token not in refused_tokens
                and len(refused_tokens) < RENEWALS_PER_REQUEST
            ):
                # A retry that waited for a slot can meet a second early revocation: its new
                # token is refused too, and renewing it again is still one renewal per 401. A
                # revoked client shows at the token endpoint (invalid_client → AuthError).
                refused_tokens.add(token)
                await self._renew(token)
                continue
            if 200 <= response.status_code < 300 or response.status_code in ok:
                answered_ok(PROVIDER, op)
                return response.status_code, decode(response.content)
            raise self._fail(response, op=op)

    # --- webhooks (`/api/hooks`) -----------------------------------------------------------

    async def list_hooks(self) -> list[dict[str, Any]]:
        """Every webhook of the instance."""
        hooks: list[dict[str, Any]] = []
        start = 0
        while True:
            _, body = await self._request(
                "GET", "/hooks", op="webhook", params={"start": start, "limit": 100}
            )
            found = (body or {}).get("hooks") or {}
            items = list(found.values()) if isinstance(found, dict) else list(found)
            hooks.extend(h for h in items if isinstance(h, dict))
            total = int((body or {}).get("total") or 0)
            start += len(items)
            if not items or start >= total:
                return hooks

    async def create_hook(
        self, *, name: str, url: str, triggers: Iterable[str], secret: str
    ) -> str:
        """Create a published webhook signed with `secret`; its id."""
        body = {
            "name": name,
            "webhookUrl": url,
            "triggers": list(triggers),
            "secret": secret,
            "isPublished": True,
            "eventsOrderbyDir": "ASC",
        }
        _, answer = await self._request("POST", "/hooks/new", op="webhook", json=body)
        return str(((answer or {}).get("hook") or {}).get("id") or "")

    async def delete_hook(self, hook_id: str) -> bool:
        """Delete a webhook; False when it was already gone."""
        status, _ = await self._request(
            "DELETE", f"/hooks/{hook_id}/delete", op="webhook", ok=(404,)
        )
        return status != 404

    # --- contact fields (FIELD_MAP, DESIGN §14.7) ------------------------------------------

    async def list_fields(self) -> dict[str, dict[str, Any]]:
        """Every contact field by alias."""
        _, body = await self._request(
            "GET", "/fields/contact", op="fields", params={"limit": 0, "minimal": 1}
        )
        found = (body or {}).get("fields") or {}
        items = found.values() if isinstance(found, dict) else found
        return {str(f.get("alias")): f for f in items if isinstance(f, dict)}

    async def ensure_fields(self, rules: Iterable[FieldRule]) -> list[str]:
        """Create the contact fields the map needs and the instance lacks; the aliases created.
        A field of a type that cannot hold its entry, or a creation Mautic refuses, raises
        FieldsRefused naming the entry (nothing is created then)."""
        rules = list(rules)
        existing = await self.list_fields()
        problems, missing = [], []
        for rule in rules:
            have = existing.get(rule.field)
            if have is None:
                missing.append(rule)
            elif str(have.get("type") or "text") not in FIELD_ACCEPTS.get(rule.type.value, ()):
                problems.append(
                    f"FIELD_MAP entry {PROVIDER}.{rule.source}: the contact field {rule.field}"
                    f" is of type {have.get('type')}, which cannot hold a {rule.type.value} value"
                )
        if problems:
            raise FieldsRefused(problems)
        created = []
        for rule in missing:
            body = {
                "label": rule.display_name,
                "alias": rule.field,
                "type": FIELD_CREATE_AS.get(rule.type.value, "text"),
                "object": "lead",
                "group": "core",
            }
            try:
                await self._request("POST", "/fields/contact/new", op="fields", json=body)
            except PermanentError as exc:
                problems.append(
                    f"FIELD_MAP entry {PROVIDER}.{rule.source}: Mautic refused to create the"
                    f" contact field {rule.field} ({exc.message})"
                )
            else:
                created.append(rule.field)
        if problems:
            raise FieldsRefused(problems)
        return created

    # --- account and segments ------------------------------------------------------------

    async def ping(self) -> None:
        """A token, then the smallest contacts page (Zapier's connection test)."""
        await self._request("GET", "/contacts", op="ping", params={"limit": 1, "minimal": 1})

    async def list_audiences(self) -> list[Audience]:
        """Every segment (paged by id); counts as `get_audience` reads them are not fetched."""
        return [
            Audience(id=str(s["id"]), name=str(s.get("name") or ""), member_count=0)
            for s in await self._segments()
        ]

    async def list_interests(self, audience_id: str) -> list[Interest]:
        """The other segments, which a preference name may map to: those on the preference
        centre (`isPreferenceCenter`) are what the person can change themselves."""
        return [
            Interest(
                id=str(s["id"]),
                name=str(s.get("name") or ""),
                category=PREFERENCE_CENTRE if s.get("isPreferenceCenter") else "Segments",
            )
            for s in await self._segments()
            if str(s["id"]) != str(audience_id)
        ]

    async def create_interest(self, audience_id: str, name: str, *, category: str) -> Interest:
        """A new segment named `name`, shown on the preference centre."""
        _, body = await self._request(
            "POST",
            "/segments/new",
            op="audience",
            json={"name": name, "isPublished": True, "isPreferenceCenter": True},
        )
        segment = (body or {}).get("list")
        if not isinstance(segment, dict) or not segment.get("id"):
            raise TransientError("Mautic answered a segment create without its id")
        return Interest(id=str(segment["id"]), name=name, category=PREFERENCE_CENTRE)

    async def _segments(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            _, body = await self._request(
                "GET",
                "/segments",
                op="audience",
                params={"start": start, "limit": 100, "orderBy": "id", "orderByDir": "ASC"},
            )
            lists = (body or {}).get("lists") or {}
            items = list(lists.values()) if isinstance(lists, dict) else list(lists)
            out.extend(s for s in items if isinstance(s, dict) and s.get("id"))
            start += len(items)
            if not items or start >= int((body or {}).get("total") or 0):
                return out

    async def _segment(self, audience_id: str) -> dict[str, Any]:
        _, body = await self._request("GET", f"/segments/{audience_id}", op="audience")
        segment = (body or {}).get("list")
        if not isinstance(segment, dict):
            raise AudienceMissing(f"segment {audience_id} not found")
        return segment

    async def get_audience(self, audience_id: str) -> Audience:
        """One segment and its member count (Mautic caches list totals for 5 s, so the count
        may lag a change by that long)."""
        segment = await self._segment(audience_id)
        _, body = await self._request(
            "GET",
            "/contacts",
            op="list",
            params={"search": f"segment:{segment['alias']}", "limit": 1, "minimal": 1},
        )
        return Audience(
            id=str(segment["id"]),
            name=str(segment.get("name") or ""),
            member_count=int((body or {}).get("total") or 0),
        )

    # --- people -------------------------------------------------------------------------

    async def find_contact(self, email: str) -> dict[str, Any] | None:
        """The contact holding exactly this address (`where … eq`, compared again here: the
        database's collation decides case); the newest when several do, as the upsert picks."""
        _, body = await self._request(
            "GET",
            "/contacts",
            op="lookup",
            params={
                "where[0][col]": "email",
                "where[0][expr]": "eq",
                "where[0][val]": email,
                "orderBy": "id",
                "orderByDir": "DESC",
                "limit": 10,
            },
        )
        contacts = (body or {}).get("contacts") or {}
        items = contacts.values() if isinstance(contacts, dict) else contacts
        key = email_key(email)
        for contact in items:
            if isinstance(contact, dict) and email_key(contact_fields(contact).get("email")) == key:
                return contact
        return None

    async def _contact_id(self, email: str, remote: RemoteRef | None) -> str | None:
        if remote is not None and remote.remote_id:
            return remote.remote_id
        contact = await self.find_contact(email)
        return str(contact["id"]) if contact else None

    async def _get(self, contact_id: str) -> dict[str, Any]:
        _, body = await self._request("GET", f"/contacts/{contact_id}", op="get")
        contact = (body or {}).get("contact")
        if not isinstance(contact, dict):
            raise TransientError("Mautic answered a contact read without a contact")
        return contact

    async def _add_to_segment(self, audience_id: str, contact_id: str) -> None:
        try:
            await self._request(
                "POST", f"/segments/{audience_id}/contact/{contact_id}/add", op="segment_add"
            )
        except AudienceMissing:
            # The 404 names the segment or the contact: only the segment's read can tell.
            await self._segment(audience_id)
            raise PermanentError(ErrorKind.not_found, f"contact {contact_id} is gone") from None

    async def _set_dnc(self, contact_id: str) -> None:
        await self._request(
            "POST",
            f"/contacts/{contact_id}/dnc/email/add",
            op="dnc",
            json={"reason": 3, "comments": OUR_DNC_COMMENT},
        )

    async def _lift_dnc(self, contact_id: str) -> None:
        await self._request("POST", f"/contacts/{contact_id}/dnc/email/remove", op="dnc")

    async def _apply_consent(self, contact: dict[str, Any], consent: str | None) -> dict[str, Any]:
        """Make the contact's DNC say `consent` (None: leave it). Opting out adds our manual
        DNC only when none exists (adding would turn a bounce into manual); opting in lifts
        only our own DNC — a person's unsubscribe or a bounce refuses (`blocked`)."""
        dnc = email_dnc(contact)
        cid = str(contact["id"])
        if consent == "unsubscribed" and dnc is None:
            await self._set_dnc(cid)
            return await self._get(cid)
        if consent in ("subscribed", "pending") and dnc is not None:
            if not is_ours(dnc):
                verb = REASON_VERBS.get(int(dnc.get("reason") or 1), "unsubscribed")
                raise PermanentError(
                    ErrorKind.compliance,
                    f"blocked: the person is {verb} at Mautic (do-not-contact reason "
                    f"{dnc.get('reason')}); only they can lift it",
                )
            await self._lift_dnc(cid)
            return await self._get(cid)
        return contact

    async def _finish(
        self,
        audience_id: str,
        contact: dict[str, Any],
        member: ContactPayload,
        *,
        created: bool,
        remote: RemoteRef | None,
    ) -> RemoteMember:
        consent = member.consent_if_new if created else member.consent
        contact = await self._apply_consent(contact, consent)
        await self._add_to_segment(audience_id, str(contact["id"]))
        refs = dict(remote.refs) if remote is not None else {}
        refs["segment"] = audience_id
        if created:
            refs["created"] = True
        dnc = email_dnc(contact)
        refs["dnc"] = is_ours(dnc)
        refs |= await self._enroll(str(contact["id"]), member.campaigns)
        state = member_of(contact, created=created, refs=refs)
        state.interests = await self._preferences(str(contact["id"]), member.interests)
        return state

    async def _preferences(
        self, contact_id: str, wanted: Mapping[str, bool]
    ) -> dict[str, bool] | None:
        """Make the mapped preference segments say what the payload asks (joined when
        chosen, left when not; no other segment touched); the segments now held (None: no
        preferences are mapped, nothing read)."""
        if not wanted:
            return None
        held = await self._segment_ids(contact_id)
        for segment_id, chosen in wanted.items():
            if chosen and segment_id not in held:
                await self._add_to_segment(segment_id, contact_id)
                held.add(segment_id)
            elif not chosen and segment_id in held:
                await self._request(
                    "POST",
                    f"/segments/{segment_id}/contact/{contact_id}/remove",
                    op="segment_remove",
                )
                held.discard(segment_id)
        return dict.fromkeys(held, True)

    async def _enroll(self, contact_id: str, campaigns: Iterable[str]) -> dict[str, Any]:
        """Add the contact to each campaign it newly qualifies for (DESIGN §14.6); the refs
        that record it. A campaign that does not exist is the operator's error: logged in the
        metrics, not recorded, the contact's sync unharmed."""
        refs: dict[str, Any] = {}
        for campaign_id in campaigns:
            try:
                await self._request(
                    "POST",
                    f"/campaigns/{campaign_id}/contact/{contact_id}/add",
                    op="campaign",
                )
            except PermanentError:
                continue
            refs[campaign_ref(campaign_id)] = True
        return refs

    async def upsert_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """`POST /contacts/new` (an upsert on email), consent, then our segment."""
        status, body = await self._request(
            "POST", "/contacts/new", op="upsert", json=contact_body(member)
        )
        contact = (body or {}).get("contact")
        if not isinstance(contact, dict):
            raise TransientError("Mautic answered an upsert without a contact")
        member_of(contact)  # a contact without an id is the 5.0 bug: retry
        return await self._finish(
            audience_id, contact, member, created=status == 201, remote=remote
        )

    async def update_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """PATCH an existing contact (found by id or exact address); never creates."""
        contact_id = await self._contact_id(member.email_address, remote)
        if contact_id is None:
            raise PermanentError(ErrorKind.not_found, "no Mautic contact has this address")
        # Tags of someone present change only through update_tags (the engine's difference).
        body = contact_body(member, tags=False)
        # The same address: an edit carrying another contact's address would merge the two.
        body["email"] = member.email_address
        _, answer = await self._request(
            "PATCH", f"/contacts/{contact_id}/edit", op="update", json=body
        )
        contact = (answer or {}).get("contact")
        if not isinstance(contact, dict):
            raise TransientError("Mautic answered an edit without a contact")
        return await self._finish(audience_id, contact, member, created=False, remote=remote)

    async def batch_upsert(
        self, audience_id: str, members: list[ContactPayload]
    ) -> list[BatchOutcome]:
        """`POST /contacts/batch/new` (≤ 200, each an upsert), per-item `statusCodes`, then
        consent per person where asked and one batch add to our segment. More than 200 (the
        engine's SYNC_BATCH_SIZE may be 500) go as consecutive batches of 200: one more is an
        HTTP 500 for the whole batch."""
        if len(members) > BATCH_SIZE:
            outcomes: list[BatchOutcome] = []
            for start in range(0, len(members), BATCH_SIZE):
                chunk = members[start : start + BATCH_SIZE]
                outcomes += await self.batch_upsert(audience_id, chunk)
            return outcomes
        if not members:
            return []
        # Counted from before its slot: one granted but not yet run by the loop is not on the
        # wire yet, and the add of a batch answered meanwhile would leave without it.
        self._batches_out[audience_id] = self._batches_out.get(audience_id, 0) + 1
        on_wire: list[float] = []  # when the batch took its slot (its first, if retried)

        def sent() -> None:
            if not on_wire:
                on_wire.append(time.monotonic())

        try:
            _, body = await self._request(
                "POST",
                "/contacts/batch/new",
                op="batch",
                json=[contact_body(m) for m in members],
                decode=_batch_loads,
                on_slot=sent,
            )
        finally:
            self._batches_out[audience_id] -= 1
            self._add_news.setdefault(audience_id, asyncio.Event()).set()
        took = time.monotonic() - on_wire[0] if on_wire else 0.0
        body = body or {}
        codes = body.get("statusCodes") or []
        contacts = body.get("contacts") or {}
        errors = body.get("errors") or {}
        if isinstance(contacts, list):
            contacts = dict(enumerate(contacts))
        if isinstance(errors, list):
            errors = dict(enumerate(errors))
        outcomes = []
        done: list[tuple[int, dict[str, Any], bool]] = []
        for i, member in enumerate(members):
            key = email_key(member.email_address) or member.email_address
            code = int(codes[i]) if i < len(codes) else 500
            contact = contacts.get(i, contacts.get(str(i)))
            if code in (200, 201) and isinstance(contact, dict) and contact.get("id"):
                done.append((i, contact, code == 201))
                outcomes.append(BatchOutcome(email_key=key))
                continue
            error = errors.get(i, errors.get(str(i))) or {}
            failure = error_from(code, {"errors": [error]}, op="batch_item")
            if code in (200, 201):
                failure = TransientError("Mautic answered a contact without an id (5.0's bug)")
            if not isinstance(failure, PermanentError):
                # Only refusals are per item; anything else retries the whole batch, which is
                # safe: every item is an upsert on its address.
                raise failure
            outcomes.append(BatchOutcome(email_key=key, error=failure))
        ids = [int(c["id"]) for _, c, _ in done]
        wait = SEGMENT_ADD_WAIT_BATCHES * took
        details = await self._add_ids(audience_id, ids, wait=wait) if ids else {}
        for i, contact, created in done:
            member = members[i]
            cid = str(contact["id"])
            if details.get(cid, {}).get("success") is False:
                outcomes[i].error = PermanentError(ErrorKind.not_found, f"contact {cid} is gone")
                continue
            consent = member.consent_if_new if created else member.consent
            try:
                contact = await self._apply_consent(contact, consent)
            except PermanentError as exc:
                outcomes[i].error = exc
                continue
            refs: dict[str, Any] = {"segment": audience_id, "dnc": is_ours(email_dnc(contact))}
            if created:
                refs["created"] = True
            refs |= await self._enroll(cid, member.campaigns)
            state = member_of(contact, created=created, refs=refs)
            try:
                state.interests = await self._preferences(cid, member.interests)
            except PermanentError as exc:
                outcomes[i].error = exc
                continue
            outcomes[i].state = state
        return outcomes

    async def _add_ids(
        self, audience_id: str, ids: list[int], *, wait: float = 0.0
    ) -> dict[str, Any]:
        """Add contacts to the segment by one batch add; the `details` by contact id. Batches
        finishing while an add is in flight or waiting join the next one (up to
        SEGMENT_ADD_MAX_IDS): whoever holds the segment's lock sends everything queued, the
        others wait for it. An add waits up to `wait` seconds for the segment's batches under
        way, until it is full (`_add_ready`)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        entry = (ids, future)
        queue = self._adds.setdefault(audience_id, [])
        queue.append(entry)
        news = self._add_news.setdefault(audience_id, asyncio.Event())
        news.set()
        until = time.monotonic() + wait
        lock = self._add_locks.setdefault(audience_id, asyncio.Lock())
        try:
            while not future.done():
                await self._add_ready(audience_id, until)
                if future.done():
                    break
                async with lock:
                    if future.done():
                        break
                    taken: list[Pending] = []
                    count = 0
                    while queue and (not taken or count + len(queue[0][0]) <= SEGMENT_ADD_MAX_IDS):
                        taken.append(queue.pop(0))
                        count += len(taken[-1][0])
                    try:
                        await self._send_adds(audience_id, taken)
                    except asyncio.CancelledError:
                        # Cancelled while sending the others' ids too: the next holder does.
                        queue[:0] = [e for e in taken if e is not entry and not e[1].done()]
                        raise
        except asyncio.CancelledError:
            if entry in queue:
                queue.remove(entry)
            raise
        return future.result()

    async def _add_ready(self, audience_id: str, until: float) -> None:
        """Return once the segment's queued ids fill an add, no batch of it is under way (none
        would join), or `until` has passed."""
        news = self._add_news[audience_id]
        while True:
            queued = sum(len(ids) for ids, _ in self._adds.get(audience_id, ()))
            left = until - time.monotonic()
            if queued >= SEGMENT_ADD_MAX_IDS or not self._batches_out.get(audience_id) or left <= 0:
                return
            news.clear()  # no await since the test: a change from now on sets it again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), left)

    async def _send_adds(self, audience_id: str, taken: list[Pending]) -> None:
        """One batch add for the queued batches; each one's future gets the answer or the
        error (a failed add fails every batch in it: each retries as a whole, upserts are
        safe to repeat)."""
        ids = [i for batch, _ in taken for i in batch]
        try:
            _, added = await self._request(
                "POST", f"/segments/{audience_id}/contacts/add", op="segment_add", json={"ids": ids}
            )
        except Exception as exc:
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            return
        details = (added or {}).get("details") or {}
        for _, future in taken:
            if not future.done():
                future.set_result(details if isinstance(details, dict) else {})

    async def update_tags(
        self,
        audience_id: str,
        email: str,
        *,
        add: list[str],
        remove: list[str],
        remote: RemoteRef | None = None,
    ) -> Mapping[str, Any] | None:
        """PATCH `tags` with `add` and `-name` for each of `remove`: tags not named (a Mautic
        user's own) are never touched."""
        if not add and not remove:
            return None
        contact_id = await self._contact_id(email, remote)
        if contact_id is None:
            raise PermanentError(ErrorKind.not_found, "no Mautic contact has this address")
        tags = [*add, *(f"-{t}" for t in remove)]
        await self._request("PATCH", f"/contacts/{contact_id}/edit", op="tags", json={"tags": tags})
        return None

    async def move_member(
        self,
        audience_id: str,
        old_email: str,
        member: ContactPayload,
        *,
        remote: RemoteRef | None = None,
    ) -> RemoteMember:
        """Change the address by PATCH — only after checking nobody holds the new one, since
        Mautic would merge that contact into ours and delete it (reference §1.4)."""
        contact_id = await self._contact_id(old_email, remote)
        if contact_id is None:
            raise PermanentError(ErrorKind.not_found, "no Mautic contact has the old address")
        holder = await self.find_contact(member.email_address)
        if holder is not None and str(holder["id"]) != contact_id:
            raise PermanentError(
                ErrorKind.collision,
                f"Mautic contact {holder['id']} already has the new address; refusing the "
                "merge Mautic would make",
            )
        _, answer = await self._request(
            "PATCH",
            f"/contacts/{contact_id}/edit",
            op="move",
            json=contact_body(member, tags=False),
        )
        contact = (answer or {}).get("contact")
        if not isinstance(contact, dict):
            raise TransientError("Mautic answered an edit without a contact")
        return await self._finish(audience_id, contact, member, created=False, remote=remote)

    async def _segment_ids(self, contact_id: str) -> set[str]:
        _, body = await self._request("GET", f"/contacts/{contact_id}/segments", op="get")
        lists = (body or {}).get("lists") or {}
        items = lists.values() if isinstance(lists, dict) else lists
        return {str(s.get("id")) for s in items if isinstance(s, dict)}

    async def archive_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> bool:
        """Leave our segment (consent untouched); the contact itself is deleted only when we
        created it and it is in no other segment. False when it was not in our segment."""
        contact_id = await self._contact_id(email, remote)
        if contact_id is None:
            return False
        try:
            segments = await self._segment_ids(contact_id)
        except PermanentError as exc:
            if exc.kind is ErrorKind.not_found:
                return False
            raise
        if audience_id not in segments:
            return False
        try:
            await self._request(
                "POST", f"/segments/{audience_id}/contact/{contact_id}/remove", op="segment_remove"
            )
        except PermanentError as exc:
            if exc.kind is ErrorKind.not_found:
                return False
            raise
        created = bool(remote is not None and remote.refs.get("created"))
        if (
            created
            and segments == {audience_id}
            and not (remote is not None and remote.keep_person)
        ):
            await self._delete(contact_id)
        return True

    async def _delete(self, contact_id: str) -> None:
        try:
            await self._request("DELETE", f"/contacts/{contact_id}/delete", op="forget")
        except PermanentError as exc:
            if exc.kind is not ErrorKind.not_found:
                raise

    async def forget_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> None:
        """`DELETE /contacts/{id}/delete` (GDPR); absent is fine."""
        contact_id = await self._contact_id(email, remote)
        if contact_id is not None:
            await self._delete(contact_id)

    async def list_members(
        self,
        audience_id: str,
        *,
        offset: int = 0,
        count: int = 1000,
        since_last_changed: datetime | None = None,
        status: str | None = None,
    ) -> MemberPage:
        """One page of our segment's contacts, by id (stable paging), or by `date_modified`
        since a time (the pull); `status` filters the page after the read."""
        segment = await self._segment(audience_id)
        params: dict[str, Any] = {
            "search": f"segment:{segment['alias']}",
            "start": offset,
            "limit": min(count, BATCH_SIZE),
            "orderBy": "id",
            "orderByDir": "ASC",
        }
        if since_last_changed is not None:
            since = since_last_changed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            # date_modified is NULL until a contact's first edit: new ones match on date_added.
            params.update(
                {
                    "where[0][expr]": "orX",
                    "where[0][val][0][col]": "date_modified",
                    "where[0][val][0][expr]": "gte",
                    "where[0][val][0][val]": since,
                    "where[0][val][1][col]": "date_added",
                    "where[0][val][1][expr]": "gte",
                    "where[0][val][1][val]": since,
                    "orderBy": "date_modified,id",
                }
            )
        _, body = await self._request("GET", "/contacts", op="list", params=params)
        contacts = (body or {}).get("contacts") or {}
        items = contacts.values() if isinstance(contacts, dict) else contacts
        members = [member_of(c) for c in items if isinstance(c, dict) and c.get("id")]
        if status is not None:
            members = [m for m in members if m.status == status]
        return MemberPage(members=members, total_items=int((body or {}).get("total") or 0))
