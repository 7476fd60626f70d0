"""`/_control`: reset, configuration, accounts and audiences, members dump, people's
actions, request and webhook-delivery logs. Never subject to latency, the cap or faults.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.kit import control_routes, error, json_response, read_object
from app.sandbox.kit.control import deliveries_response, person_action
from app.sandbox.mailchimp import clock, render
from app.sandbox.mailchimp.api import base_url
from app.sandbox.mailchimp.errors import ApiError
from app.sandbox.mailchimp.state import Account, SandboxState, derive_token

ACTIONS = ("unsubscribe", "clean", "abuse", "signup", "change-email", "profile")


_json = json_response
_error = error


def _state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


_body = read_object


def account_view(account: Account, base: str) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "dc": account.dc,
        "api_key": account.api_key,
        "client_id": account.client_id,
        "client_secret": account.client_secret,
        "oauth": {
            "client_id": account.client_id,
            "client_secret": account.client_secret,
            "authorize_url": f"{base}/oauth2/authorize",
            "token_url": f"{base}/oauth2/token",
            "metadata_url": f"{base}/oauth2/metadata",
            "access_token": derive_token(account.id, account.client_id, account.client_secret),
        },
        "login_email": account.login_email,
        "api_endpoint": base,
        "lists": [
            {"id": aud.id, "name": aud.name, "member_count": len(aud.members)}
            for aud in account.lists.values()
        ],
    }


async def index(request: Request) -> Response:
    """What the control API offers."""
    return _json(
        {
            "endpoints": [
                "POST /_control/reset",
                "GET, PATCH /_control/config",
                "GET, POST /_control/accounts",
                "POST /_control/accounts/{account_id}/lists",
                "GET /_control/lists/{list_id}/members",
                "POST /_control/lists/{list_id}/actions/{action}  action in " + ", ".join(ACTIONS),
                "GET, DELETE /_control/requests",
                "GET, DELETE /_control/webhook-deliveries",
            ]
        }
    )


async def accounts(request: Request) -> Response:
    state = _state(request)
    base = base_url(request.scope)
    if request.method == "POST":
        try:
            data = await _body(request)
            allowed = {"name", "dc", "api_key", "client_id", "client_secret", "login_email"}
            unknown = set(data) - allowed - {"with_list", "list_name"}
            if unknown:
                raise ValueError(f"unknown fields: {sorted(unknown)}")
            account = state.create_account(
                **{k: v for k, v in data.items() if k in allowed},
                with_list=bool(data.get("with_list", True)),
                list_name=data.get("list_name"),
            )
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return _json(account_view(account, base), 201)
    return _json({"accounts": [account_view(a, base) for a in state.accounts.values()]})


async def create_list(request: Request) -> Response:
    state = _state(request)
    account = state.accounts.get(request.path_params["account_id"])
    if account is None:
        return _error(404, "unknown account")
    try:
        data = await _body(request)
        aud = state.create_list(account, name=data.get("name"), list_id=data.get("id"))
    except ValueError as exc:
        return _error(400, str(exc))
    base = base_url(request.scope)
    return _json(render.audience(aud, base, account.name), 201)


async def members(request: Request) -> Response:
    state = _state(request)
    aud = state.lists.get(request.path_params["list_id"])
    if aud is None:
        return _error(404, "unknown list")
    base = base_url(request.scope)
    out: list[dict[str, Any]] = []
    for m in aud.members.values():
        item = render.member(m, aud, base)
        item["forgotten"] = False
        item["tags_all"] = [
            {"name": n, "status": "active", "date": d} for n, d in m.tags.items()
        ] + [{"name": n, "status": "inactive", "date": d} for n, d in m.inactive_tags.items()]
        item["status_before_archive"] = m.status_before_archive
        item["last_changed_epoch"] = m.last_changed
        out.append(item)
    for hashed, when in aud.forgotten.items():
        out.append(
            {
                "id": hashed,
                "status": "forgotten",
                "forgotten": True,
                "forgotten_at": clock.iso(when),
            }
        )
    return _json({"list_id": aud.id, "members": out, "total_items": len(out)})


async def action(request: Request) -> Response:
    state = _state(request)
    aud = state.lists.get(request.path_params["list_id"])
    if aud is None:
        return _error(404, "unknown list")
    asked = await person_action(request, ACTIONS)
    if isinstance(asked, Response):
        return asked
    name, email, data = asked.name, asked.email, asked.data
    source = data.get("source", "user")
    if source not in ("user", "admin"):
        return _error(400, "source is user or admin")
    try:
        member = aud.person_action(
            name,
            email,
            new_email=data.get("new_email"),
            merge_fields=data.get("merge_fields"),
            interests=data.get("interests"),
            source=source,
        )
    except ApiError as exc:
        return _json({"title": exc.title, "detail": exc.detail, "errors": exc.errors}, exc.status)
    return _json(render.member(member, aud, base_url(request.scope)))


async def deliveries(request: Request) -> Response:
    return deliveries_response(request, _state(request).hub)


routes = [
    Route("/_control", index, methods=["GET"]),
    *control_routes(with_clock=False),
    Route("/_control/accounts", accounts, methods=["GET", "POST"]),
    Route("/_control/accounts/{account_id}/lists", create_list, methods=["POST"]),
    Route("/_control/lists/{list_id}/members", members, methods=["GET"]),
    Route("/_control/lists/{list_id}/actions/{action}", action, methods=["POST"]),
    Route("/_control/webhook-deliveries", deliveries, methods=["GET", "DELETE"]),
]
