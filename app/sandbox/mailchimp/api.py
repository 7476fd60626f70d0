"""The Marketing API under `/3.0`, as a lean ASGI handler (no framework on the hot path).

Every request: authenticate (Basic or Bearer), take a slot of the account's in-flight cap
(429 when full), roll the fault dice (outage, 429, 403, 503, timeout), parse the body, wait
`L0 + c * members`, route, answer (JSON or problem+json), log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from app.sandbox.kit import LogEntry, Refusal, base_url, read_body, respond
from app.sandbox.mailchimp import clock, errors, render
from app.sandbox.mailchimp import constants as c
from app.sandbox.mailchimp.audience import Audience, Member, Webhook
from app.sandbox.mailchimp.config import FAULT_KINDS
from app.sandbox.mailchimp.errors import ApiError
from app.sandbox.mailchimp.state import Account, SandboxState

log = logging.getLogger(__name__)

Result = tuple[int, Any, list[tuple[bytes, bytes]]]  # status, JSON-able body or None, headers

JSON_TYPE = b"application/json; charset=utf-8"
PROBLEM_TYPE = b"application/problem+json; charset=utf-8"
TAG_RE = re.compile(r"^[A-Z0-9_]{1,10}$")
NO_CONTENT: Result = (204, None, [])
_ids = random.Random(os.urandom(16))


def new_request_id() -> str:
    """A version-4 UUID string (not secret: a fast PRNG will do)."""
    v = _ids.getrandbits(128)
    h = "%032x" % ((v & ~(0xF << 76) & ~(0x3 << 62)) | (0x4 << 76) | (0x2 << 62))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


def _int_param(query: dict[str, str], name: str, default: int, maximum: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.schema(
            [{"field": name, "message": f"Schema describes integer, string found instead ({raw})"}]
        ) from None
    if value < 0:
        raise errors.schema([{"field": name, "message": "Must be greater than or equal to 0."}])
    if maximum is not None and value > maximum:
        raise errors.schema(
            [{"field": name, "message": f"Must be less than or equal to {maximum}."}]
        )
    return value


def _time_param(query: dict[str, str], name: str) -> float | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        return clock.parse(raw)
    except ValueError:
        raise errors.schema(
            [{"field": name, "message": "Schema describes date-time (ISO 8601)."}]
        ) from None


def refused(refusal: Refusal, cap: int) -> ApiError:
    """The kit's refusals as Mailchimp answers them."""
    if refusal.kind in ("cap", "429"):
        return errors.too_many(cap)
    if refusal.kind == "403":
        return ApiError(403, "Forbidden", "", body=False)
    if refusal.kind == "timeout":
        return ApiError(504, "Gateway Timeout", "The request timed out.")
    return ApiError(503, "Service Unavailable", "The server is temporarily unable to answer.")


class MarketingApi:
    """`/3.0/...` over raw ASGI."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        state = self.state
        start = state.clock.now()
        request_id = new_request_id()
        method: str = scope["method"]
        base = base_url(scope)
        auth = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
                break
        body = await read_body(receive)
        account: Account | None = None
        in_flight = 0
        meta: dict[str, Any] = {"members": 1, "fault": None}
        try:
            try:
                account = state.authenticate(auth)
                in_flight = state.in_flight.enter(account.id, state.config.max_in_flight)
                try:
                    result = await self._admitted(
                        scope, receive, method, path, body, account, base, meta
                    )
                finally:
                    state.in_flight.leave(account.id)
            except Refusal as refusal:
                meta["fault"] = refusal.kind
                in_flight = in_flight or refusal.in_flight
                error = refused(refusal, state.config.max_in_flight)
                result = self._problem(error, request_id, base)
            except ApiError as exc:
                result = self._problem(exc, request_id, base)
        except Exception:  # a bug in the sandbox: answer like Mailchimp's 500
            log.exception("mailchimp sandbox: unhandled error on %s %s", method, path)
            result = self._problem(
                ApiError(500, "Internal Server Error", "An unexpected internal error occurred."),
                request_id,
                base,
            )
        status, payload, shared_headers = result
        headers = list(shared_headers)  # results may be module constants (NO_CONTENT)
        if payload is None:
            content = b""
        elif isinstance(payload, bytes):
            content = payload
        else:
            if scope["query_string"] and status < 400:  # problem documents are never projected
                query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
                if "fields" in query or "exclude_fields" in query:
                    payload = render.project(
                        payload, query.get("fields"), query.get("exclude_fields")
                    )
            content = orjson.dumps(payload)
            if not any(h[0] == b"content-type" for h in headers):
                headers.append((b"content-type", JSON_TYPE))
        headers.append((b"x-request-id", request_id.encode()))
        await respond(send, status, headers, content)
        state.requests.append(
            LogEntry(
                method,
                path,
                status,
                start,
                state.clock.now(),
                in_flight,
                account.id if account else None,
                meta["fault"],
                {"request_id": request_id, "members": meta["members"]},
                body if state.config.record_bodies and method != "GET" else None,
            )
        )

    def _problem(self, exc: ApiError, request_id: str, base: str) -> Result:
        headers = [(k.encode(), v.encode()) for k, v in exc.headers.items()]
        if not exc.body:
            return exc.status, None, headers
        headers.append((b"content-type", PROBLEM_TYPE))
        headers.append((b"link", f'<{base}{c.SCHEMA_PATH}>; rel="describedBy"'.encode()))
        return exc.status, exc.document(request_id), headers

    async def _admitted(
        self,
        scope: Scope,
        receive: Receive,
        method: str,
        path: str,
        body: bytes,
        account: Account,
        base: str,
        meta: dict[str, Any],
    ) -> Result:
        state = self.state
        config = state.config
        await state.gate.inject(config.fault_rates, FAULT_KINDS, config.timeout_seconds, receive)
        data: Any = None
        if body and method in ("POST", "PUT", "PATCH"):
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise errors.json_parse() from None
        parts = path[5:].split("/") if len(path) > 5 else []
        if parts and parts[-1] == "":
            parts.pop()
        if (
            method == "POST"
            and len(parts) == 2
            and parts[0] == "lists"
            and isinstance(data, dict)
            and isinstance(data.get("members"), list)
        ):
            meta["members"] = len(data["members"])
        latency = config.latency_ms + config.latency_per_member_ms * meta["members"]
        if latency > 0:
            await asyncio.sleep(latency / 1000)
        query: dict[str, str] = (
            dict(parse_qsl(scope["query_string"].decode("latin-1")))
            if scope["query_string"]
            else {}
        )
        return await self._route(method, parts, query, data, account, base)

    # -- routing --------------------------------------------------------------------------

    async def _route(
        self,
        method: str,
        parts: list[str],
        query: dict[str, str],
        data: Any,
        account: Account,
        base: str,
    ) -> Result:
        n = len(parts)
        if n == 0:
            return self._allow(method, "GET") or (200, self._root(account, base), [])
        head = parts[0]
        if head == "ping" and n == 1:
            return self._allow(method, "GET") or (
                200,
                {"health_status": "Everything's Chimpy!"},
                [],
            )
        if head != "lists":
            raise errors.not_found()
        if n == 1:
            return self._allow(method, "GET") or self._lists(account, query, base)
        if n == 2:
            denied = self._allow(method, "GET, POST")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            if method == "GET":
                return 200, render.audience(aud, base, account.name), []
            return self._batch(aud, data, query, base)
        sub = parts[2]
        if sub == "members":
            return self._members(method, parts, query, data, account, base)
        if sub == "merge-fields":
            return self._merge_fields(method, parts, query, data, account, base)
        if sub == "webhooks":
            return await self._webhooks(method, parts, data, account, base)
        if sub == "interest-categories":
            return self._interests(method, parts, data, account)
        if sub == "tag-search" and n == 3:
            denied = self._allow(method, "GET")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            prefix = query.get("name", "").lower()
            tags = [
                {"id": tag_id, "name": name}
                for name, tag_id in aud.tag_ids.items()
                if name.lower().startswith(prefix)
            ]
            return 200, {"tags": tags, "total_items": len(tags)}, []
        raise errors.not_found()

    def _interests(self, method: str, parts: list[str], data: Any, account: Account) -> Result:
        """Interest categories and their interests (groups), read and created."""
        aud = self.state.audience_for(account, parts[1])
        n = len(parts)

        def category(cat: Any) -> dict[str, Any]:
            return {
                "list_id": aud.id,
                "id": cat.id,
                "title": cat.title,
                "display_order": cat.display_order,
                "type": cat.type,
            }

        def interest(i: Any) -> dict[str, Any]:
            return {
                "category_id": i.category_id,
                "list_id": aud.id,
                "id": i.id,
                "name": i.name,
                "subscriber_count": str(
                    sum(1 for m in aud.members.values() if m.interests.get(i.id))
                ),
                "display_order": i.display_order,
            }

        body = data if isinstance(data, dict) else {}
        if n == 3:
            denied = self._allow(method, "GET, POST")
            if denied:
                return denied
            if method == "POST":
                cat = aud.add_interest_category(
                    str(body.get("title") or ""), body.get("type") or "checkboxes"
                )
                return 200, category(cat), []
            cats = [category(x) for x in aud.interest_categories.values()]
            return 200, {"list_id": aud.id, "categories": cats, "total_items": len(cats)}, []
        cat_obj = aud.interest_categories.get(parts[3])
        if cat_obj is None:
            raise errors.not_found()
        if n == 4:
            return self._allow(method, "GET") or (200, category(cat_obj), [])
        if n == 5 and parts[4] == "interests":
            denied = self._allow(method, "GET, POST")
            if denied:
                return denied
            if method == "POST":
                return 200, interest(aud.add_interest(cat_obj.id, str(body.get("name") or ""))), []
            items = [interest(i) for i in aud.interests.values() if i.category_id == cat_obj.id]
            return 200, {"interests": items, "total_items": len(items)}, []
        raise errors.not_found()

    @staticmethod
    def _allow(method: str, allow: str) -> Result | None:
        if method in allow.split(", "):
            return None
        raise errors.method_not_allowed(allow)

    def _root(self, account: Account, base: str) -> dict[str, Any]:
        return {
            "account_id": account.id,
            "login_id": str(account.user_id),
            "account_name": account.name,
            "email": account.login_email,
            "first_name": "Sandbox",
            "last_name": "Owner",
            "username": account.login_name,
            "role": "owner",
            "member_since": clock.iso(account.created),
            "pricing_plan_type": "monthly",
            "account_timezone": "UTC",
            "total_subscribers": sum(aud.stats()["member_count"] for aud in account.lists.values()),
            "_links": [render.link("lists", f"{base}/3.0/lists", "GET")],
        }

    def _lists(self, account: Account, query: dict[str, str], base: str) -> Result:
        count = _int_param(query, "count", 10, c.MAX_COUNT)
        offset = _int_param(query, "offset", 0)
        lists = list(account.lists.values())
        page = lists[offset : offset + count]
        return (
            200,
            {
                "lists": [render.audience(aud, base, account.name) for aud in page],
                "total_items": len(lists),
                "constraints": {
                    "may_create": True,
                    "max_instances": 100,
                    "current_total_instances": len(lists),
                },
                "_links": [render.link("self", f"{base}/3.0/lists", "GET")],
            },
            [],
        )

    # -- members --------------------------------------------------------------------------

    def _members(
        self,
        method: str,
        parts: list[str],
        query: dict[str, str],
        data: Any,
        account: Account,
        base: str,
    ) -> Result:
        n = len(parts)
        skip = _flag(query, "skip_merge_validation")
        if n == 3:
            denied = self._allow(method, "GET, POST")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            if method == "GET":
                return self._member_collection(aud, query, base)
            member = aud.post_member(data, skip_merge_validation=skip)
            return 200, render.member(member, aud, base), []
        key = parts[3]
        if n == 4:
            denied = self._allow(method, "GET, PUT, PATCH, DELETE")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            if method == "GET":
                return 200, render.member(aud.get_member(key), aud, base), []
            if method == "PUT":
                member, _ = aud.put_member(key, data, skip_merge_validation=skip)
                return 200, render.member(member, aud, base), []
            if method == "PATCH":
                member = aud.patch_member(key, data, skip_merge_validation=skip)
                return 200, render.member(member, aud, base), []
            aud.archive(key)
            return NO_CONTENT
        if n == 5 and parts[4] == "tags":
            denied = self._allow(method, "GET, POST")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            if method == "POST":
                aud.post_tags(key, data)
                return NO_CONTENT
            member = aud.get_member(key)
            count = _int_param(query, "count", 10, c.MAX_COUNT)
            offset = _int_param(query, "offset", 0)
            tags = [
                {"id": aud.tag_ids[name], "name": name, "date_added": added}
                for name, added in member.tags.items()
            ]
            href = f"{base}/3.0/lists/{aud.id}/members/{member.hash}/tags"
            return (
                200,
                {
                    "tags": tags[offset : offset + count],
                    "total_items": len(tags),
                    "_links": [render.link("self", href, "GET")],
                },
                [],
            )
        if n == 6 and parts[4] == "actions" and parts[5] == "delete-permanent":
            denied = self._allow(method, "POST")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            aud.delete_permanent(key)
            return NO_CONTENT
        raise errors.not_found()

    def _member_collection(self, aud: Audience, query: dict[str, str], base: str) -> Result:
        count = _int_param(query, "count", 10, c.MAX_COUNT)
        offset = _int_param(query, "offset", 0)
        status = query.get("status") or None
        if status is not None and status not in c.READ_STATUSES:
            raise errors.schema(
                [
                    {
                        "field": "status",
                        "message": f"Value must be one of: {', '.join(sorted(c.READ_STATUSES))}",
                    }
                ]
            )
        email_type = query.get("email_type") or None
        since_changed = _time_param(query, "since_last_changed")
        before_changed = _time_param(query, "before_last_changed")
        since_opt = _time_param(query, "since_timestamp_opt")
        before_opt = _time_param(query, "before_timestamp_opt")
        unique_email_id = query.get("unique_email_id") or None
        vip_only = _flag(query, "vip_only")
        sort_field = query.get("sort_field") or None
        if sort_field is not None and sort_field not in (
            "timestamp_opt",
            "timestamp_signup",
            "last_changed",
        ):
            raise errors.schema(
                [
                    {
                        "field": "sort_field",
                        "message": "Value must be one of: timestamp_opt, timestamp_signup, "
                        "last_changed",
                    }
                ]
            )
        sort_dir = (query.get("sort_dir") or "ASC").upper()
        if sort_dir not in ("ASC", "DESC"):
            raise errors.schema(
                [{"field": "sort_dir", "message": "Value must be one of: ASC, DESC"}]
            )
        since_opt_iso = clock.iso(since_opt) if since_opt is not None else None
        before_opt_iso = clock.iso(before_opt) if before_opt is not None else None

        def build() -> list[Member]:
            out: list[Member] = []
            for m in aud.members.values():
                if status is None:
                    if m.status == "archived":
                        continue
                elif m.status != status:
                    continue
                if email_type is not None and m.email_type != email_type:
                    continue
                if since_changed is not None and m.last_changed < since_changed:
                    continue
                if before_changed is not None and m.last_changed >= before_changed:
                    continue
                if since_opt_iso is not None and (
                    not m.timestamp_opt or m.timestamp_opt < since_opt_iso
                ):
                    continue
                if before_opt_iso is not None and (
                    not m.timestamp_opt or m.timestamp_opt >= before_opt_iso
                ):
                    continue
                if unique_email_id is not None and m.uid != unique_email_id:
                    continue
                if vip_only and not m.vip:
                    continue
                out.append(m)
            if sort_field is not None:
                reverse = sort_dir == "DESC"
                if sort_field == "last_changed":
                    out.sort(key=lambda m: m.last_changed, reverse=reverse)
                elif sort_field == "timestamp_opt":
                    out.sort(key=lambda m: m.timestamp_opt, reverse=reverse)
                else:
                    out.sort(key=lambda m: m.timestamp_signup, reverse=reverse)
            return out

        key = (
            status,
            email_type,
            since_changed,
            before_changed,
            since_opt,
            before_opt,
            unique_email_id,
            vip_only,
            sort_field,
            sort_dir,
        )
        members = aud.query(key, build)
        page = members[offset : offset + count]
        href = f"{base}/3.0/lists/{aud.id}/members"
        return (
            200,
            {
                "members": [render.member(m, aud, base) for m in page],
                "list_id": aud.id,
                "total_items": len(members),
                "_links": [
                    render.link("self", href, "GET", "Lists/Members/CollectionResponse.json"),
                    render.link("parent", f"{base}/3.0/lists/{aud.id}", "GET"),
                    render.link("create", href, "POST", "Lists/Members/POST.json"),
                ],
            },
            [],
        )

    def _batch(self, aud: Audience, data: Any, query: dict[str, str], base: str) -> Result:
        result = aud.batch(
            data,
            skip_merge_validation=_flag(query, "skip_merge_validation"),
            skip_duplicate_check=_flag(query, "skip_duplicate_check"),
        )
        return (
            200,
            {
                "new_members": [render.member(m, aud, base) for m in result.new],
                "updated_members": [render.member(m, aud, base) for m in result.updated],
                "errors": result.errors,
                "total_created": len(result.new),
                "total_updated": len(result.updated),
                "error_count": len(result.errors),
                "_links": [render.link("self", f"{base}/3.0/lists/{aud.id}", "GET")],
            },
            [],
        )

    # -- merge fields ---------------------------------------------------------------------

    def _merge_fields(
        self,
        method: str,
        parts: list[str],
        query: dict[str, str],
        data: Any,
        account: Account,
        base: str,
    ) -> Result:
        n = len(parts)
        if n == 3:
            denied = self._allow(method, "GET, POST")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            if method == "GET":
                count = _int_param(query, "count", 10, c.MAX_COUNT)
                offset = _int_param(query, "offset", 0)
                items = list(aud.merge_fields.values())
                if query.get("type"):
                    items = [mf for mf in items if mf.type == query["type"]]
                if query.get("required"):
                    wanted = query["required"].lower() == "true"
                    items = [mf for mf in items if mf.required == wanted]
                return (
                    200,
                    {
                        "merge_fields": [
                            render.merge_field(mf, aud, base)
                            for mf in items[offset : offset + count]
                        ],
                        "list_id": aud.id,
                        "total_items": len(items),
                        "merge_field_limit": c.MERGE_FIELD_LIMIT,
                        "_links": [
                            render.link("self", f"{base}/3.0/lists/{aud.id}/merge-fields", "GET")
                        ],
                    },
                    [],
                )
            return 200, render.merge_field(self._create_merge_field(aud, data), aud, base), []
        if n == 4:
            denied = self._allow(method, "GET, PATCH, DELETE")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            mf = aud.merge_field_by_id(parts[3])
            if method == "GET":
                return 200, render.merge_field(mf, aud, base), []
            if method == "DELETE":
                aud.delete_merge_field(mf)
                return NO_CONTENT
            self._patch_merge_field(aud, mf, data)
            return 200, render.merge_field(mf, aud, base), []
        raise errors.not_found()

    @staticmethod
    def _merge_field_errors(data: Any, *, creating: bool) -> list[dict[str, str]]:
        if not isinstance(data, dict):
            return [{"field": "", "message": "Schema describes object, NULL found instead"}]
        errs = []
        if creating:
            missing = [k for k in ("name", "type") if k not in data]
            if missing:
                errs.append(
                    {
                        "field": "",
                        "message": f"Required fields were not provided: {', '.join(missing)}",
                    }
                )
        for key in ("name", "tag", "default_value", "help_text"):
            if key in data and not isinstance(data[key], str):
                errs.append({"field": key, "message": "Schema describes string"})
        for key in ("required", "public"):
            if key in data and not isinstance(data[key], bool):
                errs.append({"field": key, "message": "Schema describes boolean"})
        if "options" in data and not isinstance(data["options"], dict):
            errs.append({"field": "options", "message": "Schema describes object"})
        if "display_order" in data and not isinstance(data["display_order"], int):
            errs.append({"field": "display_order", "message": "Schema describes integer"})
        if "type" in data and data["type"] not in c.MERGE_FIELD_TYPES:
            errs.append(
                {
                    "field": "type",
                    "message": f"Value must be one of: {', '.join(sorted(c.MERGE_FIELD_TYPES))}",
                }
            )
        return errs

    def _create_merge_field(self, aud: Audience, data: Any) -> Any:
        errs = self._merge_field_errors(data, creating=True)
        if errs:
            raise errors.schema(errs)
        if len(aud.merge_fields) >= c.MERGE_FIELD_LIMIT:
            raise errors.invalid(
                f"This list has reached its limit of {c.MERGE_FIELD_LIMIT} merge fields."
            )
        tag = data.get("tag")
        if tag:
            tag = tag.upper()
            self._check_tag(aud, tag)
        return aud.add_merge_field(
            name=data["name"],
            type=data["type"],
            tag=tag or None,
            required=data.get("required", False),
            default_value=data.get("default_value", ""),
            public=data.get("public", True),
            display_order=data.get("display_order"),
            options=data.get("options") or {},
            help_text=data.get("help_text", ""),
        )

    @staticmethod
    def _check_tag(aud: Audience, tag: str) -> None:
        if not TAG_RE.match(tag):
            raise errors.schema(
                [{"field": "tag", "message": "Merge tags are 1-10 characters: A-Z, 0-9 and _."}]
            )
        if tag in aud.merge_fields or tag == "EMAIL":
            raise errors.invalid(
                f'A Merge Field with the tag "{tag}" already exists for this list.'
            )

    def _patch_merge_field(self, aud: Audience, mf: Any, data: Any) -> None:
        errs = self._merge_field_errors(data, creating=False)
        if errs:
            raise errors.schema(errs)
        if "type" in data and data["type"] != mf.type:
            raise errors.invalid("The type of a merge field cannot be changed.")
        if data.get("tag") and data["tag"].upper() != mf.tag:
            new_tag = data["tag"].upper()
            self._check_tag(aud, new_tag)
            aud.rename_merge_tag(mf, new_tag)
        for key in ("name", "required", "default_value", "public", "display_order", "help_text"):
            if key in data:
                setattr(mf, key, data[key])
        if "options" in data:
            mf.options = {**mf.options, **data["options"]}
        aud.merge_fields_changed()
        aud.version += 1

    # -- webhooks -------------------------------------------------------------------------

    async def _webhooks(
        self, method: str, parts: list[str], data: Any, account: Account, base: str
    ) -> Result:
        n = len(parts)
        if n == 3:
            denied = self._allow(method, "GET, POST")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            if method == "GET":
                hooks = [render.webhook(w, aud, base) for w in aud.webhooks.values()]
                return (
                    200,
                    {
                        "webhooks": hooks,
                        "list_id": aud.id,
                        "total_items": len(hooks),
                        "_links": [render.link("self", f"{base}/3.0/lists/{aud.id}/webhooks")],
                    },
                    [],
                )
            if not isinstance(data, dict) or "url" not in data:
                raise errors.schema(
                    [{"field": "", "message": "Required fields were not provided: url"}]
                )
            events, sources = self._hook_flags(data, None)
            url = await self.state.hub.validate_url(data["url"])
            webhook = Webhook(self.state.ids.hex(10), url, events, sources)
            aud.webhooks[webhook.id] = webhook
            out = render.webhook(webhook, aud, base)
            out["signing_secret"] = self.state.ids.hex(32)
            return 200, out, []
        if n == 4:
            denied = self._allow(method, "GET, PATCH, DELETE")
            if denied:
                return denied
            aud = self.state.audience_for(account, parts[1])
            found = aud.webhooks.get(parts[3])
            if found is None:
                raise errors.not_found()
            if method == "GET":
                return 200, render.webhook(found, aud, base), []
            if method == "DELETE":
                del aud.webhooks[found.id]
                return NO_CONTENT
            if not isinstance(data, dict):
                raise errors.schema([{"field": "", "message": "Schema describes object"}])
            events, sources = self._hook_flags(data, found)
            if "url" in data and data["url"] != found.url:
                found.url = await self.state.hub.validate_url(data["url"])
            found.events, found.sources = events, sources
            return 200, render.webhook(found, aud, base), []
        raise errors.not_found()

    @staticmethod
    def _hook_flags(
        data: dict[str, Any], current: Webhook | None
    ) -> tuple[dict[str, bool], dict[str, bool]]:
        out = []
        defaults = (
            {e: e != "campaign" for e in c.WEBHOOK_EVENTS},
            {"user": True, "admin": True, "api": False},
        )
        for key, names, default in (
            ("events", c.WEBHOOK_EVENTS, defaults[0]),
            ("sources", c.WEBHOOK_SOURCES, defaults[1]),
        ):
            base = dict(getattr(current, key)) if current else dict(default)
            given = data.get(key)
            if given is None:
                out.append(base)
                continue
            if not isinstance(given, dict) or not all(
                k in names and isinstance(v, bool) for k, v in given.items()
            ):
                raise errors.schema(
                    [
                        {
                            "field": key,
                            "message": f"Expected an object of booleans: {', '.join(names)}",
                        }
                    ]
                )
            if current is None:
                base = dict.fromkeys(names, False)
            base.update(given)
            out.append(base)
        return out[0], out[1]
