"""Contacts: validation, the state machine of reference §1.10, rendering, the list query."""

from __future__ import annotations

import base64
import binascii
import bisect
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import parse_qsl, urlencode

from app.sandbox.constantcontact import clock, errors
from app.sandbox.constantcontact import constants as c
from app.sandbox.constantcontact.errors import ApiError
from app.sandbox.constantcontact.state import Account, Contact, SandboxState, new_id

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
INCLUDE_ALL = (
    "custom_fields",
    "list_memberships",
    "phone_numbers",
    "street_addresses",
    "taggings",
    "notes",
)
CORE_STRINGS = ("first_name", "last_name", "job_title", "company_name")
PHONE_KINDS = ("home", "work", "mobile", "other")
ADDRESS_KINDS = ("home", "work", "other")
ANNIVERSARY_FORMATS = (
    re.compile(r"^(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})$"),
    re.compile(r"^(?P<y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})$"),
    re.compile(r"^(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})$"),
    re.compile(r"^(?P<m>\d{1,2})-(?P<d>\d{1,2})-(?P<y>\d{4})$"),
)


# -- validation ------------------------------------------------------------------------------


def is_uuid(text: Any) -> bool:
    if not isinstance(text, str) or len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _string(body: dict[str, Any], key: str, limit: int, *, name: str | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    label = name or key
    if not isinstance(value, str):
        raise errors.validation(f"{label} does not have a valid value")
    if len(value) > limit:
        raise errors.validation(f"{label} exceeds the maximum length of {limit}")
    return value


def _int_range(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.validation(f"{key} does not have a valid value")
    return value


def anniversary(value: Any) -> str | None:
    """The accepted formats (ref §1.1), echoed as `YYYY-MM-DD`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 10:
        raise errors.validation("anniversary does not have a valid value")
    for pattern in ANNIVERSARY_FORMATS:
        match = pattern.match(value)
        if match:
            try:
                return date(int(match["y"]), int(match["m"]), int(match["d"])).isoformat()
            except ValueError:
                break
    raise errors.validation("anniversary does not have a valid value")


def valid_email(email: Any, limit: int, key: str = "email_address.address") -> str:
    if not isinstance(email, str) or not email.strip():
        raise errors.validation(f"{key} is missing")
    email = email.strip()
    if len(email) > limit:
        raise errors.validation(f"{key} exceeds the maximum length of {limit}")
    if not EMAIL_RE.match(email):
        raise errors.validation(f"{key} is not a valid email address")
    return email


@dataclass
class Core:
    """The core properties a POST or PUT body carries (None: absent or null)."""

    first_name: str | None
    last_name: str | None
    job_title: str | None
    company_name: str | None
    birthday_month: int | None
    birthday_day: int | None
    anniversary: str | None


def parse_core(body: dict[str, Any]) -> Core:
    strings = {k: _string(body, k, 50) for k in CORE_STRINGS}
    month = _int_range(body, "birthday_month", 1, 12)
    day_ = _int_range(body, "birthday_day", 1, 31)
    if (month is None) != (day_ is None):
        raise errors.validation("birthday_month and birthday_day must be sent together")
    return Core(
        strings["first_name"],
        strings["last_name"],
        strings["job_title"],
        strings["company_name"],
        month,
        day_,
        anniversary(body.get("anniversary")),
    )


def _array(body: dict[str, Any], key: str, limit: int) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise errors.validation(f"{key} does not have a valid value")
    if len(value) > limit:
        raise errors.validation(f"{key} exceeds the maximum of {limit} items")
    return value


def parse_lists(account: Account, raw: list[Any], *, missing: str = "validation") -> list[str]:
    out: list[str] = []
    for list_id in raw:
        if not is_uuid(list_id):
            raise errors.validation("list_memberships contains an id in an invalid format.")
        if list_id not in account.lists:
            if missing == "not_found":
                raise errors.not_found(f"The list {list_id} was not found.")
            raise errors.validation(f"list_memberships contains an unknown list_id {list_id}")
        if list_id not in out:
            out.append(list_id)
    return out


def parse_tags(account: Account, raw: list[Any]) -> list[str]:
    out: list[str] = []
    for tag_id in raw:
        if not is_uuid(tag_id) or tag_id not in account.tags:
            raise errors.validation(f"taggings contains an unknown tag_id {tag_id}")
        if tag_id not in out:
            out.append(tag_id)
    return out


def parse_custom_fields(account: Account, raw: list[Any]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise errors.validation("custom_fields does not have a valid value")
        field_id = item.get("custom_field_id")
        if not is_uuid(field_id):
            raise errors.validation("custom_field_id is in an invalid format.")
        if field_id not in account.custom_fields:
            raise errors.validation(f"custom_field_id {field_id} does not exist")
        value = _string(item, "value", 255, name="custom_fields.value")
        entry: dict[str, Any] = {"custom_field_id": field_id, "value": value or ""}
        if isinstance(item.get("choice_ids"), list):
            entry["choice_ids"] = [int(x) for x in item["choice_ids"] if isinstance(x, int)]
        out[field_id] = entry
    return list(out.values())


def parse_phones(raw: list[Any], now: float, source: str) -> list[dict[str, Any]]:
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise errors.validation("phone_numbers does not have a valid value")
        number = _string(item, "phone_number", 25, name="phone_number")
        if not number:
            raise errors.validation("phone_number is missing")
        kind = item.get("kind", "home")
        if kind not in PHONE_KINDS:
            raise errors.validation("kind does not have a valid value")
        out.append(
            {
                "phone_number_id": item.get("phone_number_id") or new_id(),
                "phone_number": number,
                "kind": kind,
                "created_at": now,
                "updated_at": now,
                "create_source": source,
                "update_source": source,
            }
        )
    return out


def parse_address(item: Any, now: float) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise errors.validation("street_addresses does not have a valid value")
    kind = item.get("kind")
    if kind not in ADDRESS_KINDS:
        raise errors.validation("kind is missing or does not have a valid value")
    out: dict[str, Any] = {"street_address_id": item.get("street_address_id") or new_id()}
    out["kind"] = kind
    out["street"] = _string(item, "street", 255)
    for key in ("city", "state", "postal_code", "country"):
        out[key] = _string(item, key, 50)
    out["created_at"] = now
    out["updated_at"] = now
    return out


def parse_notes(raw: list[Any], now: float) -> list[dict[str, Any]]:
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise errors.validation("notes does not have a valid value")
        content = _string(item, "content", 2000, name="notes.content") or ""
        out.append(
            {"note_id": item.get("note_id") or new_id(), "created_at": now, "content": content}
        )
    return out


def _source(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        raise errors.validation(f"{key} is missing, {key} does not have a valid value")
    if value not in c.SOURCES:
        raise errors.validation(f"{key} does not have a valid value")
    return str(value)


def _subresources(
    state: SandboxState, account: Account, contact: Contact, body: dict[str, Any], source: str
) -> None:
    """Each sub-resource present in the body replaces the stored one (ref §1.7)."""
    now = state.now()
    lists = _array(body, "list_memberships", 50)
    tags = _array(body, "taggings", 50)
    fields = _array(body, "custom_fields", 25)
    phones = _array(body, "phone_numbers", 3)
    addresses = _array(body, "street_addresses", 3)
    notes = _array(body, "notes", 150)
    # validate everything before changing anything: never half-written
    parsed_lists = parse_lists(account, lists) if lists is not None else None
    parsed_tags = parse_tags(account, tags) if tags is not None else None
    parsed_fields = parse_custom_fields(account, fields) if fields is not None else None
    parsed_phones = parse_phones(phones, now, source) if phones is not None else None
    parsed_addresses = [parse_address(a, now) for a in addresses] if addresses is not None else None
    parsed_notes = parse_notes(notes, now) if notes is not None else None
    if parsed_lists is not None:
        contact.list_memberships = parsed_lists
    if parsed_tags is not None:
        contact.taggings = parsed_tags
    if parsed_fields is not None:
        contact.custom_fields = parsed_fields
    if parsed_phones is not None:
        contact.phone_numbers = parsed_phones
    if parsed_addresses is not None:
        contact.street_addresses = parsed_addresses
    if parsed_notes is not None:
        contact.notes = parsed_notes


def _apply_core(contact: Contact, core: Core) -> None:
    contact.first_name = core.first_name
    contact.last_name = core.last_name
    contact.job_title = core.job_title
    contact.company_name = core.company_name
    contact.birthday_month = core.birthday_month
    contact.birthday_day = core.birthday_day
    contact.anniversary = core.anniversary


def _email_block(body: dict[str, Any], *, required: bool) -> dict[str, Any] | None:
    block = body.get("email_address")
    if block is None:
        if required:
            return None
        return None
    if not isinstance(block, dict):
        raise errors.validation("email_address does not have a valid value")
    return block


def duplicate(state: SandboxState, account: Account, email: str, me: Contact | None) -> None:
    """409 with the exact message integrators parse the contact id out of (ref §1.3)."""
    other = account.by_email.get(state.email_key(email))
    if other is not None and other is not me:
        raise errors.conflict(f"Email already exists for contact {other.contact_id}")


# -- transitions -----------------------------------------------------------------------------


def unsubscribe(
    state: SandboxState, contact: Contact, source: str, reason: str | None, now: float
) -> None:
    """Permission → unsubscribed, with the opt-out fields (ref §1.10)."""
    contact.permission = "unsubscribed"
    contact.opt_out_source = source
    contact.opt_out_date = now
    contact.opt_out_reason = reason
    contact.update_source = source
    contact.email_updated_at = now
    if state.config.unsubscribe_moves_updated_at:
        contact.updated_at = now


def opt_in(contact: Contact, permission: str, source: str, now: float, *, clear: bool) -> None:
    """Permission → explicit/implicit (a re-subscription clears the opt-out fields)."""
    contact.permission = permission
    if clear:
        contact.opt_out_source = None
        contact.opt_out_date = None
        contact.opt_out_reason = None
    contact.opt_in_date = now
    if contact.opt_in_source is None:
        contact.opt_in_source = source
    contact.update_source = source
    contact.email_updated_at = now
    contact.updated_at = now


def revive(contact: Contact) -> None:
    contact.deleted_at = None


def create(state: SandboxState, account: Account, body: dict[str, Any]) -> Contact:
    """`POST /contacts`: 201, or 409 for any existing e-mail (deleted ones included)."""
    source = _source(body, "create_source")
    core = parse_core(body)
    block = _email_block(body, required=False)
    email = None
    permission = state.config.default_permission_on_create
    if block is not None:
        email = valid_email(block.get("address"), 80)
        if block.get("permission_to_send") is not None:
            if block["permission_to_send"] not in c.PERMISSIONS:
                raise errors.validation("permission_to_send does not have a valid value")
            permission = block["permission_to_send"]
    if (
        email is None
        and core.first_name is None
        and core.last_name is None
        and body.get("sms_channel") is None
    ):
        raise errors.validation(
            "At least one of email_address, first_name, last_name or sms_channel is required"
        )
    if email is not None:
        duplicate(state, account, email, None)
    now = state.now()
    contact = Contact(new_id(), email, permission, now, now, source, source, now, now)
    _apply_core(contact, core)
    _subresources(state, account, contact, body, source)
    if permission in ("explicit", "implicit", "pending_confirmation"):
        contact.opt_in_source = source
        contact.opt_in_date = now
    if permission == "pending_confirmation":
        contact.confirm_status = "pending"
    if permission == "unsubscribed":
        contact.opt_out_source = source
        contact.opt_out_date = now
        contact.opt_out_reason = _string(block or {}, "opt_out_reason", 255)
    account.add_contact(contact, state.email_key(email) if email else None)
    return contact


def put(state: SandboxState, account: Account, contact: Contact, body: dict[str, Any]) -> Contact:
    """`PUT /contacts/{id}`: a full update of core fields; sub-resources replaced if present."""
    source = _source(body, "update_source")
    core = parse_core(body)
    block = _email_block(body, required=False)
    now = state.now()
    new_email = contact.email
    permission = None
    if block is not None:
        new_email = valid_email(block.get("address"), 80)
        permission = block.get("permission_to_send")
        if permission is not None and permission not in c.PERMISSIONS:
            raise errors.validation("permission_to_send does not have a valid value")
        duplicate(state, account, new_email, contact)
    if contact.deleted_at is not None and source != "Account":
        raise errors.validation("update_source must be Account to restore a deleted contact")
    resubscribe = (
        contact.permission == "unsubscribed"
        and permission is not None
        and permission in ("explicit", "implicit")
    )
    if resubscribe:
        rule = state.config.put_resubscribe
        if rule == "reject_contact_optouts" and contact.opt_out_source == "Contact":
            raise errors.validation(
                "permission_to_send cannot be changed for a contact who unsubscribed; "
                "send a resubscribe email instead"
            )
        if rule == "ignore":
            permission = None
    _subresources(state, account, contact, body, source)  # validates before anything changes
    _apply_core(contact, core)
    if new_email != contact.email and new_email is not None:
        if contact.email is not None:
            account.by_email.pop(state.email_key(contact.email), None)
        account.by_email[state.email_key(new_email)] = contact
        contact.email = new_email
        contact.email_updated_at = now
    if permission == "unsubscribed" and contact.permission != "unsubscribed":
        opt_source = source if state.config.opt_out_source_follows_update_source else "Account"
        unsubscribe(state, contact, opt_source, _string(block or {}, "opt_out_reason", 255), now)
    elif (
        permission in ("explicit", "implicit")
        and permission != contact.permission
        and contact.permission in ("explicit", "implicit", "unsubscribed", "not_set")
    ):
        opt_in(contact, permission, source, now, clear=True)
    if contact.deleted_at is not None:
        revive(contact)
    contact.update_source = source
    contact.updated_at = now
    return contact


def sign_up_form(
    state: SandboxState, account: Account, body: dict[str, Any], *, person: bool = False
) -> tuple[Contact, bool]:
    """`POST /contacts/sign_up_form`: create-or-update by e-mail, partial and append-only."""
    email = valid_email(body.get("email_address"), 50, key="email_address")
    raw_lists = _array(body, "list_memberships", 50)
    if not raw_lists:
        raise errors.validation("list_memberships is missing or empty")
    lists = parse_lists(account, raw_lists, missing="not_found")
    core_body = {k: body[k] for k in (*CORE_STRINGS, "birthday_month", "birthday_day") if k in body}
    core_body["anniversary"] = body.get("anniversary")
    core = parse_core(core_body)
    fields = _array(body, "custom_fields", 50)
    parsed_fields = parse_custom_fields(account, fields) if fields else []
    now = state.now()
    phone = _string(body, "phone_number", 25)
    address = parse_address(body["street_address"], now) if body.get("street_address") else None
    window = state.config.conflict_window_ms / 1000
    key = state.email_key(email)
    if window > 0 and not person:
        last = account.signup_seen.get(key)
        account.signup_seen[key] = now
        if last is not None and now - last < window:
            raise errors.conflict(
                "You sent simultaneous requests that are attempting to modify the same contact"
            )
    contact = account.by_email.get(key)
    created = contact is None
    if contact is None:
        permission = "pending_confirmation" if account.confirmed_opt_in else "explicit"
        contact = Contact(new_id(), email, permission, now, now, "Contact", "Contact", now, now)
        contact.opt_in_source = "Contact"
        contact.opt_in_date = now
        if permission == "pending_confirmation":
            contact.confirm_status = "pending"
        account.add_contact(contact, key)
        if permission == "pending_confirmation":
            state.record_email(account, contact, "confirm_opt_in", list_ids=lists)
    else:
        # A person signing up themselves always re-subscribes; the API follows the knob.
        rule = "always" if person else state.config.signup_form_resubscribes
        # A resubscribe e-mail still unanswered leaves the person opted out in substance.
        waiting = contact.permission == "pending_confirmation" and (
            contact.resubscribe_sent_at is not None
        )
        if contact.permission == "unsubscribed" or waiting:
            if rule == "always" or (
                rule == "account_optouts_only" and contact.opt_out_source == "Account"
            ):
                opt_in(
                    contact,
                    "explicit",
                    "Contact",
                    now,
                    clear=state.config.signup_form_clears_opt_out,
                )
        elif contact.permission != "explicit":
            opt_in(contact, "explicit", "Contact", now, clear=True)
        if contact.deleted_at is not None:
            revive(contact)
    for name in CORE_STRINGS:
        value = getattr(core, name)
        if value is not None:
            setattr(contact, name, value)
    if core.birthday_month is not None:
        contact.birthday_month, contact.birthday_day = core.birthday_month, core.birthday_day
    if core.anniversary is not None:
        contact.anniversary = core.anniversary
    for list_id in lists:
        if list_id not in contact.list_memberships and len(contact.list_memberships) < 50:
            contact.list_memberships.append(list_id)
    by_id = {f["custom_field_id"]: f for f in contact.custom_fields}
    for entry in parsed_fields:
        by_id[entry["custom_field_id"]] = entry
    contact.custom_fields = list(by_id.values())[:25]
    if (
        phone
        and all(p["phone_number"] != phone for p in contact.phone_numbers)
        and len(contact.phone_numbers) < 3
    ):
        contact.phone_numbers.extend(parse_phones([{"phone_number": phone}], now, "Contact"))
    if address is not None:
        kept = [a for a in contact.street_addresses if a["kind"] != address["kind"]]
        contact.street_addresses = [*kept, address][-3:]
    contact.update_source = "Contact"
    contact.updated_at = now
    return contact, created


def delete(state: SandboxState, contact: Contact) -> None:
    """Deleted: lists cleared, `deleted_at` set, permission kept (ref §1.8)."""
    if contact.deleted_at is not None:
        return
    now = state.now()
    contact.deleted_at = now
    contact.list_memberships = []
    contact.updated_at = now


def resubscribe(
    state: SandboxState, account: Account, contact: Contact, body: dict[str, Any]
) -> None:
    """`PUT /contacts/resubscribe/{id}`: one confirmation e-mail, once (ref §1.9)."""
    raw = body.get("list_ids")
    if not isinstance(raw, list) or not raw:
        raise errors.validation("list_ids is missing")
    lists = parse_lists(account, raw)
    if contact.resubscribe_sent_at is not None:
        raise errors.conflict(
            "A resubscribe email has already been sent to this contact; it can only be sent once."
        )
    if contact.permission != "unsubscribed":
        raise errors.validation("The contact is not unsubscribed")
    now = state.now()
    contact.resubscribe_sent_at = now
    contact.resubscribe_list_ids = lists
    if state.config.resubscribe_pending_state == "pending_confirmation":
        contact.permission = "pending_confirmation"
        contact.confirm_status = "pending"
        contact.email_updated_at = now
        contact.updated_at = now
    state.record_email(account, contact, "resubscribe", list_ids=lists)


def confirm_resubscribe(state: SandboxState, contact: Contact) -> None:
    """The person clicks the resubscribe e-mail's link: explicit, back on the lists."""
    if contact.resubscribe_sent_at is None:
        raise errors.validation("no resubscribe email was sent to this contact")
    if contact.permission not in ("pending_confirmation", "unsubscribed"):
        raise errors.validation("the contact is not waiting for a resubscribe confirmation")
    now = state.now()
    opt_in(contact, "explicit", "Contact", now, clear=True)
    contact.confirm_status = "confirmed"
    revive(contact)
    for list_id in contact.resubscribe_list_ids:
        if list_id not in contact.list_memberships:
            contact.list_memberships.append(list_id)


# -- rendering -------------------------------------------------------------------------------


def _clean(item: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (clock.iso(v) if k.endswith("_at") and isinstance(v, float) else v)
        for k, v in item.items()
        if v is not None
    }


def render(
    state: SandboxState, contact: Contact, include: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    """The `ContactResource`: core properties, sub-resources only as `include` asks."""
    out: dict[str, Any] = {"contact_id": contact.contact_id}
    if contact.email is not None:
        block: dict[str, Any] = {
            "address": contact.email,
            "permission_to_send": contact.permission,
            "created_at": clock.iso(contact.email_created_at),
            "updated_at": clock.iso(contact.email_updated_at),
        }
        if contact.opt_in_source:
            block["opt_in_source"] = contact.opt_in_source
        if contact.opt_in_date is not None:
            block["opt_in_date"] = clock.iso(contact.opt_in_date)
        if contact.opt_out_date is not None:
            block["opt_out_source"] = contact.opt_out_source
            block["opt_out_date"] = clock.iso(contact.opt_out_date)
            if contact.opt_out_reason:
                block["opt_out_reason"] = contact.opt_out_reason
        elif contact.deleted_at is not None and state.config.deleted_shows_opt_out_fields:
            block["opt_out_source"] = contact.update_source
            block["opt_out_date"] = clock.iso(contact.deleted_at)
        block["confirm_status"] = contact.confirm_status
        out["email_address"] = block
    for key in (*CORE_STRINGS, "birthday_month", "birthday_day", "anniversary"):
        value = getattr(contact, key)
        if value is not None:
            out[key] = value
    out["update_source"] = contact.update_source
    out["create_source"] = contact.create_source
    out["created_at"] = clock.iso(contact.created_at)
    out["updated_at"] = clock.iso(contact.updated_at)
    if contact.deleted_at is not None:
        out["deleted_at"] = clock.day(contact.deleted_at)
    if "custom_fields" in include:
        out["custom_fields"] = [dict(f) for f in contact.custom_fields]
    if "phone_numbers" in include:
        out["phone_numbers"] = [_clean(p) for p in contact.phone_numbers]
    if "street_addresses" in include:
        out["street_addresses"] = [_clean(a) for a in contact.street_addresses]
    if "list_memberships" in include:
        out["list_memberships"] = list(contact.list_memberships)
    if "taggings" in include:
        out["taggings"] = list(contact.taggings)
    if "notes" in include:
        out["notes"] = [_clean(n) for n in contact.notes]
    return out


def parse_include(raw: str | None) -> frozenset[str]:
    if not raw:
        return frozenset()
    parts = frozenset(p.strip() for p in raw.split(",") if p.strip())
    if not parts <= set(c.INCLUDES):
        raise errors.validation("include does not have a valid value")
    return parts


# -- the list query --------------------------------------------------------------------------

FILTER_KEYS = (
    "status",
    "email",
    "lists",
    "tags",
    "updated_after",
    "updated_before",
    "created_after",
    "created_before",
    "optout_after",
    "optout_before",
    "include",
    "include_count",
    "limit",
)


def encode_cursor(params: dict[str, str]) -> str:
    return base64.b64encode(urlencode(params).encode()).decode()


def decode_cursor(state: SandboxState, cursor: str) -> dict[str, str]:
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), validate=False).decode()
        params = dict(parse_qsl(text, keep_blank_values=True))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise errors.validation("cursor does not have a valid value") from None
    if "after" not in params:
        raise errors.validation("cursor does not have a valid value")
    ttl = state.config.cursor_ttl_seconds
    if ttl > 0 and state.now() - float(params.get("iat", "0")) > ttl:
        raise errors.validation("cursor has expired")
    return params


@dataclass
class Query:
    statuses: frozenset[str] | None
    email: str | None
    lists: frozenset[str] | None
    tags: frozenset[str] | None
    bounds: list[tuple[str, str, float]]  # (field, "after"|"before", ts)
    include: frozenset[str]
    include_count: bool
    limit: int


def parse_query(state: SandboxState, params: dict[str, str]) -> Query:
    statuses = None
    if params.get("status"):
        statuses = frozenset(s.strip() for s in params["status"].split(",") if s.strip())
        if not statuses <= set(c.STATUS_FILTERS):
            raise errors.validation("status does not have a valid value")
    if params.get("segment_id"):
        raise errors.validation("segment_id is not supported by this sandbox")
    lists = _csv_ids(params, "lists", 25)
    tags = _csv_ids(params, "tags", 50)
    bounds = []
    for name in ("updated", "created", "optout"):
        for side in ("after", "before"):
            raw = params.get(f"{name}_{side}")
            if raw:
                try:
                    bounds.append((name, side, clock.parse(raw)))
                except ValueError:
                    raise errors.validation(f"{name}_{side} does not have a valid value") from None
    try:
        limit = int(params.get("limit") or 50)
    except ValueError:
        raise errors.validation("limit does not have a valid value") from None
    if not 1 <= limit <= 500:
        raise errors.validation("limit must be between 1 and 500")
    email = params.get("email") or None
    return Query(
        statuses,
        state.email_key(email) if email else None,
        lists,
        tags,
        bounds,
        parse_include(params.get("include")),
        params.get("include_count", "").lower() == "true",
        limit,
    )


def _csv_ids(params: dict[str, str], key: str, limit: int) -> frozenset[str] | None:
    raw = params.get(key)
    if not raw:
        return None
    ids = [p.strip() for p in raw.split(",") if p.strip()]
    if len(ids) > limit or not all(is_uuid(i) for i in ids):
        raise errors.validation(f"{key} does not have a valid value")
    return frozenset(ids)


def matches(state: SandboxState, contact: Contact, q: Query) -> bool:
    deleted = contact.deleted_at is not None
    if q.statuses is None:
        if deleted:
            return False
    elif "all" not in q.statuses:
        if deleted:
            if "deleted" not in q.statuses:
                return False
        elif not (
            contact.permission in q.statuses
            or ("active" in q.statuses and contact.permission in ("explicit", "implicit"))
        ):
            return False
    if q.email is not None and (contact.email is None or state.email_key(contact.email) != q.email):
        return False
    if q.lists is not None and q.lists.isdisjoint(contact.list_memberships):
        return False
    if q.tags is not None and q.tags.isdisjoint(contact.taggings):
        return False
    inclusive = state.config.after_filters_inclusive
    for name, side, ts in q.bounds:
        value = {
            "updated": contact.updated_at,
            "created": contact.created_at,
            "optout": contact.opt_out_date,
        }[name]
        if value is None:
            return False
        second = float(int(value))  # timestamps have second precision (ref §1.5)
        if side == "after" and not (second >= ts if inclusive else second > ts):
            return False
        if side == "before" and not second < ts:
            return False
    return True


def _ordered(
    state: SandboxState, account: Account, after: tuple[float, str] | None
) -> Iterator[Contact]:
    if state.config.contacts_order == "updated_at":
        items = sorted(account.contacts.values(), key=lambda k: (k.updated_at, k.contact_id))
        for contact in items:
            if after is None or (contact.updated_at, contact.contact_id) > after:
                yield contact
        return
    order = account.order
    index = 0 if after is None else bisect.bisect_right(order, after)
    while index < len(order):
        yield account.contacts[order[index][1]]
        index += 1


def list_contacts(state: SandboxState, account: Account, params: dict[str, str]) -> dict[str, Any]:
    """`GET /contacts`: filters, `include`, `include_count`, and `_links.next` cursors."""
    after: tuple[float, str] | None = None
    if params.get("cursor"):
        carried = decode_cursor(state, params["cursor"])
        ts, _, contact_id = carried.pop("after").partition("|")
        after = (float(ts), contact_id)
        carried.pop("iat", None)
        params = carried  # the cursor carries the filters; repeated ones are ignored
    q = parse_query(state, params)
    page: list[Contact] = []
    more = False
    for contact in _ordered(state, account, after):
        if not matches(state, contact, q):
            continue
        if len(page) == q.limit:
            more = True
            break
        page.append(contact)
    out: dict[str, Any] = {"contacts": [render(state, k, q.include) for k in page]}
    if q.include_count:
        out["contacts_count"] = sum(1 for k in account.contacts.values() if matches(state, k, q))
    if more:
        last = page[-1]
        key = last.updated_at if state.config.contacts_order == "updated_at" else last.created_at
        carry = {k: v for k, v in params.items() if k in FILTER_KEYS and v}
        carry["after"] = f"{key!r}|{last.contact_id}"
        carry["iat"] = repr(state.now())
        out["_links"] = {"next": {"href": f"/v3/contacts?cursor={encode_cursor(carry)}"}}
    elif state.config.last_page_links == "empty_object":
        out["_links"] = {}
    return out


def counts(account: Account, include_new: bool) -> dict[str, int]:
    live = [k for k in account.contacts.values() if k.deleted_at is None]
    out = {
        "total": len(live),
        "explicit": sum(1 for k in live if k.permission == "explicit"),
        "implicit": sum(1 for k in live if k.permission == "implicit"),
        "pending": sum(1 for k in live if k.permission == "pending_confirmation"),
        "unsubscribed": sum(1 for k in live if k.permission == "unsubscribed"),
    }
    if include_new:
        out["new_subscriber"] = 0
    return out


def get(state: SandboxState, account: Account, contact_id: str) -> Contact:
    """A contact by id; malformed → 400 (knob `malformed_id_status`), unknown → 404."""
    if not is_uuid(contact_id):
        if state.config.malformed_id_status == 404:
            raise errors.not_found("contact_id is in an invalid format.")
        raise errors.validation("contact_id is in an invalid format.")
    contact = account.contacts.get(contact_id)
    if contact is None:
        raise errors.not_found()
    return contact


__all__ = ["ApiError", "create", "put", "sign_up_form", "list_contacts", "render"]
