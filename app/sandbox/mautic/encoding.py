"""PHP's wire formats: `json_encode` bytes, `serialize()` strings and `a[b][]=c` form parsing."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

_SEG = re.compile(r"\[([^\]]*)\]")


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _u_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # astral: a surrogate pair, as json_encode writes it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def php_json(value: Any) -> bytes:
    """`json_encode($value)` with default flags: `/` as `\\/`, non-ASCII as `\\uXXXX`."""
    raw = orjson.dumps(value)
    # '/' and non-ASCII can only occur inside JSON strings, so plain replaces are exact.
    raw = raw.replace(b"/", b"\\/")
    if raw.isascii():
        return raw
    return _NON_ASCII.sub(_u_escape, raw.decode()).encode()


def symfony_json(value: Any) -> bytes:
    """Symfony `JsonResponse` bytes (listener-built errors): also `'` `<` `>` `&` as `\\u00XX`."""
    text = php_json(value).decode()
    for char, code in (("'", "\\u0027"), ("<", "\\u003C"), (">", "\\u003E"), ("&", "\\u0026")):
        text = text.replace(char, code)
    return text.encode()


def php_serialize(value: Any) -> str:
    """PHP `serialize()` of a JSON-like value (field `properties` are stored that way)."""
    if value is None:
        return "N;"
    if isinstance(value, bool):
        return f"b:{int(value)};"
    if isinstance(value, int):
        return f"i:{value};"
    if isinstance(value, float):
        return f"d:{value!r};"
    if isinstance(value, str):
        return f's:{len(value.encode())}:"{value}";'
    items = value.items() if isinstance(value, dict) else enumerate(value)
    body = "".join(php_serialize(k) + php_serialize(v) for k, v in items)
    return f"a:{len(value)}:{{{body}}}"


def _insert(target: dict[str, Any], key: str, value: str) -> None:
    head, _, rest = key.partition("[")
    if not head:
        return
    parts = [head, *_SEG.findall("[" + rest)] if rest else [head]
    node = target
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "":
            part = str(sum(1 for k in node if k.isdigit()))
        if last:
            node[part] = value  # PHP: a repeated key without [] keeps only the last value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def listify(value: Any) -> Any:
    """Dicts whose keys are exactly 0..n-1 become lists (how PHP arrays look after JSON)."""
    if isinstance(value, dict):
        out = {k: listify(v) for k, v in value.items()}
        if (
            out
            and all(k.isdigit() for k in out)
            and sorted(int(k) for k in out) == list(range(len(out)))
        ):
            return [out[str(i)] for i in range(len(out))]
        return out
    return value


def php_form(text: str) -> dict[str, Any]:
    """Parse a query string or form body the PHP way (`where[0][col]=email`, `tags[]=a`)."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        _insert(out, key, value)
    return out
