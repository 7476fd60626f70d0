"""Dates as ActiveCampaign writes them: account-local ISO 8601 with the offset."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local(ts: float, tz: str) -> str:
    """`2020-05-24T05:16:42-05:00`."""
    return datetime.fromtimestamp(int(ts), _zone(tz)).isoformat(timespec="seconds")


def local_plain(ts: float, tz: str) -> str:
    """`2020-05-24 05:16:42` in the account's zone (the `*_timestamp` keys)."""
    return datetime.fromtimestamp(int(ts), _zone(tz)).strftime("%Y-%m-%d %H:%M:%S")


def utc_plain(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def parse(text: str, tz: str) -> float:
    """`YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS` or ISO 8601 (no offset: the account's zone)."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_zone(tz))
    return dt.astimezone(UTC).timestamp()
