"""Timestamps the way Constant Contact writes them, and date parsing as lenient as it is."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime


def iso(ts: float) -> str:
    """`2024-10-30T18:56:35Z`: seconds, UTC (AMP and HYDRATE bodies)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def day(ts: float) -> str:
    """`2022-08-15`: how `deleted_at` is written on a contact."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def parse(text: str) -> float:
    """ISO 8601 with `Z`, `+00:00` or `+0000`, fractions or not, or a bare date; else ValueError."""
    text = text.strip().replace(" ", "+")  # a `+` that arrived unencoded in a query string
    if not text:
        raise ValueError("empty")
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).timestamp()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit() and text[-3] != ":":
        text = f"{text[:-2]}:{text[-2:]}"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def next_midnight(ts: float) -> float:
    """00:00:00 UTC after `ts`: when the daily quota resets."""
    return (int(ts) // 86_400 + 1) * 86_400.0
