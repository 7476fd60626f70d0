"""`/_control`: reset, configuration, the clock, clients, dumps, people's actions, logs.

Never subject to the API switch, latency, faults or limits.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.kit.control import error as _error
from app.sandbox.kit.control import json_response as _json
from app.sandbox.kit.control import read_object as _body
from app.sandbox.mautic import errors, render
from app.sandbox.mautic.model import BOUNCED, UNSUBSCRIBED, Contact
from app.sandbox.mautic.state import MauticState

ACTIONS = (
    "unsubscribe",
    "bounce",
    "complaint",
    "signup",
    "profile",
    "change-email",
    "resubscribe",
    "preferences",
)


def _state(request: Request) -> MauticState:
    state: MauticState = request.app.state.sandbox
    return state


async def index(request: Request) -> Response:
    return _json(
        {
            "endpoints": [
                "POST /_control/reset",
                "GET, PATCH /_control/config",
                "GET, POST /_control/clock  {advance_seconds}",
                "GET, POST /_control/clients",
                "POST /_control/tokens/expire",
                "GET /_control/contacts",
                "POST /_control/actions/{action}  action in " + ", ".join(ACTIONS),
                "POST /_control/webhooks/process",
                "POST /_control/webhooks/{id}/test",
                "GET, DELETE /_control/webhook-deliveries",
                "GET, DELETE /_control/requests",
            ]
        }
    )


def _client_view(state: MauticState, client: Any, base: str) -> dict[str, Any]:
    return {
        "client_id": client.public_id,
        "client_secret": client.secret,
        "name": client.name,
        "redirect_uris": client.redirect_uris,
        "grant_types": sorted(client.grants),
        "token_url": f"{base}/oauth/v2/token",
        "authorize_url": f"{base}/oauth/v2/authorize",
    }


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def clients(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        try:
            data = await _body(request)
            uris = data.get("redirect_uris") or []
            if not isinstance(uris, list):
                raise ValueError("redirect_uris must be a list")
            client = state.add_client(
                str(data.get("name") or "API client"),
                [str(u) for u in uris],
                admin=bool(data.get("admin", True)),
            )
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return _json(_client_view(state, client, _base(request)), 201)
    return _json(
        {"clients": [_client_view(state, c, _base(request)) for c in state.clients.values()]}
    )


async def expire_tokens(request: Request) -> Response:
    """Every access token expires now (refresh tokens stay valid)."""
    state = _state(request)
    for token in state.tokens.values():
        token.expires_at = min(token.expires_at, state.now())
    return _json({"expired": len(state.tokens)})


def _dump(state: MauticState, contact: Contact) -> dict[str, Any]:
    inst = state.instance
    out = render.contact(inst, contact)
    out["segments"] = [s.id for s in inst.segments.values() if contact.id in s.members]
    out["campaigns"] = [c.id for c in inst.campaigns.values() if contact.id in c.members]
    return out


async def contacts(request: Request) -> Response:
    state = _state(request)
    items = [_dump(state, c) for c in state.instance.contacts.values()]
    return _json({"contacts": items, "total": len(items)})


def _by_email(state: MauticState, email: str) -> Contact | None:
    found = state.instance.find_duplicate({"email": email})
    return found


async def action(request: Request) -> Response:
    """A person's action at Mautic; fires what the instance would fire."""
    state = _state(request)
    name = request.path_params["action"]
    if name not in ACTIONS:
        return _error(404, f"unknown action; one of {', '.join(ACTIONS)}")
    try:
        data = await _body(request)
    except ValueError as exc:
        return _error(400, str(exc))
    email = data.get("email")
    if not isinstance(email, str) or not email.strip():
        return _error(400, "email is required")
    inst = state.instance
    comments = state.config.dnc_comments
    state.hub.begin()
    try:
        contact = _by_email(state, email)
        if name == "signup":
            fields = data.get("fields") or {}
            if not isinstance(fields, dict):
                return _error(400, "fields must be an object")
            result = inst.create({**fields, "email": email}, None)
            contact = result.contact
            segment_id = data.get("segment_id")
            if segment_id is not None:
                inst.segment_member(inst.segment(segment_id), contact, add=True)
            state.emit(
                "mautic.form_on_submit",
                {
                    "submission": {
                        "form": {"id": int(data.get("form_id", 1)), "name": "Sign-up"},
                        "lead": render.contact(inst, contact, webhook=True),
                        "results": {"email": email, **fields},
                    }
                },
            )
        elif contact is None:
            return _error(404, "no contact with that email")
        elif name in ("unsubscribe", "complaint"):
            inst.dnc(
                contact,
                str(data.get("channel") or "email"),
                add=True,
                reason=UNSUBSCRIBED,
                comments=str(data.get("comments") or comments.get(name, "")),
                channel_id=data.get("email_id"),
            )
        elif name == "bounce":
            inst.dnc(
                contact,
                "email",
                add=True,
                reason=BOUNCED,
                comments=str(data.get("comments") or comments.get("bounce", "")),
                channel_id=data.get("email_id"),
            )
        elif name == "resubscribe":
            inst.dnc(contact, str(data.get("channel") or "email"), add=False)
        elif name == "preferences":
            # The preference centre: the person joins (`add`) or leaves (`remove`) segments.
            for key, add in (("add", True), ("remove", False)):
                ids = data.get(key) or []
                if not isinstance(ids, list):
                    return _error(400, f"{key} must be a list of segment ids")
                for segment_id in ids:
                    inst.segment_member(inst.segment(segment_id), contact, add=add)
        elif name == "profile":
            fields = data.get("fields") or {}
            if not isinstance(fields, dict):
                return _error(400, "fields must be an object")
            inst.edit(contact.id, fields, None, put=False)
        else:  # change-email
            new_email = data.get("new_email")
            if not isinstance(new_email, str) or not new_email.strip():
                return _error(400, "new_email is required")
            inst.edit(contact.id, {"email": new_email}, None, put=False)
    except errors.ApiError as exc:
        return _json(exc.body, exc.status)
    await state.hub.flush_immediate()
    current = inst.contacts.get(contact.id)
    return _json(
        _dump(state, current) if current is not None else {"id": contact.id, "deleted": True}
    )


async def process(request: Request) -> Response:
    state = _state(request)
    hook_id = request.query_params.get("webhook_id")
    posts = await state.hub.process(int(hook_id) if hook_id and hook_id.isdigit() else None)
    return _json({"posts": posts, "queued": len(state.instance.queue)})


async def test_payload(request: Request) -> Response:
    """The "Send test payload" button: shipped samples, plus a top-level `timestamp`."""
    state = _state(request)
    hook = state.instance.hooks.get(int(request.path_params["hook_id"]))
    if hook is None:
        return _error(404, "unknown webhook")
    status = await state.hub.send_test(hook)
    return _json({"status": status})


async def deliveries(request: Request) -> Response:
    state = _state(request)
    if request.method == "DELETE":
        state.hub.log.clear()
        return Response(status_code=204)
    hooks = [
        {
            "id": h.id,
            "isPublished": h.is_published,
            "stop_reason": h.stop_reason,
            "attempts": len(h.attempts),
            "queued": sum(1 for r in state.instance.queue.values() if r.hook_id == h.id),
        }
        for h in state.instance.hooks.values()
    ]
    entries = list(state.hub.log)
    return _json({"deliveries": entries, "total": len(entries), "hooks": hooks})


routes = [
    Route("/_control", index, methods=["GET"]),
    Route("/_control/clients", clients, methods=["GET", "POST"]),
    Route("/_control/tokens/expire", expire_tokens, methods=["POST"]),
    Route("/_control/contacts", contacts, methods=["GET"]),
    Route("/_control/actions/{action}", action, methods=["POST"]),
    Route("/_control/webhooks/process", process, methods=["POST"]),
    Route("/_control/webhooks/{hook_id:int}/test", test_payload, methods=["POST"]),
    Route("/_control/webhook-deliveries", deliveries, methods=["GET", "DELETE"]),
]
