"""`/_control`: reset, knobs, clock, apps and tokens, accounts, people's actions, logs.

Never subject to latency, limits or faults.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.constantcontact import activities, auth, clock, contacts, errors, resources
from app.sandbox.constantcontact import constants as c
from app.sandbox.constantcontact.errors import ApiError
from app.sandbox.constantcontact.oauth import base_url
from app.sandbox.constantcontact.state import Account, App, SandboxState
from app.sandbox.kit.control import error as _error
from app.sandbox.kit.control import json_response as _json
from app.sandbox.kit.control import read_object as _body

ACTIONS = (
    "unsubscribe",
    "temp_hold",
    "bounce",
    "signup",
    "confirm",
    "confirm_resubscribe",
    "delete_by_user",
    "profile",
    "change_email",
    "preferences",
)


def _state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def app_view(app: App, base: str) -> dict[str, Any]:
    return {
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "name": app.name,
        "flow": app.flow,
        "refresh_token_type": app.refresh_token_type,
        "redirect_uris": app.redirect_uris,
        "scopes": app.scopes,
        "pkce": app.pkce,
        "active": app.active,
        "authorize_url": f"{base}/oauth2/default/v1/authorize",
        "token_url": f"{base}/oauth2/default/v1/token",
        "jwks_url": f"{base}/oauth2/{c.ISSUER_PATH_ID}/v1/keys",
        "api_base_url": f"{base}/v3",
    }


def account_view(state: SandboxState, account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "encoded_account_id": account.id,
        "organization_name": account.organization_name,
        "login_email": account.login_email,
        "uid": account.uid,
        "platform_user_id": account.platform_user_id,
        "role": account.role,
        "confirmed_opt_in": account.confirmed_opt_in,
        "contact_count": sum(1 for k in account.contacts.values() if k.deleted_at is None),
        "lists": [resources.render_list(account, item, "all") for item in account.lists.values()],
        "tags": [resources.render_tag(account, t, True) for t in account.tags.values()],
        "custom_fields": [resources.render_field(f) for f in account.custom_fields.values()],
    }


async def index(request: Request) -> Response:
    return _json(
        {
            "endpoints": [
                "POST /_control/reset",
                "GET, PATCH /_control/config",
                "GET, POST /_control/clock {advance_seconds}",
                "POST /_control/clock/advance {seconds | to | to_next_midnight}",
                "GET /_control/limits",
                "GET, POST /_control/apps, PATCH /_control/apps/{client_id}",
                "POST /_control/apps/{client_id}/rotate-secret",
                "GET, POST /_control/tokens, POST /_control/tokens/{jti}/revoke",
                "GET, POST /_control/accounts, PATCH /_control/accounts/{account_id}",
                "POST /_control/accounts/{account_id}/lists",
                "GET /_control/contacts",
                "POST /_control/contacts/{email}/actions/{action}",
                "POST /_control/lists/{list_id}/actions/{action}  {email}",
                "  action in " + ", ".join(ACTIONS),
                "GET, DELETE /_control/requests",
                "GET, DELETE /_control/emails",
            ]
        }
    )


def _clock_view(state: SandboxState) -> dict[str, Any]:
    now = state.now()
    return {
        "now": clock.iso(now),
        "epoch": now,
        "offset_seconds": state.clock_offset,
        "quota_resets_at": clock.iso(clock.next_midnight(now)),
    }


async def clock_advance(request: Request) -> Response:
    """Move the sandbox clock forward (token expiry, 180-day refresh expiry, quota reset)."""
    state = _state(request)
    try:
        data = await _body(request)
    except ValueError as exc:
        return _error(400, str(exc))
    if "to" in data:
        try:
            target = clock.parse(str(data["to"]))
        except ValueError:
            return _error(400, "to must be an ISO 8601 date-time")
        seconds = target - state.now()
    elif data.get("to_next_midnight"):
        seconds = clock.next_midnight(state.now()) - state.now()
    else:
        raw = data.get("seconds")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return _error(400, "seconds must be a number (or give to / to_next_midnight)")
        seconds = float(raw)
    if seconds < 0:
        return _error(400, "the sandbox clock only moves forward")
    state.clock.advance(float(seconds))
    return _json(_clock_view(state))


async def limits(request: Request) -> Response:
    state = _state(request)
    return _json(
        {
            "quota_key": state.config.quota_key,
            "daily_quota": state.config.daily_quota,
            "rate_per_second": state.config.rate_per_second,
            "used_today": state.quota.usage(state.now()),
            **_clock_view(state),
        }
    )


async def apps(request: Request) -> Response:
    state = _state(request)
    base = base_url(request)
    if request.method == "POST":
        try:
            data = await _body(request)
            app = App(
                client_id=str(data.get("client_id") or contacts.new_id()),
                client_secret=data.get("client_secret", "secret-" + contacts.new_id()[:8]),
                name=str(data.get("name", "App")),
            )
            if app.client_id in state.apps:
                raise ValueError("an app with this client_id exists")
            _patch_app(
                app,
                {k: v for k, v in data.items() if k not in ("client_id", "client_secret", "name")},
            )
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        state.apps[app.client_id] = app
        return _json(app_view(app, base), 201)
    return _json({"apps": [app_view(a, base) for a in state.apps.values()]})


def _patch_app(app: App, data: dict[str, Any]) -> None:
    allowed = {"flow", "refresh_token_type", "redirect_uris", "scopes", "pkce", "active", "name"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown fields: {sorted(unknown)}")
    if "flow" in data and data["flow"] not in ("authorization_code", "pkce", "implicit", "device"):
        raise ValueError("flow is authorization_code, pkce, implicit or device")
    if "refresh_token_type" in data and data["refresh_token_type"] not in (
        "rotating",
        "long_lived",
    ):
        raise ValueError("refresh_token_type is rotating or long_lived")
    if "pkce" in data and data["pkce"] not in (None, "allowed", "required", "forbidden"):
        raise ValueError("pkce is allowed, required, forbidden or null")
    for key in ("redirect_uris", "scopes"):
        if key in data and not (
            isinstance(data[key], list) and all(isinstance(x, str) for x in data[key])
        ):
            raise ValueError(f"{key} must be a list of strings")
    if "active" in data and not isinstance(data["active"], bool):
        raise ValueError("active must be a boolean")
    for key, value in data.items():
        setattr(app, key, value)


async def app_item(request: Request) -> Response:
    state = _state(request)
    app = state.apps.get(request.path_params["client_id"])
    if app is None:
        return _error(404, "unknown app")
    try:
        _patch_app(app, await _body(request))
    except ValueError as exc:
        return _error(400, str(exc))
    return _json(app_view(app, base_url(request)))


async def rotate_secret(request: Request) -> Response:
    state = _state(request)
    app = state.apps.get(request.path_params["client_id"])
    if app is None or app.client_secret is None:
        return _error(404, "unknown app, or a public app without a secret")
    app.client_secret = "secret-" + contacts.new_id().replace("-", "")[:24]
    return _json(app_view(app, base_url(request)))


async def tokens(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        try:
            data = await _body(request)
        except ValueError as exc:
            return _error(400, str(exc))
        app = state.apps.get(str(data.get("client_id") or c.ROTATING_CLIENT_ID))
        account = state.accounts.get(str(data.get("account_id") or c.DEFAULT_ACCOUNT_ID))
        if app is None or account is None:
            return _error(404, "unknown client_id or account_id")
        scopes = data.get("scopes") or ["account_read", "contact_data", "offline_access"]
        if not isinstance(scopes, list) or not all(s in app.scopes for s in scopes):
            return _error(400, "scopes must be a list of the app's scopes")
        return _json(auth.mint(state, app, account, scopes), 201)
    return _json(
        {
            "grants": [
                {
                    "grant_id": g.grant_id,
                    "client_id": g.client_id,
                    "account_id": g.account_id,
                    "scopes": g.scopes,
                    "created": g.created,
                    "revoked": g.revoked,
                    "current_refresh_token": g.current_refresh,
                    "chain": g.chain,
                }
                for g in state.grants.values()
            ],
            "access_tokens": [
                {
                    "jti": t.jti,
                    "client_id": t.client_id,
                    "account_id": t.account_id,
                    "grant_id": t.grant_id,
                    "scopes": t.scopes,
                    "issued_at": t.issued_at,
                    "expires_at": t.expires_at,
                    "revoked": t.revoked,
                }
                for t in state.access_tokens.values()
            ],
        }
    )


async def revoke_token(request: Request) -> Response:
    state = _state(request)
    token = state.tokens_by_jti.get(request.path_params["jti"])
    if token is None:
        return _error(404, "unknown jti")
    token.revoked = True
    return _json({"jti": token.jti, "revoked": True})


async def accounts(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        try:
            data = await _body(request)
            allowed = {
                "account_id",
                "organization_name",
                "first_name",
                "last_name",
                "login_email",
                "role",
                "confirmed_opt_in",
            }
            unknown = set(data) - allowed - {"with_list", "list_name"}
            if unknown:
                raise ValueError(f"unknown fields: {sorted(unknown)}")
            account = state.create_account(**{k: v for k, v in data.items() if k in allowed})
            if data.get("with_list", True):
                state.create_list(account, str(data.get("list_name") or c.DEFAULT_LIST_NAME))
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return _json(account_view(state, account), 201)
    return _json({"accounts": [account_view(state, a) for a in state.accounts.values()]})


async def account_item(request: Request) -> Response:
    state = _state(request)
    account = state.accounts.get(request.path_params["account_id"])
    if account is None:
        return _error(404, "unknown account")
    try:
        data = await _body(request)
        for key, value in data.items():
            if key == "confirmed_opt_in" and isinstance(value, bool):
                account.confirmed_opt_in = value
            elif key == "role" and value in c.ROLES:
                account.role = value
            elif key == "organization_name" and isinstance(value, str) and value:
                account.organization_name = value
            else:
                raise ValueError(f"bad field {key}: confirmed_opt_in, role, organization_name")
    except ValueError as exc:
        return _error(400, str(exc))
    return _json(account_view(state, account))


async def create_list(request: Request) -> Response:
    state = _state(request)
    account = state.accounts.get(request.path_params["account_id"])
    if account is None:
        return _error(404, "unknown account")
    try:
        data = await _body(request)
        item = state.create_list(
            account, str(data.get("name") or "List"), list_id=data.get("list_id")
        )
    except ValueError as exc:
        return _error(400, str(exc))
    return _json(resources.render_list(account, item, "all"), 201)


def _account(state: SandboxState, account_id: str | None) -> Account | None:
    if account_id:
        return state.accounts.get(account_id)
    return state.accounts.get(c.DEFAULT_ACCOUNT_ID) or next(iter(state.accounts.values()), None)


async def contacts_dump(request: Request) -> Response:
    """Every contact (deleted ones too) with every sub-resource and its hidden state."""
    state = _state(request)
    account = _account(state, request.query_params.get("account_id"))
    if account is None:
        return _error(404, "unknown account")
    for item in list(state.accounts.values()):
        activities.advance(state, item)
    out = []
    for contact in account.contacts.values():
        view = contacts.render(state, contact, frozenset(c.INCLUDES))
        view["resubscribe_sent_at"] = (
            clock.iso(contact.resubscribe_sent_at) if contact.resubscribe_sent_at else None
        )
        # When the contact came to be here (a POST's answer, an import's end), to the
        # microsecond: benchmarks measure change → Constant Contact with it.
        view["created_epoch"] = contact.created_at
        out.append(view)
    return _json({"account_id": account.id, "contacts": out, "total_items": len(out)})


async def person_action(request: Request) -> Response:
    """A person's action: SafeUnsubscribe, a bounce hold, a form signup, a confirmation, …"""
    state = _state(request)
    name = request.path_params["action"]
    if name not in ACTIONS:
        return _error(404, f"unknown action; one of {', '.join(ACTIONS)}")
    try:
        data = await _body(request)
    except ValueError as exc:
        return _error(400, str(exc))
    email = request.path_params.get("email") or data.get("email")
    if not isinstance(email, str) or not email.strip():
        return _error(400, "email is required")
    account = _account(state, data.get("account_id"))
    if account is None:
        return _error(404, "unknown account")
    activities.advance(state, account)
    list_id = request.path_params.get("list_id") or data.get("list_id")
    try:
        contact = _act(state, account, name, email.strip(), list_id, data)
    except ApiError as exc:
        return _json({"detail": exc.message, "error_key": exc.key}, exc.status)
    return _json(contacts.render(state, contact, frozenset(c.INCLUDES)))


def _act(
    state: SandboxState,
    account: Account,
    name: str,
    email: str,
    list_id: str | None,
    data: dict[str, Any],
) -> Any:
    now = state.now()
    if name == "signup":
        target = list_id or next(iter(account.lists), None)
        if target is None:
            raise errors.validation("the account has no list to sign up to")
        body = {"email_address": email, "list_memberships": [target]}
        body.update({k: data[k] for k in contacts.CORE_STRINGS if k in data})
        signed_up, _ = contacts.sign_up_form(state, account, body, person=True)
        return signed_up
    found = account.by_email.get(state.email_key(email))
    if found is None:
        raise errors.not_found(f"no contact with the email {email}")
    contact = found
    if name == "unsubscribe":
        if contact.permission != "unsubscribed":
            contacts.unsubscribe(state, contact, "Contact", data.get("reason"), now)
    elif name in ("temp_hold", "bounce"):
        contact.permission = "temp_hold"
        contact.email_updated_at = now
        contact.updated_at = now
    elif name == "confirm":
        if contact.permission != "pending_confirmation":
            raise errors.validation("the contact is not pending confirmation")
        if contact.resubscribe_sent_at is not None:
            contacts.confirm_resubscribe(state, contact)
        else:
            contacts.opt_in(contact, "explicit", "Contact", now, clear=True)
            contact.confirm_status = "confirmed"
    elif name == "confirm_resubscribe":
        contacts.confirm_resubscribe(state, contact)
    elif name == "delete_by_user":
        contacts.delete(state, contact)
    elif name == "profile":
        core = {k: data[k] for k in contacts.CORE_STRINGS if k in data}
        for key, value in core.items():
            if value is not None and (not isinstance(value, str) or len(value) > 50):
                raise errors.validation(f"{key} does not have a valid value")
            setattr(contact, key, value)
        contact.update_source = "Contact"
        contact.updated_at = now
    elif name == "preferences":
        # The person's email preference page: the lists they stay on (`list_ids`).
        raw = data.get("list_ids")
        if not isinstance(raw, list):
            raise errors.validation("list_ids must be a list of list ids")
        contact.list_memberships = contacts.parse_lists(account, raw)
        contact.update_source = "Contact"
        contact.updated_at = now
    elif name == "change_email":
        new = contacts.valid_email(data.get("new_email"), 80, key="new_email")
        contacts.duplicate(state, account, new, contact)
        if contact.email is not None:
            account.by_email.pop(state.email_key(contact.email), None)
        account.by_email[state.email_key(new)] = contact
        contact.email = new
        contact.update_source = "Contact"
        contact.email_updated_at = now
        contact.updated_at = now
    return contact


async def emails(request: Request) -> Response:
    state = _state(request)
    if request.method == "DELETE":
        state.emails.clear()
        return Response(status_code=204)
    return _json({"emails": state.emails, "total_items": len(state.emails)})


routes = [
    Route("/_control", index, methods=["GET"]),
    Route("/_control/clock/advance", clock_advance, methods=["POST"]),
    Route("/_control/limits", limits, methods=["GET"]),
    Route("/_control/apps", apps, methods=["GET", "POST"]),
    Route("/_control/apps/{client_id}", app_item, methods=["PATCH"]),
    Route("/_control/apps/{client_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/_control/tokens", tokens, methods=["GET", "POST"]),
    Route("/_control/tokens/{jti}/revoke", revoke_token, methods=["POST"]),
    Route("/_control/accounts", accounts, methods=["GET", "POST"]),
    Route("/_control/accounts/{account_id}", account_item, methods=["PATCH"]),
    Route("/_control/accounts/{account_id}/lists", create_list, methods=["POST"]),
    Route("/_control/contacts", contacts_dump, methods=["GET"]),
    Route("/_control/contacts/{email}/actions/{action}", person_action, methods=["POST"]),
    Route("/_control/lists/{list_id}/actions/{action}", person_action, methods=["POST"]),
    Route("/_control/emails", emails, methods=["GET", "DELETE"]),
]
