"""Mailchimp Marketing API v3 client: the calls the engine makes and the error mapping."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

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
    Interest,
    MemberPage,
    PermanentError,
    ProviderError,
    RemoteMember,
    RemoteRef,
    RequestLimiter,
    ThrottledError,
    TransientError,
    answered_ok,
    exchange,
    refused,
)
from app.providers.transport import Answer

PROVIDER = "mailchimp"
DC_PATTERN = re.compile(r"^[a-z]+[0-9]+$")
API_KEY_PATTERN = re.compile(r"^[0-9a-f]{32}-([a-z]+[0-9]+)$")
# What the engine reads back from a write: projected, so responses stay small to send and parse.
WRITE_FIELDS = "id,email_address,status,tags,last_changed"
BATCH_FIELDS = ",".join(
    [f"{part}.{f}" for part in ("new_members", "updated_members") for f in WRITE_FIELDS.split(",")]
    + ["errors", "total_created", "total_updated", "error_count"]
)
# A write's query string, encoded once: quoting it cost ~2 % of a single-PUT drain's CPU (B1).
_WRITE_PARAMS = {"fields": WRITE_FIELDS}
_WRITE_QUERY = urlencode(_WRITE_PARAMS)


def _query(params: dict[str, Any]) -> str:
    return _WRITE_QUERY if params == _WRITE_PARAMS else urlencode(params)


AUDIENCE_OPS = frozenset({"ping", "audience", "batch", "upsert", "list", "webhook", "merge_fields"})
MEMBER_FIELDS = (
    "members.id,members.email_address,members.status,members.tags,members.last_changed,"
    "members.merge_fields,members.interests,total_items"
)


def merge_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Neutral field values as merge values: a list (FIELD_MAP type list) becomes "a, b"."""
    if not any(isinstance(v, list) for v in fields.values()):
        return fields
    return {k: ", ".join(v) if isinstance(v, list) else v for k, v in fields.items()}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: MD5 of the address as Mailchimp lower-cases it (its key)."""
    key = email_key(email) or ""
    return hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()


def dc_from_api_key(api_key: str) -> str:
    """The data center an API key belongs to (its suffix), or ValueError."""
    match = API_KEY_PATTERN.match(api_key.strip())
    if not match:
        raise ValueError("A Mailchimp API key looks like <32 hex characters>-<dc>, e.g. …-us1.")
    return match.group(1)


def live_api_base(dc: str) -> str:
    """The only API host we accept for a data center; refuses anything else."""
    if not DC_PATTERN.match(dc):
        raise ValueError(f"{dc!r} is not a Mailchimp data center.")
    return f"https://{dc}.api.mailchimp.com"


def check_live_endpoint(api_endpoint: str, dc: str) -> str:
    """Accept OAuth metadata's api_endpoint only when it is https://<dc>.api.mailchimp.com."""
    expected = live_api_base(dc)
    parts = urlsplit(api_endpoint.rstrip("/"))
    if f"{parts.scheme}://{parts.netloc}" != expected or parts.path not in ("", "/"):
        raise ValueError(f"Refusing API endpoint {api_endpoint!r}: expected {expected}.")
    return expected


def _parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def member_state(body: dict[str, Any], *, created: bool = False) -> RemoteMember:
    """A RemoteMember from Mailchimp's member JSON."""
    return RemoteMember(
        email_address=body.get("email_address", ""),
        remote_id=body.get("id") or subscriber_hash(body.get("email_address", "")),
        status=body.get("status", ""),
        tags=[t["name"] for t in body.get("tags") or [] if isinstance(t, dict) and "name" in t],
        last_changed=_parse_time(body.get("last_changed")),
        fields=body.get("merge_fields") or {},
        created=created,
        interests=dict(body["interests"]) if isinstance(body.get("interests"), dict) else None,
    )


def classify_member_error(title: str, detail: str, errors: list[Any] | None = None) -> ErrorKind:
    """Map a 400 body to a permanent error kind (titles first: details change wording)."""
    low = detail.lower()
    if title == "Member In Compliance State" or "compliance state" in low:
        return ErrorKind.compliance
    if title == "Forgotten Email Not Subscribed" or "permanently deleted" in low:
        return ErrorKind.forgotten
    if title == "Member Exists" or "already a list member" in low:
        return ErrorKind.member_exists
    if "looks fake or invalid" in low or "valid email" in low:
        return ErrorKind.invalid_email
    if "merge field" in low or any(_is_merge_field(e) for e in errors or []):
        return ErrorKind.merge_fields
    return ErrorKind.invalid


def _is_merge_field(error: Any) -> bool:
    # Merge tags are upper-case ("LNAME"); schema errors name them "merge_fields.FNAME".
    field = str(error.get("field", "")) if isinstance(error, dict) else ""
    return field.startswith("merge_fields") or (field.isupper() and field.isidentifier())


def _signup_throttle(detail: str) -> bool:
    # "has signed up to a lot of lists very recently" passes with time: not a permanent refusal.
    low = detail.lower()
    return "signed up to a lot of lists" in low or "too many recent signup" in low


def error_from_response(response: Answer, *, op: str) -> ProviderError:
    """The ProviderError a non-2xx Mailchimp response means."""
    status = response.status_code
    body: dict[str, Any] = {}
    if response.content:
        try:
            parsed = orjson.loads(response.content)
            body = parsed if isinstance(parsed, dict) else {}
        except orjson.JSONDecodeError:
            body = {}
    title = str(body.get("title") or "")
    detail = str(body.get("detail") or response.reason_phrase or "")
    message = f"{status} {title}: {detail}".strip() if title else f"{status} {detail}".strip()
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        return ThrottledError(
            message, status=status, retry_after=float(retry_after) if retry_after else None
        )
    if status == 403 and not body:
        # Mailchimp sheds load with a bare 403 at high volume: a throttle, not a refusal.
        return ThrottledError(f"{status} without a body (load shedding)", status=status)
    if status in (401, 403):
        return AuthError(message, status=status)
    if status >= 500:
        return TransientError(message, status=status)
    if status == 404:
        # PUT and batch calls create members: their 404 can only mean the audience is gone.
        if op in AUDIENCE_OPS:
            return AudienceMissing(message, status=status)
        return PermanentError(ErrorKind.not_found, message, status=status)
    if status == 400 and _signup_throttle(detail):
        return TransientError(message, status=status)
    if status == 400:
        errors = body.get("errors") if isinstance(body.get("errors"), list) else None
        kind = classify_member_error(title, detail, errors)
        if kind is ErrorKind.merge_fields and errors:
            fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors)
            message = f"{message} ({fields})"
        return PermanentError(kind, message, status=status)
    return PermanentError(ErrorKind.invalid, message, status=status)


class MailchimpClient:
    """One Mailchimp account's API over a shared keep-alive transport.

    Requests go straight to the transport, with no AsyncClient layer (cookies, redirects, auth
    flows, URL merging cost as much CPU as the transport itself and do nothing for a JSON API
    with fixed headers); on the process's `LeanTransport` without httpx's Request/Response
    objects either (`base.exchange`), one request per member being the engine's hot path.
    """

    name = PROVIDER

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        api_base: str,
        api_key: str | None = None,
        access_token: str | None = None,
        timeout: float = 30.0,
        limiter: RequestLimiter | None = None,
    ) -> None:
        self._transport = transport
        # The cap covers the request on the wire only: building it and reading the JSON
        # happen outside the slot, so a freed slot is busy again at once.
        self._limiter = limiter
        self._base = api_base.rstrip("/") + "/3.0"
        if access_token:
            auth = f"Bearer {access_token}"
        elif api_key:
            auth = "Basic " + base64.b64encode(f"audience-sync:{api_key}".encode()).decode()
        else:
            raise ValueError("An API key or an OAuth access token is required.")
        self._headers = {
            "Authorization": auth,
            "Accept": "application/json",
            "User-Agent": "audience-sync/0.1",
        }
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._timeout = timeout

    async def _request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        ok_extra: tuple[int, ...] = (),
    ) -> Answer:
        headers = self._headers
        content = None
        if json is not None:
            content = orjson.dumps(json)
            headers = self._json_headers
        url = self._base + path
        if params:
            url += "?" + _query(params)
        response = await exchange(
            self._transport,
            method,
            url,
            headers=headers,
            content=content,
            provider=PROVIDER,
            op=op,
            limiter=self._limiter,
            timeout_seconds=self._timeout,
        )
        if 200 <= response.status_code < 300 or response.status_code in ok_extra:
            answered_ok(PROVIDER, op)
            return response
        raise refused(PROVIDER, op, error_from_response(response, op=op))

    @staticmethod
    def _json(response: Answer) -> dict[str, Any]:
        try:
            body = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError as exc:
            raise TransientError(f"unparsable response body ({response.status_code})") from exc
        return body if isinstance(body, dict) else {}

    # --- account ------------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /ping."""
        await self._request("GET", "/ping", op="ping")

    async def list_audiences(self) -> list[Audience]:
        """GET /lists, every page."""
        audiences: list[Audience] = []
        offset = 0
        while True:
            body = self._json(
                await self._request(
                    "GET",
                    "/lists",
                    op="audience",
                    params={
                        "count": 1000,
                        "offset": offset,
                        "fields": "lists.id,lists.name,lists.stats.member_count,total_items",
                    },
                )
            )
            lists = body.get("lists") or []
            for item in lists:
                stats = item.get("stats") or {}
                audiences.append(
                    Audience(
                        id=item["id"],
                        name=item.get("name", ""),
                        member_count=int(stats.get("member_count") or 0),
                    )
                )
            offset += len(lists)
            if not lists or offset >= int(body.get("total_items") or 0):
                return audiences

    async def get_audience(self, audience_id: str) -> Audience:
        """GET /lists/{id}."""
        body = self._json(
            await self._request(
                "GET",
                f"/lists/{audience_id}",
                op="audience",
                params={"fields": "id,name,stats.member_count"},
            )
        )
        stats = body.get("stats") or {}
        return Audience(
            id=body["id"],
            name=body.get("name", ""),
            member_count=int(stats.get("member_count") or 0),
        )

    # --- members ------------------------------------------------------------------------

    @staticmethod
    def _member_body(member: ContactPayload, *, with_tags: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "email_address": member.email_address,
            "status_if_new": member.consent_if_new,
            "merge_fields": merge_values(member.fields),
        }
        if member.consent:
            body["status"] = member.consent
        if with_tags and member.tags:
            body["tags"] = member.tags
        if member.interests:
            body["interests"] = member.interests
        return body

    async def upsert_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """PUT /lists/{id}/members/{hash}: create or update (tags apply on create only)."""
        response = await self._request(
            "PUT",
            f"/lists/{audience_id}/members/{subscriber_hash(member.email_address)}",
            op="upsert",
            json=self._member_body(member, with_tags=True),
            params={"fields": WRITE_FIELDS},
        )
        return member_state(self._json(response))

    async def update_member(
        self, audience_id: str, member: ContactPayload, *, remote: RemoteRef | None = None
    ) -> RemoteMember:
        """PATCH /lists/{id}/members/{hash}: update only, never create."""
        body: dict[str, Any] = {"merge_fields": merge_values(member.fields)}
        if member.consent:
            body["status"] = member.consent
        if member.interests:
            body["interests"] = member.interests
        response = await self._request(
            "PATCH",
            f"/lists/{audience_id}/members/{subscriber_hash(member.email_address)}",
            op="update",
            json=body,
            params={"fields": WRITE_FIELDS},
        )
        return member_state(self._json(response))

    async def batch_upsert(
        self, audience_id: str, members: list[ContactPayload]
    ) -> list[BatchOutcome]:
        """POST /lists/{id} with update_existing: up to 500 members, errors member by member."""
        if len(members) > 500:
            raise ValueError("Mailchimp takes at most 500 members per batch call.")
        response = await self._request(
            "POST",
            f"/lists/{audience_id}",
            op="batch",
            json={
                "members": [self._member_body(m, with_tags=True) for m in members],
                "update_existing": True,
            },
            params={"fields": BATCH_FIELDS},
        )
        body = self._json(response)
        outcomes: dict[str, BatchOutcome] = {}
        for item in body.get("new_members") or []:
            state = member_state(item, created=True)
            outcomes[(email_key(state.email_address) or "")] = BatchOutcome(
                email_key=(email_key(state.email_address) or ""), state=state
            )
        for item in body.get("updated_members") or []:
            state = member_state(item)
            outcomes[(email_key(state.email_address) or "")] = BatchOutcome(
                email_key=(email_key(state.email_address) or ""), state=state
            )
        for err in body.get("errors") or []:
            key = email_key(str(err.get("email_address", ""))) or ""
            text = str(err.get("error") or "")
            if err.get("field"):
                text = f"{text} ({err.get('field')}: {err.get('field_message')})"
            kind = classify_member_error("", text, [err] if err.get("field") else None)
            if _signup_throttle(text):
                kind = ErrorKind.invalid
            outcomes[key] = BatchOutcome(
                email_key=key, error=PermanentError(kind, f"400 {text}", status=400)
            )
        result = []
        for member in members:
            key = email_key(member.email_address) or ""
            outcome = outcomes.get(key)
            if outcome is None:
                # Mailchimp answered 200 without naming this member: treat as a passing fault.
                raise TransientError(f"batch response did not mention {key}")
            result.append(outcome)
        return result

    async def update_tags(
        self,
        audience_id: str,
        email: str,
        *,
        add: list[str],
        remove: list[str],
        remote: RemoteRef | None = None,
    ) -> None:
        """POST …/members/{hash}/tags with is_syncing so tag automations don't fire."""
        tags = [{"name": t, "status": "active"} for t in add]
        tags += [{"name": t, "status": "inactive"} for t in remove]
        if not tags:
            return
        await self._request(
            "POST",
            f"/lists/{audience_id}/members/{subscriber_hash(email)}/tags",
            op="tags",
            json={"tags": tags, "is_syncing": True},
        )

    async def move_member(
        self,
        audience_id: str,
        old_email: str,
        member: ContactPayload,
        *,
        remote: RemoteRef | None = None,
    ) -> RemoteMember:
        """PUT on the old hash with the new email_address: one member, history kept."""
        body = self._member_body(member, with_tags=False)
        response = await self._request(
            "PUT",
            f"/lists/{audience_id}/members/{subscriber_hash(old_email)}",
            op="move",
            json=body,
            params={"fields": WRITE_FIELDS},
        )
        return member_state(self._json(response))

    async def archive_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> bool:
        """DELETE (archive). 405 (cleaned, pending, archived) and 404 mean already gone."""
        response = await self._request(
            "DELETE",
            f"/lists/{audience_id}/members/{subscriber_hash(email)}",
            op="archive",
            ok_extra=(404, 405),
        )
        return response.status_code < 300

    async def forget_member(
        self, audience_id: str, email: str, *, remote: RemoteRef | None = None
    ) -> None:
        """POST …/actions/delete-permanent; 404 means there was nothing to erase."""
        await self._request(
            "POST",
            f"/lists/{audience_id}/members/{subscriber_hash(email)}/actions/delete-permanent",
            op="forget",
            ok_extra=(404,),
        )

    async def get_member(self, audience_id: str, email: str) -> RemoteMember | None:
        """GET one member; None when absent."""
        response = await self._request(
            "GET",
            f"/lists/{audience_id}/members/{subscriber_hash(email)}",
            op="get",
            ok_extra=(404,),
        )
        if response.status_code == 404:
            return None
        return member_state(self._json(response))

    async def list_members(
        self,
        audience_id: str,
        *,
        offset: int = 0,
        count: int = 1000,
        since_last_changed: datetime | None = None,
        status: str | None = None,
    ) -> MemberPage:
        """GET /lists/{id}/members with a projection of the fields the sync compares."""
        params: dict[str, Any] = {"count": count, "offset": offset, "fields": MEMBER_FIELDS}
        if since_last_changed is not None:
            params["since_last_changed"] = since_last_changed.isoformat()
            params["sort_field"] = "last_changed"
            params["sort_dir"] = "ASC"
        if status:
            params["status"] = status
        body = self._json(
            await self._request("GET", f"/lists/{audience_id}/members", op="list", params=params)
        )
        return MemberPage(
            members=[member_state(m) for m in body.get("members") or []],
            total_items=int(body.get("total_items") or 0),
        )

    # --- interest groups ----------------------------------------------------------------

    async def list_interests(self, audience_id: str) -> list[Interest]:
        """Every interest of every interest category of the audience."""
        base = f"/lists/{audience_id}/interest-categories"
        cats = (
            self._json(await self._request("GET", base, op="audience", params={"count": 1000})).get(
                "categories"
            )
            or []
        )
        out: list[Interest] = []
        for cat in cats:
            body = self._json(
                await self._request(
                    "GET", f"{base}/{cat['id']}/interests", op="audience", params={"count": 1000}
                )
            )
            out += [
                Interest(id=i["id"], name=i["name"], category=cat.get("title", ""))
                for i in body.get("interests") or []
            ]
        return out

    async def create_interest(self, audience_id: str, name: str, *, category: str) -> Interest:
        """Add an interest to the category titled `category` (created when missing)."""
        base = f"/lists/{audience_id}/interest-categories"
        cats = (
            self._json(await self._request("GET", base, op="audience", params={"count": 1000})).get(
                "categories"
            )
            or []
        )
        found = next((c for c in cats if c.get("title") == category), None)
        if found is None:
            found = self._json(
                await self._request(
                    "POST", base, op="audience", json={"title": category, "type": "checkboxes"}
                )
            )
        made = self._json(
            await self._request(
                "POST", f"{base}/{found['id']}/interests", op="audience", json={"name": name}
            )
        )
        return Interest(id=made["id"], name=made["name"], category=category)

    # --- merge fields -------------------------------------------------------------------

    async def list_merge_fields(self, audience_id: str) -> list[dict[str, Any]]:
        """GET /lists/{id}/merge-fields, every page: tag, name, type of each."""
        out: list[dict[str, Any]] = []
        while True:
            body = self._json(
                await self._request(
                    "GET",
                    f"/lists/{audience_id}/merge-fields",
                    op="merge_fields",
                    params={
                        "count": 1000,
                        "offset": len(out),
                        "fields": "merge_fields.tag,merge_fields.name,merge_fields.type,"
                        "total_items",
                    },
                )
            )
            page = list(body.get("merge_fields") or [])
            out += page
            if not page or len(out) >= int(body.get("total_items") or 0):
                return out

    async def create_merge_field(
        self, audience_id: str, *, tag: str, name: str, type: str
    ) -> dict[str, Any]:
        """POST /lists/{id}/merge-fields (not required, public: what the UI creates)."""
        return self._json(
            await self._request(
                "POST",
                f"/lists/{audience_id}/merge-fields",
                op="merge_fields",
                json={"tag": tag, "name": name, "type": type, "required": False},
            )
        )

    # --- webhooks -----------------------------------------------------------------------

    async def create_webhook(
        self, audience_id: str, url: str, *, events: dict[str, bool], sources: dict[str, bool]
    ) -> str:
        """POST /lists/{id}/webhooks; returns the webhook id."""
        body = self._json(
            await self._request(
                "POST",
                f"/lists/{audience_id}/webhooks",
                op="webhook",
                json={"url": url, "events": events, "sources": sources},
            )
        )
        return str(body["id"])

    async def list_webhooks(self, audience_id: str) -> list[dict[str, Any]]:
        """GET /lists/{id}/webhooks."""
        body = self._json(
            await self._request("GET", f"/lists/{audience_id}/webhooks", op="webhook")
        )
        return list(body.get("webhooks") or [])

    async def delete_webhook(self, audience_id: str, webhook_id: str) -> None:
        """DELETE /lists/{id}/webhooks/{webhook_id}; 404 is fine."""
        await self._request(
            "DELETE",
            f"/lists/{audience_id}/webhooks/{webhook_id}",
            op="webhook",
            ok_extra=(404,),
        )
