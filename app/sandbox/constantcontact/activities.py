"""Bulk activities (ref §3): queued, progressing over time, effects applied on completion."""

from __future__ import annotations

from typing import Any

import orjson

from app.sandbox.constantcontact import clock, contacts, errors
from app.sandbox.constantcontact.state import Account, Activity, Contact, SandboxState, new_id

KINDS = (
    "contacts_json_import",
    "add_list_memberships",
    "remove_list_memberships",
    "contact_delete",
    "contacts_taggings_add",
    "contacts_taggings_remove",
    "contacts_tags_delete",
    "list_delete",
    "custom_fields_delete",
)
IMPORT_CORE = ("first_name", "last_name", "job_title", "company_name")
IMPORT_PHONES = {
    "phone": "other",
    "home_phone": "home",
    "work_phone": "work",
    "mobile_phone": "mobile",
    "other_phone": "other",
}
CORE_COLUMNS = frozenset((*IMPORT_CORE, "birthday_month", "birthday_day", "anniversary"))
ADDRESS_PARTS = {
    "street": "street",
    "city": "city",
    "state": "state",
    "zip": "postal_code",
    "country": "country",
}
ADDRESS_COLUMNS = frozenset(
    prefix + part for prefix in ("", "home_", "work_", "other_") for part in ADDRESS_PARTS
)


def _ids(body: dict[str, Any], key: str, limit: int, *, required: bool = False) -> list[str]:
    raw = body.get(key)
    if raw is None:
        if required:
            raise errors.validation(f"{key} is missing")
        return []
    if not isinstance(raw, list) or not all(contacts.is_uuid(x) for x in raw):
        raise errors.validation(f"{key} does not have a valid value")
    if len(raw) > limit:
        raise errors.validation(f"{key} exceeds the maximum of {limit} items")
    if required and not raw:
        raise errors.validation(f"{key} is missing")
    return list(dict.fromkeys(raw))


def _known(ids: list[str], table: dict[str, Any], what: str) -> None:
    for i in ids:
        if i not in table:
            raise errors.validation(f"{what} {i} does not exist")


def _truncate_import(rows: list[Any], max_bytes: int) -> list[Any]:
    """Keep the rows inside the first `max_bytes` of the body; drop the rest silently."""
    total = len(b'{"import_data":[]}')
    for index, row in enumerate(rows):
        total += len(orjson.dumps(row)) + 1
        if total > max_bytes:
            return rows[:index]
    return rows


def _source(body: dict[str, Any], account: Account) -> dict[str, Any]:
    source = body.get("source")
    if not isinstance(source, dict) or not source:
        raise errors.validation("source is missing")
    keys = [k for k in source if source[k] not in (None, [], False)]
    if len(keys) != 1:
        raise errors.validation("source must have exactly one property")
    key = keys[0]
    if key == "contact_ids":
        _ids(source, key, 500)
    elif key == "list_ids":
        _known(_ids(source, key, 50), account.lists, "list_id")
    elif key == "tag_ids":
        _known(_ids(source, key, 50), account.tags, "tag_id")
    elif key in ("all_active_contacts", "new_subscriber"):
        if source[key] is not True:
            raise errors.validation(f"{key} does not have a valid value")
    else:
        raise errors.validation(f"source.{key} is not supported by this sandbox")
    return {key: source[key]}


def validate(
    state: SandboxState, account: Account, kind: str, body: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """A normalised payload and its item count; 400 on a bad body (nothing queued)."""
    if kind == "contacts_json_import":
        rows = body.get("import_data")
        if not isinstance(rows, list) or not rows:
            raise errors.validation("import_data is missing")
        if len(rows) > state.config.import_max_contacts:
            raise errors.validation(
                f"import_data exceeds the maximum of {state.config.import_max_contacts} contacts"
            )
        list_ids = _ids(body, "list_ids", 50, required=True)
        _known(list_ids, account.lists, "list_id")
        rows = _truncate_import(rows, state.config.import_max_bytes)
        return {"import_data": rows, "list_ids": list_ids}, len(rows)
    if kind in ("add_list_memberships", "remove_list_memberships"):
        list_ids = _ids(body, "list_ids", 50, required=True)
        _known(list_ids, account.lists, "list_id")
        exclude = body.get("exclude") or {}
        excluded = _ids(exclude, "contact_ids", 500) if isinstance(exclude, dict) else []
        source = _source(body, account)
        return {"source": source, "exclude": excluded, "list_ids": list_ids}, 0
    if kind in ("contacts_taggings_add", "contacts_taggings_remove"):
        tag_ids = _ids(body, "tag_ids", 50, required=True)
        _known(tag_ids, account.tags, "tag_id")
        exclude = body.get("exclude") or {}
        excluded = _ids(exclude, "contact_ids", 500) if isinstance(exclude, dict) else []
        return {"source": _source(body, account), "exclude": excluded, "tag_ids": tag_ids}, 0
    if kind == "contact_delete":
        contact_ids = _ids(body, "contact_ids", 500)
        list_ids = _ids(body, "list_ids", 50)
        if bool(contact_ids) == bool(list_ids):
            raise errors.validation("Specify either contact_ids or list_ids")
        _known(list_ids, account.lists, "list_id")
        return {"contact_ids": contact_ids, "list_ids": list_ids}, len(contact_ids)
    if kind == "contacts_tags_delete":
        tag_ids = _ids(body, "tag_ids", 500, required=True)
        return {"tag_ids": tag_ids}, len(tag_ids)
    if kind == "list_delete":
        list_ids = _ids(body, "list_ids", 100, required=True)
        return {"list_ids": list_ids}, len(list_ids)
    if kind == "custom_fields_delete":
        field_ids = _ids(body, "custom_field_ids", 100, required=True)
        return {"custom_field_ids": field_ids}, len(field_ids)
    raise errors.not_found()  # pragma: no cover - routes only pass known kinds


def queue(
    state: SandboxState, account: Account, kind: str, payload: dict[str, Any], items: int
) -> Activity:
    """Queue an activity (429 past `activity_queue_limit` queued ones)."""
    advance(state, account)
    if len(account.pending_activities) >= state.config.activity_queue_limit:
        raise errors.queue_full(state.config.activity_queue_limit)
    now = state.now()
    duration = (
        state.config.activity_duration_ms + state.config.activity_per_item_ms * max(items, 1)
    ) / 1000
    start = max(
        now, account.pending_activities[-1].completes_at if account.pending_activities else now
    )
    activity = Activity(new_id(), kind, payload, items, now, start + duration, updated_at=now)
    activity.status = _initial_status(kind, items)
    account.activities[activity.activity_id] = activity
    account.pending_activities.append(activity)
    return activity


def _initial_status(kind: str, items: int) -> dict[str, int]:
    if kind == "contacts_json_import":
        return {
            "items_total_count": items,
            "items_completed_count": 0,
            "person_count": 0,
            "error_count": 0,
            "correctable_count": 0,
            "cannot_add_to_list_count": 0,
        }
    status = {"items_total_count": items, "items_completed_count": 0}
    if kind in ("add_list_memberships", "remove_list_memberships", "contact_delete"):
        status["list_count"] = 0
    return status


def advance(state: SandboxState, account: Account) -> None:
    """Complete every activity whose time has come, in order (called on each request)."""
    now = state.now()
    queue_ = account.pending_activities
    while queue_ and queue_[0].completes_at <= now:
        activity = queue_.popleft()
        activity.started_at = activity.started_at or activity.created_at
        _apply(state, account, activity)
        activity.state = "completed"
        activity.completed_at = activity.completes_at
        activity.updated_at = activity.completes_at
    for activity in queue_:
        if activity.started_at is None and now >= activity.created_at:
            activity.started_at = now
        if activity.started_at is not None:
            activity.state = "processing"
            activity.updated_at = now


def percent(state: SandboxState, activity: Activity) -> int:
    if activity.state == "completed":
        return 100
    if activity.state == "initialized":
        return 0
    span = activity.completes_at - activity.created_at
    done = (state.now() - activity.created_at) / span if span > 0 else 1
    return max(1, min(99, int(done * 100)))


def render(state: SandboxState, activity: Activity) -> dict[str, Any]:
    out: dict[str, Any] = {
        "activity_id": activity.activity_id,
        "state": activity.state,
        "created_at": clock.iso(activity.created_at),
        "updated_at": clock.iso(activity.updated_at or activity.created_at),
    }
    if activity.started_at is not None:
        out["started_at"] = clock.iso(activity.started_at)
    if activity.completed_at is not None:
        out["completed_at"] = clock.iso(activity.completed_at)
    out["percent_done"] = percent(state, activity)
    out["activity_errors"] = list(activity.activity_errors)
    out["status"] = dict(activity.status)
    links: dict[str, Any] = {"self": {"href": f"/v3/activities/{activity.activity_id}"}}
    if activity.kind in ("contacts_taggings_add", "contacts_taggings_remove"):
        links["results"] = {"href": f"/v3/activities/{activity.activity_id}/results"}
    out["_links"] = links
    return out


# -- effects ---------------------------------------------------------------------------------


def _selected(account: Account, payload: dict[str, Any]) -> list[Contact]:
    source = payload["source"]
    excluded = set(payload.get("exclude") or [])
    key, value = next(iter(source.items()))
    pool = list(account.contacts.values())
    if key == "contact_ids":
        wanted = set(value)
        picked = [k for k in pool if k.contact_id in wanted]
    elif key == "list_ids":
        wanted = set(value)
        picked = [
            k for k in pool if k.deleted_at is None and not wanted.isdisjoint(k.list_memberships)
        ]
    elif key == "tag_ids":
        wanted = set(value)
        picked = [k for k in pool if k.deleted_at is None and not wanted.isdisjoint(k.taggings)]
    elif key == "all_active_contacts":
        picked = [
            k for k in pool if k.deleted_at is None and k.permission in ("explicit", "implicit")
        ]
    else:  # new_subscriber: nobody is "new" in the sandbox
        picked = []
    return [k for k in picked if k.contact_id not in excluded]


def _apply(state: SandboxState, account: Account, activity: Activity) -> None:
    kind, payload, now = activity.kind, activity.payload, activity.completes_at
    status = activity.status
    if kind == "contacts_json_import":
        _import(state, account, activity)
        return
    if kind in ("add_list_memberships", "remove_list_memberships"):
        picked = _selected(account, payload)
        for contact in picked:
            if kind == "add_list_memberships":
                changed = False
                for list_id in payload["list_ids"]:
                    if (
                        list_id not in contact.list_memberships
                        and len(contact.list_memberships) < 50
                    ):
                        contact.list_memberships.append(list_id)
                        changed = True
                if contact.deleted_at is not None and contact.list_memberships:
                    contacts.revive(contact)  # adding a deleted contact to a list un-deletes it
                    changed = True
            else:
                before = len(contact.list_memberships)
                contact.list_memberships = [
                    x for x in contact.list_memberships if x not in payload["list_ids"]
                ]
                changed = len(contact.list_memberships) != before
            if changed:
                contact.updated_at = now
        status.update(
            items_total_count=len(picked),
            items_completed_count=len(picked),
            list_count=len(payload["list_ids"]),
        )
        return
    if kind in ("contacts_taggings_add", "contacts_taggings_remove"):
        picked = _selected(account, payload)
        for contact in picked:
            if kind == "contacts_taggings_add":
                for tag_id in payload["tag_ids"]:
                    if tag_id not in contact.taggings and len(contact.taggings) < 50:
                        contact.taggings.append(tag_id)
            else:
                contact.taggings = [t for t in contact.taggings if t not in payload["tag_ids"]]
            contact.updated_at = now
        status.update(items_total_count=len(picked), items_completed_count=len(picked))
        return
    if kind == "contact_delete":
        if payload["contact_ids"]:
            picked = [account.contacts[i] for i in payload["contact_ids"] if i in account.contacts]
            missing = [i for i in payload["contact_ids"] if i not in account.contacts]
            activity.activity_errors.extend(f"Contact {i} was not found" for i in missing)
        else:
            wanted = set(payload["list_ids"])
            picked = [
                k
                for k in account.contacts.values()
                if k.deleted_at is None and not wanted.isdisjoint(k.list_memberships)
            ]
        for contact in picked:
            contacts.delete(state, contact)
            contact.deleted_at = now
        status.update(
            items_total_count=len(picked),
            items_completed_count=len(picked),
            list_count=len(payload["list_ids"]),
        )
        return
    if kind == "contacts_tags_delete":
        doomed = set(payload["tag_ids"])
        for contact in account.contacts.values():
            if not doomed.isdisjoint(contact.taggings):
                contact.taggings = [t for t in contact.taggings if t not in doomed]
        for tag_id in doomed:
            account.tags.pop(tag_id, None)
        status.update(items_completed_count=len(doomed))
        return
    if kind == "list_delete":
        doomed = set(payload["list_ids"])
        for contact in account.contacts.values():
            if not doomed.isdisjoint(contact.list_memberships):
                contact.list_memberships = [x for x in contact.list_memberships if x not in doomed]
        for list_id in doomed:
            account.lists.pop(list_id, None)
        status.update(items_completed_count=len(doomed))
        return
    if kind == "custom_fields_delete":
        doomed = set(payload["custom_field_ids"])
        for contact in account.contacts.values():
            contact.custom_fields = [
                f for f in contact.custom_fields if f["custom_field_id"] not in doomed
            ]
        for field_id in doomed:
            account.custom_fields.pop(field_id, None)
        status.update(items_completed_count=len(doomed))


def _import(state: SandboxState, account: Account, activity: Activity) -> None:
    """New rows become implicit (opt_in_source Account); unsubscribed people stay off lists."""
    now = activity.completes_at
    status = activity.status
    list_ids = [x for x in activity.payload["list_ids"] if x in account.lists]
    by_name = {f.name: f for f in account.custom_fields.values()}
    for number, row in enumerate(activity.payload["import_data"], start=1):
        status["items_completed_count"] += 1
        if not isinstance(row, dict):
            status["error_count"] += 1
            activity.activity_errors.append(f"Row {number}: not an object")
            continue
        has_address = not ADDRESS_COLUMNS.isdisjoint(row)
        try:
            email = contacts.valid_email(row.get("email"), 50, key="email")
            core = contacts.parse_core({k: row[k] for k in CORE_COLUMNS.intersection(row)})
        except errors.ApiError as exc:
            status["error_count"] += 1
            activity.activity_errors.append(f"Row {number}: {exc.message}")
            continue
        key = state.email_key(email)
        contact = account.by_email.get(key)
        if contact is None:
            contact = Contact(new_id(), email, "implicit", now, now, "Account", "Account", now, now)
            contact.opt_in_source = "Account"
            contact.opt_in_date = now
            account.add_contact(contact, key)
        for name in IMPORT_CORE:
            value = getattr(core, name)
            if value is not None:
                setattr(contact, name, value)
        if core.birthday_month is not None:
            contact.birthday_month, contact.birthday_day = core.birthday_month, core.birthday_day
        if core.anniversary is not None:
            contact.anniversary = core.anniversary
        for column, kind in IMPORT_PHONES.items():
            number_ = row.get(column)
            if (
                isinstance(number_, str)
                and number_
                and len(contact.phone_numbers) < 3
                and all(p["phone_number"] != number_ for p in contact.phone_numbers)
            ):
                contact.phone_numbers.extend(
                    contacts.parse_phones(
                        [{"phone_number": number_[:25], "kind": kind}], now, "Account"
                    )
                )
        for prefix, kind in (
            ("", "home"),
            ("home_", "home"),
            ("work_", "work"),
            ("other_", "other"),
        ):
            if not has_address:
                break
            parts = {
                ADDRESS_PARTS[p]: row[prefix + p] for p in ADDRESS_PARTS if row.get(prefix + p)
            }
            if parts:
                address = contacts.parse_address({"kind": kind, **parts}, now)
                kept = [a for a in contact.street_addresses if a["kind"] != kind]
                contact.street_addresses = [*kept, address][-3:]
        fields = {f["custom_field_id"]: f for f in contact.custom_fields}
        for column, value in row.items():
            if column.startswith("cf:"):
                field = by_name.get(column[3:])
                if field is None:
                    activity.activity_errors.append(f"Row {number}: unknown custom field {column}")
                    continue
                fields[field.custom_field_id] = {
                    "custom_field_id": field.custom_field_id,
                    "value": str(value)[:255],
                }
        contact.custom_fields = list(fields.values())[:25]
        if contact.permission == "unsubscribed":
            status["cannot_add_to_list_count"] += 1
        else:
            for list_id in list_ids:
                if list_id not in contact.list_memberships and len(contact.list_memberships) < 50:
                    contact.list_memberships.append(list_id)
            if contact.deleted_at is not None:
                contacts.revive(contact)
        contact.updated_at = now
        status["person_count"] += 1
