"""`/api/3/...` over raw ASGI: authenticate (`Api-Token`), the account's 5 requests/s, the
in-flight cap, faults and outages, latency, then the route; answers and logs every request."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from app.sandbox.activecampaign import clocktext, errors
from app.sandbox.activecampaign import constants as c
from app.sandbox.activecampaign.config import FAULT_KINDS
from app.sandbox.activecampaign.errors import AcError
from app.sandbox.activecampaign.model import Account, Contact
from app.sandbox.activecampaign.render import Renderer, batch_info
from app.sandbox.activecampaign.state import AcState, text
from app.sandbox.kit import LogEntry, Refusal, base_url, header, read_body, respond

log = logging.getLogger(__name__)

Result = tuple[int, Any]  # status, JSON-able body (bytes: sent as is, b"" = empty)
JSON = b"application/json"


@dataclass
class Ctx:
    """One admitted request."""

    state: AcState
    account: Account
    r: Renderer
    method: str
    query: dict[str, str]
    pairs: list[tuple[str, str]]
    data: Any
    size: int

    def obj(self, key: str) -> dict[str, Any]:
        """The singular wrapper of a request body (`{"contact": {...}}`), {} if absent."""
        if isinstance(self.data, dict) and isinstance(self.data.get(key), dict):
            return dict(self.data[key])
        return {}


Handler = Callable[..., Result]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(methods: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for method in methods.split(","):
            ROUTES.append((method, re.compile(f"^{pattern}$"), fn))
        return fn

    return register


class ActiveCampaignApi:
    """`/api/3/...`."""

    def __init__(self, state: AcState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        state = self.state
        state.settle()
        start = state.clock.now()
        request_id = str(uuid.uuid4())
        method: str = scope["method"]
        body = await read_body(receive)
        account: Account | None = None
        in_flight = 0
        fault: str | None = None
        meta: dict[str, str | None] = {"fault": None}
        extra_headers: dict[str, str] = {}
        try:
            try:
                account = state.authenticate(header(scope, b"api-token"))
                state.rate.hit(account.id, start)
                in_flight = state.in_flight.enter(account.id, state.config.max_in_flight)
                try:
                    result = await self._admitted(scope, receive, method, path, body, account, meta)
                finally:
                    state.in_flight.leave(account.id)
            except Refusal as refusal:
                fault = refusal.kind
                in_flight = in_flight or refusal.in_flight
                raise self.refused(refusal) from None
        except AcError as exc:
            result = (exc.status, exc.body)
            extra_headers = exc.headers
            if exc.content_type != "application/json":
                extra_headers = {**exc.headers, "content-type": exc.content_type}
        except Exception:  # a bug in the sandbox: answer like a 500 of the real one
            log.exception("activecampaign sandbox: unhandled error on %s %s", method, path)
            result = (500, self._5xx(500))
            extra_headers = self._5xx_headers()
        status, payload = result
        content = payload if isinstance(payload, bytes) else self._dumps(payload)
        headers = [(b"content-type", JSON), (b"x-request-id", request_id.encode())]
        if extra_headers.get("content-type"):
            headers[0] = (b"content-type", extra_headers["content-type"].encode())
        for name, value in extra_headers.items():
            if name != "content-type":
                headers.append((name.lower().encode(), value.encode()))
        if (
            account is not None
            and state.config.rate_limit_headers_always
            and not any(h[0] == b"ratelimit-limit" for h in headers)
        ):
            remaining = state.rate.remaining(account.id, state.clock.now())
            headers.append((b"ratelimit-limit", str(state.rate.limit).encode()))
            headers.append((b"ratelimit-remaining", str(remaining).encode()))
        fault = fault or meta["fault"]
        if fault == "truncated" and len(content) > 1:
            # A chunked body that stops half-way: returning without the last chunk makes the
            # server drop the connection, as a chunked-encoding truncation does.
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send(
                {
                    "type": "http.response.body",
                    "body": content[: len(content) // 2],
                    "more_body": True,
                }
            )
        else:
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
                fault,
                {"request_id": request_id},
                body if state.config.record_bodies and method != "GET" else None,
            )
        )

    def _dumps(self, payload: Any) -> bytes:
        content = orjson.dumps(payload)
        if self.state.config.escape_slashes:
            content = content.replace(b"/", b"\\/")
        return content

    def _5xx(self, status: int) -> bytes:
        if self.state.config.error_body_5xx == "empty":
            return b""
        return c.HTML_5XX.replace(b"{status}", str(status).encode())

    def _5xx_headers(self) -> dict[str, str]:
        if self.state.config.error_body_5xx == "empty":
            return {}
        return {"content-type": "text/html"}

    def refused(self, refusal: Refusal) -> AcError:
        """The refusal hook: the kit's refusals as ActiveCampaign answers them."""
        config = self.state.config
        if refusal.kind in ("rate", "cap", "429"):
            retry = refusal.retry_after if refusal.retry_after is not None else 1.0
            headers = {
                "Retry-After": str(max(1, math.ceil(retry))),
                "RateLimit-Limit": str(config.rate_limit_per_second),
                "RateLimit-Remaining": "0",
            }
            if config.rate_limit_status == 503:
                return AcError(503, self._5xx(503), headers={**headers, **self._5xx_headers()})
            return AcError(429, config.rate_limit_body, headers=headers)
        if refusal.kind == "403":
            return errors.forbidden()
        if refusal.kind == "empty_200":
            return AcError(200, b"")
        status = {"outage": 503, "timeout": 504}.get(refusal.kind) or int(refusal.kind)
        return AcError(status, self._5xx(status), headers=self._5xx_headers())

    async def _admitted(
        self,
        scope: Scope,
        receive: Receive,
        method: str,
        path: str,
        body: bytes,
        account: Account,
        meta: dict[str, str | None],
    ) -> Result:
        state = self.state
        config = state.config
        cut = await state.gate.inject(
            config.fault_rates,
            FAULT_KINDS,
            config.timeout_seconds,
            receive,
            passthrough=frozenset({"truncated"}),
        )
        if cut is not None:
            meta["fault"] = cut
        if config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000)
        sub = path[len(c.API_PREFIX) :].rstrip("/") or "/"
        handler, groups = _match(method, sub)
        data: Any = None
        if body and method in ("POST", "PUT"):
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise errors.invalid(
                    "The request body is not valid JSON", code="invalid_json", status=400
                ) from None
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query: dict[str, str] = {}
        for k, v in pairs:
            query.setdefault(k, v)
        renderer = Renderer(base_url(scope) + c.API_PREFIX, config.timezone)
        ctx = Ctx(state, account, renderer, method, query, pairs, data, len(body))
        return handler(ctx, *groups)


def _match(method: str, sub: str) -> tuple[Handler, tuple[str, ...]]:
    seen_path = False
    for m, pattern, fn in ROUTES:
        match = pattern.match(sub)
        if match is None:
            continue
        seen_path = True
        if m == method:
            return fn, match.groups()
    if seen_path:
        raise errors.html_not_found()  # a known path, another verb: the same HTML page
    raise errors.html_not_found()


# -- helpers ----------------------------------------------------------------------------


def _paging(ctx: Ctx, default: int = 20) -> tuple[int, int]:
    def number(name: str, fallback: int) -> int:
        raw = ctx.query.get(name, "")
        try:
            return max(0, int(raw)) if raw != "" else fallback
        except ValueError:
            return fallback

    limit = number("limit", default)
    if limit > 100:
        if ctx.state.config.limit_over_max == "422":
            raise errors.invalid(
                "The limit may not be greater than 100.", code="invalid", pointer="limit"
            )
        limit = 100
    if limit == 0:
        limit = default
    return limit, number("offset", 0)


def _page(ctx: Ctx, items: list[Any], default: int = 20) -> tuple[list[Any], int, int, int]:
    limit, offset = _paging(ctx, default)
    return items[offset : offset + limit], len(items), limit, offset


def _with_contacts(ctx: Ctx, contact: Contact, key: str, value: Any) -> dict[str, Any]:
    full = ctx.r.contact_full(contact)
    full["email_empty"] = False
    full["accountContacts"] = []
    return {"contacts": [full], key: value}


# -- users ------------------------------------------------------------------------------


@route("GET", r"/users/me")
def users_me(ctx: Ctx) -> Result:
    a = ctx.account
    return 200, {
        "user": {
            "username": a.user_email.split("@", 1)[0],
            "firstName": "Sandbox",
            "lastName": "Owner",
            "email": a.user_email,
            "phone": "",
            "signature": None,
            "lang": "english",
            "localZoneid": ctx.state.config.timezone,
            "links": {},
            "id": "1",
        }
    }


# -- contacts ---------------------------------------------------------------------------


@route("POST", r"/contact/sync")
def contact_sync(ctx: Ctx) -> Result:
    data = ctx.obj("contact")
    contact, created, values = ctx.state.sync_contact(ctx.account, data)
    if created:
        short = ctx.r.contact_short(contact)
        out: dict[str, Any] = {}
        if "fieldValues" in data:
            out["fieldValues"] = [ctx.r.field_value(v) for v in values]
            short["fieldValues"] = [v.id for v in values]
        out["contact"] = short
        return ctx.state.config.sync_create_status, out
    out = {"contact": ctx.r.contact_full(contact)}
    if "fieldValues" in data:
        out = {"fieldValues": [ctx.r.field_value(v) for v in values], **out}
    return 200, out


@route("POST", r"/contacts")
def contact_create(ctx: Ctx) -> Result:
    data = ctx.obj("contact")
    contact, values = ctx.state.create_contact(ctx.account, data)
    out: dict[str, Any] = {"contact": ctx.r.contact_short(contact)}
    if "fieldValues" in data:
        out = {"fieldValues": [ctx.r.field_value(v) for v in values], **out}
    return 201, out


def _filter_time(ctx: Ctx, key: str) -> float | None:
    raw = ctx.query.get(f"filters[{key}]")
    if not raw:
        return None
    try:
        return clocktext.parse(raw, ctx.state.config.timezone)
    except ValueError:
        raise errors.invalid(
            f"filters[{key}] must be a date", code="invalid", pointer=f"filters[{key}]"
        ) from None


@route("GET", r"/contacts")
def contact_list(ctx: Ctx) -> Result:
    state, q = ctx.state, ctx.query
    items = list(ctx.account.contacts.values())
    if q.get("email"):
        key = state.email_key(q["email"])
        items = [x for x in items if state.email_key(x.email) == key]
    if q.get("email_like"):
        needle = q["email_like"].lower()
        items = [x for x in items if needle in x.email.lower()]
    if q.get("search"):
        needle = q["search"].lower()
        items = [
            x
            for x in items
            if any(
                needle in s.lower()
                for s in (x.email, x.first_name, x.last_name, x.phone, x.orgname)
            )
        ]
    if q.get("phone"):
        items = [x for x in items if x.phone.startswith(q["phone"])]
    try:
        status = int(q.get("status") or -1)
    except ValueError:
        status = -1
    listid = q.get("listid") or ""
    if listid and listid != "0":
        items = [x for x in items if listid in x.lists]
        if status != -1:
            items = [x for x in items if x.lists[listid].status == status]
    elif status != -1:
        items = [x for x in items if any(m.status == status for m in x.lists.values())]
    if q.get("tagid") and q["tagid"] != "0":
        items = [x for x in items if q["tagid"] in x.tags]
    ids = [v for k, v in ctx.pairs if k in ("ids[]", "ids")]
    if ids:
        wanted = {i for v in ids for i in v.split(",") if i}
        items = [x for x in items if x.id in wanted]
    if q.get("exclude"):
        items = [x for x in items if x.id != q["exclude"]]
    for key, keep in (
        ("id_greater", lambda x, n: int(x.id) > n),
        ("id_less", lambda x, n: int(x.id) < n),
    ):
        if q.get(key, "").lstrip("-").isdigit():
            n = int(q[key])
            items = [x for x in items if keep(x, n)]
    inclusive = state.config.updated_after_inclusive
    bounds = {k: _filter_time(ctx, k) for k in ("created_before", "created_after")}
    bounds |= {k: _filter_time(ctx, k) for k in ("updated_before", "updated_after")}
    if bounds["created_before"] is not None:
        items = [x for x in items if x.cdate < bounds["created_before"]]
    if bounds["created_after"] is not None:
        items = [x for x in items if x.cdate >= bounds["created_after"]]
    if bounds["updated_before"] is not None:
        items = [x for x in items if x.udate < bounds["updated_before"]]
    if (after := bounds["updated_after"]) is not None:
        items = [x for x in items if (int(x.udate) >= after if inclusive else x.udate > after)]
    items.sort(key=lambda x: int(x.id))
    for key, value in ctx.pairs:
        if not key.startswith("orders[") or value.upper() not in ("ASC", "DESC"):
            continue
        name = key[7:-1]
        sorter: dict[str, Callable[[Contact], Any]] = {
            "id": lambda x: int(x.id),
            "cdate": lambda x: x.cdate,
            "email": lambda x: x.email.lower(),
            "first_name": lambda x: x.first_name.lower(),
            "last_name": lambda x: x.last_name.lower(),
            "name": lambda x: (x.first_name + " " + x.last_name).lower(),
            "score": lambda x: 0,
        }
        if name in sorter:
            items.sort(key=sorter[name], reverse=value.upper() == "DESC")
            break
    page, total, limit, offset = _page(ctx, items)
    return 200, {
        "scoreValues": [],
        "contacts": [ctx.r.contact_full(x, listing=True) for x in page],
        "meta": {
            "total": str(total),
            "sortable": True,
            "page_input": {
                "segmentid": 0,
                "formid": 0,
                "listid": int(listid) if listid.isdigit() else 0,
                "tagid": int(q["tagid"]) if q.get("tagid", "").isdigit() else 0,
                "limit": limit,
                "offset": offset,
                "search": q.get("search"),
                "sort": None,
                "seriesid": 0,
                "waitid": 0,
                "status": status,
                "forceQuery": 0,
                "cacheid": uuid.uuid4().hex,
            },
        },
    }


@route("GET", r"/contacts/(\d+)")
def contact_get(ctx: Ctx, ident: str) -> Result:
    contact = ctx.state.contact(ctx.account, ident)
    lists = [ctx.r.membership(m, contact) for m in contact.lists.values()]
    values = [ctx.r.field_value(v) for v in contact.values.values()]
    full = ctx.r.contact_full(contact)
    links = full.pop("links")
    ident_, org = full.pop("id"), full.pop("organization")
    full.update(
        contactAutomations=[],
        contactLists=[m.id for m in contact.lists.values()],
        fieldValues=[v.id for v in contact.values.values()],
        geoIps=[],
        deals=[],
        accountContacts=[],
        links=links,
        id=ident_,
        organization=org,
    )
    return 200, {
        "contactAutomations": [],
        "contactLists": lists,
        "deals": [],
        "fieldValues": values,
        "geoIps": [],
        "accountContacts": [],
        "contact": full,
    }


@route("PUT", r"/contacts/(\d+)")
def contact_put(ctx: Ctx, ident: str) -> Result:
    contact = ctx.state.contact(ctx.account, ident)
    ctx.state.update_contact(ctx.account, contact, ctx.obj("contact"))
    return 200, {"contact": ctx.r.contact_full(contact)}


@route("DELETE", r"/contacts/(\d+)")
def contact_delete(ctx: Ctx, ident: str) -> Result:
    contact = ctx.state.contact(ctx.account, ident)
    ctx.state.delete_contact(ctx.account, contact)
    return 200, {}


@route("GET", r"/contacts/(\d+)/contactLists")
def contact_lists_of(ctx: Ctx, ident: str) -> Result:
    contact = ctx.state.contact(ctx.account, ident)
    return 200, {"contactLists": [ctx.r.membership(m, contact) for m in contact.lists.values()]}


@route("GET", r"/contacts/(\d+)/contactTags")
def contact_tags_of(ctx: Ctx, ident: str) -> Result:
    contact = ctx.state.contact(ctx.account, ident)
    return 200, {"contactTags": [ctx.r.contact_tag(ct) for ct in contact.tags.values()]}


@route("GET", r"/contacts/(\d+)/fieldValues")
def contact_values_of(ctx: Ctx, ident: str) -> Result:
    contact = ctx.state.contact(ctx.account, ident)
    return 200, {"fieldValues": [ctx.r.field_value(v) for v in contact.values.values()]}


# -- lists ------------------------------------------------------------------------------


@route("GET", r"/lists")
def list_list(ctx: Ctx) -> Result:
    items = list(ctx.account.lists.values())
    name = ctx.query.get("filters[name]")
    if name:
        op = ctx.query.get("filters[name][op]", "contains")
        items = [
            x for x in items if (x.name == name if op == "eq" else name.lower() in x.name.lower())
        ]
    page, total, _, _ = _page(ctx, items)
    return 200, {
        "lists": [ctx.r.a_list(x, ctx.state.subscribers(ctx.account, x.id)) for x in page],
        "meta": {"total": str(total)},
    }


@route("POST", r"/lists")
def list_create(ctx: Ctx) -> Result:
    data = ctx.obj("list")
    for key in ("name", "stringid", "sender_url", "sender_reminder"):
        if not text(data.get(key)).strip():
            raise errors.missing(key)
    lst = ctx.state.create_list(ctx.account, data)
    return 201, {"list": ctx.r.a_list(lst, 0)}


@route("GET", r"/lists/(\d+)")
def list_get(ctx: Ctx, ident: str) -> Result:
    lst = ctx.state.a_list(ctx.account, ident)
    return 200, {"list": ctx.r.a_list(lst, ctx.state.subscribers(ctx.account, lst.id))}


@route("PUT", r"/lists/(\d+)")
def list_put(ctx: Ctx, ident: str) -> Result:
    lst = ctx.state.a_list(ctx.account, ident)
    data = ctx.obj("list")
    for key in ("name", "stringid", "sender_url", "sender_reminder"):
        if key in data and text(data[key]).strip():
            setattr(lst, key, text(data[key]))
    lst.udate = ctx.state.clock.now()
    return 200, {"list": ctx.r.a_list(lst, ctx.state.subscribers(ctx.account, lst.id))}


@route("DELETE", r"/lists/(\d+)")
def list_delete(ctx: Ctx, ident: str) -> Result:
    ctx.state.delete_list(ctx.account, ctx.state.a_list(ctx.account, ident))
    return 200, {}


@route("POST", r"/contactLists")
def contact_list_post(ctx: Ctx) -> Result:
    data = ctx.obj("contactList")
    for key in ("contact", "list"):
        if key not in data:
            raise errors.missing(key)
    contact = ctx.state.contact(ctx.account, data["contact"])
    lst = ctx.state.a_list(ctx.account, data["list"])
    raw = text(data.get("status"))
    if raw not in ("", "1", "2"):
        raise errors.invalid(
            "Status must be 1 (subscribe) or 2 (unsubscribe)",
            code="invalid",
            pointer="/data/attributes/status",
        )
    current = contact.lists.get(lst.id)
    # Without `status` a new membership subscribes (recorded, §3.2); an existing one keeps
    # its status: only an explicit 1 re-subscribes.
    status = int(raw) if raw else (current.status if current else c.ACTIVE)
    sourceid = int(text(data.get("sourceid")) or 0) if text(data.get("sourceid")).isdigit() else 0
    m, created = ctx.state.set_status(
        ctx.account, contact, lst, status, sourceid=sourceid or 0, echo_blank=raw == ""
    )
    if created and not sourceid:
        m.sourceid = 3  # "API"
    code = 201 if created else ctx.state.config.contact_list_update_status
    return code, _with_contacts(ctx, contact, "contactList", ctx.r.membership(m, contact))


# -- tags -------------------------------------------------------------------------------

_TAG_OPS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, b: a.lower() == b.lower(),
    "neq": lambda a, b: a.lower() != b.lower(),
    "lt": lambda a, b: a.lower() < b.lower(),
    "lte": lambda a, b: a.lower() <= b.lower(),
    "gt": lambda a, b: a.lower() > b.lower(),
    "gte": lambda a, b: a.lower() >= b.lower(),
    "contains": lambda a, b: b.lower() in a.lower(),
    "starts_with": lambda a, b: a.lower().startswith(b.lower()),
}


@route("GET", r"/tags")
def tag_list(ctx: Ctx) -> Result:
    items = list(ctx.account.tags.values())
    if ctx.query.get("search"):
        items = [x for x in items if ctx.query["search"].lower() in x.tag.lower()]
    for key, value in ctx.pairs:
        m = re.fullmatch(r"filters\[search\]\[(\w+)\]", key)
        if m and m.group(1) in _TAG_OPS:
            op = _TAG_OPS[m.group(1)]
            items = [x for x in items if op(x.tag, value)]
        elif key == "filters[search]":
            items = [x for x in items if value.lower() in x.tag.lower()]
    order = ctx.query.get("orders[search]", "").lower()
    if order in ("asc", "desc"):
        items.sort(key=lambda x: x.tag.lower(), reverse=order == "desc")
    elif order == "weight":
        needle = (ctx.query.get("search") or "").lower()
        items.sort(
            key=lambda x: (x.tag.lower() != needle, not x.tag.lower().startswith(needle), int(x.id))
        )
    page, total, _, _ = _page(ctx, items)
    return 200, {
        "tags": [ctx.r.tag(x, ctx.state.tag_count(ctx.account, x.id)) for x in page],
        "meta": {"total": str(total)},
    }


@route("POST", r"/tags")
def tag_create(ctx: Ctx) -> Result:
    tag = ctx.state.create_tag(ctx.account, ctx.obj("tag"))
    body = ctx.r.tag(tag, 0)
    short = {k: body[k] for k in ("tag", "description", "tagType", "cdate", "links", "id")}
    return 201, {"tag": short}


@route("GET", r"/tags/(\d+)")
def tag_get(ctx: Ctx, ident: str) -> Result:
    tag = ctx.state.tag(ctx.account, ident)
    return 200, {"tag": ctx.r.tag(tag, ctx.state.tag_count(ctx.account, tag.id))}


@route("PUT", r"/tags/(\d+)")
def tag_put(ctx: Ctx, ident: str) -> Result:
    tag = ctx.state.tag(ctx.account, ident)
    data = ctx.obj("tag")
    if "tag" in data:
        name = text(data["tag"]).strip()
        other = ctx.state.tag_by_name(ctx.account, name)
        if other is not None and other.id != tag.id:
            raise errors.invalid(
                ctx.state.config.duplicate_tag_message,
                code="duplicate",
                pointer="/data/attributes/tag",
                status=ctx.state.config.duplicate_tag_status,
            )
        tag.tag = name or tag.tag
    if "description" in data:
        tag.description = text(data["description"])
    tag.udate = ctx.state.clock.now()
    return 200, {"tag": ctx.r.tag(tag, ctx.state.tag_count(ctx.account, tag.id))}


@route("DELETE", r"/tags/(\d+)")
def tag_delete(ctx: Ctx, ident: str) -> Result:
    ctx.state.delete_tag(ctx.account, ctx.state.tag(ctx.account, ident))
    return 200, {}


@route("POST", r"/contactTags")
def contact_tag_post(ctx: Ctx) -> Result:
    data = ctx.obj("contactTag")
    for key in ("contact", "tag"):
        if key not in data:
            raise errors.missing(key)
    contact = ctx.account.contacts.get(text(data["contact"]))
    if contact is None:
        raise AcError(
            404, {"errors": [{"status": 404, "title": "Not Found", "detail": "Contact not found"}]}
        )
    tag = ctx.account.tags.get(text(data["tag"]))
    if tag is None:
        raise AcError(
            404, {"errors": [{"status": 404, "title": "Not Found", "detail": "Tag not found"}]}
        )
    ct, created = ctx.state.add_tag(ctx.account, contact, tag)
    body = ctx.r.contact_tag(ct)
    short = {k: body[k] for k in ("contact", "tag", "cdate", "links", "id")}
    return (201 if created else 200), _with_contacts(ctx, contact, "contactTag", short)


@route("GET", r"/contactTags")
def contact_tag_list(ctx: Ctx) -> Result:
    items = list(ctx.account.contact_tags.values())
    page, total, _, _ = _page(ctx, items)
    return 200, {"contactTags": [ctx.r.contact_tag(x) for x in page], "meta": {"total": str(total)}}


@route("GET", r"/contactTags/(\d+)")
def contact_tag_get(ctx: Ctx, ident: str) -> Result:
    ct = ctx.account.contact_tags.get(ident)
    if ct is None:
        raise errors.not_found(c.MODEL_CONTACT_TAG, ident)
    return 200, {"contactTag": ctx.r.contact_tag(ct)}


@route("DELETE", r"/contactTags/(\d+)")
def contact_tag_delete(ctx: Ctx, ident: str) -> Result:
    ct = ctx.account.contact_tags.get(ident)
    if ct is None:
        raise errors.not_found(c.MODEL_CONTACT_TAG, ident)
    ctx.state.remove_contact_tag(ctx.account, ct)
    return 200, {}


# -- fields -----------------------------------------------------------------------------


@route("GET", r"/fields")
def field_list(ctx: Ctx) -> Result:
    items = list(ctx.account.fields.values())
    if ctx.query.get("filters[perstag]"):
        wanted = ctx.query["filters[perstag]"].upper()
        items = [x for x in items if x.perstag == wanted]
    page, total, _, _ = _page(ctx, items, default=100)
    options = [ctx.r.option(ctx.account.options[o]) for f in page for o in f.options]
    rels = [ctx.r.field_rel(ctx.account.field_rels[r]) for f in page for r in f.relations]
    return 200, {
        "fieldOptions": options,
        "fieldRels": rels,
        "fields": [ctx.r.field(x) for x in page],
        "meta": {"total": str(total), "selected": None},
    }


@route("POST", r"/fields")
def field_create(ctx: Ctx) -> Result:
    f = ctx.state.create_field(ctx.account, ctx.obj("field"))
    body = ctx.r.field(f, full=False)
    body["ordernum"] = int(f.ordernum) if f.ordernum.isdigit() else f.ordernum
    return 201, {"field": body}


@route("GET", r"/fields/(\d+)")
def field_get(ctx: Ctx, ident: str) -> Result:
    return 200, {"field": ctx.r.field(ctx.state.field(ctx.account, ident))}


@route("PUT", r"/fields/(\d+)")
def field_put(ctx: Ctx, ident: str) -> Result:
    f = ctx.state.field(ctx.account, ident)
    ctx.state.update_field(ctx.account, f, ctx.obj("field"))
    return 200, {"field": ctx.r.field(f)}


@route("DELETE", r"/fields/(\d+)")
def field_delete(ctx: Ctx, ident: str) -> Result:
    ctx.state.delete_field(ctx.account, ctx.state.field(ctx.account, ident))
    return 200, {}


@route("GET", r"/fields/(\d+)/options")
def field_options(ctx: Ctx, ident: str) -> Result:
    f = ctx.state.field(ctx.account, ident)
    return 200, {"fieldOptions": [ctx.r.option(ctx.account.options[o]) for o in f.options]}


@route("POST", r"/fieldRels")
def field_rel_post(ctx: Ctx) -> Result:
    rel = ctx.state.add_field_rel(ctx.account, ctx.obj("fieldRel"))
    return 201, {"fieldRel": ctx.r.field_rel(rel)}


@route("POST", r"/(fieldOption|fieldOptions)/bulk")
def option_bulk(ctx: Ctx, alias: str) -> Result:
    if alias == "fieldOptions" and not ctx.state.config.plural_option_bulk_path:
        raise errors.html_not_found()
    items = ctx.data.get("fieldOptions") if isinstance(ctx.data, dict) else None
    options = ctx.state.add_options(ctx.account, items)
    return 201, {"fieldOptions": [ctx.r.option(o) for o in options]}


@route("GET", r"/fieldOptions/(\d+)")
def option_get(ctx: Ctx, ident: str) -> Result:
    o = ctx.account.options.get(ident)
    if o is None:
        raise errors.not_found(c.MODEL_FIELD_OPTION, ident)
    return 200, {"fieldOption": ctx.r.option(o)}


@route("DELETE", r"/fieldOptions/(\d+)")
def option_delete(ctx: Ctx, ident: str) -> Result:
    o = ctx.account.options.pop(ident, None)
    if o is None:
        raise errors.not_found(c.MODEL_FIELD_OPTION, ident)
    f = ctx.account.fields.get(o.field_id)
    if f is not None and ident in f.options:
        f.options.remove(ident)
    return 200, b""  # recorded: Content-Length 0, still application/json


@route("POST", r"/fieldValues")
def value_post(ctx: Ctx) -> Result:
    data = ctx.obj("fieldValue")
    for key in ("contact", "field"):
        if key not in data:
            raise errors.missing(key)
    contact = ctx.state.contact(ctx.account, data["contact"])
    field = ctx.state.field(ctx.account, data["field"])
    fv, changed = ctx.state.put_value(contact, field, data.get("value"), ctx.account)
    if changed:
        ctx.state.touch(contact)
        ctx.state.hub.emit(ctx.account, "update", contact, "api")
    body = ctx.r.field_value(fv)
    body.pop("created_by")
    body.pop("updated_by")
    status = ctx.state.config.field_value_create_status
    return status, _with_contacts(ctx, contact, "fieldValue", body)


@route("PUT", r"/fieldValues/(\d+)")
def value_put(ctx: Ctx, ident: str) -> Result:
    fv = ctx.account.values.get(ident)
    if fv is None:
        raise errors.not_found(c.MODEL_FIELD_VALUE, ident)
    data = ctx.obj("fieldValue")
    contact = ctx.state.contact(ctx.account, fv.contact_id)
    field = ctx.state.field(ctx.account, fv.field_id)
    fv, changed = ctx.state.put_value(contact, field, data.get("value"), ctx.account)
    if changed:
        ctx.state.touch(contact)
        ctx.state.hub.emit(ctx.account, "update", contact, "api")
    return 200, _with_contacts(ctx, contact, "fieldValue", ctx.r.field_value(fv))


@route("GET", r"/fieldValues")
def value_list(ctx: Ctx) -> Result:
    items = list(ctx.account.values.values())
    if ctx.query.get("filters[fieldid]"):
        items = [x for x in items if x.field_id == ctx.query["filters[fieldid]"]]
    if "filters[val]" in ctx.query:
        items = [x for x in items if x.value == ctx.query["filters[val]"]]
    page, total, _, _ = _page(ctx, items)
    return 200, {"fieldValues": [ctx.r.field_value(x) for x in page], "meta": {"total": str(total)}}


@route("GET", r"/fieldValues/(\d+)")
def value_get(ctx: Ctx, ident: str) -> Result:
    fv = ctx.account.values.get(ident)
    if fv is None:
        raise errors.not_found(c.MODEL_FIELD_VALUE, ident)
    return 200, {"fieldValue": ctx.r.field_value(fv)}


@route("DELETE", r"/fieldValues/(\d+)")
def value_delete(ctx: Ctx, ident: str) -> Result:
    fv = ctx.account.values.pop(ident, None)
    if fv is None:
        raise errors.not_found(c.MODEL_FIELD_VALUE, ident)
    contact = ctx.account.contacts.get(fv.contact_id)
    if contact is not None:
        contact.values.pop(fv.field_id, None)
        ctx.state.touch(contact)
    return 200, {}


# -- bulk import ------------------------------------------------------------------------


def _bulk_failure(message: str, reasons: list[Any], status: int = 400) -> AcError:
    return AcError(status, {"success": 0, "message": message, "failureReasons": reasons})


@route("POST", r"/import/bulk_import")
def bulk_import(ctx: Ctx) -> Result:
    state = ctx.state
    if not state.config.bulk_import_enabled:
        raise errors.html_not_found()
    contacts = ctx.data.get("contacts") if isinstance(ctx.data, dict) else None
    single = isinstance(contacts, list) and len(contacts) == 1
    limiter = state.bulk_single if single else state.bulk_multi
    try:
        limiter.hit(ctx.account.id, state.clock.now())
    except Refusal as refusal:
        raise _bulk_failure(
            "Rate limit exceeded.",
            [c.BULK_RATE.format(limit=refusal.limit)],
            state.config.bulk_import_rate_status,
        ) from None
    if ctx.size > c.BULK_MAX_BYTES:
        raise _bulk_failure(
            c.BULK_INVALID,
            [f"The request payload may not exceed {c.BULK_MAX_BYTES} bytes."],
        )
    if not isinstance(contacts, list) or not contacts:
        raise _bulk_failure(c.BULK_INVALID, ["'contacts' is a required field."])
    if len(contacts) > c.BULK_MAX_CONTACTS:
        raise _bulk_failure(
            c.BULK_INVALID,
            [f"Up to {c.BULK_MAX_CONTACTS} contacts may be included in a single request."],
        )
    reasons: list[dict[str, Any]] = []
    for index, item in enumerate(contacts):
        email = text(item.get("email")).strip() if isinstance(item, dict) else ""
        if not email or not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$", email):
            reasons.append(
                {"contact": index, "failureReason": "Field\u2018 email\u2019 incorrect format"}
            )
    if reasons:
        raise _bulk_failure(c.BULK_INVALID, reasons)
    batch = state.queue_import(ctx.account, contacts, ctx.data)
    return 200, {
        "Success": 1,
        "queued_contacts": len(contacts),
        "batchId": batch.id,
        "message": "Contact import queued",
    }


@route("GET", r"/import/bulk_import")
def bulk_overview(ctx: Ctx) -> Result:
    tz = ctx.state.config.timezone
    outstanding: dict[str, list[int]] = {}
    done: dict[str, list[int]] = {}
    for batch in ctx.account.batches.values():
        day = clocktext.local(batch.created, tz)[:10]
        bucket = done if ctx.state.batch_status(batch) == "completed" else outstanding
        entry = bucket.setdefault(day, [0, 0])
        entry[0] += 1
        entry[1] += len(batch.contacts)

    def rows(bucket: dict[str, list[int]]) -> list[dict[str, str]]:
        return [
            {"forDate": d, "batches": str(n), "contacts": str(k)}
            for d, (n, k) in sorted(bucket.items())
        ]

    return 200, {"outstanding": rows(outstanding), "recentlyCompleted": rows(done)}


@route("GET", r"/import/info")
def bulk_info(ctx: Ctx) -> Result:
    ident = ctx.query.get("batchId")
    if not ident:
        raise AcError(400, {"success": 0, "message": "'batchId' is a required field."})
    batch = ctx.account.batches.get(ident)
    if batch is None:
        raise errors.not_found("Batch", ident)
    config = ctx.state.config
    if ctx.state.clock.now() - batch.created < config.import_info_false_seconds:
        return 200, False if config.import_info_false_form == "false" else {"status": False}
    return 200, batch_info(batch, ctx.state.batch_status(batch))


# -- webhooks ---------------------------------------------------------------------------


@route("GET", r"/webhooks")
def webhook_list(ctx: Ctx) -> Result:
    items = list(ctx.account.webhooks.values())
    for key, attr in (
        ("filters[name]", "name"),
        ("filters[url]", "url"),
        ("filters[listid]", "listid"),
    ):
        if ctx.query.get(key):
            items = [x for x in items if getattr(x, attr) == ctx.query[key]]
    page, total, _, _ = _page(ctx, items)
    return 200, {"webhooks": [ctx.r.webhook(x) for x in page], "meta": {"total": str(total)}}


@route("POST", r"/webhooks")
def webhook_create(ctx: Ctx) -> Result:
    from app.sandbox.activecampaign.model import Webhook

    data = ctx.state.check_webhook(ctx.obj("webhook"))
    w = Webhook(
        id=ctx.state.next_id("webhook"),
        name=text(data["name"]),
        url=text(data["url"]),
        events=list(data["events"]),
        sources=list(data["sources"]),
        listid=data.get("listid", "0"),
        cdate=ctx.state.clock.now(),
    )
    ctx.account.webhooks[w.id] = w
    return 201, {"webhook": ctx.r.webhook(w)}


@route("GET", r"/webhooks/(\d+)")
def webhook_get(ctx: Ctx, ident: str) -> Result:
    return 200, {"webhook": ctx.r.webhook(ctx.state.webhook(ctx.account, ident))}


@route("PUT", r"/webhooks/(\d+)")
def webhook_put(ctx: Ctx, ident: str) -> Result:
    w = ctx.state.webhook(ctx.account, ident)
    for key, value in ctx.state.check_webhook(ctx.obj("webhook"), w).items():
        setattr(w, key, list(value) if isinstance(value, list) else text(value))
    return 200, {"webhook": ctx.r.webhook(w)}


@route("DELETE", r"/webhooks/(\d+)")
def webhook_delete(ctx: Ctx, ident: str) -> Result:
    w = ctx.state.webhook(ctx.account, ident)
    del ctx.account.webhooks[w.id]
    return 200, {}


@route("GET", r"/(webhook|webhooks)/events")
def webhook_events(ctx: Ctx, _alias: str) -> Result:
    return 200, {"webhookEvents": list(c.WEBHOOK_EVENTS), "meta": {"total": len(c.WEBHOOK_EVENTS)}}
