"""ActiveCampaign API v3 client: the neutral operations and the error mapping.

Rules (reference §9, DESIGN §14.5):
- people are upserted by `POST /contact/sync` and found by exact `email` lookups whose answer
  is checked (an ignored filter returns everyone); empty values are never sent (`""` clears);
- list membership is `contactLists`: status 1 only for a person *new to our list* who consents
  — the real API silently re-subscribes on a 1, so a person at 2 (unsubscribed) or 3 (bounced)
  is never sent a 1 again (the send is refused as `compliance`, "blocked"); a local opt-out is
  status 2;
- tags are found or created by name and added by `contactTags`; the association ids we created
  are kept in the mirror's refs and only those are ever deleted;
- backlogs go through `import/bulk_import` (250 contacts / 400,000 bytes a request) polled by
  `import/info`: one import a batch carries the fields, `subscribe` for every consenting
  person our list does not hold at 0, 2 or 3 (read just before; an import would silently make
  a 0 or a 3 a 1, and refuses a 2), and tags only for people we never pushed (ours only where
  the import created the contact); the others' status is read afterwards and decided as
  above;
- both error-body shapes, HTML pages, empty bodies, 429 and the 503 of the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from app import metrics
from app.emailkey import email_key
from app.providers.activecampaign.spec import (
    ACTIVE,
    BOUNCED,
    BULK_MAX_BYTES,
    BULK_MAX_CONTACTS,
    BULK_MIN_CONTACTS,
    OP_BULK_MULTI,
    OP_BULK_SINGLE,
    PROVIDER,
    STATUS_MAP,
    STATUS_WORDS,
    UNCONFIRMED,
    UNSUBSCRIBED,
)
from app.providers.base import (
    Audience,
    AudienceMissing,
    AuthError,
    BatchOutcome,
    ContactPayload,
    ErrorKind,
    MemberPage,
    PermanentError,
    ProviderError,
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

PAGE_LIMIT = 100  # the API's maximum `limit`
# Contact attributes of the record itself; every other field key is a custom field.
STANDARD_FIELDS = ("firstName", "lastName", "phone")
BULK_NAMES = {"firstName": "first_name", "lastName": "last_name", "phone": "phone"}
OPTION_TYPES = frozenset({"dropdown", "checkbox", "listbox", "radio", "multiselect"})
# Intermittent 403s happen on valid keys (reference §9.3): a 403 is asked again this often.
FORBIDDEN_RETRIES = 3
IMPORT_POLL_SECONDS = (1.0, 0.5, 1.0, 2.0)  # each poll is a request of the 5/s
IMPORT_MAX_WAIT = 120.0
THROTTLE_WAITS = 5  # a client without the shared limiter waits out this many 429s a request
# Any account's offset from UTC is at most 14 h: `filters[updated_after]` is sent this much
# early, so whichever zone the API reads it in, nothing changed since `since` is missed.
UPDATED_AFTER_MARGIN = timedelta(hours=14)
USER_AGENT = "audience-sync/0.1"
# Inside a backlog every request is idempotent (an import is an upsert by address, reads are
# reads, a 1 goes only to people on no status of our list): a passing failure is asked again
# here, since one lost answer would otherwise send the whole batch round again.
BATCH_RETRIES = (0.1, 0.3, 0.9, 2.0)
# How long a backlog trusts its read of our list's unsubscribed people (2): an import refuses
# them anyway ("may not be subscribed to lists which they have previously unsubscribed
# from"), so a stale read costs a request (the contact goes again alone), never consent.
HELD_SECONDS = 10.0
HELD_MAX_UNSUBSCRIBED_PAGES = 20
# Pages of our list's unconfirmed (0) and bounced (3) people read before each batch's import;
# beyond, the two-import path (reading them would cost more than it saves).
HELD_MAX_PAGES = 4
# Imports of one client waiting for their turn at once. Each holds one of the account's
# request slots while it waits for the import rate (100 a minute, slower than the 5/s):
# a backlog's groups side by side queued a dozen imports and held every slot, so the
# reads of the other groups could not use the account's rate meanwhile (P1: a fifth of
# the drain at 1.5 requests a second). Two keep the import rate busy.
IMPORTS_AT_ONCE = 2
# What the mirror's refs claim of a contact on the strength of having made it: created by
# us, our tags' associations, the span of its id (a bulk import's contacts).
CLAIMS = ("created", "tags", "ids")
# How long this client keeps what it learnt of the next contact id (`_bounds`): a batch uses
# only what was learnt after it asked, so older entries serve nobody.
BOUNDS_SECONDS = 300.0
_patient: contextvars.ContextVar[bool] = contextvars.ContextVar("ac_patient", default=False)


class BulkUnavailable(Exception):
    """`import/bulk_import` answered an HTML 404: the account has no bulk importer."""


class BulkRefused(PermanentError):
    """An import refused as a whole, `reasons` naming contacts by index where it says."""

    def __init__(self, message: str, reasons: list[Any], *, status: int) -> None:
        super().__init__(ErrorKind.invalid, message, status=status)
        self.reasons = reasons


def _loads(content: bytes) -> Any:
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None


def _errors(body: Any) -> list[dict[str, Any]]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, str):
        return [{"title": errors}]
    return [e for e in errors or [] if isinstance(e, dict)]


def _message(body: Any) -> str:
    """Every `errors[].title` joined, else `message` (Singer's rule), else nothing."""
    titles = [str(e.get("title") or "") for e in _errors(body)]
    text = "; ".join(t for t in titles if t)
    if not text and isinstance(body, dict):
        text = str(body.get("message") or "")
        reasons = body.get("failureReasons")
        if isinstance(reasons, list) and reasons and isinstance(reasons[0], str):
            text = f"{text} {reasons[0]}".strip()
    return text[:300]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None


def _is_bulk_rate(body: Any) -> bool:
    return isinstance(body, dict) and "rate limit" in str(body.get("message") or "").lower()


def error_from(
    status: int, body: Any, headers: Mapping[str, str], *, op: str, json: bool
) -> ProviderError:
    """The ProviderError a non-2xx answer means (status, then the body's codes)."""
    text = _message(body)
    message = f"{status}: {text}" if text else f"{status}"
    retry_after = _retry_after(headers)
    if status == 429 or (status == 400 and _is_bulk_rate(body)):
        return ThrottledError(message, status=status, retry_after=retry_after)
    if status == 503 and (retry_after is not None or headers.get("ratelimit-remaining") == "0"):
        # The 503 some accounts answer at the limit (mediatoolkit#18) says when to come back
        # and that nothing remains; an outage's does not (even where RateLimit-* headers are
        # on every answer).
        return ThrottledError(message, status=status, retry_after=retry_after)
    if status in (401, 402):
        return AuthError(message, status=status)
    if status == 403:
        # A 403 after its retries: the key may be gone, or ActiveCampaign is having one of
        # its intermittent 403s; `ping` decides which (it raises AuthError).
        return TransientError(message, status=status)
    if status >= 500 or status == 408:
        return TransientError(message, status=status)
    if status == 404:
        if not json:
            return TransientError(f"404 (an HTML page) for {op}", status=status)
        if "_List" in text or op in ("audience",):
            return AudienceMissing(message, status=status)
        return PermanentError(ErrorKind.not_found, message, status=status)
    errors = _errors(body)
    codes = {str(e.get("code") or "") for e in errors}
    pointers = {str((e.get("source") or {}).get("pointer") or "") for e in errors}
    if "duplicate" in codes and any(p.endswith("/email") for p in pointers):
        return PermanentError(ErrorKind.member_exists, message, status=status)
    if "email_invalid" in codes or "field_missing" in codes:
        return PermanentError(ErrorKind.invalid_email, message, status=status)
    if "duplicate" in codes:
        return PermanentError(ErrorKind.invalid, message, status=status)
    if any("field" in p.lower() for p in pointers) or "option" in text.lower():
        return PermanentError(ErrorKind.merge_fields, message, status=status)
    return PermanentError(ErrorKind.invalid, message, status=status)


def render_value(value: Any) -> str | None:
    """A neutral value as ActiveCampaign stores it: lists as `||a||b||`, numbers as text;
    None for an empty value (never sent: `""` would clear ActiveCampaign's)."""
    if isinstance(value, list):
        items = [str(v).strip() for v in value if str(v).strip()]
        return "||" + "||".join(items) + "||" if items else None
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def parse_time(value: Any) -> datetime | None:
    """An ActiveCampaign date (account-local ISO with offset, or `YYYY-MM-DD HH:MM:SS` UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _status_word(status: int | None) -> str:
    return STATUS_WORDS.get(status, "absent") if status is not None else "absent"


def neutral_status(status: int | None) -> RemoteStatus:
    """Our list's status code for a person as the neutral status (None: not on the list)."""
    return STATUS_MAP[_status_word(status)]


def record_fields(contact: Mapping[str, Any]) -> dict[str, Any]:
    """The standard attributes of a contact record that we map (empty ones left out)."""
    return {k: contact[k] for k in STANDARD_FIELDS if contact.get(k) not in (None, "")}


class ActiveCampaignClient:
    """One ActiveCampaign account's API (`<account URL>/api/3`, `Api-Token`)."""

    name = PROVIDER

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        api_url: str,
        api_key: str,
        timeout: float = 30.0,
        limiter: RequestLimiter | None = None,
        import_poll: tuple[float, ...] = IMPORT_POLL_SECONDS,
        import_max_wait: float = IMPORT_MAX_WAIT,
        held_max_pages: int = HELD_MAX_PAGES,
    ) -> None:
        self._transport = transport
        self._limiter = limiter
        self._base = api_url.rstrip("/").removesuffix("/api/3").rstrip("/") + "/api/3"
        self._key = api_key
        self._timeout = timeout
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._import_poll = import_poll
        self._import_max_wait = import_max_wait
        # Caches of the account's names → ids (tags, custom fields by perstag); rebuilt on a
        # miss, so a tag or field created elsewhere is found.
        self._tags: dict[str, str] | None = None
        self._tag_names: dict[str, str] = {}
        self._fields: dict[str, dict[str, Any]] | None = None
        self._tag_lock = asyncio.Lock()
        self._option_locks: dict[str, asyncio.Lock] = {}
        self._fields_lock = asyncio.Lock()
        self._options_made: dict[str, set[str]] = {}
        self._held_lock = asyncio.Lock()
        self._held_cache: dict[str, tuple[float, dict[str, int] | None]] = {}
        self._held_max_pages = held_max_pages
        self._snapshot_locks: dict[str, asyncio.Lock] = {}
        self._snapshots: dict[str, tuple[float, dict[str, int] | None]] = {}
        # (when, the next contact id at least from then on): from a read of the highest id or
        # from an import's answer (`_first_new`).
        self._bounds: list[tuple[float, int]] = []
        self._bulk_available = True
        self._import_turns = asyncio.Semaphore(IMPORTS_AT_ONCE)

    # --- plumbing -----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        json: Any = None,
        params: Any = None,
        need_body: bool = True,
    ) -> tuple[int, Any]:
        """One request; within a backlog (`_patient`) a transient failure is retried a few
        times in place (every backlog request is idempotent)."""
        # Never a status change: a 1 asked again could meet a person who just unsubscribed.
        delays: tuple[float, ...] = BATCH_RETRIES if _patient.get() and op != "membership" else ()
        throttles = 0
        while True:
            try:
                return await self._request_once(
                    method, path, op=op, json=json, params=params, need_body=need_body
                )
            except ThrottledError as exc:
                # Without the shared limiter (connect: ping, lists, the field map's fields
                # before anything is stored) nobody else waits for the account: we do, as
                # long as ActiveCampaign asks; with it, the engine cools the account down.
                # A read inside a backlog waits too: failing it would fail an import already
                # made, and the batch's retry could no longer tell the people that import
                # created (P1: a 429 on the record read sent 1,000 contacts one by one). So
                # does an import (a refused one was not queued): failing it failed its
                # batch's other import, already made (P1 with P2, 3 Dec afternoon: one 429
                # on an import sent 500 contacts' tags one by one).
                wait = exc.retry_after if exc.retry_after is not None else 1.0
                bulk = op in (OP_BULK_MULTI, OP_BULK_SINGLE)
                in_place = self._limiter is None or (_patient.get() and (method == "GET" or bulk))
                if not in_place or throttles >= THROTTLE_WAITS or wait > 10:
                    raise
                throttles += 1
                await asyncio.sleep(wait)
            except TransientError:
                if not delays:
                    raise
                await asyncio.sleep(delays[0])
                delays = delays[1:]

    async def _request_once(
        self,
        method: str,
        path: str,
        *,
        op: str,
        json: Any = None,
        params: Any = None,
        need_body: bool = True,
        forbidden_retries: int = FORBIDDEN_RETRIES,
    ) -> tuple[int, Any]:
        """(status, parsed body) of a 2xx answer; the error tree otherwise.

        A 2xx without a JSON body where one is needed is a TransientError: ActiveCampaign
        answers an empty 200 now and then, and the change may not have been made.
        """
        headers = {"Api-Token": self._key, "Accept": "application/json", "User-Agent": USER_AGENT}
        content = None
        if json is not None:
            content = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        for attempt in range(forbidden_retries + 1):
            request = httpx.Request(
                method,
                self._base + path,
                params=params,
                headers=headers,
                content=content,
                extensions=self._extensions,
            )
            response = await send(
                self._transport,
                request,
                provider=PROVIDER,
                op=op,
                limiter=self._limiter,
                timeout_seconds=self._timeout,
            )
            if response.status_code == 403 and attempt < forbidden_retries:
                await asyncio.sleep(0.1 * (attempt + 1))
                continue
            break
        status = response.status_code
        is_json = "json" in response.headers.get("content-type", "")
        body = _loads(response.content) if is_json or response.content[:1] in (b"{", b"[") else None
        if 200 <= status < 300:
            if need_body and not isinstance(body, dict | list) and body is not False:
                error = TransientError(f"{status} without a body for {op}", status=status)
                raise refused(PROVIDER, op, error)
            answered_ok(PROVIDER, op)
            return status, body
        if op in (OP_BULK_MULTI, OP_BULK_SINGLE):
            if status == 404 and not is_json:
                raise BulkUnavailable()
            reasons = body.get("failureReasons") if isinstance(body, dict) else None
            if status == 400 and isinstance(reasons, list) and not _is_bulk_rate(body):
                metrics.PROVIDER_REQUESTS.labels(PROVIDER, op, "permanent").inc()
                raise BulkRefused(_message(body) or "import refused", reasons, status=status)
        raise refused(PROVIDER, op, error_from(status, body, response.headers, op=op, json=is_json))

    # --- account and lists ----------------------------------------------------------------

    async def ping(self) -> None:
        """`GET /users/me` (the docs' credential check); a 403 that stays is a bad key."""
        try:
            await self._request("GET", "/users/me", op="ping")
        except TransientError as exc:
            if exc.status == 403:
                raise AuthError(exc.message, status=403) from None
            raise

    async def list_audiences(self) -> list[Audience]:
        """Every list of the account (paged)."""
        out: list[Audience] = []
        offset = 0
        while True:
            _, body = await self._request(
                "GET", "/lists", op="audience", params={"limit": PAGE_LIMIT, "offset": offset}
            )
            lists = [x for x in (body or {}).get("lists") or [] if isinstance(x, dict)]
            out.extend(
                Audience(
                    id=str(x["id"]),
                    name=str(x.get("name") or ""),
                    member_count=_int(x.get("subscriber_count")),
                )
                for x in lists
                if x.get("id")
            )
            offset += len(lists)
            total = _int(((body or {}).get("meta") or {}).get("total"))
            if not lists or offset >= total:
                return out

    async def get_audience(self, audience_id: str) -> Audience:
        """One list; AudienceMissing when it does not exist."""
        try:
            _, body = await self._request("GET", f"/lists/{audience_id}", op="audience")
        except PermanentError as exc:
            raise AudienceMissing(exc.message, status=exc.status) from None
        lst = (body or {}).get("list")
        if not isinstance(lst, dict):
            raise AudienceMissing(f"list {audience_id} not found")
        count = lst.get("subscriber_count")
        if count is None:
            _, page = await self._request(
                "GET",
                "/contacts",
                op="list",
                params={"listid": audience_id, "status": ACTIVE, "limit": 1},
            )
            count = ((page or {}).get("meta") or {}).get("total")
        return Audience(
            id=str(lst["id"]), name=str(lst.get("name") or ""), member_count=_int(count)
        )

    # --- custom fields --------------------------------------------------------------------

    async def fields(self, *, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Every custom field by perstag (upper case) and by id: {id, type, perstag, options}."""
        if self._fields is not None and not refresh:
            return self._fields
        async with self._fields_lock:  # a backlog's groups start side by side: one read
            if self._fields is not None and not refresh:
                return self._fields
            return await self._read_fields()

    async def _read_fields(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            _, body = await self._request(
                "GET", "/fields", op="fields", params={"limit": PAGE_LIMIT, "offset": offset}
            )
            body = body or {}
            options: dict[str, set[str]] = {}
            for opt in body.get("fieldOptions") or []:
                if isinstance(opt, dict):
                    options.setdefault(str(opt.get("field")), set()).add(str(opt.get("value")))
            items = [f for f in body.get("fields") or [] if isinstance(f, dict) and f.get("id")]
            for f in items:
                entry: dict[str, Any] = {
                    "id": str(f["id"]),
                    "type": str(f.get("type") or "text"),
                    "perstag": str(f.get("perstag") or "").upper(),
                    "title": str(f.get("title") or ""),
                    "options": options.get(str(f["id"]), set()),
                }
                out[entry["id"]] = entry
                if entry["perstag"]:
                    out[entry["perstag"]] = entry
            offset += len(items)
            if not items or offset >= _int((body.get("meta") or {}).get("total")):
                break
        self._fields = out
        return out

    async def create_field(self, *, title: str, perstag: str, kind: str) -> dict[str, Any]:
        """A custom field visible on every list (`fieldRels` relid 0, as the UI needs)."""
        _, body = await self._request(
            "POST",
            "/fields",
            op="fields",
            json={"field": {"type": kind, "title": title, "perstag": perstag, "visible": 1}},
        )
        field = (body or {}).get("field") or {}
        if not field.get("id"):
            raise TransientError("ActiveCampaign answered a field create without an id")
        await self._request(
            "POST", "/fieldRels", op="fields", json={"fieldRel": {"field": field["id"], "relid": 0}}
        )
        self._fields = None
        return dict(field)

    async def _field_values(self, fields: Mapping[str, Any]) -> tuple[dict[str, str], list[dict]]:
        """(standard attributes, `fieldValues`) of our fields; custom keys are ids or perstags.

        Values of option fields that the field lacks are added as options first, so a
        dropdown ActiveCampaign validates never refuses a value the CRM holds.
        """
        standard: dict[str, str] = {}
        values: list[dict[str, Any]] = []
        known: dict[str, dict[str, Any]] | None = None
        for key, raw in fields.items():
            value = render_value(raw)
            if value is None:
                continue
            if key in STANDARD_FIELDS:
                standard[key] = value
                continue
            if known is None:
                known = await self.fields()
            entry = known.get(key) or known.get(key.upper())
            if entry is None:
                known = await self.fields(refresh=True)
                entry = known.get(key) or known.get(key.upper())
            if entry is None:
                raise PermanentError(
                    ErrorKind.merge_fields, f"ActiveCampaign has no custom field {key!r}"
                )
            if entry["type"] in OPTION_TYPES:
                wanted = [p for p in value.split("||") if p] if "||" in value else [value]
                await self._ensure_options(entry, wanted)
            values.append({"field": entry["id"], "value": value})
        return standard, values

    async def _ensure_options(self, entry: dict[str, Any], wanted: list[str]) -> None:
        if all(w in entry["options"] for w in wanted):
            return
        # One creator at a time per field, the missing ones counted again once it is ours: a
        # backlog's groups build their imports side by side, and each saw the same option
        # missing while the first one's create waited for a token (P1: 4–39 creates of two
        # options a run, each adding the same option to the field again).
        async with self._option_locks.setdefault(entry["id"], asyncio.Lock()):
            # Two reads of the fields side by side give two entries: what was made is kept
            # apart from either.
            made = self._options_made.setdefault(entry["id"], set())
            missing = [w for w in wanted if w not in entry["options"] and w not in made]
            if not missing:
                entry["options"] = set(entry["options"]) | made
                return
            await self._request(
                "POST",
                "/fieldOption/bulk",
                op="fields",
                json={
                    "fieldOptions": [
                        {"field": entry["id"], "label": m, "value": m} for m in missing
                    ]
                },
            )
            made.update(missing)
            entry["options"] = set(entry["options"]) | made

    # --- tags -----------------------------------------------------------------------------

    async def _tag_index(self, *, refresh: bool = False) -> dict[str, str]:
        if self._tags is not None and not refresh:
            return self._tags
        out: dict[str, str] = {}
        offset = 0
        while True:
            _, body = await self._request(
                "GET", "/tags", op="tags", params={"limit": PAGE_LIMIT, "offset": offset}
            )
            items = [t for t in (body or {}).get("tags") or [] if isinstance(t, dict)]
            for t in items:
                out[str(t.get("tag") or "").strip().lower()] = str(t["id"])
                self._tag_names[str(t["id"])] = str(t.get("tag") or "")
            offset += len(items)
            if not items or offset >= _int(((body or {}).get("meta") or {}).get("total")):
                break
        self._tags = out
        return out

    async def tag_id(self, name: str) -> str:
        """The id of the tag named `name` (names are unique case-insensitively); created when
        missing, and a duplicate refusal (someone created it meanwhile) is a lookup."""
        key = name.strip().lower()
        async with self._tag_lock:
            index = await self._tag_index()
            if key in index:
                return index[key]
            _, body = await self._request(
                "GET", "/tags", op="tags", params={"filters[search][eq]": name.strip()}
            )
            for t in (body or {}).get("tags") or []:
                if isinstance(t, dict) and str(t.get("tag") or "").strip().lower() == key:
                    index[key] = str(t["id"])
                    return index[key]
            try:
                _, body = await self._request(
                    "POST",
                    "/tags",
                    op="tags",
                    json={"tag": {"tag": name.strip(), "tagType": "contact", "description": ""}},
                )
            except PermanentError:
                index = await self._tag_index(refresh=True)
                if key in index:
                    return index[key]
                raise
            tag = (body or {}).get("tag") or {}
            if not tag.get("id"):
                raise TransientError("ActiveCampaign answered a tag create without an id")
            index[key] = str(tag["id"])
            self._tag_names[str(tag["id"])] = name.strip()
            return index[key]

    async def _contact_tags(self, contact_id: str) -> dict[str, str]:
        """The contact's tags: tag id → contactTag id."""
        _, body = await self._request("GET", f"/contacts/{contact_id}/contactTags", op="tags")
        return {
            str(ct.get("tag")): str(ct.get("id"))
            for ct in (body or {}).get("contactTags") or []
            if isinstance(ct, dict)
        }

    async def _add_tag(self, contact_id: str, tag_id: str) -> str | None:
        """POST a contactTag; its id, or None when the contact already had it (not ours)."""
        try:
            _, body = await self._request(
                "POST",
                "/contactTags",
                op="tags",
                json={"contactTag": {"contact": contact_id, "tag": tag_id}},
            )
        except PermanentError as exc:
            if exc.kind is ErrorKind.invalid and exc.status == 422:
                return None  # a duplicate association: someone else's
            raise
        ct = (body or {}).get("contactTag") or {}
        return str(ct["id"]) if ct.get("id") else None

    async def _remove_tag(self, contact_tag_id: str) -> None:
        try:
            await self._request(
                "DELETE", f"/contactTags/{contact_tag_id}", op="tags", need_body=False
            )
        except PermanentError as exc:
            if exc.kind is not ErrorKind.not_found:
                raise

    async def _tag_contact(
        self,
        contact_id: str,
        names: Iterable[str],
        *,
        present: Mapping[str, str] | None,
        ours: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Add tags by name; {name: contactTag id} of the associations we created (a tag the
        contact already carried stays its owner's: it is not recorded as ours), filled into
        `ours` as they are made, so a failure half-way keeps what was done."""
        ours = {} if ours is None else ours
        for name in names:
            tid = await self.tag_id(name)
            if present is not None and tid in present:
                continue
            ct = await self._add_tag(contact_id, tid)
            if ct is not None:
                ours[name] = ct
        return ours

    # --- people ---------------------------------------------------------------------------

    async def find_contact(self, email: str) -> dict[str, Any] | None:
        """The contact with exactly this address (the answer is checked: a filter the API
        ignored returns everyone)."""
        _, body = await self._request(
            "GET", "/contacts", op="lookup", params={"email": email, "limit": 5}
        )
        key = email_key(email)
        for contact in (body or {}).get("contacts") or []:
            if isinstance(contact, dict) and email_key(contact.get("email")) == key:
                return contact
        return None

    async def _list_status(self, contact_id: str, audience_id: str) -> int | None:
        """The contact's status on our list (None: not on it)."""
        _, body = await self._request("GET", f"/contacts/{contact_id}/contactLists", op="get")
        for m in (body or {}).get("contactLists") or []:
            if isinstance(m, dict) and str(m.get("list")) == str(audience_id):
                return _int(m.get("status"), default=ACTIVE)
        return None

    async def _set_status(self, contact_id: str, audience_id: str, status: int) -> None:
        await self._request(
            "POST",
            "/contactLists",
            op="membership",
            json={"contactList": {"list": audience_id, "contact": contact_id, "status": status}},
        )

    async def _sync(self, member: ContactPayload) -> tuple[dict[str, Any], bool]:
        """`POST /contact/sync` with our non-empty fields; (contact, created)."""
        standard, values = await self._field_values(member.fields)
        body: dict[str, Any] = {"email": member.email_address, **standard}
        if values:
            body["fieldValues"] = values
        status, answer = await self._request(
            "POST", "/contact/sync", op="upsert", json={"contact": body}
        )
        contact = (answer or {}).get("contact")
        if not isinstance(contact, dict) or not contact.get("id"):
            raise TransientError("ActiveCampaign answered a sync without a contact")
        # A create answers 201 (docs) or 200 with the short record (no `deleted`, no bounce
        # counters); an update the full record.
        created = status == 201 or "deleted" not in contact
        return contact, created

    def _blocked(self, status: int) -> PermanentError:
        verb = "bounced" if status == BOUNCED else "unsubscribed"
        return PermanentError(
            ErrorKind.compliance,
            f"blocked: the person {verb} at ActiveCampaign (list status {status}); "
            "ActiveCampaign has no confirmation path, so they stay off the list",
        )

    async def _consent(
        self,
        contact_id: str,
        audience_id: str,
        member: ContactPayload,
        *,
        current: int | None,
        wants: bool,
    ) -> int | None:
        """Make our list's status say what the payload asks; the status it now has.

        `wants` is true when the CRM holds the person as consenting (an upsert). Only a
        person new to our list is ever given status 1; at 2 or 3 a consenting contact is
        refused (`blocked`: ActiveCampaign has no confirmation path, and a 1 would silently
        re-subscribe them); an opt-out is a 2 (a bounce stays a 3).
        """
        self._note_held(audience_id, member.email_address, current)
        if current is None:
            if wants:
                await self._set_status(contact_id, audience_id, ACTIVE)
                return ACTIVE
            return None  # nobody joins our list without consent
        if current in (UNSUBSCRIBED, BOUNCED):
            if wants:
                raise self._blocked(current)
            return current
        if member.consent == "unsubscribed":
            await self._set_status(contact_id, audience_id, UNSUBSCRIBED)
            self._note_held(audience_id, member.email_address, UNSUBSCRIBED)
            return UNSUBSCRIBED
        return current

    @staticmethod
    def _wants(member: ContactPayload) -> bool:
        """An upsert's payload: the CRM holds the person as consenting (unless it says not)."""
        if member.consent is not None:
            return member.consent in ("subscribed", "pending")
        return member.consent_if_new in ("subscribed", "pending")

    def _member(
        self,
        contact: Mapping[str, Any],
        status: int | None,
        *,
        email: str,
        created: bool,
        refs: dict[str, Any],
    ) -> RemoteMember:
        tags = sorted((refs.get("tags") or {}).keys())
        return RemoteMember(
            email_address=str(contact.get("email") or email),
            remote_id=str(contact["id"]),
            status=neutral_status(status).value,
            tags=tags,
            last_changed=parse_time(contact.get("udate") or contact.get("cdate")),
            fields=record_fields(contact),
            created=created,
            refs=refs,
        )

    async def upsert_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """`contact/sync`, then our list's status by the consent rules, then (for a contact
        we created) its tags. `tags` of the answer are the ones we hold ids of; the engine
        adds the rest through `update_tags`, which leaves a tag the person had alone."""
        contact, created = await self._sync(member)
        cid = str(contact["id"])
        current = None if created else await self._list_status(cid, audience_id)
        status = await self._consent(
            cid, audience_id, member, current=current, wants=self._wants(member)
        )
        known = _as_for(remote, cid)  # another contact than the refs': their claims go
        refs: dict[str, Any] = dict(known.refs) if known is not None else {}
        if status is not None:
            refs["list"] = audience_id
        if created:
            refs["created"] = True
            if member.tags:
                # A failure here must not fail the create: a resend would find the contact
                # and no longer know we created it. Tags not set are the engine's to add.
                made: dict[str, str] = {}
                with contextlib.suppress(TransientError, ThrottledError):
                    await self._tag_contact(cid, member.tags, present={}, ours=made)
                refs["tags"] = made
        return self._member(contact, status, email=member.email_address, created=created, refs=refs)

    async def _resolve(
        self, email: str, remote: RemoteRef | None
    ) -> tuple[str | None, RemoteRef | None]:
        """The contact's id, and `remote` as it applies to that contact: by the id the mirror
        holds, else by address (a bulk import's contacts: their ids are never read). A
        contact found by address that is not the one the refs were made on has their claims
        (created by us, our tags) dropped."""
        if remote is not None and remote.remote_id:
            return remote.remote_id, remote
        contact = await self.find_contact(email)
        if contact is None:
            return None, remote
        cid = str(contact["id"])
        return cid, _as_for(remote, cid)

    async def _put(self, contact_id: str, member: ContactPayload, *, op: str) -> dict[str, Any]:
        standard, values = await self._field_values(member.fields)
        body: dict[str, Any] = {"email": member.email_address, **standard}
        if values:
            body["fieldValues"] = values
        _, answer = await self._request(
            "PUT", f"/contacts/{contact_id}", op=op, json={"contact": body}
        )
        contact = (answer or {}).get("contact")
        if not isinstance(contact, dict) or not contact.get("id"):
            raise TransientError("ActiveCampaign answered an update without a contact")
        return contact

    async def update_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """`PUT /contacts/{id}` of an existing contact (never creates), then consent."""
        cid, remote = await self._resolve(member.email_address, remote)
        if cid is None:
            raise PermanentError(ErrorKind.not_found, "no ActiveCampaign contact has this address")
        contact = await self._put(cid, member, op="update")
        current = await self._list_status(cid, audience_id)
        status = await self._consent(
            cid, audience_id, member, current=current, wants=member.consent in ("subscribed",)
        )
        refs: dict[str, Any] = dict(remote.refs) if remote is not None else {}
        if status is not None:
            refs["list"] = audience_id
        return self._member(contact, status, email=member.email_address, created=False, refs=refs)

    async def update_tags(
        self,
        audience_id: str,
        email: str,
        *,
        add: list[str],
        remove: list[str],
        remote: RemoteRef | None = None,
    ) -> Mapping[str, Any] | None:
        """Add `add` (a tag the contact already carries is left its owner's) and delete the
        contactTags of `remove` that we created — by their ids, never by name."""
        if not add and not remove:
            return None
        cid, remote = await self._resolve(email, remote)
        if cid is None:
            raise PermanentError(ErrorKind.not_found, "no ActiveCampaign contact has this address")
        ours: dict[str, str | None] = dict((remote.refs.get("tags") if remote else None) or {})
        present: dict[str, str] | None = None
        for name in remove:
            if name not in ours:
                continue  # not ours: never removed
            ct = ours.pop(name)
            if ct is None:  # tagged by our import: its association id is looked up
                present = present if present is not None else await self._contact_tags(cid)
                ct = present.get(await self.tag_id(name))
            if ct is not None:
                await self._remove_tag(ct)
        if add:
            present = await self._contact_tags(cid)
            ours.update(await self._tag_contact(cid, add, present=present))
        return {**_dropped(remote), "tags": ours}

    async def move_member(
        self,
        audience_id: str,
        old_email: str,
        member: ContactPayload,
        *,
        remote: RemoteRef | None = None,
    ) -> RemoteMember:
        """Change the address of the contact (PUT keeps its history, lists and tags);
        member_exists when another contact holds the new address."""
        cid, remote = await self._resolve(old_email, remote)
        if cid is None:
            raise PermanentError(
                ErrorKind.not_found, "no ActiveCampaign contact has the old address"
            )
        holder = await self.find_contact(member.email_address)
        if holder is not None and str(holder["id"]) != cid:
            raise PermanentError(
                ErrorKind.member_exists,
                f"ActiveCampaign contact {holder['id']} already has the new address",
            )
        contact = await self._put(cid, member, op="move")
        current = await self._list_status(cid, audience_id)
        status = await self._consent(
            cid, audience_id, member, current=current, wants=member.consent in ("subscribed",)
        )
        refs: dict[str, Any] = dict(remote.refs) if remote is not None else {}
        if status is not None:
            refs["list"] = audience_id
        return self._member(contact, status, email=member.email_address, created=False, refs=refs)

    async def _lists_of(self, contact_id: str) -> dict[str, int]:
        _, body = await self._request("GET", f"/contacts/{contact_id}/contactLists", op="get")
        return {
            str(m.get("list")): _int(m.get("status"), default=ACTIVE)
            for m in (body or {}).get("contactLists") or []
            if isinstance(m, dict)
        }

    async def archive_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> bool:
        """Take the person off our list without touching consent (DESIGN §14.5).

        ActiveCampaign has no "leave the list" that is not an unsubscribe (status 2 is the
        person's opt-out), so: a contact we created that is on no other list is deleted; any
        other contact keeps its membership and status, and only our tags leave it (not those in
        `remote.keep_tags`, which another mapping still pushes). False when
        the contact was gone or not on our list.
        """
        cid, remote = await self._resolve(email, remote)
        if cid is None:
            return False
        try:
            lists = await self._lists_of(cid)
        except PermanentError as exc:
            if exc.kind is ErrorKind.not_found:
                return False
            raise
        if audience_id not in lists:
            return False
        created = bool(remote is not None and remote.refs.get("created"))
        if (
            created
            and set(lists) == {audience_id}
            and not (remote is not None and remote.keep_person)
        ):
            await self._delete(cid)
            return True
        ours = dict((remote.refs.get("tags") if remote else None) or {})
        for name in remote.keep_tags if remote is not None else ():
            ours.pop(name, None)  # tags are the contact's: another list of ours still wants it
        present = await self._contact_tags(cid) if None in ours.values() else {}
        for name, ct in ours.items():
            ct = ct or present.get(await self.tag_id(name))
            if ct:
                await self._remove_tag(str(ct))
        return True

    async def _delete(self, contact_id: str) -> None:
        try:
            await self._request("DELETE", f"/contacts/{contact_id}", op="forget", need_body=False)
        except PermanentError as exc:
            if exc.kind is not ErrorKind.not_found:
                raise

    async def forget_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> None:
        """`DELETE /contacts/{id}` (GDPR); absent is fine. Looked up by address as well: the
        id we hold may be of a contact already deleted and recreated."""
        ids = set()
        if remote is not None and remote.remote_id:
            ids.add(remote.remote_id)
        contact = await self.find_contact(email)
        if contact is not None:
            ids.add(str(contact["id"]))
        for cid in sorted(ids):
            await self._delete(cid)

    # --- pages ----------------------------------------------------------------------------

    async def _statuses(self, audience_id: str, ids: list[str]) -> dict[str, int]:
        """Our list's status of each of `ids` (all on the list): three filtered reads, the
        rest active."""
        out = dict.fromkeys(ids, ACTIVE)
        for status in (UNSUBSCRIBED, BOUNCED, UNCONFIRMED):
            params: list[tuple[str, Any]] = [
                ("listid", audience_id),
                ("status", status),
                ("limit", PAGE_LIMIT),
            ]
            params += [("ids[]", i) for i in ids]
            _, body = await self._request("GET", "/contacts", op="list", params=params)
            for c in (body or {}).get("contacts") or []:
                if isinstance(c, dict) and str(c.get("id")) in out:
                    out[str(c["id"])] = status
        return out

    async def list_members(
        self,
        audience_id: str,
        *,
        offset: int = 0,
        count: int = 1000,
        since_last_changed: datetime | None = None,
        status: str | None = None,
    ) -> MemberPage:
        """Up to `count` contacts of our list from `offset`, by id, with their list status
        (pages of 100); since a time by `filters[updated_after]` (sent early by the widest
        zone offset: a few more contacts read, none missed). Fields are the record's own
        attributes; tags are not read (ours are in the mirror)."""
        members: list[RemoteMember] = []
        total = 0
        position = offset
        while len(members) < count:
            params: dict[str, Any] = {
                "listid": audience_id,
                "limit": min(PAGE_LIMIT, count - len(members)),
                "offset": position,
                "orders[id]": "ASC",
            }
            if since_last_changed is not None:
                early = since_last_changed.astimezone(UTC) - UPDATED_AFTER_MARGIN
                params["filters[updated_after]"] = early.strftime("%Y-%m-%dT%H:%M:%S+00:00")
            _, body = await self._request("GET", "/contacts", op="list", params=params)
            contacts = [
                c for c in (body or {}).get("contacts") or [] if isinstance(c, dict) and c.get("id")
            ]
            total = _int(((body or {}).get("meta") or {}).get("total"))
            if not contacts:
                break
            statuses = await self._statuses(audience_id, [str(c["id"]) for c in contacts])
            for c in contacts:
                # Not filtered by `udate` here: the pull pages by what it is given, and a
                # status it already holds is no news to it.
                members.append(
                    self._member(c, statuses.get(str(c["id"])), email="", created=False, refs={})
                )
            position += len(contacts)
            if position >= total:
                break
        if since_last_changed is not None:
            members.sort(key=lambda m: m.last_changed or datetime.min.replace(tzinfo=UTC))
        if status is not None:
            members = [m for m in members if m.status == status]
        return MemberPage(members=members, total_items=total)

    # --- webhooks -------------------------------------------------------------------------

    async def list_webhooks(self) -> list[dict[str, Any]]:
        """Every webhook of the account (paged)."""
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            _, body = await self._request(
                "GET", "/webhooks", op="webhooks", params={"limit": PAGE_LIMIT, "offset": offset}
            )
            items = [w for w in (body or {}).get("webhooks") or [] if isinstance(w, dict)]
            out += items
            offset += len(items)
            if not items or offset >= _int(((body or {}).get("meta") or {}).get("total")):
                return out

    async def create_webhook(
        self, *, name: str, url: str, events: list[str], sources: list[str], listid: str
    ) -> str:
        """A webhook for `events` from `sources` on list `listid`; its id."""
        _, body = await self._request(
            "POST",
            "/webhooks",
            op="webhooks",
            json={
                "webhook": {
                    "name": name,
                    "url": url,
                    "events": events,
                    "sources": sources,
                    "listid": listid,
                }
            },
        )
        hook = (body or {}).get("webhook") or {}
        if not hook.get("id"):
            raise TransientError("ActiveCampaign answered a webhook create without an id")
        return str(hook["id"])

    async def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook; one already gone is fine."""
        try:
            await self._request("DELETE", f"/webhooks/{webhook_id}", op="webhooks", need_body=False)
        except PermanentError as exc:
            if exc.kind is not ErrorKind.not_found:
                raise

    # --- backlogs -------------------------------------------------------------------------

    async def batch_upsert(
        self, audience_id: str, members: list[ContactPayload]
    ) -> list[BatchOutcome]:
        """Backlogs through `import/bulk_import` (≤ 250 contacts, ≤ 400,000 bytes a request),
        polled to completion. One import a batch subscribes the consenting people our list
        does not hold at 0, 2 or 3 (`_held`); for the others the consent rules are applied
        per person afterwards (opt-outs → 2; a 2 or 3 refuses a wish to subscribe; a 0
        stays). Where the held people are too many to read for every batch, a data import
        first and a second, subscribing one (or `contactLists` for a few) for those new to
        our list. Tags not set by the import follow through `update_tags`. Without a bulk
        importer (an HTML 404) every person is upserted alone."""
        if not members:
            return []
        if len(members) < BULK_MIN_CONTACTS or not self._bulk_available:
            return await self._singles(audience_id, members)
        token = _patient.set(True)
        try:
            return await self._bulk(audience_id, members)
        finally:
            _patient.reset(token)

    async def _bulk(self, audience_id: str, members: list[ContactPayload]) -> list[BatchOutcome]:
        keys = [email_key(m.email_address) or m.email_address for m in members]
        outcomes = {k: BatchOutcome(email_key=k) for k in keys}
        try:
            items: list[tuple[str, ContactPayload, dict[str, Any]]] = []
            for m, key in zip(members, keys, strict=True):
                try:
                    items.append((key, m, await self._bulk_item(m)))
                except PermanentError as exc:
                    outcomes[key].error = exc
            # Read last before the import: its age is the window in which a bounce or an
            # unconfirmed signup could still be subscribed by it.
            asked = time.monotonic()
            held = await self._snapshot(audience_id)
            joining: set[str] = set()
            tagged: set[str] = set()
            for key, m, item in items:
                if held is not None and key not in held and self._wants(m):
                    # Nobody at 0, 2 or 3 on our list (the snapshot): the import may subscribe.
                    item["subscribe"] = [{"listid": _listid(audience_id)}]
                    joining.add(key)
                    if m.tags and m.unseen:
                        item["tags"] = list(m.tags)
                        tagged.add(key)
            failed, ids, made = await self._import([item for _, _, item in items], asked=asked)
        except BulkUnavailable:
            self._bulk_available = False
            token = _patient.set(False)
            try:
                return await self._singles(audience_id, members)
            finally:
                _patient.reset(token)
        by_key: dict[str, ContactPayload] = {}
        again: list[str] = []
        for key, m, item in items:
            if str(item["email"]).lower() not in failed:
                by_key[key] = m
            elif key in joining:
                again.append(key)  # refused with its subscription: decided alone, below
            else:
                outcomes[key].error = PermanentError(
                    ErrorKind.invalid_email, f"ActiveCampaign's import refused {item['email']}"
                )
        if held is None:
            await self._settle(audience_id, by_key, outcomes, ids, made)
        else:
            await self._settle_joined(
                audience_id, by_key, outcomes, ids, made, joining=joining, tagged=tagged
            )
        for key in again:
            # Unsubscribed since the snapshot (the import refuses the whole contact), or a
            # value the import could not take: `contact/sync` and our list's status say which.
            member = next(m for k, m, _ in items if k == key)
            try:
                outcomes[key].state = await self.upsert_member(audience_id, member)
            except PermanentError as exc:
                outcomes[key].error = exc
        return [outcomes[k] for k in keys]

    async def _snapshot(self, audience_id: str) -> dict[str, int] | None:
        """`_held` as read after this call began. A read another batch started after we asked
        is as fresh as our own and serves us too: a backlog's groups reach their imports
        together, and each read its own (P1: 120 of 490 requests)."""
        asked = time.monotonic()
        async with self._snapshot_locks.setdefault(audience_id, asyncio.Lock()):
            last = self._snapshots.get(audience_id)
            if last is not None and last[0] >= asked:
                return last[1]
            started = time.monotonic()
            held = await self._held(audience_id)
            self._snapshots[audience_id] = (started, held)
            return held

    async def _first_new(self, asked: float) -> int:
        """The id the next contact will be given at least, as known since `asked` (ids only
        grow): contacts of our import's answer from it on were created by it.

        Learnt from the answer of an import of ours sent after `asked` and completed before
        ours is sent (its highest id: every contact it made is above every contact that
        existed then, and ours come after it), else read (`_next_contact_id`). A backlog's
        imports follow each other at the import rate, so the answer of one serves the next
        ones: one read a batch was a tenth of P1's requests."""
        now = time.monotonic()
        self._bounds = [b for b in self._bounds if b[0] >= now - BOUNDS_SECONDS]
        known = [bound for at, bound in self._bounds if at >= asked]
        if known:
            return max(known)
        bound = await self._next_contact_id()
        self._bounds.append((now, bound))
        return bound

    async def _held(self, audience_id: str) -> dict[str, int] | None:
        """Our list's people at status 0, 2 or 3, by email key: those an import must never
        subscribe. Unconfirmed (0) and bounced (3) are read for every batch, just before its
        import (an import would silently make them 1); unsubscribed (2) at most every
        HELD_SECONDS (an import refuses them anyway: a stale read costs a request, never
        consent). Filtered pages of 100, usually one each. None when they are too many to
        read that often: the batch then subscribes by a second import, person by person."""
        fresh = await self._held_pages(audience_id, (UNCONFIRMED, BOUNCED), self._held_max_pages)
        async with self._held_lock:
            cached = self._held_cache.get(audience_id)
            now = time.monotonic()
            if cached is None or now - cached[0] >= HELD_SECONDS:
                # Aged from before the read: a change during it counts as after the snapshot.
                unsubscribed = await self._held_pages(
                    audience_id, (UNSUBSCRIBED,), HELD_MAX_UNSUBSCRIBED_PAGES
                )
                cached = (now, unsubscribed)
                self._held_cache[audience_id] = cached
        if fresh is None or cached[1] is None:
            return None
        return {**cached[1], **fresh}

    async def _held_pages(
        self, audience_id: str, statuses: tuple[int, ...], max_pages: int
    ) -> dict[str, int] | None:
        """Our list's people at `statuses`, by email key; None beyond `max_pages` pages."""
        out: dict[str, int] = {}
        pages = 0
        for status in statuses:
            offset = 0
            while True:
                if pages >= max_pages:
                    return None
                pages += 1
                _, body = await self._request(
                    "GET",
                    "/contacts",
                    op="list",
                    params={
                        "listid": audience_id,
                        "status": status,
                        "limit": PAGE_LIMIT,
                        "offset": offset,
                        "orders[id]": "ASC",
                    },
                )
                contacts = [c for c in (body or {}).get("contacts") or [] if isinstance(c, dict)]
                for c in contacts:
                    if k := email_key(c.get("email")):
                        out[k] = status
                offset += len(contacts)
                total = _int(((body or {}).get("meta") or {}).get("total"))
                if not contacts or offset >= total:
                    break
        return out

    def _note_held(self, audience_id: str, email: str, status: int | None) -> None:
        """What this client saw of a person's status on our list, kept in the snapshot."""
        cached = self._held_cache.get(audience_id)
        key = email_key(email)
        if cached is None or cached[1] is None or key is None:
            return
        if status in (UNCONFIRMED, UNSUBSCRIBED, BOUNCED):
            cached[1][key] = status

    async def _settle_joined(
        self,
        audience_id: str,
        by_key: dict[str, ContactPayload],
        outcomes: dict[str, BatchOutcome],
        ids: list[str],
        made: _Made,
        *,
        joining: set[str],
        tagged: set[str],
    ) -> None:
        """After the one import: those it subscribed are on our list at 1, the others (held at
        0, 2 or 3 by the snapshot, or not consenting) have their status read and the consent
        rules applied, as after a data import. The records of the people the import created
        are not read (`_created`): their ids stay unknown until needed (`_resolve`)."""
        contacts, created_keys = await self._created(by_key, ids, made)
        rest = {k: m for k, m in by_key.items() if k not in joining}
        existing = [str(c["id"]) for k, c in contacts.items() if k in rest and c["id"] not in made]
        on_list = await self._on_list(audience_id, existing) if existing else {}
        for key, member in by_key.items():
            created = key in created_keys
            contact = contacts.get(key)
            if contact is None and not created:
                outcomes[key].error = PermanentError(
                    ErrorKind.invalid_email, "ActiveCampaign's import did not take this contact"
                )
                continue
            refs: dict[str, Any] = {}
            if key in joining:
                status: int | None = ACTIVE
                # Tags the import set are ours only on a contact it created: one that existed
                # may have carried them already (they stay its owner's, `update_tags` finds
                # them present).
                if key in tagged and created:
                    refs["tags"] = dict.fromkeys(member.tags)
            else:
                if contact is None and self._wants(member):
                    # Held by the snapshot, yet created by the import (deleted meanwhile):
                    # its status is set by id.
                    contact = await self.find_contact(member.email_address)
                    if contact is None:
                        outcomes[key].error = PermanentError(
                            ErrorKind.not_found, "the imported contact is gone"
                        )
                        continue
                try:
                    status = await self._consent(
                        str(contact["id"]) if contact else "",
                        audience_id,
                        member,
                        current=on_list.get(str(contact["id"])) if contact else None,
                        wants=self._wants(member),
                    )
                except PermanentError as exc:
                    outcomes[key].error = exc
                    continue
            if status is not None:
                refs["list"] = audience_id
            if created:
                refs["created"] = True
                if contact is None:
                    refs["ids"] = made.span  # where its id is: one found outside is not it
            outcomes[key].state = self._member(
                contact or {"id": "", "email": member.email_address},
                status,
                email=member.email_address,
                created=created,
                refs=refs,
            )

    async def _created(
        self, by_key: dict[str, ContactPayload], ids: list[str], made: _Made
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """(records by email key, the keys of the people the import created). Ids only grow,
        so the import's ids from its `_first_new` on are the contacts it created (`made`);
        when each person has one id, only the others' records are read (pages of 100) and the
        rest were created, their ids left unread: 2 reads a batch of 500 where every record
        was 5. Otherwise (a lagging answer) every record is read."""
        old = [i for i in ids if i not in made]
        if len(set(ids)) == len(ids) == len(by_key):
            contacts = await self._records(old)
            if len(contacts) == len(old) and contacts.keys() <= by_key.keys():
                return contacts, set(by_key) - contacts.keys()
        contacts = await self._records_of(by_key, ids)
        return contacts, {k for k, c in contacts.items() if c["id"] in made}

    async def _records_of(
        self, by_key: dict[str, ContactPayload], ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        """The imported people's records by email key (pages of 100 by id); one missing from
        the import's ids (a lagging answer) is looked up by address."""
        contacts = await self._records(ids)
        for key in [k for k in by_key if k not in contacts]:
            found = await self.find_contact(by_key[key].email_address)
            if found is not None:
                contacts[key] = found
        return contacts

    async def _singles(self, audience_id: str, members: list[ContactPayload]) -> list[BatchOutcome]:
        out = []
        for m in members:
            key = email_key(m.email_address) or m.email_address
            try:
                out.append(BatchOutcome(key, state=await self.upsert_member(audience_id, m)))
            except PermanentError as exc:
                out.append(BatchOutcome(key, error=exc))
        return out

    async def _next_contact_id(self) -> int:
        """The id the next contact will be given at least (ids only grow): contacts above it
        after our import were created by it."""
        _, body = await self._request(
            "GET", "/contacts", op="list", params={"orders[id]": "DESC", "limit": 1}
        )
        contacts = (body or {}).get("contacts") or []
        return _int(contacts[0].get("id")) + 1 if contacts else 1

    async def _bulk_item(self, member: ContactPayload) -> dict[str, Any]:
        standard, values = await self._field_values(member.fields)
        item: dict[str, Any] = {"email": member.email_address}
        item.update({BULK_NAMES[k]: v for k, v in standard.items()})
        if values:
            item["fields"] = [{"id": int(v["field"]), "value": v["value"]} for v in values]
        return item

    async def _import(
        self, items: list[dict[str, Any]], *, asked: float | None = None
    ) -> tuple[set[str], list[str], _Made]:
        """Import `items` in requests of ≤ 250 contacts and ≤ 400,000 bytes, each polled to
        completion; (the addresses refused, lower case; the ids of the contacts imported;
        which of them the imports created, as known since `asked`: none without it)."""
        failed: set[str] = set()
        done: list[str] = []
        new: set[str] = set()
        bounds: list[int] = []
        # Side by side: one import's polling waits are another's requests.
        results = await asyncio.gather(
            *(self._import_chunk(c, asked) for c in _chunks(items)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # each chunk ran to its end: none is left half-watched
            failed |= result[0]
            done += result[1]
            if result[2] is not None:
                new.update(i for i in result[1] if _int(i) >= result[2])
                bounds.append(result[2])
        if not bounds:
            return failed, done, _Made(frozenset(), above=_NEVER, low=_NEVER)
        return failed, done, _Made(frozenset(new), above=max(bounds), low=min(bounds))

    async def _import_chunk(
        self, chunk: list[dict[str, Any]], asked: float | None
    ) -> tuple[set[str], list[str], int | None]:
        """(refused, ids, the chunk's `_first_new`: None without `asked`)."""
        refused: set[str] = set()
        while chunk:
            op = OP_BULK_SINGLE if len(chunk) == 1 else OP_BULK_MULTI
            body = {"contacts": chunk, "exclude_automations": False}
            try:
                async with self._import_turns:
                    # In its turn, just before it is sent: the answers of the imports before
                    # it are in by then.
                    first_new = await self._first_new(asked) if asked is not None else None
                    sent = time.monotonic()
                    _, answer = await self._request("POST", "/import/bulk_import", op=op, json=body)
            except BulkRefused as exc:
                # Refused as a whole for some contacts (by index): the rest go again.
                bad = {
                    _int(r.get("contact"), default=-1) for r in exc.reasons if isinstance(r, dict)
                }
                bad.discard(-1)
                if not bad:
                    raise TransientError(f"bulk import refused: {exc.message}") from None
                refused |= {str(chunk[i]["email"]).lower() for i in bad if i < len(chunk)}
                chunk = [item for i, item in enumerate(chunk) if i not in bad]
                continue
            batch = str((answer or {}).get("batchId") or "")
            if not batch:
                raise TransientError("ActiveCampaign queued an import without a batchId")
            failed, ids = await self._wait(batch)
            if first_new is not None and any(_int(i) >= first_new for i in ids):
                # It made contacts: every contact that existed when it made its last one is
                # below its highest id, and an import sent from now on comes after it.
                self._bounds.append((sent, max(_int(i) for i in ids) + 1))
            return refused | failed, ids, first_new
        return refused, [], None

    async def _wait(self, batch: str) -> tuple[set[str], list[str]]:
        waited = 0.0
        step = 0
        while True:
            delay = self._import_poll[min(step, len(self._import_poll) - 1)]
            await asyncio.sleep(delay)
            waited += delay
            step += 1
            _, info = await self._request(
                "GET", "/import/info", op="import_info", params={"batchId": batch}
            )
            # Polled within a second of queuing the answer may be `false` (reference §5.2).
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                failed = {str(e).lower() for e in info.get("failure") or []}
                return failed, [str(i) for i in info.get("success") or []]
            if status in ("failed", "interrupted"):
                raise TransientError(f"bulk import {batch} {status}")
            if waited >= self._import_max_wait:
                raise TransientError(f"bulk import {batch} still {status or 'queued'}")

    async def _records(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Contact records by id (pages of 100), keyed by email key."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), PAGE_LIMIT):
            params: list[tuple[str, Any]] = [("limit", PAGE_LIMIT)]
            params += [("ids[]", x) for x in ids[i : i + PAGE_LIMIT]]
            _, body = await self._request("GET", "/contacts", op="list", params=params)
            for c in (body or {}).get("contacts") or []:
                if isinstance(c, dict) and c.get("id") and (k := email_key(c.get("email"))):
                    out[k] = c
        return out

    async def _on_list(self, audience_id: str, ids: list[str]) -> dict[str, int]:
        """Our list's status of those of `ids` that are on it."""
        out: dict[str, int] = {}
        for i in range(0, len(ids), PAGE_LIMIT):
            params: list[tuple[str, Any]] = [("listid", audience_id), ("limit", PAGE_LIMIT)]
            params += [("ids[]", x) for x in ids[i : i + PAGE_LIMIT]]
            _, body = await self._request("GET", "/contacts", op="list", params=params)
            present = [
                str(c["id"])
                for c in (body or {}).get("contacts") or []
                if isinstance(c, dict) and c.get("id")
            ]
            if present:
                out.update(await self._statuses(audience_id, present))
        return out

    async def _settle(
        self,
        audience_id: str,
        by_key: dict[str, ContactPayload],
        outcomes: dict[str, BatchOutcome],
        ids: list[str],
        made: _Made,
    ) -> None:
        """After the data import: read the imported records and our list's statuses (pages of
        100), then apply the consent rules person by person."""
        contacts = await self._records_of(by_key, ids)
        # A contact our import created is on no list: only the others' statuses are read.
        existing = [str(c["id"]) for c in contacts.values() if c["id"] not in made]
        on_list = await self._on_list(audience_id, existing)
        subscribe: list[str] = []
        for key, member in by_key.items():
            contact = contacts.get(key)
            if contact is None:
                outcomes[key].error = PermanentError(
                    ErrorKind.invalid_email, "ActiveCampaign's import did not take this contact"
                )
                continue
            cid = str(contact["id"])
            created = cid in made
            current = on_list.get(cid)
            if current is None and self._wants(member):
                subscribe.append(key)
                continue
            try:
                status = await self._consent(
                    cid, audience_id, member, current=current, wants=self._wants(member)
                )
            except PermanentError as exc:
                outcomes[key].error = exc
                continue
            refs: dict[str, Any] = {"list": audience_id} if status is not None else {}
            if created:
                refs["created"] = True
            outcomes[key].state = self._member(
                contact, status, email=member.email_address, created=created, refs=refs
            )
        if subscribe:
            await self._subscribe(audience_id, subscribe, by_key, contacts, outcomes, made)

    async def _subscribe(
        self,
        audience_id: str,
        keys: list[str],
        by_key: dict[str, ContactPayload],
        contacts: dict[str, dict[str, Any]],
        outcomes: dict[str, BatchOutcome],
        made: _Made,
    ) -> None:
        """Put consenting people who are on no status of our list on it. Nobody here can be
        re-subscribed, so an import may do it (fewer than the docs' minimum go one by one);
        the import also tags the contacts it created — no tag of theirs can be claimed, and
        the association ids are looked up when one of them is to go (refs hold None)."""
        refused: set[str] = set()
        tagged: set[str] = set()
        if len(keys) >= BULK_MIN_CONTACTS:
            listid = _listid(audience_id)
            items = []
            for k in keys:
                item: dict[str, Any] = {
                    "email": by_key[k].email_address,
                    "subscribe": [{"listid": listid}],
                }
                if by_key[k].tags and contacts[k]["id"] in made:
                    item["tags"] = list(by_key[k].tags)
                    tagged.add(k)
                items.append(item)
            refused, _, _ = await self._import(items)
        else:
            for k in keys:
                await self._set_status(str(contacts[k]["id"]), audience_id, ACTIVE)
        for k in keys:
            member, contact = by_key[k], contacts[k]
            if member.email_address.lower() in refused:
                outcomes[k].error = PermanentError(
                    ErrorKind.compliance, "ActiveCampaign's import refused the subscription"
                )
                continue
            created = contact["id"] in made
            refs: dict[str, Any] = {"list": audience_id}
            if created:
                refs["created"] = True
            if k in tagged:
                refs["tags"] = dict.fromkeys(member.tags)
            outcomes[k].state = self._member(
                contact, ACTIVE, email=member.email_address, created=created, refs=refs
            )


_NEVER = 1 << 62  # above any contact id: nothing counts as made


@dataclasses.dataclass(frozen=True, slots=True)
class _Made:
    """Which contact ids a backlog's imports created: those of their answers from each
    import's `_first_new` on (`new`), and any id from the highest of those on (`above`: a
    contact missing from a lagging answer)."""

    new: frozenset[str]
    above: int
    low: int

    def __contains__(self, contact_id: object) -> bool:
        return str(contact_id) in self.new or _int(contact_id) >= self.above

    @property
    def span(self) -> list[int]:
        """Where the ids of the contacts they created are (`_is_ours`)."""
        return [self.low, max((_int(i) for i in self.new), default=self.low)]


def _is_ours(remote: RemoteRef, contact_id: str) -> bool:
    """Whether the contact is the one the mirror's refs were made on: the id it holds, or,
    where the id was never read (a bulk import created the contact), the span of the ids
    that import created. Ids only grow, so a contact deleted and made again by someone else
    under the address is above it."""
    if remote.remote_id:
        return remote.remote_id == contact_id
    span = remote.refs.get("ids")
    if not isinstance(span, list) or len(span) != 2:
        return True
    return _int(span[0]) <= _int(contact_id, default=-1) <= _int(span[1])


def _as_for(remote: RemoteRef | None, contact_id: str) -> RemoteRef | None:
    """`remote` as it applies to the contact: its claims dropped (null: the mirror merges refs
    key by key) when the contact is another one (`_is_ours`)."""
    if remote is None or _is_ours(remote, contact_id):
        return remote
    return dataclasses.replace(remote, refs={**remote.refs, **dict.fromkeys(CLAIMS)})


def _dropped(remote: RemoteRef | None) -> dict[str, Any]:
    """The claims `_as_for` dropped, to be reported back (null) with a call's refs."""
    refs = remote.refs if remote is not None else {}
    return {k: None for k in CLAIMS if k in refs and refs[k] is None}


def _chunks(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Requests of at most 250 contacts and 400,000 bytes (with room for the envelope)."""
    out: list[list[dict[str, Any]]] = []
    chunk: list[dict[str, Any]] = []
    size = 64
    for item in items:
        n = len(orjson.dumps(item)) + 1
        if chunk and (len(chunk) >= BULK_MAX_CONTACTS or size + n > BULK_MAX_BYTES):
            out.append(chunk)
            chunk, size = [], 64
        chunk.append(item)
        size += n
    if chunk:
        out.append(chunk)
    return out


def _listid(audience_id: str) -> Any:
    return int(audience_id) if audience_id.isdigit() else audience_id


def _int(value: Any, *, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
