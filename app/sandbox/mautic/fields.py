"""Contact fields: Mautic's core fields, value cleaning and validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TYPES = [
    "boolean",
    "country",
    "date",
    "datetime",
    "email",
    "hidden",
    "locale",
    "lookup",
    "multiselect",
    "number",
    "region",
    "select",
    "tel",
    "text",
    "textarea",
    "time",
    "timezone",
    "url",
    "html",
]
GROUPS = ("core", "social", "personal", "professional")
TEXT_LIMIT = 191
# FILTER_SANITIZE_EMAIL keeps letters, digits and these.
_EMAIL_KEEP = re.compile(r"[^A-Za-z0-9!#$%&'*+\-=?^_`{|}~@.\[\]]")
_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_EMAIL_OK = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class Field:
    """A contact field (`LeadField`)."""

    id: int
    label: str
    alias: str
    type: str = "text"
    group: str = "core"
    order: int = 0
    is_fixed: bool = False
    is_unique: bool = False
    is_required: bool = False
    is_published: bool = True
    default_value: Any = None
    properties: dict[str, Any] | list[Any] = field(default_factory=dict)
    date_added: float = 0.0

    def choices(self) -> list[str] | None:
        """Allowed values of a select/multiselect/boolean field (None: free)."""
        props = self.properties if isinstance(self.properties, dict) else {}
        if self.type in ("select", "multiselect"):
            items = props.get("list") or []
            return [
                str(i.get("value", i.get("label"))) if isinstance(i, dict) else str(i)
                for i in items
            ]
        if self.type == "boolean":
            return ["0", "1"]
        return None


_CORE: list[tuple[str, str, str, str]] = [
    ("title", "Title", "lookup", "core"),
    ("firstname", "First Name", "text", "core"),
    ("lastname", "Last Name", "text", "core"),
    ("company", "Primary company", "text", "core"),
    ("position", "Position", "text", "core"),
    ("email", "Email", "email", "core"),
    ("mobile", "Mobile", "tel", "core"),
    ("phone", "Phone", "tel", "core"),
    ("points", "Points", "number", "core"),
    ("fax", "Fax", "tel", "core"),
    ("address1", "Address Line 1", "text", "core"),
    ("address2", "Address Line 2", "text", "core"),
    ("city", "City", "text", "core"),
    ("state", "State", "region", "core"),
    ("zipcode", "Zip Code", "text", "core"),
    ("country", "Country", "country", "core"),
    ("preferred_locale", "Preferred Locale", "locale", "core"),
    ("timezone", "Preferred Timezone", "timezone", "core"),
    ("last_active", "Date Last Active", "datetime", "core"),
    ("attribution_date", "Attribution Date", "datetime", "core"),
    ("attribution", "Attribution", "number", "core"),
    ("website", "Website", "url", "core"),
    ("facebook", "Facebook", "text", "social"),
    ("foursquare", "Foursquare", "text", "social"),
    ("instagram", "Instagram", "text", "social"),
    ("linkedin", "LinkedIn", "text", "social"),
    ("skype", "Skype", "text", "social"),
    ("twitter", "Twitter", "text", "social"),
]


def core_fields(now: float) -> list[Field]:
    """The fields of a fresh Mautic 5 install (ids and order as shipped)."""
    out = []
    for i, (alias, label, type_, group) in enumerate(_CORE, start=1):
        props: dict[str, Any] = {}
        if alias == "title":
            props = {"list": "Mr|Mrs|Miss"}
        out.append(
            Field(
                id=i,
                label=label,
                alias=alias,
                type=type_,
                group=group,
                order=i,
                is_fixed=True,
                is_unique=alias == "email",
                properties=props,
                date_added=now,
            )
        )
    return out


def sanitize_email(value: str) -> str:
    """PHP `FILTER_SANITIZE_EMAIL` then trim (no lowercasing), as `InputHelper::email`."""
    return _EMAIL_KEEP.sub("", value).strip()


def email_valid(value: str) -> bool:
    """`FILTER_VALIDATE_EMAIL` (approximately) and none of `^&*%` (EmailValidator)."""
    return bool(_EMAIL_OK.match(value)) and not any(c in value for c in "^&*%")


def php_numeric(value: Any) -> bool:
    """PHP `is_numeric`."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and bool(_NUMERIC.match(value))


def php_int(value: Any) -> int:
    """PHP `(int)` of a numeric value."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def is_blank(value: Any) -> bool:
    return value is None or value == "" or value == []


def to_number(value: Any) -> int | float | None:
    """`fixNumbers`: number fields are ints (or floats when fractional) in API output."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


def clean(f: Field, value: Any) -> tuple[Any, str | None]:
    """The stored form of `value` for field `f`, or an error message."""
    if value is None:
        return None, None
    if f.type == "multiselect":
        items = value if isinstance(value, list) else str(value).split("|")
        value = "|".join(str(v) for v in items)
    elif isinstance(value, bool):
        value = "1" if value else "0"
    elif isinstance(value, list | dict):
        return None, "This value is not valid."
    if f.type == "number":
        if value == "":
            return None, None
        if not php_numeric(value):
            return None, "This value is not valid."
        return to_number(value), None
    text = str(value)
    if text.strip() == "":
        return None, None  # a blank is stored as NULL
    if f.type == "email" and text:
        text = sanitize_email(text)
        if not email_valid(text):
            return None, f"{text} is invalid."
    if f.type in ("text", "email", "tel", "url", "lookup", "region", "select") and (
        len(text) > TEXT_LIMIT
    ):
        return None, f"This value is too long. It should have {TEXT_LIMIT} characters or less."
    choices = f.choices()
    if choices is not None and text != "":
        wanted = text.split("|") if f.type == "multiselect" else [text]
        if any(v not in choices for v in wanted):
            return None, "This value is not valid."
    return text, None
