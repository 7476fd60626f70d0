"""`/_control`: the kit's reset, config, requests and clock, plus accounts, lists, contact
dumps, people's actions, imports and webhook deliveries. Never subject to limits or faults."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.activecampaign import constants as c
from app.sandbox.activecampaign.errors import AcError
from app.sandbox.activecampaign.model import Account, Contact
from app.sandbox.activecampaign.state import AcState
from app.sandbox.kit import base_url, control_routes, error, json_response, read_object

ACTIONS = ("unsubscribe", "bounce", "signup", "profile", "status")
STATUS_NAMES = {0: "unconfirmed", 1: "active", 2: "unsubscribed", 3: "bounced"}


def _state(request: Request) -> AcState:
    state: AcState = request.app.state.sandbox
    state.settle()
    return state


def account_view(account: Account, state: AcState, base: str) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "api_url": base,
        "api_key": account.api_keys[0],
        "api_keys": list(account.api_keys),
        "user_email": account.user_email,
        "lists": [
            {"id": lst.id, "name": lst.name, "subscribers": state.subscribers(account, lst.id)}
            for lst in account.lists.values()
        ],
        "webhooks": [
            {
                "id": w.id,
                "url": w.url,
                "events": w.events,
                "sources": w.sources,
                "listid": w.listid,
                "active": w.active,
            }
            for w in account.webhooks.values()
        ],
    }


def contact_view(account: Account, contact: Contact) -> dict[str, Any]:
    """A contact as a test wants to see it: statuses by list, fields by id and perstag, tags."""
    fields = {}
    for fid, fv in contact.values.items():
        f = account.fields.get(fid)
        fields[fid] = {"perstag": f.perstag if f else None, "value": fv.value}
    return {
        "id": contact.id,
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "phone": contact.phone,
        "cdate": contact.cdate,
        "udate": contact.udate,
        "bounced_hard": contact.bounced_hard,
        "lists": {
            lid: {
                "status": m.status,
                "status_name": STATUS_NAMES.get(m.status, str(m.status)),
                "contact_list_id": m.id,
                "sourceid": m.sourceid,
                "unsubreason": m.unsubreason,
                "resubscribed": m.resubscribed,
            }
            for lid, m in contact.lists.items()
        },
        "fields": fields,
        "tags": {tid: account.tags[tid].tag for tid in contact.tags if tid in account.tags},
        "contact_tags": {ct.tag_id: ct.id for ct in contact.tags.values()},
    }


async def index(request: Request) -> Response:
    return json_response(
        {
            "endpoints": [
                "POST /_control/reset",
                "GET, PATCH /_control/config",
                "GET, POST /_control/clock  {advance_seconds}",
                "GET, DELETE /_control/requests",
                "GET, POST /_control/accounts",
                "POST /_control/accounts/{account_id}/lists",
                "GET /_control/accounts/{account_id}/contacts",
                "GET /_control/lists/{list_id}/contacts",
                "POST /_control/lists/{list_id}/actions/{action}  action in " + ", ".join(ACTIONS),
                "GET /_control/imports",
                "GET, DELETE /_control/webhook-deliveries  (?wait=1 waits for deliveries)",
            ]
        }
    )


async def accounts(request: Request) -> Response:
    state = _state(request)
    base = base_url(request.scope)
    if request.method == "POST":
        try:
            data = await read_object(request)
            allowed = {"name", "api_key", "extra_keys", "user_email", "with_list", "list_name"}
            unknown = set(data) - allowed - {"id"}
            if unknown:
                raise ValueError(f"unknown fields: {sorted(unknown)}")
            account = state.create_account(
                account_id=data.get("id"),
                name=data.get("name"),
                api_key=data.get("api_key"),
                extra_keys=data.get("extra_keys"),
                user_email=data.get("user_email"),
                with_list=bool(data.get("with_list", True)),
                list_name=data.get("list_name"),
            )
        except (ValueError, TypeError) as exc:
            return error(400, str(exc))
        return json_response(account_view(account, state, base), 201)
    return json_response(
        {"accounts": [account_view(a, state, base) for a in state.accounts.values()]}
    )


async def create_list(request: Request) -> Response:
    state = _state(request)
    account = state.accounts.get(request.path_params["account_id"])
    if account is None:
        return error(404, "unknown account")
    try:
        data = await read_object(request)
        lst = state.create_list(account, {"name": data.get("name") or "Sandbox List", **data})
    except ValueError as exc:
        return error(400, str(exc))
    except AcError as exc:
        return json_response(exc.body, exc.status)
    return json_response({"id": lst.id, "name": lst.name, "account_id": account.id}, 201)


async def account_contacts(request: Request) -> Response:
    state = _state(request)
    account = state.accounts.get(request.path_params["account_id"])
    if account is None:
        return error(404, "unknown account")
    out = [contact_view(account, x) for x in account.contacts.values()]
    return json_response({"account_id": account.id, "contacts": out, "total_items": len(out)})


async def list_contacts(request: Request) -> Response:
    state = _state(request)
    account = state.list_owner.get(request.path_params["list_id"])
    if account is None:
        return error(404, "unknown list")
    list_id = request.path_params["list_id"]
    out = [contact_view(account, x) for x in account.contacts.values() if list_id in x.lists]
    return json_response({"list_id": list_id, "contacts": out, "total_items": len(out)})


async def action(request: Request) -> Response:
    """A person's action on a list, firing the webhooks ActiveCampaign would."""
    state = _state(request)
    list_id = request.path_params["list_id"]
    account = state.list_owner.get(list_id)
    if account is None:
        return error(404, "unknown list")
    lst = account.lists[list_id]
    name = request.path_params["action"]
    if name not in ACTIONS:
        return error(404, f"unknown action; one of {', '.join(ACTIONS)}")
    try:
        data = await read_object(request)
    except ValueError as exc:
        return error(400, str(exc))
    email = data.get("email")
    if not isinstance(email, str) or not email.strip():
        return error(400, "email is required")
    contact = state.by_email(account, email)
    if name != "signup" and contact is None:
        return error(404, "no contact with that email")
    try:
        if name == "unsubscribe":
            # The unsubscribe link of a campaign: by the person, so `public`.
            assert contact is not None
            state.set_status(
                account,
                contact,
                lst,
                c.UNSUBSCRIBED,
                source="public",
                reason=str(data.get("reason") or ""),
            )
        elif name == "bounce":
            assert contact is not None
            contact.bounced_hard = "1"
            contact.bounced_date = state.clock.now()
            for m_list in list(contact.lists):
                state.set_status(
                    account, contact, account.lists[m_list], c.BOUNCED, source="system"
                )
        elif name == "signup":
            # A subscription form: the person's fresh consent puts them on the list.
            payload = _person_fields(data)
            contact, created, _ = state.sync_contact(account, payload, source="public")
            state.set_status(
                account,
                contact,
                lst,
                c.ACTIVE,
                source="public",
                form=str(data.get("form_id", "1")),
                sourceid=1,
            )
        elif name == "profile":
            assert contact is not None
            state.update_contact(account, contact, _person_fields(data), source="public")
        else:  # status: a test hook for the statuses only the system sets (0, 3)
            assert contact is not None
            status = data.get("status")
            if status not in (0, 1, 2, 3):
                return error(400, "status is 0, 1, 2 or 3")
            state.set_status(account, contact, lst, int(status), fire=False)
    except AcError as exc:
        return json_response(exc.body, exc.status)
    assert contact is not None
    return json_response(contact_view(account, contact))


def _person_fields(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"email": data["email"]}
    for src, dst in (("first_name", "firstName"), ("last_name", "lastName"), ("phone", "phone")):
        if src in data:
            out[dst] = data[src]
    if "new_email" in data:  # the profile page's email change
        out["email"] = data["new_email"]
    fields = data.get("fields")
    if isinstance(fields, dict):
        out["fieldValues"] = [{"field": k, "value": v} for k, v in fields.items()]
    return out


async def imports(request: Request) -> Response:
    state = _state(request)
    out = []
    for account in state.accounts.values():
        for batch in account.batches.values():
            out.append(
                {
                    "account_id": account.id,
                    "batch_id": batch.id,
                    "status": state.batch_status(batch),
                    "contacts": len(batch.contacts),
                    "success": batch.success,
                    "failure": batch.failure,
                }
            )
    return json_response({"imports": out, "total_items": len(out)})


async def deliveries(request: Request) -> Response:
    state = _state(request)
    if request.method == "DELETE":
        state.hub.clear()
        return Response(status_code=204)
    if request.query_params.get("wait"):
        await state.hub.drain()
    entries = list(state.hub.log)
    return json_response(
        {"deliveries": entries, "total_items": len(entries), "pending": state.hub.pending}
    )


routes = [
    Route("/_control", index, methods=["GET"]),
    *control_routes(),
    Route("/_control/accounts", accounts, methods=["GET", "POST"]),
    Route("/_control/accounts/{account_id}/lists", create_list, methods=["POST"]),
    Route("/_control/accounts/{account_id}/contacts", account_contacts, methods=["GET"]),
    Route("/_control/lists/{list_id}/contacts", list_contacts, methods=["GET"]),
    Route("/_control/lists/{list_id}/actions/{action}", action, methods=["POST"]),
    Route("/_control/imports", imports, methods=["GET"]),
    Route("/_control/webhook-deliveries", deliveries, methods=["GET", "DELETE"]),
]
