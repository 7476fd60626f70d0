"""The REST API under `/api` (reference §1-§5, §7.1): routes and their handlers."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.sandbox.mautic import errors, query, render
from app.sandbox.mautic import fields as F
from app.sandbox.mautic.model import MANUAL, Contact, Hook, Instance, User
from app.sandbox.mautic.state import MauticState
from app.sandbox.mautic.webhooks import TRIGGERS, private_url


@dataclass
class Call:
    """One API request as the handlers see it."""

    state: MauticState
    method: str
    path: str
    args: tuple[str, ...]
    query: dict[str, Any]
    body: Any
    user: User | None
    base: str

    @property
    def instance(self) -> Instance:
        return self.state.instance

    @property
    def params(self) -> dict[str, Any]:
        """The body as an object (`{}` when it is not one)."""
        return self.body if isinstance(self.body, dict) else {}


# A handler's answer: status, JSON-able body, extra headers.
Result = tuple[int, Any, dict[str, str]]
Handler = Callable[[Call], Awaitable[Result]]


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Result:
    return status, body, headers or {}


def php_array(items: dict[int, Any]) -> Any:
    """A PHP array with int keys as JSON: a list if the keys are 0..n-1, else an object."""
    if list(items) == list(range(len(items))):
        return list(items.values())
    return {str(k): v for k, v in items.items()}


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _paginate(items: list[Any], q: dict[str, Any], default_limit: int) -> list[Any]:
    start = max(0, _int(q.get("start"), 0))
    limit = _int(q.get("limit"), default_limit)
    if limit <= 0:
        return items  # limit=0: no LIMIT, and start is ignored (buildLimiterClauses)
    return items[start : start + limit]


# -- contacts -------------------------------------------------------------------------------


def _contact_body(call: Call, contact: Contact) -> dict[str, Any]:
    return render.contact(call.instance, contact)


async def list_contacts(call: Call) -> Result:
    inst, q = call.instance, call.query
    search = str(q.get("search") or "")
    preds = query.search_predicates(inst, search) + query.where_predicates(inst, q.get("where"))
    pool = query.indexed_candidates(inst, q.get("where"))
    candidates = inst.contacts.values() if pool is None else pool
    matched = [c for c in candidates if all(p(c) for p in preds)]
    columns: list[tuple[str, str]] = []
    order = q.get("order")
    if isinstance(order, dict | list):
        for item in order.values() if isinstance(order, dict) else order:
            if isinstance(item, dict) and item.get("col"):
                direction = str(item.get("dir") or "ASC").upper()
                columns.append((str(item["col"]), "DESC" if direction == "DESC" else "ASC"))
    if not columns and q.get("orderBy"):
        direction = "DESC" if str(q.get("orderByDir") or "ASC").upper() == "DESC" else "ASC"
        columns = [(c.strip(), direction) for c in str(q["orderBy"]).split(",") if c.strip()]
    if not columns:
        columns = [("last_active", "DESC")]  # LeadRepository::getDefaultOrder
    matched.sort(key=query.order_key(inst, columns))
    page = _paginate(matched, q, call.state.config.default_page_limit)
    minimal = str(q.get("minimal", "")).lower() in ("1", "true")
    key = repr((search, q.get("where")))
    total = inst.cached_total(key, lambda: len(matched))
    contacts = {str(c.id): render.contact(inst, c, minimal=minimal) for c in page}
    return ok({"total": str(total), "contacts": contacts})


async def get_contact(call: Call) -> Result:
    return ok({"contact": _contact_body(call, call.instance.contact(call.args[0]))})


async def new_contact(call: Call) -> Result:
    result = call.instance.create(call.params, call.user)
    body = {"contact": _contact_body(call, result.contact)}
    if result.created:
        return ok(body, 201, {"Location": f"{call.base}/api/contacts/{result.contact.id}"})
    return ok(body)


async def edit_contact(call: Call) -> Result:
    put = call.method == "PUT"
    result = call.instance.edit(call.args[0], call.params, call.user, put=put)
    body = {"contact": _contact_body(call, result.contact)}
    if result.created:
        return ok(body, 201, {"Location": f"{call.base}/api/contacts/{result.contact.id}"})
    return ok(body)


async def delete_contact(call: Call) -> Result:
    inst = call.instance
    contact = inst.contact(call.args[0])
    inst.delete(contact.id, call.user)
    return ok({"contact": render.contact(inst, contact, deleted=True)})


def _batch_items(call: Call) -> list[Any]:
    body = call.body
    if isinstance(body, dict):
        body = list(body.values())
    if not isinstance(body, list):
        raise errors.controller(400, "Request body must be an array.")
    limit = call.state.config.api_batch_max_limit
    if len(body) > limit:
        raise errors.batch_limit(limit)
    return body


def _item_error(exc: errors.ApiError) -> dict[str, Any]:
    error = dict(exc.body["errors"][0])
    if exc.status == 404:
        return {"message": error["message"], "code": 404, "type": "api"}
    error.setdefault("type", None)
    return error


async def batch_new(call: Call) -> Result:
    items = _batch_items(call)
    contacts: dict[int, Any] = {}
    codes: list[int] = []
    failures: dict[int, Any] = {}
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise errors.validation({"contact": ["This value is not valid."]})
            result = call.instance.create(item, call.user)
        except errors.ApiError as exc:
            codes.append(exc.status)
            failures[i] = _item_error(exc)
            continue
        codes.append(201 if result.created else 200)
        contacts[i] = _contact_body(call, result.contact)
    body: dict[str, Any] = {"contacts": php_array(contacts), "statusCodes": codes}
    if failures:
        body["errors"] = php_array(failures)
    return ok(body, 201)


async def batch_edit(call: Call) -> Result:
    items = _batch_items(call)
    put = call.method == "PUT"
    contacts: dict[int, Any] = {}
    codes: list[int] = []
    failures: dict[int, Any] = {}
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise errors.validation({"contact": ["This value is not valid."]})
            params = {k: v for k, v in item.items() if k != "id"}
            result = call.instance.edit(item.get("id"), params, call.user, put=put)
        except errors.ApiError as exc:
            codes.append(exc.status)
            failures[i] = _item_error(exc)
            continue
        codes.append(201 if result.created else 200)
        contacts[i] = _contact_body(call, result.contact)
    body: dict[str, Any] = {"contacts": php_array(contacts), "statusCodes": codes}
    if failures:
        body["errors"] = php_array(failures)
    return ok(body)


async def batch_delete(call: Call) -> Result:
    inst = call.instance
    raw = call.query.get("ids") or call.params.get("ids") or ""
    ids = raw if isinstance(raw, list) else str(raw).split(",")
    limit = call.state.config.api_batch_max_limit
    if len(ids) > limit:
        raise errors.batch_limit(limit)
    contacts: dict[int, Any] = {}
    failures: dict[int, Any] = {}
    for i, contact_id in enumerate(ids):
        try:
            contact = inst.contact(str(contact_id).strip())
        except errors.ApiError as exc:
            failures[i] = _item_error(exc)
            continue
        inst.delete(contact.id, call.user)
        contacts[i] = render.contact(inst, contact, deleted=True)
    body: dict[str, Any] = {"contacts": php_array(contacts)}
    if failures:
        body["errors"] = php_array(failures)
    return ok(body)


def _dnc_contact(call: Call, contact: Contact) -> dict[str, Any]:
    """Add/remove answers skip the serialization context: no `fields.all`, no nulls."""
    body: dict[str, Any] = render.strip_nulls(render.contact(call.instance, contact, webhook=True))
    return body


async def dnc_add(call: Call) -> Result:
    inst = call.instance
    contact = inst.contact(call.args[0])
    params = {**call.query, **call.params}
    reason = MANUAL
    if "reason" in params:
        raw = params["reason"]
        reason = F.php_int(raw) if F.php_numeric(raw) else 0
        if reason <= 0:
            raise errors.controller(
                400,
                "Invalid reason code given",
                ["Reason code needs to be an integer and higher than 0."],
            )
    channel_id = params.get("channelId")
    inst.dnc(
        contact,
        call.args[1],
        add=True,
        reason=reason,
        comments=str(params.get("comments") or ""),
        channel_id=F.php_int(channel_id) if F.php_numeric(channel_id) else None,
        actor=call.user,
    )
    return ok({"contact": _dnc_contact(call, contact)})


async def dnc_remove(call: Call) -> Result:
    inst = call.instance
    contact = inst.contact(call.args[0])
    found = inst.dnc(contact, call.args[1], add=False, actor=call.user)
    return ok({"recordFound": found, "contact": _dnc_contact(call, contact)})


async def points(call: Call) -> Result:
    inst = call.instance
    contact = inst.contact(call.args[0])
    delta = int(call.args[2]) * (1 if call.args[1] == "plus" else -1)
    plan = {"values": {"points": contact.points + delta}}
    inst.save_plan(contact, plan, call.user)
    return ok({"success": 1})


async def contact_segments(call: Call) -> Result:
    inst = call.instance
    contact = inst.contact(call.args[0])
    lists = {}
    for s in inst.segments.values():
        m = s.members.get(contact.id)
        if m is not None:
            lists[str(s.id)] = {
                "id": s.id,
                "name": s.name,
                "alias": s.alias,
                "dateAdded": render.iso(m.date_added),
                "manuallyAdded": m.manually_added,
                "manuallyRemoved": m.manually_removed,
            }
    return ok({"total": len(lists), "lists": lists or []})


async def contact_campaigns(call: Call) -> Result:
    inst = call.instance
    contact = inst.contact(call.args[0])
    out = {}
    for camp in inst.campaigns.values():
        m = camp.members.get(contact.id)
        if m is not None:
            out[str(camp.id)] = {
                "id": camp.id,
                "name": camp.name,
                "dateAdded": render.iso(m.date_added),
                "manuallyRemoved": m.manually_removed,
                "manuallyAdded": m.manually_added,
                "listMembership": [],
            }
    return ok({"total": len(out), "campaigns": out or []})


async def users_self(call: Call) -> Result:
    user = call.user or call.state.admin
    body = render.user(user) or {}
    body.update(
        {
            "email": f"{user.username}@example.com",
            "role": {"id": 1, "name": "Administrator", "isAdmin": True},
        }
    )
    return ok(body)


# -- segments -------------------------------------------------------------------------------


def _named_list(items: list[Any], q: dict[str, Any], name: Callable[[Any], str]) -> list[Any]:
    """Other entities' lists: `search` is a substring of the name; `published=1` filters."""
    search = str(q.get("search") or "").lower()
    if search:
        items = [i for i in items if search in name(i).lower()]
    if str(q.get("published", "")).lower() in ("1", "true"):
        items = [i for i in items if getattr(i, "is_published", True)]
    return items


async def list_segments(call: Call) -> Result:
    items = _named_list(list(call.instance.segments.values()), call.query, lambda s: s.name)
    page = _paginate(items, call.query, call.state.config.default_page_limit)
    return ok({"total": len(items), "lists": render.keyed([render.segment(s) for s in page]) or []})


async def get_segment(call: Call) -> Result:
    return ok({"list": render.segment(call.instance.segment(call.args[0]))})


async def new_segment(call: Call) -> Result:
    segment = call.instance.save_segment(None, call.params, call.user, put=False)
    return ok({"list": render.segment(segment)}, 201)


async def edit_segment(call: Call) -> Result:
    inst = call.instance
    segment = inst.segment(call.args[0])
    inst.save_segment(segment, call.params, call.user, put=call.method == "PUT")
    return ok({"list": render.segment(segment)})


async def delete_segment(call: Call) -> Result:
    inst = call.instance
    segment = inst.segment(call.args[0])
    del inst.segments[segment.id]
    body = render.segment(segment)
    body["id"] = None
    return ok({"list": body})


def _member_contact(call: Call, contact_id: str) -> Contact:
    try:
        return call.instance.contact(contact_id)
    except errors.ApiError:
        raise errors.controller(404, call.state.config.contact_not_found_message) from None


async def segment_contact(call: Call) -> Result:
    inst = call.instance
    segment = inst.segment(call.args[0])
    contact = _member_contact(call, call.args[1])
    inst.segment_member(segment, contact, add=call.args[2] == "add")
    return ok({"success": 1})


async def segment_contacts_add(call: Call) -> Result:
    inst = call.instance
    segment = inst.segment(call.args[0])
    ids = call.params.get("ids")
    if isinstance(ids, dict):
        ids = list(ids.values())
    if not isinstance(ids, list) or not ids:
        raise errors.controller(400, "Contact ids are missing.")
    details = {}
    for contact_id in ids:
        contact = inst.contacts.get(_int(contact_id, -1))
        if contact is None:
            details[str(contact_id)] = {"success": False}
            continue
        inst.segment_member(segment, contact, add=True)
        details[str(contact_id)] = {"success": True}
    return ok({"success": 1, "details": details})


# -- tags -----------------------------------------------------------------------------------


async def list_tags(call: Call) -> Result:
    items = _named_list(list(call.instance.tags.values()), call.query, lambda t: t.tag)
    page = _paginate(items, call.query, call.state.config.default_page_limit)
    return ok({"total": len(items), "tags": [render.tag(t) for t in page]})


def _tag_by_id(call: Call) -> Any:
    for t in call.instance.tags.values():
        if str(t.id) == call.args[0]:
            return t
    raise errors.not_found()


async def get_tag(call: Call) -> Result:
    return ok({"tag": render.tag(_tag_by_id(call))})


async def new_tag(call: Call) -> Result:
    name = call.params.get("tag")
    if F.is_blank(name) or not isinstance(name, str):
        raise errors.validation({"tag": ["A tag is required."]})
    existed = name.strip().lower() in call.instance.tags
    t = call.instance.tag(name.strip())
    if "description" in call.params:
        t.description = call.params.get("description")
    return ok({"tag": render.tag(t)}, 200 if existed else 201)


async def edit_tag(call: Call) -> Result:
    inst = call.instance
    t = _tag_by_id(call)
    name = call.params.get("tag")
    if isinstance(name, str) and name.strip() and name.strip() != t.tag:
        old = t.tag
        del inst.tags[old.lower()]
        t.tag = name.strip()
        inst.tags[t.tag.lower()] = t
        for c in inst.contacts.values():
            c.tags = [t.tag if x == old else x for x in c.tags]
    if "description" in call.params:
        t.description = call.params.get("description")
    return ok({"tag": render.tag(t)})


async def delete_tag(call: Call) -> Result:
    inst = call.instance
    t = _tag_by_id(call)
    del inst.tags[t.tag.lower()]
    for c in inst.contacts.values():
        c.tags = [x for x in c.tags if x.lower() != t.tag.lower()]
    body = render.tag(t)
    body["id"] = None
    return ok({"tag": body})


# -- fields ---------------------------------------------------------------------------------


async def list_fields(call: Call) -> Result:
    fields = sorted(call.instance.fields.values(), key=lambda f: (f.order, f.id))
    items = _named_list(fields, call.query, lambda f: f.label + " " + f.alias)
    page = _paginate(items, call.query, call.state.config.default_page_limit)
    return ok({"total": len(items), "fields": [render.field(f) for f in page]})


async def get_field(call: Call) -> Result:
    return ok({"field": render.field(call.instance.field_by_id(call.args[0]))})


async def new_field(call: Call) -> Result:
    f = call.instance.save_field(None, call.params)
    # create_custom_field_in_background: the column is queued and the API answers 202.
    status = 202 if call.state.config.create_custom_field_in_background else 201
    return ok({"field": render.field(f)}, status)


async def edit_field(call: Call) -> Result:
    inst = call.instance
    f = inst.save_field(inst.field_by_id(call.args[0]), call.params)
    return ok({"field": render.field(f)})


async def delete_field(call: Call) -> Result:
    inst = call.instance
    f = inst.field_by_id(call.args[0])
    inst.delete_field(f)
    body = render.field(f)
    body["id"] = None
    return ok({"field": body})


# -- campaigns ------------------------------------------------------------------------------


async def list_campaigns(call: Call) -> Result:
    items = _named_list(list(call.instance.campaigns.values()), call.query, lambda c: c.name)
    page = _paginate(items, call.query, call.state.config.default_page_limit)
    body = render.keyed([render.campaign(c) for c in page])
    return ok({"total": len(items), "campaigns": body or []})


async def get_campaign(call: Call) -> Result:
    return ok({"campaign": render.campaign(call.instance.campaign(call.args[0]))})


async def new_campaign(call: Call) -> Result:
    p = call.params
    name = p.get("name")
    if F.is_blank(name):
        raise errors.validation({"name": ["A name is required."]})
    camp = call.instance.create_campaign(
        str(name),
        description=p.get("description"),
        is_published=p.get("isPublished", True) in (True, 1, "1", "true"),
        allow_restart=p.get("allowRestart", False) in (True, 1, "1", "true"),
        actor=call.user,
    )
    return ok({"campaign": render.campaign(camp)}, 201)


async def edit_campaign(call: Call) -> Result:
    camp = call.instance.campaign(call.args[0])
    p = call.params
    if not F.is_blank(p.get("name")):
        camp.name = str(p["name"])
    if "description" in p:
        camp.description = p.get("description")
    if "isPublished" in p:
        camp.is_published = p["isPublished"] in (True, 1, "1", "true")
    if "allowRestart" in p:
        camp.allow_restart = p["allowRestart"] in (True, 1, "1", "true")
    camp.date_modified = call.state.now()
    return ok({"campaign": render.campaign(camp)})


async def delete_campaign(call: Call) -> Result:
    inst = call.instance
    camp = inst.campaign(call.args[0])
    del inst.campaigns[camp.id]
    body = render.campaign(camp)
    body["id"] = None
    return ok({"campaign": body})


async def campaign_contact(call: Call) -> Result:
    inst = call.instance
    camp = inst.campaign(call.args[0])
    contact = inst.contact(call.args[1])
    inst.campaign_member(camp, contact, add=call.args[2] == "add")
    return ok({"success": 1})


async def campaign_contacts(call: Call) -> Result:
    camp = call.instance.campaign(call.args[0])
    strings = call.state.config.campaign_contacts_string_ids

    def num(value: int) -> Any:
        return str(value) if strings else value

    rows = [
        {
            "campaign_id": num(camp.id),
            "lead_id": num(contact_id),
            "date_added": query.sql_date(m.date_added),
            "manually_removed": num(int(m.manually_removed)),
            "manually_added": num(int(m.manually_added)),
            "date_last_exited": None,
            "rotation": num(1),
        }
        for contact_id, m in camp.members.items()
    ]
    page = _paginate(rows, call.query, call.state.config.default_page_limit)
    return ok({"total": num(len(rows)), "contacts": page})


# -- companies ------------------------------------------------------------------------------


def _company(call: Call) -> Any:
    found = call.instance.companies.get(_int(call.args[0], -1))
    if found is None:
        raise errors.not_found()
    return found


async def list_companies(call: Call) -> Result:
    items = _named_list(list(call.instance.companies.values()), call.query, lambda c: c.name)
    page = _paginate(items, call.query, call.state.config.default_page_limit)
    body = render.keyed([render.company(c) for c in page])
    return ok({"total": len(items), "companies": body or []})


async def get_company(call: Call) -> Result:
    return ok({"company": render.company(_company(call))})


async def new_company(call: Call) -> Result:
    name = call.params.get("companyname")
    if F.is_blank(name):
        raise errors.validation({"companyname": ["A name is required."]})
    company = call.instance.company_named(str(name), call.user)
    return ok({"company": render.company(company)}, 201)


async def edit_company(call: Call) -> Result:
    company = _company(call)
    name = call.params.get("companyname")
    if not F.is_blank(name):
        company.name = str(name)
    return ok({"company": render.company(company)})


async def delete_company(call: Call) -> Result:
    inst = call.instance
    company = _company(call)
    del inst.companies[company.id]
    body = render.company(company)
    body["id"] = None
    return ok({"company": body})


async def company_contact(call: Call) -> Result:
    inst = call.instance
    company = _company(call)
    contact = inst.contact(call.args[1])
    inst.company_member(company, contact, add=call.args[2] == "add")
    return ok({"success": 1})


# -- webhooks -------------------------------------------------------------------------------


def _hook(call: Call) -> Hook:
    hook = call.instance.hooks.get(_int(call.args[0], -1))
    if hook is None:
        raise errors.not_found()
    return hook


def _triggers(value: Any) -> list[str]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise errors.validation({"triggers": ["This value is not valid."]})
    unknown = [t for t in value if t not in TRIGGERS]
    if unknown:
        raise errors.validation({"triggers": ["This value is not valid."]})
    return [str(t) for t in value]


def _hook_values(call: Call, hook: Hook | None) -> dict[str, Any]:
    p = call.params
    problems: dict[str, list[str]] = {}
    name = p.get("name", hook.name if hook else None)
    if F.is_blank(name):
        problems["name"] = ["A name is required."]
    url = p.get("webhookUrl", hook.url if hook else None)
    if F.is_blank(url) or not re.match(r"^https?://[^\s/]+", str(url)):
        problems["webhookUrl"] = ["This value is not a valid URL."]
    elif call.state.config.block_private_webhook_urls and private_url(str(url)):
        problems["webhookUrl"] = ["The webhook URL points to a private address."]
    direction = p.get("eventsOrderbyDir", hook.events_orderby_dir if hook else None)
    if direction not in (None, "", "ASC", "DESC"):
        problems["eventsOrderbyDir"] = ["This value is not valid."]
    if problems:
        raise errors.validation(problems)
    triggers = _triggers(p["triggers"]) if "triggers" in p else None
    return {
        "name": str(name),
        "url": str(url),
        "direction": direction or None,
        "triggers": triggers,
    }


async def list_hooks(call: Call) -> Result:
    items = _named_list(list(call.instance.hooks.values()), call.query, lambda h: h.name)
    page = _paginate(items, call.query, call.state.config.default_page_limit)
    return ok({"total": len(items), "hooks": render.keyed([render.hook(h) for h in page]) or []})


async def hook_triggers(call: Call) -> Result:
    return ok({"triggers": {k: {"label": v[0], "description": v[1]} for k, v in TRIGGERS.items()}})


async def get_hook(call: Call) -> Result:
    return ok({"hook": render.hook(_hook(call))})


async def new_hook(call: Call) -> Result:
    values = _hook_values(call, None)
    p = call.params
    secret = p.get("secret")
    inst = call.instance
    hook = Hook(
        id=inst.next_id("hook"),
        name=values["name"],
        url=values["url"],
        # A secret is generated when none is given (EncryptionHelper::generateKey).
        secret=str(secret) if not F.is_blank(secret) else secrets.token_hex(16),
        triggers=values["triggers"] or [],
        description=p.get("description"),
        events_orderby_dir=values["direction"],
        is_published=p.get("isPublished", True) in (True, 1, "1", "true"),
        date_added=call.state.now(),
        date_modified=None,
        created_by=call.user,
    )
    inst.hooks[hook.id] = hook
    return ok({"hook": render.hook(hook)}, 201)


async def edit_hook(call: Call) -> Result:
    hook = _hook(call)
    values = _hook_values(call, hook)
    p = call.params
    hook.name, hook.url, hook.events_orderby_dir = (
        values["name"],
        values["url"],
        values["direction"],
    )
    if values["triggers"] is not None:
        if call.method == "PUT":
            hook.triggers = values["triggers"]  # PUT replaces the trigger list
        else:
            hook.triggers += [t for t in values["triggers"] if t not in hook.triggers]
    if not F.is_blank(p.get("secret")):
        hook.secret = str(p["secret"])
    if "description" in p:
        hook.description = p.get("description")
    if "isPublished" in p:
        hook.is_published = p["isPublished"] in (True, 1, "1", "true")
        if hook.is_published:
            hook.stop_reason = None
    hook.date_modified, hook.modified_by = call.state.now(), call.user
    return ok({"hook": render.hook(hook)})


async def delete_hook(call: Call) -> Result:
    inst = call.instance
    hook = _hook(call)
    del inst.hooks[hook.id]
    for row_id in [r.id for r in inst.queue.values() if r.hook_id == hook.id]:
        del inst.queue[row_id]
    body = render.hook(hook)
    body["id"] = None
    return ok({"hook": body})


# -- the route table ------------------------------------------------------------------------

ID = r"(\d+)"
GET, POST, PUT, PATCH, DELETE = "GET", "POST", "PUT", "PATCH", "DELETE"
EDIT = (PUT, PATCH)


def _standard(
    base: str, handlers: tuple[Handler, Handler, Handler, Handler, Handler]
) -> list[tuple[tuple[str, ...], str, Handler]]:
    """The five standard entity routes (CoreSubscriber::onBuildRoute) of `/api/{base}`."""
    lst, get, new, edit, delete = handlers
    return [
        ((GET,), rf"/api/{base}", lst),
        ((POST,), rf"/api/{base}/new", new),
        ((GET,), rf"/api/{base}/{ID}", get),
        (EDIT, rf"/api/{base}/{ID}/edit", edit),
        ((DELETE,), rf"/api/{base}/{ID}/delete", delete),
    ]


ROUTES: list[tuple[tuple[str, ...], str, Handler]] = [
    ((GET,), r"/api/contacts", list_contacts),
    ((POST,), r"/api/contacts/new", new_contact),
    ((POST,), r"/api/contacts/batch/new", batch_new),
    (EDIT, r"/api/contacts/batch/edit", batch_edit),
    ((DELETE,), r"/api/contacts/batch/delete", batch_delete),
    ((GET,), rf"/api/contacts/{ID}", get_contact),
    (EDIT, rf"/api/contacts/{ID}/edit", edit_contact),
    ((DELETE,), rf"/api/contacts/{ID}/delete", delete_contact),
    ((POST,), rf"/api/contacts/{ID}/dnc/([^/]+)/add", dnc_add),
    ((POST,), rf"/api/contacts/{ID}/dnc/([^/]+)/remove", dnc_remove),
    ((POST,), rf"/api/contacts/{ID}/points/(plus|minus)/{ID}", points),
    ((GET,), rf"/api/contacts/{ID}/segments", contact_segments),
    ((GET,), rf"/api/contacts/{ID}/campaigns", contact_campaigns),
    ((GET,), r"/api/users/self", users_self),
    *_standard("segments", (list_segments, get_segment, new_segment, edit_segment, delete_segment)),
    ((POST,), rf"/api/segments/{ID}/contact/{ID}/(add|remove)", segment_contact),
    ((POST,), rf"/api/segments/{ID}/contacts/add", segment_contacts_add),
    *_standard("tags", (list_tags, get_tag, new_tag, edit_tag, delete_tag)),
    *_standard("fields/contact", (list_fields, get_field, new_field, edit_field, delete_field)),
    *_standard(
        "campaigns",
        (list_campaigns, get_campaign, new_campaign, edit_campaign, delete_campaign),
    ),
    ((POST,), rf"/api/campaigns/{ID}/contact/{ID}/(add|remove)", campaign_contact),
    ((GET,), rf"/api/campaigns/{ID}/contacts", campaign_contacts),
    *_standard(
        "companies", (list_companies, get_company, new_company, edit_company, delete_company)
    ),
    ((POST,), rf"/api/companies/{ID}/contact/{ID}/(add|remove)", company_contact),
    ((GET,), r"/api/hooks/triggers", hook_triggers),
    *_standard("hooks", (list_hooks, get_hook, new_hook, edit_hook, delete_hook)),
]
_COMPILED = [
    (methods, re.compile(pattern + r"/?$"), handler) for methods, pattern, handler in ROUTES
]


def match(method: str, path: str) -> tuple[Handler, tuple[str, ...]]:
    """The handler for `method path`; 404/405 as Symfony's router answers."""
    allowed: list[str] = []
    for methods, rx, handler in _COMPILED:
        m = rx.match(path)
        if m is None:
            continue
        if method in methods:
            return handler, m.groups()
        allowed.extend(methods)
    if allowed:
        raise errors.listener(
            405,
            f'No route found for "{method} {path}": '
            f"Method Not Allowed (Allow: {', '.join(allowed)})",
            None,
        )
    raise errors.route_not_found(method, path)
