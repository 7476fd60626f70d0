"""Timestamps the way Mailchimp writes them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_cache_second = -1
_cache_text = ""


def now() -> float:
    return time.time()


def iso(ts: float) -> str:
    """`2022-02-23T19:31:55+00:00` (seconds, UTC); cached per second for the hot path."""
    global _cache_second, _cache_text
    sec = int(ts)
    if sec != _cache_second:
        _cache_text = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(sec))
        _cache_second = sec
    return _cache_text


def fired_at(ts: float) -> str:
    """Webhook time: `YYYY-MM-DD HH:MM:SS` in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def parse(text: str) -> float:
    """`Y-m-d H:i:s` (UTC) or ISO 8601 with an offset or Z; raise ValueError otherwise."""
    text = text.strip()
    if len(text) == 19 and text[10] == " ":
        dt = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    else:
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
