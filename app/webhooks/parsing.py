"""Mailchimp webhook bodies: form-encoded, PHP-style bracket keys, `fired_at` in UTC.

`type=unsubscribe&fired_at=2009-03-26 21:40:57&data[email]=a@b.c&data[merges][FNAME]=Ada`
becomes `{"type": "unsubscribe", "fired_at": "…", "data": {"email": "a@b.c",
"merges": {"FNAME": "Ada"}}}`. Anything that is not such a body raises MalformedPayload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

MAX_FIELDS = 1000  # a real delivery has a few dozen
MAX_DEPTH = 6  # data[merges][GROUPINGS][0][groups] is the deepest Mailchimp sends

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class MalformedPayload(ValueError):
    """The body is not a Mailchimp webhook delivery."""


@dataclass(slots=True, frozen=True)
class MailchimpEvent:
    """One parsed delivery."""

    type: str
    fired_at: datetime
    data: dict[str, Any]
    payload: dict[str, Any]  # the whole parsed body, as stored in the inbox

    def text(self, *path: str) -> str | None:
        """A string under `data` (e.g. text("merges", "FNAME")); None when absent."""
        node: Any = self.data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node if isinstance(node, str) else None


def parse_form(body: bytes) -> dict[str, Any]:
    """Decode a form body into nested dicts; `a[b][c]=v` sets out["a"]["b"]["c"] = v."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not a form-encoded body ({type(exc).__name__})") from None
    out: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if match is None:
            raise MalformedPayload(f"unbalanced brackets in field name {key[:80]!r}")
        path = [match.group(1), *_PART.findall(match.group(2))]
        if len(path) > MAX_DEPTH:
            raise MalformedPayload(f"field name nested too deep: {key[:80]!r}")
        node = out
        for part in path[:-1]:
            part = part or str(len(node))  # `a[]` appends, PHP-style
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise MalformedPayload(f"field {key[:80]!r} is both a value and a group")
            node = child
        leaf = path[-1] or str(len(node))
        if isinstance(node.get(leaf), dict):
            raise MalformedPayload(f"field {key[:80]!r} is both a value and a group")
        node[leaf] = value  # a repeated name: the last value wins, as in PHP
    return out


def parse_fired_at(value: str) -> datetime:
    """`YYYY-MM-DD HH:MM:SS` (UTC, Mailchimp's format) or ISO 8601; MalformedPayload else."""
    value = value.strip()
    try:
        if len(value) == 19 and value[10] == " ":
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedPayload(f"fired_at {value[:40]!r} is not a time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_mailchimp(body: bytes) -> MailchimpEvent:
    """A Mailchimp delivery: `type` and `fired_at` required, `data` a group when present."""
    form = parse_form(body)
    kind = form.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise MalformedPayload("the body has no 'type'")
    fired = form.get("fired_at")
    if not isinstance(fired, str):
        raise MalformedPayload("the body has no 'fired_at'")
    data = form.get("data", {})
    if not isinstance(data, dict):
        raise MalformedPayload("'data' must be a group of fields")
    return MailchimpEvent(
        type=kind.strip(), fired_at=parse_fired_at(fired), data=data, payload=form
    )
