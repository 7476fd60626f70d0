"""Constant Contact V3 client: the neutral operations, read-modify-write, and the error mapping.

Rules (reference §1, §4, §7; DESIGN §14.5):
- the contact UUID is the person's id; a new consenting person is `POST /contacts` with our
  list, and a 409 ("Email already exists for contact <id>") turns into an update of that id;
- an existing person is `GET` with every sub-resource, merged, then `PUT` whole: PUT nulls
  every core field it is not sent, so the fields we do not own are sent back as they were;
- `sign_up_form` is never called: it re-subscribes people who unsubscribed;
- permission is only ever lowered by a PUT (`unsubscribed`); the way back after an
  unsubscribe is the one resubscribe email (`PUT /contacts/resubscribe/{id}`);
- errors are arrays of `{error_key, error_message}`, except 401 and 429 (single objects).
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from app.emailkey import email_key
from app.providers.base import (
    Audience,
    AudienceMissing,
    AuthError,
    BatchOutcome,
    ContactPayload,
    ErrorKind,
    InboundEvent,
    InboundKind,
    Interest,
    MemberPage,
    PermanentError,
    ProviderError,
    QuotaExhausted,
    RemoteMember,
    RemoteRef,
    RemoteStatus,
    RequestLimiter,
    ThrottledError,
    TransientError,
    answered_ok,
    refused,
    send,
)
from app.providers.constantcontact.spec import PROVIDER, STATUS_MAP

LIVE_API_BASE = "https://api.cc.email/v3"
UUID_PATTERN = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
DUPLICATE = re.compile(r"already exists for contact ([0-9a-fA-F-]{36})")
# What the lists offered as preferences are shown as (Constant Contact lists have no category).
LISTS_CATEGORY = "Contact lists"
INCLUDE = "custom_fields,list_memberships,phone_numbers,street_addresses,taggings,notes"
PAGE_LIMIT = 500
# Core contact properties a field map may name; anything else is a custom field (UUID or name).
CORE_FIELDS = frozenset({"first_name", "last_name", "job_title", "company_name", "phone_number"})
# Properties the API sets itself: never sent back in a PUT.
READ_ONLY = frozenset({"contact_id", "created_at", "updated_at", "deleted_at", "create_source"})
EMAIL_READ_ONLY = frozenset(
    {"created_at", "updated_at", "opt_in_source", "opt_in_date", "opt_out_source", "opt_out_date"}
)
# Activities end in one of these states (reference §3).
FINAL_STATES = frozenset({"completed", "cancelled", "failed", "timed_out"})
ACTIVITY_POLL_SECONDS = (0.5, 1.0, 2.0, 5.0)
ACTIVITY_TIMEOUT_SECONDS = 600.0
# The shared status read: one `GET /activities` page (newest first) answers for every watched
# activity of the account on it; one older than the page is read by its id.
ACTIVITY_PAGE = 50
WATCH_PAUSE_SECONDS = 0.5
# Creates one request of a tenant's turn joins (an import takes 40,000; this keeps the
# request small and its activity short).
JOIN_MAX = 500
# A create joins others into an import only once the oldest waiting create has waited this
# long for its turn: a turn that comes sooner (the application's rate is not contended) sends
# it alone as `POST /contacts` — the person `explicit`, which an import cannot say. Under
# nine tenants sharing 4 requests a second a tenant's turn comes every 2.5 s.
CONTENDED_SECONDS = 1.0


@dataclass(eq=False)
class _WaitingCreate:
    """A live create of someone never pushed, waiting for its connection's next request: it
    goes alone as `POST /contacts`, or with the others waiting by then as one import."""

    member: ContactPayload
    body: dict[str, Any]  # its POST body
    row: dict[str, Any]  # its import row
    done: asyncio.Future[Any]
    since: float  # when it began to wait (monotonic)
    # Its caller's context: the request carrying it goes with the oldest waiting create's
    # (the engine's priority of the group it belongs to).
    context: contextvars.Context


class TokenSource(Protocol):
    """Hands out a live access token; `stale` forces a renewal of that (rejected) token."""

    async def access_token(self, *, stale: str | None = None) -> str:
        """A token to send now."""


def check_live_base(api_base: str) -> str:
    """Live mode: only `https://api.cc.email/v3` (DESIGN §14.5 host rule)."""
    parts = urlsplit(api_base.rstrip("/"))
    if f"{parts.scheme}://{parts.netloc}{parts.path}" != LIVE_API_BASE:
        raise ValueError(f"Refusing API endpoint {api_base!r}: expected {LIVE_API_BASE}.")
    return LIVE_API_BASE


def _loads(content: bytes) -> Any:
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None


def first_error(body: Any) -> tuple[str, str]:
    """(error_key, error_message) of an error body: an array, or a single object."""
    if isinstance(body, list):
        body = body[0] if body else {}
    if not isinstance(body, dict):
        return "", ""
    key = str(body.get("error_key") or body.get("error") or "")
    message = str(body.get("error_message") or body.get("error_description") or "")
    return key, message


def _classify(message: str) -> ErrorKind:
    low = message.lower()
    if "email" in low and ("valid" in low or "format" in low or "address" in low):
        return ErrorKind.invalid_email
    if "custom_field" in low or "custom field" in low:
        return ErrorKind.merge_fields
    if "unsubscribed" in low or "resubscribe" in low:
        return ErrorKind.compliance
    return ErrorKind.invalid


def error_from(response: httpx.Response, *, op: str) -> ProviderError:
    """The ProviderError a non-2xx Constant Contact answer means (keys, not wording)."""
    status = response.status_code
    key, text = first_error(_loads(response.content))
    message = f"{status} {key or response.reason_phrase}: {text}".strip().rstrip(":")
    if status == 429:
        retry = response.headers.get("Retry-After")
        retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
        if key == "quota_exceeded":
            return QuotaExhausted(message, status=status, scope="application")
        return ThrottledError(message, status=status, retry_after=retry_after)
    if status == 401:
        return AuthError(message, status=status)
    if status == 403:
        # A missing scope or privilege, or the application deactivated: a reconnect.
        return AuthError(message, status=status)
    if status >= 500:
        return TransientError(message, status=status)
    if status == 404:
        if op in ("audience", "list"):
            return AudienceMissing(message, status=status)
        return PermanentError(ErrorKind.not_found, message, status=status)
    if status == 409:
        return PermanentError(ErrorKind.member_exists, message, status=status)
    if status == 400:
        return PermanentError(_classify(text), message, status=status)
    return PermanentError(ErrorKind.invalid, message, status=status)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value[:10]).replace(tzinfo=UTC)
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(value: datetime) -> str:
    """A filter time as the API reads it (second precision, UTC)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def permission_of(contact: Mapping[str, Any]) -> str:
    """The contact's permission_to_send ("" when it has no e-mail address)."""
    block = contact.get("email_address")
    return str(block.get("permission_to_send") or "") if isinstance(block, dict) else ""


def address_of(contact: Mapping[str, Any]) -> str:
    """The contact's e-mail address."""
    block = contact.get("email_address")
    return str(block.get("address") or "") if isinstance(block, dict) else ""


def status_of(contact: Mapping[str, Any], list_id: str | None) -> RemoteStatus:
    """The neutral status of a contact in our list: its permission, or archived when it is
    deleted or off the list (consent untouched)."""
    permission = permission_of(contact)
    if contact.get("deleted_at"):
        return STATUS_MAP["deleted"]
    if permission in ("unsubscribed", "temp_hold"):
        return STATUS_MAP[permission]
    lists = contact.get("list_memberships")
    if list_id is not None and isinstance(lists, list) and list_id not in lists:
        return STATUS_MAP["off_list"]
    return STATUS_MAP.get(permission, RemoteStatus.subscribed)


def _phone(contact: Mapping[str, Any]) -> str | None:
    for phone in contact.get("phone_numbers") or []:
        if isinstance(phone, dict) and phone.get("phone_number"):
            return str(phone["phone_number"])
    return None


class ConstantContactClient:
    """One Constant Contact account's V3 API over a shared keep-alive transport."""

    name = PROVIDER

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        api_base: str,
        access_token: str | None = None,
        tokens: TokenSource | None = None,
        timeout: float = 30.0,
        limiter: RequestLimiter | None = None,
    ) -> None:
        self._transport = transport
        self._base = api_base.rstrip("/")
        parts = urlsplit(self._base)
        # `_links.next.href` is host-relative and starts with /v3: joined to the origin (and
        # to the sandbox's mount prefix, which is the base without its /v3).
        self._origin = self._base.removesuffix("/v3")
        self._host = f"{parts.scheme}://{parts.netloc}"
        self._token = access_token
        self._tokens = tokens
        self._timeout = timeout
        self._limiter = limiter
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._tag_ids: dict[str, str] | None = None  # tag name → id
        self._fields: dict[str, str] | None = None  # custom field name/label/id → id
        self._field_names: dict[str, str] = {}  # custom field id → its name (imports)
        self._lock = asyncio.Lock()
        self._cursors: dict[tuple[Any, ...], str] = {}
        self.requests = 0  # requests sent (the quota they spend), for metrics and tests
        # Live creates waiting for a request, by list; the task sending them one request at a
        # time, each built once its turn (the account's slot and the application's token)
        # has come, so it carries every create waiting by then.
        self._waiting: dict[str, list[_WaitingCreate]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Activities awaited by the shared status read: id → its end.
        self._watched: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.joined_imports = 0  # imports of joined live creates sent (tests)
        self.contended_seconds = CONTENDED_SECONDS

    # --- plumbing -----------------------------------------------------------------------

    async def _access_token(self, stale: str | None = None) -> str:
        if self._tokens is not None:
            self._token = await self._tokens.access_token(stale=stale)
        if not self._token:
            raise AuthError("no Constant Contact access token; reconnect")
        return self._token

    async def _send(
        self, request: Callable[[], httpx.Request], *, op: str, stale: str | None
    ) -> tuple[str, httpx.Response]:
        """One request: the slot first, then the token — a token taken before a wait for the
        shared rate could expire in the queue — then the request is built. Returns the token
        that went with it."""
        sent: list[str] = []

        async def authorize(request: httpx.Request) -> None:
            token = await self._access_token(stale)
            request.headers["Authorization"] = f"Bearer {token}"
            sent.append(token)
            self.requests += 1

        response = await send(
            self._transport,
            request,
            provider=PROVIDER,
            op=op,
            limiter=self._limiter,
            timeout_seconds=self._timeout,
            authorize=authorize,
        )
        return sent[-1], response

    def _fail(self, response: httpx.Response, *, op: str) -> ProviderError:
        return refused(PROVIDER, op, error_from(response, op=op))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: tuple[int, ...] = (),
        build: Callable[[], tuple[str, Any]] | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed body) of a 2xx (or `ok`) answer; the error tree otherwise. A 401
        renews the token once (it expired early or was revoked), then is an AuthError.
        `build` gives (path, body) once the request's turn has come (called once; a renewed
        token's retry sends the same)."""
        built: list[tuple[str, bytes | None]] = []

        def target() -> tuple[str, bytes | None]:
            if not built:
                where, body = build() if build is not None else (path, json)
                url = where if where.startswith("http") else self._base + where
                built.append((url, orjson.dumps(body) if body is not None else None))
            return built[0]

        headers = {"Accept": "application/json", "User-Agent": "audience-sync/0.1"}
        if build is not None or json is not None:
            headers["Content-Type"] = "application/json"
        stale: str | None = None
        for attempt in (1, 2):

            def request() -> httpx.Request:
                url, content = target()
                return httpx.Request(
                    method,
                    url,
                    params=dict(params) if params else None,
                    headers=headers,
                    content=content,
                    extensions=dict(self._extensions),
                )

            token, response = await self._send(request, op=op, stale=stale)
            if response.status_code == 401 and attempt == 1 and self._tokens is not None:
                stale = token
                continue
            if 200 <= response.status_code < 300 or response.status_code in ok:
                answered_ok(PROVIDER, op)
                return response.status_code, _loads(response.content)
            raise self._fail(response, op=op)
        raise AssertionError("unreachable")  # pragma: no cover

    def _next_url(self, body: Any) -> str | None:
        links = body.get("_links") if isinstance(body, dict) else None
        nxt = links.get("next") if isinstance(links, dict) else None
        href = nxt.get("href") if isinstance(nxt, dict) else None
        if not isinstance(href, str) or not href:
            return None
        if href.startswith("http"):
            # Never follow a link off the API's host.
            return href if href.startswith(self._host + "/") else None
        return self._origin + href if href.startswith("/v3/") else self._base + href

    # --- account and lists ----------------------------------------------------------------

    async def ping(self) -> None:
        """The cheapest authenticated call: the user's privileges (no scope needed)."""
        await self._request("GET", "/account/user/privileges", op="ping")

    async def account_summary(self) -> dict[str, Any]:
        """`GET /account/summary` (account_read): the organization's name and account id."""
        _, body = await self._request("GET", "/account/summary", op="account")
        return body if isinstance(body, dict) else {}

    async def list_audiences(self) -> list[Audience]:
        """Every contact list with its active membership count."""
        out: list[Audience] = []
        url: str | None = "/contact_lists"
        params: dict[str, Any] | None = {
            "limit": 1000,
            "include_membership_count": "active",
            "status": "active",
        }
        while url:
            _, body = await self._request("GET", url, op="lists", params=params)
            for item in (body or {}).get("lists") or []:
                out.append(
                    Audience(
                        id=str(item["list_id"]),
                        name=str(item.get("name") or item["list_id"]),
                        member_count=int(item.get("membership_count") or 0),
                    )
                )
            url, params = self._next_url(body), None
        return out

    async def get_audience(self, audience_id: str) -> Audience:
        """One contact list; AudienceMissing when it does not exist (or was deleted)."""
        _, body = await self._request(
            "GET",
            f"/contact_lists/{audience_id}",
            op="audience",
            params={"include_membership_count": "active"},
        )
        if not isinstance(body, dict) or body.get("deleted_at"):
            raise AudienceMissing(f"contact list {audience_id} was deleted")
        return Audience(
            id=str(body["list_id"]),
            name=str(body.get("name") or audience_id),
            member_count=int(body.get("membership_count") or 0),
        )

    # --- preferences: the other contact lists a person may choose (preference page) ------

    async def list_interests(self, audience_id: str) -> list[Interest]:
        """The account's other contact lists: what a person picks on Constant Contact's email
        preference page, so what a preference name may map to (the audience itself is not a
        preference)."""
        return [
            Interest(id=a.id, name=a.name, category=LISTS_CATEGORY)
            for a in await self.list_audiences()
            if a.id != audience_id
        ]

    async def create_interest(self, audience_id: str, name: str, *, category: str) -> Interest:
        """A new contact list named `name` (lists have no categories at Constant Contact)."""
        _, body = await self._request(
            "POST", "/contact_lists", op="lists", json={"name": name, "favorite": False}
        )
        if not isinstance(body, dict) or not body.get("list_id"):
            raise TransientError("Constant Contact answered a list create without its id")
        return Interest(id=str(body["list_id"]), name=str(body.get("name") or name), category="")

    # --- tags and custom fields -------------------------------------------------------

    async def tag_ids(self, names: list[str], *, create: bool) -> dict[str, str]:
        """Tag name → id for `names`; missing tags are created when `create` (ours then)."""
        if not names:
            return {}
        async with self._lock:
            if self._tag_ids is None or any(n not in self._tag_ids for n in names):
                self._tag_ids = await self._all_tags()
            known = self._tag_ids
            for name in names:
                if name in known or not create:
                    continue
                status, body = await self._request(
                    "POST", "/contact_tags", op="tags", json={"name": name}, ok=(409,)
                )
                if status == 409:  # created meanwhile elsewhere
                    known.update(await self._all_tags())
                else:
                    known[name] = str(body["tag_id"])
            return {n: known[n] for n in names if n in known}

    async def _all_tags(self) -> dict[str, str]:
        out: dict[str, str] = {}
        url: str | None = "/contact_tags"
        params: dict[str, Any] | None = {"limit": 500}
        while url:
            _, body = await self._request("GET", url, op="tags", params=params)
            for tag in (body or {}).get("tags") or []:
                out[str(tag["name"])] = str(tag["tag_id"])
            url, params = self._next_url(body), None
        return out

    async def custom_fields(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        """Every custom field of the account (≤ 100)."""
        out: list[dict[str, Any]] = []
        url: str | None = "/contact_custom_fields"
        params: dict[str, Any] | None = {"limit": 100}
        while url:
            _, body = await self._request("GET", url, op="custom_fields", params=params)
            out.extend((body or {}).get("custom_fields") or [])
            url, params = self._next_url(body), None
        self._learn_fields(out)
        return out

    async def create_custom_field(self, label: str, kind: str = "string") -> dict[str, Any]:
        """A new custom field (`label` shown in the UI; `name` derived from it)."""
        _, body = await self._request(
            "POST",
            "/contact_custom_fields",
            op="custom_fields",
            json={"label": label, "type": kind},
        )
        self._fields = None
        return body if isinstance(body, dict) else {}

    def _learn_fields(self, fields: list[dict[str, Any]]) -> None:
        index: dict[str, str] = {}
        for f in fields:
            fid = str(f.get("custom_field_id") or "")
            if not fid:
                continue
            index[fid] = fid
            for key in (f.get("name"), f.get("label")):
                if key:
                    index.setdefault(str(key), fid)
                    index.setdefault(str(key).lower(), fid)
            self._field_names[fid] = str(f.get("name") or f.get("label") or fid)
        self._fields = index

    async def _field_index(self) -> dict[str, str]:
        if self._fields is None:
            async with self._lock:
                if self._fields is None:
                    await self.custom_fields()
        return self._fields or {}

    async def _custom_id(self, key: str) -> str:
        if UUID_PATTERN.match(key):
            return key
        index = await self._field_index()
        found = index.get(key) or index.get(key.lower())
        if found is None:
            raise PermanentError(
                ErrorKind.merge_fields, f"Constant Contact has no custom field {key!r}"
            )
        return found

    # --- contacts: reading -----------------------------------------------------------------

    async def get_contact(self, contact_id: str) -> dict[str, Any] | None:
        """A contact with every sub-resource; None when it does not exist."""
        status, body = await self._request(
            "GET", f"/contacts/{contact_id}", op="get", params={"include": INCLUDE}, ok=(404,)
        )
        return body if status == 200 and isinstance(body, dict) else None

    async def find_contact(self, email: str) -> dict[str, Any] | None:
        """The contact with this address in any state, deleted ones included (CF7's bug)."""
        _, body = await self._request(
            "GET",
            "/contacts",
            op="find",
            params={"email": email.strip(), "status": "all", "include": INCLUDE, "limit": 1},
        )
        contacts = (body or {}).get("contacts") or []
        return contacts[0] if contacts else None

    async def _resolve(self, email: str, remote: RemoteRef | None) -> dict[str, Any] | None:
        if remote is not None and remote.remote_id:
            found = await self.get_contact(remote.remote_id)
            if found is not None:
                return found
        # Never pushed, or vanished: re-resolve by address.
        return await self.find_contact(remote.email if remote is not None else email)

    async def _member(
        self,
        contact: Mapping[str, Any],
        list_id: str | None,
        *,
        created: bool = False,
        tags: Mapping[str, str] | None = None,
        status: RemoteStatus | None = None,
        refs: Mapping[str, Any] | None = None,
    ) -> RemoteMember:
        taggings = contact.get("taggings")
        if isinstance(taggings, list) and taggings:
            known = set((self._tag_ids or {}).values())
            if any(str(t) not in known for t in taggings):
                # Tags are named in the neutral vocabulary: learn the account's (once).
                async with self._lock:
                    self._tag_ids = await self._all_tags()
        names = {v: k for k, v in (self._tag_ids or {}).items()}
        tag_names = (
            [names.get(str(t), str(t)) for t in taggings] if isinstance(taggings, list) else []
        )
        out_refs: dict[str, Any] = dict(refs or {})
        if tags is not None:
            out_refs["tags"] = dict(tags)
        lists = contact.get("list_memberships")
        return RemoteMember(
            email_address=address_of(contact),
            remote_id=str(contact.get("contact_id") or ""),
            status=(status or status_of(contact, list_id)).value,
            tags=tag_names,
            last_changed=_parse_time(contact.get("updated_at")),
            fields=self.fields_of(contact),
            created=created,
            refs=out_refs,
            # Preferences are list memberships: every list the person is on is "chosen".
            interests={str(x): True for x in lists} if isinstance(lists, list) else None,
        )

    def fields_of(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """A contact's values by our field ids: core names, custom fields by id and name."""
        out: dict[str, Any] = {}
        for key in ("first_name", "last_name", "job_title", "company_name"):
            if contact.get(key) is not None:
                out[key] = contact[key]
        phone = _phone(contact)
        if phone is not None:
            out["phone_number"] = phone
        for item in contact.get("custom_fields") or []:
            if isinstance(item, dict) and item.get("custom_field_id"):
                fid = str(item["custom_field_id"])
                out[fid] = item.get("value")
                name = self._field_names.get(fid)
                if name:
                    out[name] = item.get("value")
        return out

    # --- contacts: writing -----------------------------------------------------------------

    async def _custom_values(self, fields: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in fields.items():
            if key in CORE_FIELDS:
                continue
            out[await self._custom_id(key)] = render_value(value)
        return out

    async def _new_body(
        self, audience_id: str, member: ContactPayload, tag_ids: Mapping[str, str]
    ) -> dict[str, Any]:
        consenting = member.consent_if_new in ("subscribed", "pending")
        body: dict[str, Any] = {
            "email_address": {
                "address": member.email_address,
                # The CRM holds this person's yes (or, for an update-only call, their no).
                "permission_to_send": "explicit" if consenting else "unsubscribed",
            },
            "create_source": "Account",
            "list_memberships": with_preferences([audience_id], member.interests),
        }
        _core_into(body, member.fields)
        custom = await self._custom_values(member.fields)
        if custom:
            body["custom_fields"] = [
                {"custom_field_id": k, "value": v} for k, v in sorted(custom.items())
            ]
        if tag_ids:
            body["taggings"] = sorted(set(tag_ids.values()))
        return body

    async def _put_body(
        self,
        contact: Mapping[str, Any],
        member: ContactPayload | None,
        *,
        permission: str | None = None,
        lists: list[str] | None = None,
        taggings: list[str] | None = None,
        address: str | None = None,
    ) -> dict[str, Any]:
        """The full PUT body: everything the contact holds, ours changed, read-only dropped."""
        body = {k: v for k, v in contact.items() if k not in READ_ONLY and not k.startswith("_")}
        block = dict(contact.get("email_address") or {})
        block = {k: v for k, v in block.items() if k not in EMAIL_READ_ONLY}
        block.pop("confirm_status", None)
        if address is not None:
            block["address"] = address
        if permission is not None:
            block["permission_to_send"] = permission
        body["email_address"] = block
        body["update_source"] = "Account"
        for sub in ("phone_numbers", "street_addresses"):
            items = body.get(sub)
            if isinstance(items, list):
                body[sub] = [_writable(i) for i in items if isinstance(i, dict)]
        body.pop("notes", None)  # notes never sync (and PUT would replace them)
        body.pop("sms_channel", None)
        if member is not None:
            _core_into(body, member.fields, phones=body.get("phone_numbers"))
            custom = await self._custom_values(member.fields)
            theirs = [
                {"custom_field_id": c["custom_field_id"], "value": c.get("value")}
                for c in contact.get("custom_fields") or []
                if isinstance(c, dict) and c.get("custom_field_id") not in custom
            ]
            body["custom_fields"] = theirs + [
                {"custom_field_id": k, "value": v} for k, v in sorted(custom.items())
            ]
        if lists is not None:
            body["list_memberships"] = lists
        if taggings is not None:
            body["taggings"] = taggings
        return body

    async def _put(self, contact_id: str, body: dict[str, Any], *, op: str) -> dict[str, Any]:
        _, answer = await self._request("PUT", f"/contacts/{contact_id}", op=op, json=body)
        return answer if isinstance(answer, dict) else {}

    async def _create(
        self, audience_id: str, member: ContactPayload
    ) -> tuple[dict[str, Any] | None, dict[str, str], str | None]:
        """POST /contacts; (contact, our tag ids, None) or (None, …, existing id) on a 409."""
        tag_ids = await self.tag_ids(list(member.tags), create=True)
        body = await self._new_body(audience_id, member, tag_ids)
        status, answer = await self._request("POST", "/contacts", op="create", json=body, ok=(409,))
        return self._created(status, answer, body, tag_ids)

    @staticmethod
    def _created(
        status: int, answer: Any, body: dict[str, Any], tag_ids: dict[str, str]
    ) -> tuple[dict[str, Any] | None, dict[str, str], str | None]:
        """What a `POST /contacts` answered: (contact, tag ids, None), or (None, …, the
        existing contact's id) on a 409."""
        if status == 409:
            _, text = first_error(answer)
            match = DUPLICATE.search(text)
            return None, tag_ids, match.group(1) if match else ""
        contact = dict(answer or {})
        # The 201 echoes core properties only: what we set on the sub-resources is known.
        contact.setdefault("list_memberships", body["list_memberships"])
        contact.setdefault("taggings", body.get("taggings") or [])
        contact.setdefault("custom_fields", body.get("custom_fields") or [])
        return contact, tag_ids, None

    # --- live creates joined into one request per turn ----------------------------------

    async def _create_joined(
        self, audience_id: str, member: ContactPayload
    ) -> RemoteMember | tuple[dict[str, Any] | None, dict[str, str], str | None]:
        """A create that waits for the connection's next request: alone (or when the turn
        came within `contended_seconds`) it is the `POST /contacts` of `_create`, its answer
        returned the same way; with others waiting by a later turn, one
        `contacts_json_import` of all of them, whose outcome
        (after the shared status read) is returned as the person's state or raised as the
        refusal (an unsubscribed person is never re-added: compliance)."""
        body = await self._new_body(audience_id, member, {})
        row = await self._import_row(member)
        entry = _WaitingCreate(
            member,
            body,
            row,
            asyncio.get_running_loop().create_future(),
            time.monotonic(),
            contextvars.copy_context(),
        )
        line = self._waiting.setdefault(audience_id, [])
        line.append(entry)
        sender = self._senders.get(audience_id)
        if sender is None or sender.done():
            self._senders[audience_id] = self._spawn(self._send_waiting(audience_id))
        try:
            return await asyncio.shield(entry.done)
        except asyncio.CancelledError:
            if entry in line:
                line.remove(entry)  # not sent: nothing to learn
            raise

    def _spawn(self, coro: Any, context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send_waiting(self, audience_id: str) -> None:
        """Send the list's waiting creates, one request at a time, each built at its turn."""
        line = self._waiting.setdefault(audience_id, [])
        while line:
            taken: list[_WaitingCreate] = []

            def build(taken: list[_WaitingCreate] = taken) -> tuple[str, Any]:
                contended = time.monotonic() - line[0].since >= self.contended_seconds
                n = JOIN_MAX if contended else 1
                taken.extend(line[:n])
                del line[:n]
                if len(taken) == 1:
                    return "/contacts", taken[0].body
                rows = [e.row for e in taken]
                return "/activities/contacts_json_import", {
                    "import_data": rows,
                    "list_ids": [audience_id],
                }

            started = datetime.now(UTC)
            context = line[0].context.copy()
            try:
                status, answer = await asyncio.create_task(
                    self._request("POST", "", op="create", build=build, ok=(409,)),
                    context=context,
                )
            except BaseException as exc:
                # Failed before its turn came (a pause, a starved slot): every create waiting
                # learns it, as its own request would have; after it, the ones it carried.
                victims = taken or line[:]
                if not taken:
                    line.clear()
                for e in victims:
                    if not e.done.done():
                        e.done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    for e in line:
                        if not e.done.done():
                            e.done.set_exception(exc)
                    line.clear()
                    raise
                continue
            if len(taken) == 1:
                taken[0].done.set_result(self._created(status, answer, taken[0].body, {}))
                continue
            self.joined_imports += 1
            self._spawn(self._finish_joined(audience_id, taken, answer, started), context.copy())

    async def _finish_joined(
        self,
        audience_id: str,
        taken: list[_WaitingCreate],
        activity: Any,
        started: datetime,
    ) -> None:
        """The joined import's outcome for each of its creates, once the activity ended."""
        try:
            done = await self.wait_activity(activity)
            if done.get("state") != "completed":
                raise TransientError(f"the import activity ended {done.get('state')}")
            outcomes = await self._import_outcomes(
                audience_id, [e.member for e in taken], done, started
            )
        except BaseException as exc:
            for e in taken:
                if not e.done.done():
                    e.done.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for e in taken:
            key = email_key(e.member.email_address) or e.member.email_address
            outcome = outcomes.get(key)
            if e.done.done():
                continue
            if outcome is None or (outcome.error is None and outcome.state is None):
                e.done.set_exception(TransientError("the import did not report this contact"))
            elif outcome.error is not None:
                e.done.set_exception(outcome.error)
            else:
                e.done.set_result(outcome.state)

    async def upsert_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """New: POST with our list; existing: GET, merge, PUT whole (consent only lowered).

        Someone the mirror does not know is created straight away (one request): the 409 of
        an address Constant Contact already holds, deleted ones included, names the contact.
        """
        known = remote is not None and bool(remote.remote_id)
        contact = await self._resolve(member.email_address, remote) if known else None
        if contact is None:
            if remote is None and joinable(member):
                joined = await self._create_joined(audience_id, member)
                if isinstance(joined, RemoteMember):
                    return joined  # it went in an import with other creates
                created, tag_ids, existing = joined
            else:
                created, tag_ids, existing = await self._create(audience_id, member)
            if created is not None:
                return await self._member(created, audience_id, created=True, tags=tag_ids)
            if existing:
                contact = await self.get_contact(existing)
            if contact is None:
                contact = await self.find_contact(member.email_address)
            if contact is None:
                raise TransientError("Constant Contact reported a duplicate it does not show")
        never_pushed = remote is None or not remote.remote_id
        opted_out = permission_of(contact) == "unsubscribed" and not contact.get("deleted_at")
        if never_pushed and opted_out and member.consent is None:
            # Never pushed by us, opted out there: the person's decision, which the CRM takes
            # (consent follows); nothing is sent.
            raise PermanentError(
                ErrorKind.compliance, "unsubscribed at Constant Contact", status=409
            )
        return await self._update(audience_id, contact, member, join=True, remote=remote)

    async def update_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """Update an existing person only (never creates); PermanentError(not_found) if gone."""
        contact = await self._resolve(member.email_address, remote)
        if contact is None:
            raise PermanentError(ErrorKind.not_found, "the contact is not at Constant Contact")
        return await self._update(audience_id, contact, member, join=False, remote=remote)

    async def _update(
        self,
        audience_id: str,
        contact: dict[str, Any],
        member: ContactPayload,
        *,
        join: bool,
        remote: RemoteRef | None,
    ) -> RemoteMember:
        contact_id = str(contact["contact_id"])
        current = permission_of(contact)
        wanted = member.consent
        permission: str | None = current or None
        resubscribe = False
        if wanted == "unsubscribed":
            permission = "unsubscribed"
        elif wanted in ("subscribed", "pending"):
            if current == "unsubscribed":
                resubscribe = True  # never a PUT up: the one resubscribe email
            elif current == "not_set":
                permission = "explicit"
        lists = [str(x) for x in contact.get("list_memberships") or []]
        on_list = audience_id in lists
        deleted = bool(contact.get("deleted_at"))
        if (
            (
                (join or wanted in ("subscribed", "pending"))
                and not on_list
                and current != "unsubscribed"
            )
            or deleted
            and not on_list
            and join
        ):
            lists = [*lists, audience_id]
        lists = with_preferences(lists, member.interests)
        body = await self._put_body(contact, member, permission=permission, lists=lists)
        if email_key(address_of(contact)) != email_key(member.email_address):
            body["email_address"]["address"] = member.email_address
        answer = await self._put(contact_id, body, op="update")
        merged = {**contact, **answer}
        merged.setdefault("list_memberships", lists)
        merged["list_memberships"] = answer.get("list_memberships", lists)
        merged["taggings"] = answer.get("taggings", contact.get("taggings") or [])
        merged["custom_fields"] = answer.get("custom_fields", body.get("custom_fields") or [])
        refs = dict(remote.refs) if remote is not None else {}
        if resubscribe:
            return await self._resubscribe(audience_id, merged, refs)
        return await self._member(merged, audience_id, refs=refs)

    async def _resubscribe(
        self, audience_id: str, contact: dict[str, Any], refs: dict[str, Any]
    ) -> RemoteMember:
        """The only way back after an unsubscribe: one confirmation email, once."""
        contact_id = str(contact["contact_id"])
        if refs.get("resubscribe_sent"):
            return await self._member(
                contact, audience_id, status=RemoteStatus.unsubscribed, refs=refs
            )
        status, _ = await self._request(
            "PUT",
            f"/contacts/resubscribe/{contact_id}",
            op="resubscribe",
            json={"list_ids": [audience_id]},
            ok=(409,),
        )
        refs = {**refs, "resubscribe_sent": True}
        # 409: the one email was already used; the person stays unsubscribed until they act.
        shown = RemoteStatus.pending if status < 300 else RemoteStatus.unsubscribed
        return await self._member(contact, audience_id, status=shown, refs=refs)

    async def batch_upsert(
        self, audience_id: str, members: list[ContactPayload]
    ) -> list[BatchOutcome]:
        """People with a consent change go one by one; the rest in one import activity."""
        return await self._bulk(audience_id, members)

    async def _bulk(self, audience_id: str, members: list[ContactPayload]) -> list[BatchOutcome]:
        outcomes: dict[str, BatchOutcome] = {}
        importable: list[ContactPayload] = []
        for m in members:
            key = email_key(m.email_address) or m.email_address
            # An import only adds to lists: preferences (lists to leave too) go one by one.
            if m.consent is not None or m.interests or len(m.email_address) > 50:
                outcomes[key] = await self._one(audience_id, m)
            else:
                importable.append(m)
        if importable:
            outcomes.update(await self._import(audience_id, importable))
        return [
            outcomes.get(k) or BatchOutcome(k, error=PermanentError(ErrorKind.invalid, "lost"))
            for k in (email_key(m.email_address) or m.email_address for m in members)
        ]

    async def _one(self, audience_id: str, member: ContactPayload) -> BatchOutcome:
        key = email_key(member.email_address) or member.email_address
        try:
            return BatchOutcome(key, state=await self.upsert_member(audience_id, member))
        except PermanentError as exc:
            return BatchOutcome(key, error=exc)

    async def _import(
        self, audience_id: str, members: list[ContactPayload]
    ) -> dict[str, BatchOutcome]:
        """One `contacts_json_import` activity polled to completion, then our list read back
        for the ids; what it could not add (unsubscribed people) is reported per contact."""
        await self._field_index()
        rows = [await self._import_row(m) for m in members]
        started = datetime.now(UTC)
        _, activity = await self._request(
            "POST",
            "/activities/contacts_json_import",
            op="import",
            json={"import_data": rows, "list_ids": [audience_id]},
        )
        done = await self.wait_activity(activity)
        if done.get("state") != "completed":
            raise TransientError(f"the import activity ended {done.get('state')}")
        return await self._import_outcomes(audience_id, members, done, started)

    async def _import_row(self, m: ContactPayload) -> dict[str, Any]:
        """One person as a `contacts_json_import` row (custom fields by name: the account's
        fields are read only when the person has some)."""
        row: dict[str, Any] = {"email": m.email_address}
        for key, value in m.fields.items():
            if key in CORE_FIELDS:
                row["phone" if key == "phone_number" else key] = render_value(value)
            else:
                fid = await self._custom_id(key)
                row[f"cf:{self._field_names.get(fid, key)}"] = render_value(value)
        return row

    async def _import_outcomes(
        self,
        audience_id: str,
        members: list[ContactPayload],
        done: dict[str, Any],
        started: datetime,
    ) -> dict[str, BatchOutcome]:
        """Each person's outcome of a completed import: all on our list (nothing read back),
        or our list read back, and whoever is missing looked up (an unsubscribed person is
        refused as compliance, never re-added)."""
        wanted = {email_key(m.email_address) or m.email_address: m for m in members}
        raw = done.get("status")
        counts: dict[str, Any] = raw if isinstance(raw, dict) else {}
        clean = not int(counts.get("cannot_add_to_list_count") or 0) and not int(
            counts.get("error_count") or 0
        )
        if clean and not any(m.tags for m in members) and not done.get("activity_errors"):
            # Everyone is on our list: no page is read back (the quota is the bottleneck).
            # Their ids are learnt on their next update (a POST's 409 names the contact).
            return {
                key: BatchOutcome(
                    key,
                    state=RemoteMember(
                        email_address=m.email_address,
                        remote_id="",
                        status=RemoteStatus.subscribed.value,
                        tags=[],
                        last_changed=started,
                        fields=dict(m.fields),
                    ),
                )
                for key, m in wanted.items()
            }
        found: dict[str, dict[str, Any]] = {}
        since = started.replace(microsecond=0).timestamp() - 2
        url: str | None = "/contacts"
        params: dict[str, Any] | None = {
            "lists": audience_id,
            "status": "all",
            "updated_after": iso(datetime.fromtimestamp(since, UTC)),
            "include": "list_memberships,taggings,custom_fields,phone_numbers",
            "limit": PAGE_LIMIT,
        }
        while url and len(found) < len(wanted):
            _, body = await self._request("GET", url, op="list", params=params)
            for contact in (body or {}).get("contacts") or []:
                k = email_key(address_of(contact))
                if k in wanted:
                    found[k] = contact
            url, params = self._next_url(body), None
        out: dict[str, BatchOutcome] = {}
        for key, m in wanted.items():
            contact = found.get(key)
            if contact is None:
                # Not on our list after the import: look once (unsubscribed people are not
                # added; the CRM learns their opt-out).
                contact = await self.find_contact(m.email_address)
                if contact is None:
                    out[key] = BatchOutcome(
                        key, error=PermanentError(ErrorKind.invalid_email, "not imported")
                    )
                    continue
                if permission_of(contact) == "unsubscribed":
                    out[key] = BatchOutcome(
                        key,
                        error=PermanentError(
                            ErrorKind.compliance,
                            "unsubscribed at Constant Contact: not added to the list",
                        ),
                    )
                    continue
                out[key] = await self._one(audience_id, m)
                continue
            out[key] = BatchOutcome(key, state=await self._member(contact, audience_id))
        await self._tag_in_bulk(audience_id, wanted, found, out)
        return out

    async def _tag_in_bulk(
        self,
        audience_id: str,
        wanted: Mapping[str, ContactPayload],
        found: Mapping[str, dict[str, Any]],
        out: dict[str, BatchOutcome],
    ) -> None:
        """The imported people's tags: one `contacts_taggings_add` activity per set of tags
        (up to 500 contacts each), polled to completion; the ids we set go to the mirror."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for key, member in wanted.items():
            outcome = out.get(key)
            if member.tags and outcome is not None and outcome.state is not None and key in found:
                groups.setdefault(tuple(sorted(set(member.tags))), []).append(key)
        for names, keys in groups.items():
            tag_ids = await self.tag_ids(list(names), create=True)
            for start in range(0, len(keys), PAGE_LIMIT):
                chunk = keys[start : start + PAGE_LIMIT]
                contact_ids = [str(found[k]["contact_id"]) for k in chunk]
                _, activity = await self._request(
                    "POST",
                    "/activities/contacts_taggings_add",
                    op="tags",
                    json={
                        "source": {"contact_ids": contact_ids},
                        "tag_ids": sorted(set(tag_ids.values())),
                    },
                )
                done = await self.wait_activity(activity)
                if done.get("state") != "completed":
                    raise TransientError(f"the tagging activity ended {done.get('state')}")
                for k in chunk:
                    state = out[k].state
                    assert state is not None
                    state.tags = sorted(set(state.tags) | set(names))
                    state.refs = {**state.refs, "tags": {**state.refs.get("tags", {}), **tag_ids}}

    async def wait_activity(self, activity: Any) -> dict[str, Any]:
        """Wait until an activity ends (reference §3): one status read of the account's
        newest activities answers for every activity this client waits for."""
        if not isinstance(activity, dict) or not activity.get("activity_id"):
            raise TransientError("the activity answer carries no activity_id")
        if activity.get("state") in FINAL_STATES:
            return activity
        activity_id = str(activity["activity_id"])
        end = self._watched.get(activity_id)
        if end is None:
            end = self._watched[activity_id] = asyncio.get_running_loop().create_future()
        if self._watcher is None or self._watcher.done():
            self._watcher = self._spawn(self._watch())
        try:
            return await asyncio.wait_for(asyncio.shield(end), ACTIVITY_TIMEOUT_SECONDS)
        except TimeoutError:
            raise TransientError("the activity did not finish in time") from None
        finally:
            if not end.done():
                end.cancel()
            self._watched.pop(activity_id, None)

    async def _watch(self) -> None:
        """Read the status of the watched activities until none is left: a page of the
        newest (op `activity`: the limits give it a shared turn of its own, not the tenant's
        — nothing reaches Constant Contact sooner for it), then one by one those older than
        the page."""
        step = 0
        while True:
            self._watched = {k: f for k, f in self._watched.items() if not f.done()}
            if not self._watched:
                return
            await asyncio.sleep(ACTIVITY_POLL_SECONDS[min(step, len(ACTIVITY_POLL_SECONDS) - 1)])
            step += 1
            try:
                seen: dict[str, dict[str, Any]] = {}
                if len(self._watched) > 1:
                    _, body = await self._request(
                        "GET", "/activities", op="activity", params={"limit": ACTIVITY_PAGE}
                    )
                    for item in (body or {}).get("activities") or []:
                        if isinstance(item, dict) and item.get("activity_id"):
                            seen[str(item["activity_id"])] = item
                for activity_id in [k for k in self._watched if k not in seen]:
                    _, body = await self._request(
                        "GET", f"/activities/{activity_id}", op="activity"
                    )
                    seen[activity_id] = body if isinstance(body, dict) else {}
            except ProviderError as exc:
                if isinstance(exc, TransientError | ThrottledError):
                    continue  # read again after the next pause
                for end in self._watched.values():
                    if not end.done():
                        end.set_exception(exc)
                continue
            for activity_id, end in list(self._watched.items()):
                item = seen.get(activity_id)
                if item is not None and item.get("state") in FINAL_STATES and not end.done():
                    end.set_result(item)
            if any(f.done() for f in self._watched.values()):
                step = min(step, 1)  # more may end soon: keep reading at a short pause

    async def update_tags(
        self,
        audience_id: str,
        email: str,
        *,
        add: list[str],
        remove: list[str],
        remote: RemoteRef | None = None,
    ) -> Mapping[str, Any] | None:
        """Tag by id (created when missing); remove only the ids we set; one GET + PUT."""
        contact = await self._resolve(email, remote)
        if contact is None:
            raise PermanentError(ErrorKind.not_found, "the contact is not at Constant Contact")
        ours: dict[str, str] = dict((remote.refs.get("tags") if remote else None) or {})
        added = await self.tag_ids(add, create=True)
        drop = {ours[n] for n in remove if n in ours}
        if remove and any(n not in ours for n in remove):
            # Tags we pushed before their ids were recorded: resolved by name.
            drop |= set(
                (await self.tag_ids([n for n in remove if n not in ours], create=False)).values()
            )
        current = [str(t) for t in contact.get("taggings") or []]
        taggings = [t for t in current if t not in drop]
        taggings += [t for t in added.values() if t not in taggings]
        if taggings != current:
            body = await self._put_body(contact, None, taggings=taggings)
            await self._put(str(contact["contact_id"]), body, op="tags")
        ours.update(added)
        for name in remove:
            ours.pop(name, None)
        return {"tags": ours}

    async def move_member(
        self,
        audience_id: str,
        old_email: str,
        member: ContactPayload,
        *,
        remote: RemoteRef | None = None,
    ) -> RemoteMember:
        """Change the address of the contact (its id and history stay)."""
        contact = await self._resolve(old_email, remote)
        if contact is None:
            raise PermanentError(ErrorKind.not_found, "the old address is not at Constant Contact")
        body = await self._put_body(contact, member, address=member.email_address)
        answer = await self._put(str(contact["contact_id"]), body, op="move")
        merged = {**contact, **answer}
        merged["custom_fields"] = answer.get("custom_fields", body.get("custom_fields") or [])
        return await self._member(merged, audience_id, refs=dict(remote.refs) if remote else {})

    async def archive_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> bool:
        """Leave our list; the contact, its consent and its other lists stay."""
        contact = await self._resolve(email, remote)
        if contact is None:
            return False
        lists = [str(x) for x in contact.get("list_memberships") or []]
        if audience_id not in lists:
            return False
        body = await self._put_body(contact, None, lists=[x for x in lists if x != audience_id])
        await self._put(str(contact["contact_id"]), body, op="archive")
        return True

    async def forget_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> None:
        """`DELETE /contacts/{id}` (GDPR); absent is fine."""
        contact_id = remote.remote_id if remote is not None else None
        if not contact_id:
            found = await self.find_contact(email)
            if found is None:
                return
            contact_id = str(found["contact_id"])
        await self._request("DELETE", f"/contacts/{contact_id}", op="forget", ok=(404,))

    # --- reading pages ---------------------------------------------------------------------

    async def list_members(
        self,
        audience_id: str,
        *,
        offset: int = 0,
        count: int = 1000,
        since_last_changed: datetime | None = None,
        status: str | None = None,
    ) -> MemberPage:
        """Members of our list by cursor; `offset` continues where the previous page ended."""
        query: dict[str, Any] = {
            "lists": audience_id,
            "include": "list_memberships,taggings,custom_fields,phone_numbers",
            "include_count": "true",
            "limit": min(PAGE_LIMIT, max(1, count)),
        }
        if since_last_changed is not None:
            query["updated_after"] = iso(since_last_changed)
        base = (audience_id, query.get("updated_after"), status)
        url: str | None = self._cursors.pop((*base, offset), None) if offset else None
        params: Mapping[str, Any] | None = None if url else query
        if url is None:
            url = "/contacts"
            if offset:
                # No cursor for this offset (another process read the page before): walk.
                skipped = 0
                while url and skipped < offset:
                    _, body = await self._request("GET", url, op="list", params=params)
                    skipped += len((body or {}).get("contacts") or [])
                    url, params = self._next_url(body), None
                if not url:
                    return MemberPage(members=[], total_items=skipped)
        members: list[RemoteMember] = []
        total = 0
        while url and len(members) < count:
            _, body = await self._request("GET", url, op="list", params=params)
            total = int((body or {}).get("contacts_count") or total)
            for contact in (body or {}).get("contacts") or []:
                member = await self._member(contact, audience_id)
                if status is None or member.status == status:
                    members.append(member)
            url, params = self._next_url(body), None
        if url:
            self._cursors[(*base, offset + len(members))] = url
        else:
            total = offset + len(members)
        return MemberPage(members=members, total_items=max(total, offset + len(members)))

    async def pull_changes(self, audience_id: str, since: datetime) -> list[InboundEvent]:
        """What changed since `since` as neutral events (no webhooks exist, reference §6):
        opt-outs of the account (`optout_after`), then changes on our list (`updated_after`):
        bounce holds, people's own sign-ups, and every other change as `profile` (the pull
        compares addresses with the mirror by contact id: an address change)."""
        events: list[InboundEvent] = []
        after = iso(since)
        url: str | None = "/contacts"
        params: dict[str, Any] | None = {
            "status": "unsubscribed",
            "optout_after": after,
            "include": "list_memberships",
            "limit": PAGE_LIMIT,
        }
        seen: set[str] = set()
        while url:
            _, body = await self._request("GET", url, op="pull", params=params)
            for contact in (body or {}).get("contacts") or []:
                block = contact.get("email_address") or {}
                at = _parse_time(block.get("opt_out_date")) or _parse_time(
                    contact.get("updated_at")
                )
                seen.add(str(contact.get("contact_id")))
                events.append(
                    self._event(
                        InboundKind.unsubscribe,
                        "unsubscribe",
                        contact,
                        at,
                        reason=block.get("opt_out_reason"),
                    )
                )
            url, params = self._next_url(body), None
        url, params = (
            "/contacts",
            {
                "lists": audience_id,
                "status": "all",
                "updated_after": after,
                "include": "list_memberships,custom_fields,phone_numbers",
                "limit": PAGE_LIMIT,
            },
        )
        while url:
            _, body = await self._request("GET", url, op="pull", params=params)
            for contact in (body or {}).get("contacts") or []:
                if str(contact.get("contact_id")) in seen:
                    continue
                block = contact.get("email_address") or {}
                permission = permission_of(contact)
                at = _parse_time(contact.get("updated_at")) or since
                if permission == "temp_hold":
                    events.append(self._event(InboundKind.cleaned, "bounce", contact, at))
                elif permission == "unsubscribed":
                    events.append(self._event(InboundKind.unsubscribe, "unsubscribe", contact, at))
                elif (
                    permission == "explicit"
                    and block.get("opt_in_source") == "Contact"
                    and (_parse_time(block.get("opt_in_date")) or at) > since
                    and contact.get("update_source") == "Contact"
                ):
                    events.append(self._event(InboundKind.subscribe, "signup", contact, at))
                else:
                    events.append(self._event(InboundKind.profile, "profile", contact, at))
            url, params = self._next_url(body), None
        return events

    def _event(
        self,
        kind: InboundKind,
        name: str,
        contact: Mapping[str, Any],
        at: datetime | None,
        *,
        reason: Any = None,
    ) -> InboundEvent:
        fired = at or datetime.now(UTC)
        lists = contact.get("list_memberships")
        person = str(contact.get("contact_id") or "")
        return InboundEvent(
            kind=kind,
            type=name,
            fired_at=fired,
            email=address_of(contact) or None,
            reason=str(reason) if reason else None,
            fields=self.fields_of(contact),
            # The lists the person is on: the preferences they chose on the preference page.
            interest_ids=[str(x) for x in lists]
            if kind is InboundKind.profile and isinstance(lists, list)
            else None,
            payload={
                "contact_id": str(contact.get("contact_id") or ""),
                "email": address_of(contact),
                "permission_to_send": permission_of(contact),
                "updated_at": contact.get("updated_at"),
            },
            # The person's id matches the change to its contact where the address alone
            # would miss (or name another person): InboundApplier.attributed.
            person_id=person or None,
        )


def joinable(member: ContactPayload) -> bool:
    """A create an import carries as its own `POST` would: a consenting new person with no
    consent change, tags, preferences or campaigns, whose address an import takes. (An import
    makes them `implicit`, where the POST says `explicit`; it never re-adds anyone
    unsubscribed.)"""
    return (
        member.consent is None
        and member.consent_if_new == "subscribed"
        and not member.tags
        and not member.interests
        and not member.campaigns
        and len(member.email_address) <= 50
    )


def with_preferences(lists: list[str], preferences: Mapping[str, bool]) -> list[str]:
    """The list memberships with the mapped preference lists as the payload says (chosen:
    on it, not chosen: off it); every other list stays as it is."""
    out = [x for x in lists if preferences.get(x) is not False]
    out += [x for x, chosen in preferences.items() if chosen and x not in out]
    return out


def render_value(value: Any) -> str:
    """A neutral value as Constant Contact stores it: text; a list joined with ", "."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _writable(item: Mapping[str, Any]) -> dict[str, Any]:
    drop = {"created_at", "updated_at", "create_source", "update_source"}
    return {k: v for k, v in item.items() if k not in drop}


def _core_into(body: dict[str, Any], fields: Mapping[str, Any], *, phones: Any = None) -> None:
    """Our core fields into a contact body; an empty value of ours clears theirs (PUT)."""
    for key in ("first_name", "last_name", "job_title", "company_name"):
        if key in fields:
            body[key] = render_value(fields[key])[:50]
    if "phone_number" in fields:
        number = render_value(fields["phone_number"])[:25]
        kept = [p for p in phones or [] if isinstance(p, dict)]
        if kept:
            kept[0] = {**kept[0], "phone_number": number}
            body["phone_numbers"] = kept
        else:
            body["phone_numbers"] = [{"phone_number": number, "kind": "mobile"}]
