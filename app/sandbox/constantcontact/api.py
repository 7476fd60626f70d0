"""The V3 API under `/v3` (ref §1-§5): auth, scopes, limits, faults, routes, exact errors.

Every request: authenticate the Bearer JWT (401 object), spend the application's daily
quota and 4/s bucket (429 objects), roll the fault dice, check the route's scope (403),
parse the JSON body (415/400), wait the latency, answer, log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from app.sandbox.constantcontact import activities, auth, contacts, errors, realism, resources
from app.sandbox.constantcontact.errors import ApiError
from app.sandbox.constantcontact.state import AccessToken, Account, SandboxState
from app.sandbox.kit import LogEntry, Refusal

log = logging.getLogger(__name__)

Result = tuple[int, Any, list[tuple[str, str]]]
Handler = Callable[["Call"], Coroutine[Any, Any, Result]]
CONTACT_SCOPE = "contact_data"


@dataclass
class Call:
    """One admitted API request, as handlers see it."""

    state: SandboxState
    account: Account
    token: AccessToken
    method: str
    params: dict[str, str]
    path_params: dict[str, str]
    body: Any

    def json_object(self) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise errors.validation("The request body must be a JSON object")
        return self.body


def ok(body: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Result:
    return status, body, headers or []


NO_CONTENT: Result = (204, None, [])


# -- account ---------------------------------------------------------------------------------


async def account_summary(call: Call) -> Result:
    return ok(resources.summary(call.account, call.params.get("extra_fields")))


async def user_privileges(call: Call) -> Result:
    from app.sandbox.constantcontact.constants import PRIVILEGES

    return ok(PRIVILEGES[call.account.role])


# -- contacts --------------------------------------------------------------------------------


async def contacts_collection(call: Call) -> Result:
    state, account = call.state, call.account
    if call.method == "POST":
        contact = contacts.create(state, account, call.json_object())
        include = (
            frozenset(contacts.INCLUDE_ALL)
            if state.config.echo_subresources_on_create
            else frozenset()
        )
        return ok(contacts.render(state, contact, include), 201)
    return ok(contacts.list_contacts(state, account, call.params))


async def sign_up_form(call: Call) -> Result:
    contact, created = contacts.sign_up_form(call.state, call.account, call.json_object())
    words = call.state.config.signup_form_actions
    return ok(
        {"contact_id": contact.contact_id, "action": words[0] if created else words[1]},
        201 if created else 200,
    )


async def contact_counts(call: Call) -> Result:
    include = call.params.get("include", "")
    return ok(contacts.counts(call.account, "new_subscriber" in include))


async def contact_item(call: Call) -> Result:
    state, account = call.state, call.account
    contact = contacts.get(state, account, call.path_params["id"])
    if call.method == "GET":
        include = contacts.parse_include(call.params.get("include"))
        return ok(contacts.render(state, contact, include))
    if call.method == "PUT":
        contacts.put(state, account, contact, call.json_object())
        return ok(contacts.render(state, contact))
    if contact.deleted_at is not None and state.config.delete_deleted_status == 404:
        raise errors.not_found()
    contacts.delete(state, contact)
    return NO_CONTENT


async def resubscribe(call: Call) -> Result:
    contact = contacts.get(call.state, call.account, call.path_params["id"])
    contacts.resubscribe(call.state, call.account, contact, call.json_object())
    return ok({})


# -- lists, tags, custom fields --------------------------------------------------------------


def _accepted(call: Call, kind: str, payload: dict[str, Any], items: int) -> Result:
    activity = activities.queue(call.state, call.account, kind, payload, items)
    body = activities.render(call.state, activity)
    return ok(body, 202, [("location", body["_links"]["self"]["href"])])


async def lists_collection(call: Call) -> Result:
    state, account = call.state, call.account
    if call.method == "POST":
        item = resources.create_list(state, account, call.json_object())
        return ok(resources.render_list(account, item, None), 201)
    counts = resources.list_counts_param(call.params)
    items = list(account.lists.values())
    if call.params.get("name"):
        items = [i for i in items if i.name == call.params["name"]]
    chunk, links = resources.page(state, items, call.params, "contact_lists", 50, 1000)
    out: dict[str, Any] = {"lists": [resources.render_list(account, i, counts) for i in chunk]}
    if call.params.get("include_count", "").lower() == "true":
        out["lists_count"] = len(items)
    if links is not None:
        out["_links"] = links
    return ok(out)


async def list_item(call: Call) -> Result:
    state, account = call.state, call.account
    item = resources.get_or_404(account.lists, call.path_params["id"], "list_id")
    if call.method == "GET":
        counts = resources.list_counts_param(call.params)
        return ok(resources.render_list(account, item, counts))
    if call.method == "PUT":
        name, description, favorite = resources.list_input(state, account, call.json_object(), item)
        item.name, item.description, item.favorite = name, description, favorite
        item.updated_at = state.now()
        return ok(resources.render_list(account, item, None))
    return _accepted(call, "list_delete", {"list_ids": [item.list_id]}, 1)


async def tags_collection(call: Call) -> Result:
    state, account = call.state, call.account
    if call.method == "POST":
        tag = resources.create_tag(state, account, call.json_object())
        return ok(resources.render_tag(account, tag, False), 201)
    with_count = call.params.get("include_count", "").lower() == "true"
    chunk, links = resources.page(
        state, list(account.tags.values()), call.params, "contact_tags", 50, 500
    )
    out: dict[str, Any] = {"tags": [resources.render_tag(account, t, with_count) for t in chunk]}
    if links is not None:
        out["_links"] = links
    return ok(out)


async def tag_item(call: Call) -> Result:
    state, account = call.state, call.account
    tag = resources.get_or_404(account.tags, call.path_params["id"], "tag_id")
    if call.method == "GET":
        with_count = call.params.get("include_count", "").lower() == "true"
        return ok(resources.render_tag(account, tag, with_count))
    if call.method == "PUT":
        tag.name = resources.tag_name(account, call.json_object(), tag)
        tag.updated_at = state.now()
        return ok(resources.render_tag(account, tag, False))
    return _accepted(call, "contacts_tags_delete", {"tag_ids": [tag.tag_id]}, 1)


async def fields_collection(call: Call) -> Result:
    state, account = call.state, call.account
    if call.method == "POST":
        field = resources.create_field(state, account, call.json_object())
        return ok(resources.render_field(field), 201)
    items = list(account.custom_fields.values())
    chunk, links = resources.page(state, items, call.params, "contact_custom_fields", 50, 100)
    out: dict[str, Any] = {"custom_fields": [resources.render_field(f) for f in chunk]}
    if links is not None:
        out["_links"] = links
    return ok(out)


async def field_item(call: Call) -> Result:
    state, account = call.state, call.account
    field = resources.get_or_404(account.custom_fields, call.path_params["id"], "custom_field_id")
    if call.method == "GET":
        return ok(resources.render_field(field))
    if call.method == "PUT":
        resources.update_field(state, account, field, call.json_object())
        return ok(resources.render_field(field))
    for contact in account.contacts.values():
        contact.custom_fields = [
            f for f in contact.custom_fields if f["custom_field_id"] != field.custom_field_id
        ]
    del account.custom_fields[field.custom_field_id]
    return NO_CONTENT


# -- activities ------------------------------------------------------------------------------


async def activity_create(call: Call) -> Result:
    kind = call.path_params["kind"]
    if kind not in activities.KINDS:
        raise errors.not_found()
    payload, items = activities.validate(call.state, call.account, kind, call.json_object())
    activity = activities.queue(call.state, call.account, kind, payload, items)
    return ok(activities.render(call.state, activity), 201)


async def activity_item(call: Call) -> Result:
    activity = resources.get_or_404(call.account.activities, call.path_params["id"], "activity_id")
    return ok(activities.render(call.state, activity))


async def activity_collection(call: Call) -> Result:
    state_filter = call.params.get("state")
    cutoff = call.state.now() - 10 * 86_400
    items = [
        a
        for a in call.account.activities.values()
        if a.created_at >= cutoff and (not state_filter or a.state == state_filter)
    ]
    items.reverse()  # newest first
    chunk, links = resources.page(call.state, items, call.params, "activities", 50, 500)
    out: dict[str, Any] = {"activities": [activities.render(call.state, a) for a in chunk]}
    if links is not None:
        out["_links"] = links
    return ok(out)


# -- routing ---------------------------------------------------------------------------------

ID = r"(?P<id>[^/]+)"
_TABLE: tuple[tuple[str, dict[str, Handler], str | None], ...] = (
    (r"/v3/account/summary", {"GET": account_summary}, "account_read"),
    (r"/v3/account/user/privileges", {"GET": user_privileges}, None),
    (r"/v3/contacts", {"GET": contacts_collection, "POST": contacts_collection}, CONTACT_SCOPE),
    (r"/v3/contacts/sign_up_form", {"POST": sign_up_form}, CONTACT_SCOPE),
    (r"/v3/contacts/counts", {"GET": contact_counts}, CONTACT_SCOPE),
    (rf"/v3/contacts/resubscribe/{ID}", {"PUT": resubscribe}, CONTACT_SCOPE),
    (
        rf"/v3/contacts/{ID}",
        dict.fromkeys(("GET", "PUT", "DELETE"), contact_item),
        CONTACT_SCOPE,
    ),
    (r"/v3/contact_lists", {"GET": lists_collection, "POST": lists_collection}, CONTACT_SCOPE),
    (
        rf"/v3/contact_lists/{ID}",
        dict.fromkeys(("GET", "PUT", "DELETE"), list_item),
        CONTACT_SCOPE,
    ),
    (r"/v3/contact_tags", {"GET": tags_collection, "POST": tags_collection}, CONTACT_SCOPE),
    (
        rf"/v3/contact_tags/{ID}",
        dict.fromkeys(("GET", "PUT", "DELETE"), tag_item),
        CONTACT_SCOPE,
    ),
    (
        r"/v3/contact_custom_fields",
        {"GET": fields_collection, "POST": fields_collection},
        CONTACT_SCOPE,
    ),
    (
        rf"/v3/contact_custom_fields/{ID}",
        dict.fromkeys(("GET", "PUT", "DELETE"), field_item),
        CONTACT_SCOPE,
    ),
    (r"/v3/activities", {"GET": activity_collection}, CONTACT_SCOPE),
    (r"/v3/activities/(?P<kind>[a-z_]+)", {"POST": activity_create}, CONTACT_SCOPE),
    (rf"/v3/activities/{ID}", {"GET": activity_item}, CONTACT_SCOPE),
)
ROUTES = [(re.compile(p), methods, scope) for p, methods, scope in _TABLE]
# "GET /v3/contacts/{id}": how `endpoint_rates` names a route
ROUTE_NAMES = [re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", p) for p, _, _ in _TABLE]


def match(method: str, path: str) -> tuple[Handler, dict[str, str], str | None, str]:
    """The handler of (method, path) and the route's name; 404 unknown path, 405 wrong method."""
    path = path.rstrip("/") or "/"
    allowed = False
    for (pattern, methods, scope), name in zip(ROUTES, ROUTE_NAMES, strict=True):
        found = pattern.fullmatch(path)
        if found is None:
            continue
        handler = methods.get(method)
        if handler is not None:
            return handler, found.groupdict(), scope, f"{method} {name}"
        allowed = True
    if allowed:
        raise errors.method_not_allowed()
    raise errors.not_found()


def items_of(body: Any) -> int:
    """How many items a request carries (for `latency_per_item_ms`)."""
    if isinstance(body, dict):
        for key in ("import_data", "contact_ids", "list_ids", "tag_ids", "custom_field_ids"):
            value = body.get(key)
            if isinstance(value, list):
                return max(len(value), 1)
        source = body.get("source")
        if isinstance(source, dict):
            return items_of(source)
    return 1


class V3Api:
    """`/v3/...` as an ASGI handler."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        state = self.state
        request = Request(scope, receive)
        start = time.time()
        method = scope["method"]
        entry: dict[str, Any] = {"client_id": None, "quota_key": None, "decision": None}
        headers: list[tuple[str, str]] = []
        try:
            status, body, headers = await self._serve(request, method, path, entry, receive)
        except ApiError as exc:
            status, body = exc.status, exc.body(state.config.error_body_shape)
            headers = exc.headers
        except Exception:  # a sandbox bug: answer like the real 500, keep serving
            log.exception("constantcontact sandbox: unhandled error on %s %s", method, path)
            failure = errors.internal()
            status, body = failure.status, failure.body(state.config.error_body_shape)
        content = b"" if body is None else orjson.dumps(body)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if body is not None:
            raw.append((b"content-type", b"application/json"))
        raw.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})
        fault = entry.pop("fault", None)
        account = entry.pop("account", None)
        in_flight = entry.pop("in_flight", 0)
        raw_body = entry.pop("body", None)
        state.log_request(
            LogEntry(
                method, path, status, start, time.time(), in_flight, account, fault, entry, raw_body
            )
        )

    async def _serve(
        self, request: Request, method: str, path: str, entry: dict[str, Any], receive: Receive
    ) -> Result:
        state = self.state
        header = request.headers.get("authorization")
        token = auth.bearer(state, header)
        if token is None:
            if not header and state.config.missing_auth_status == 403:
                raise errors.forbidden()
            raise errors.unauthorized()
        entry["client_id"], entry["account"] = token.client_id, token.account_id
        try:
            in_flight = state.gate.in_flight.enter(token.account_id, state.config.max_in_flight)
        except Refusal as refusal:
            entry["fault"] = refusal.kind
            raise realism.answer(state, refusal, entry) from None
        entry["in_flight"] = in_flight
        try:
            return await self._admitted(request, method, path, entry, receive, token)
        finally:
            state.gate.in_flight.leave(token.account_id)

    async def _admitted(
        self,
        request: Request,
        method: str,
        path: str,
        entry: dict[str, Any],
        receive: Receive,
        token: AccessToken,
    ) -> Result:
        state = self.state
        account = state.accounts[token.account_id]
        try:
            await realism.admit(state, token, entry, path, receive)
        except Refusal as refusal:
            if refusal.kind not in ("rate", "quota"):
                entry["fault"] = refusal.kind
            raise realism.answer(state, refusal, entry) from None
        handler, path_params, scope, route = match(method, path)
        try:
            realism.endpoint_rate(state, route, entry)
        except Refusal as refusal:
            raise realism.answer(state, refusal, entry) from None
        if scope is not None and scope not in token.scopes:
            raise errors.forbidden()
        if scope == CONTACT_SCOPE and account.role == "campaign_creator":
            raise errors.forbidden()
        body: Any = None
        if method in ("POST", "PUT", "PATCH"):
            raw = await request.body()
            if state.config.record_bodies:
                entry["body"] = raw
            if raw.strip():
                if "json" not in request.headers.get("content-type", "").lower():
                    raise errors.unsupported_media_type()
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise errors.validation("The request body is not valid JSON") from None
            else:
                body = {}
        entry["items"] = items_of(body)
        await realism.latency(state, entry["items"], receive)
        activities.advance(state, account)
        call = Call(state, account, token, method, dict(request.query_params), path_params, body)
        return await handler(call)
