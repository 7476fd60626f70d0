"""Lists, tags, custom fields and the account: their routes' logic and bodies (ref §2, §0.10)."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qsl, urlencode

from app.sandbox.constantcontact import clock, contacts, errors
from app.sandbox.constantcontact.state import Account, CustomField, SandboxState, Tag, new_id


def _limit(params: dict[str, str], default: int, maximum: int, low: int = 1) -> int:
    try:
        value = int(params.get("limit") or default)
    except ValueError:
        raise errors.validation("limit does not have a valid value") from None
    if not low <= value <= maximum:
        raise errors.validation(f"limit must be between {low} and {maximum}")
    return value


def page(
    state: SandboxState,
    items: list[Any],
    params: dict[str, str],
    path: str,
    default: int,
    maximum: int,
) -> tuple[list[Any], dict[str, Any] | None]:
    """Offset paging behind an opaque cursor (`limit=1&next=2`, as real cursors decode)."""
    offset = 0
    if params.get("cursor"):
        try:
            text = base64.b64decode(params["cursor"] + "==", validate=False).decode()
            carried = dict(parse_qsl(text))
            offset = int(carried["next"])
            params = {**carried, **{k: v for k, v in params.items() if k != "cursor"}}
        except (binascii.Error, UnicodeDecodeError, KeyError, ValueError):
            raise errors.validation("cursor does not have a valid value") from None
    limit = _limit(params, default, maximum)
    chunk = items[offset : offset + limit]
    if offset + limit < len(items):
        carry = {k: v for k, v in params.items() if k not in ("cursor", "next")}
        carry["limit"] = str(limit)
        carry["next"] = str(offset + limit)
        cursor = base64.b64encode(urlencode(carry).encode()).decode()
        return chunk, {"next": {"href": f"/v3/{path}?cursor={cursor}"}}
    return chunk, ({} if state.config.last_page_links == "empty_object" else None)


def _body_string(body: dict[str, Any], key: str, limit: int, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise errors.validation(f"{key} is missing")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise errors.validation(f"{key} does not have a valid value")
    if len(value) > limit:
        raise errors.validation(f"{key} exceeds the maximum length of {limit}")
    return value


# -- account -----------------------------------------------------------------------------------


def summary(account: Account, extra: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "contact_email": account.login_email,
        "contact_phone": "5555555555",
        "country_code": account.country_code,
        "encoded_account_id": account.id,
        "first_name": account.first_name,
        "last_name": account.last_name,
        "organization_name": account.organization_name,
        "organization_phone": "5555555555",
        "state_code": account.state_code,
        "time_zone_id": account.time_zone_id,
        "website": "https://sandbox.example",
    }
    wanted = {p.strip() for p in (extra or "").split(",") if p.strip()}
    if not wanted <= {"physical_address", "company_logo"}:
        raise errors.validation("extra_fields does not have a valid value")
    if "physical_address" in wanted:
        out["physical_address"] = {
            "address_line1": "1601 Trapelo Rd",
            "city": "Waltham",
            "state_code": account.state_code,
            "postal_code": "02451",
            "country_code": account.country_code,
        }
    if "company_logo" in wanted:
        out["company_logo"] = {"url": "https://sandbox.example/logo.png", "internal_id": "1"}
    return out


# -- lists ------------------------------------------------------------------------------------


def render_list(account: Account, item: Any, counts: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "list_id": item.list_id,
        "name": item.name,
        "favorite": item.favorite,
        "created_at": clock.iso(item.created_at),
        "updated_at": clock.iso(item.updated_at),
    }
    if item.description is not None:
        out["description"] = item.description
    if counts:
        out["membership_count"] = sum(
            1
            for k in account.contacts.values()
            if k.deleted_at is None
            and item.list_id in k.list_memberships
            and (counts == "all" or k.permission in ("explicit", "implicit"))
        )
    return out


def list_counts_param(params: dict[str, str]) -> str | None:
    value = params.get("include_membership_count")
    if value in (None, ""):
        return None
    if value not in ("all", "active"):
        raise errors.validation("include_membership_count does not have a valid value")
    return value


def list_input(
    state: SandboxState, account: Account, body: dict[str, Any], me: Any
) -> tuple[str, str | None, bool]:
    name = _body_string(body, "name", 255, required=True)
    assert name is not None
    description = _body_string(body, "description", 2000, required=False)
    favorite = body.get("favorite", False)
    if not isinstance(favorite, bool):
        raise errors.validation("favorite does not have a valid value")
    for other in account.lists.values():
        if other is not me and other.name.lower() == name.strip().lower():
            raise errors.conflict("List name already exists")
    return name, description, favorite


def create_list(state: SandboxState, account: Account, body: dict[str, Any]) -> Any:
    name, description, favorite = list_input(state, account, body, None)
    if len(account.lists) >= state.config.max_lists:
        raise errors.validation(
            f"The account has reached the maximum number of lists ({state.config.max_lists})"
        )
    return state.create_list(account, name, description=description, favorite=favorite)


# -- tags -------------------------------------------------------------------------------------


def render_tag(account: Account, tag: Tag, with_count: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tag_id": tag.tag_id,
        "name": tag.name,
        "created_at": clock.iso(tag.created_at),
        "updated_at": clock.iso(tag.updated_at),
    }
    if tag.tag_source is not None:
        out["tag_source"] = tag.tag_source
    if with_count:
        out["contacts_count"] = sum(
            1
            for k in account.contacts.values()
            if k.deleted_at is None and tag.tag_id in k.taggings
        )
    return out


def tag_name(account: Account, body: dict[str, Any], me: Tag | None) -> str:
    name = _body_string(body, "name", 255, required=True)
    assert name is not None
    for other in account.tags.values():
        if other is not me and other.name.lower() == name.lower():
            raise errors.conflict("Tag name already exists")
    return name


def create_tag(state: SandboxState, account: Account, body: dict[str, Any]) -> Tag:
    name = tag_name(account, body, None)
    source = _body_string(body, "tag_source", 255, required=False)
    now = state.now()
    tag = Tag(new_id(), name, now, now, source)
    account.tags[tag.tag_id] = tag
    return tag


# -- custom fields ----------------------------------------------------------------------------

FIELD_TYPES = ("string", "date", "number", "currency", "single_select", "multi_select", "boolean")


def render_field(field: CustomField) -> dict[str, Any]:
    out: dict[str, Any] = {
        "custom_field_id": field.custom_field_id,
        "label": field.label,
        "name": field.name,
        "type": field.type,
        "version": field.version,
        "created_at": clock.iso(field.created_at),
        "updated_at": clock.iso(field.updated_at),
    }
    if field.metadata is not None:
        out["metadata"] = field.metadata
    if field.choices:
        out["choices"] = [dict(c) for c in field.choices]
    return out


def _choices(field_id: str, raw: Any, now: float) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > 100:
        raise errors.validation("choices does not have a valid value")
    out = []
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise errors.validation("choices does not have a valid value")
        label = _body_string(item, "choice_label", 255, required=True)
        order = item.get("display_order", number)
        out.append(
            {
                "custom_field_id": field_id,
                "choice_id": number,  # StrictInt in the SDK's model (ref §1.11)
                "choice_label": label,
                "display_order": order if isinstance(order, int) else number,
                "created_at": clock.iso(now),
                "updated_at": clock.iso(now),
            }
        )
    return out


def field_label(account: Account, body: dict[str, Any], me: CustomField | None) -> tuple[str, str]:
    label = _body_string(body, "label", 50, required=True)
    assert label is not None
    name = label.strip().replace(" ", "_")
    for other in account.custom_fields.values():
        if other is not me and (other.name.lower() == name.lower()):
            raise errors.conflict("Custom field name already exists")
    return label, name


def create_field(state: SandboxState, account: Account, body: dict[str, Any]) -> CustomField:
    label, name = field_label(account, body, None)
    kind = _body_string(body, "type", 20, required=True)
    if kind not in FIELD_TYPES:
        raise errors.validation("type does not have a valid value")
    if len(account.custom_fields) >= state.config.max_custom_fields:
        raise errors.validation(
            f"An account can have at most {state.config.max_custom_fields} custom fields"
        )
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise errors.validation("metadata does not have a valid value")
    now = state.now()
    field_id = new_id()
    field = CustomField(
        field_id,
        label,
        name,
        kind,
        now,
        now,
        _choices(field_id, body.get("choices"), now),
        metadata,
    )
    account.custom_fields[field_id] = field
    return field


def update_field(
    state: SandboxState, account: Account, field: CustomField, body: dict[str, Any]
) -> CustomField:
    """PUT: `label` and `choices`; whatever is omitted becomes null (ref §2.3)."""
    label, name = field_label(account, body, field)
    now = state.now()
    field.choices = _choices(field.custom_field_id, body.get("choices"), now)
    field.label, field.name, field.updated_at = label, name, now
    return field


def get_or_404(table: dict[str, Any], item_id: str, what: str) -> Any:
    if not contacts.is_uuid(item_id):
        raise errors.validation(f"{what} is in an invalid format.")
    item = table.get(item_id)
    if item is None:
        raise errors.not_found()
    return item
