"""The request log: method, path, status, start, end, in-flight, plus a sandbox's extras."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class LogEntry:
    method: str
    path: str
    status: int
    start: float
    end: float
    in_flight: int
    scope: str | None = None
    fault: str | None = None
    extra: dict[str, Any] | None = None
    body: bytes | None = None


class RequestLog:
    """A bounded log of API requests; `view()` is what `GET /_control/requests` lists."""

    def __init__(self, size: int, *, scope_key: str = "account_id") -> None:
        self.scope_key = scope_key
        self._entries: deque[LogEntry] = deque(maxlen=size)

    def append(self, entry: LogEntry) -> None:
        self._entries.append(entry)

    def clear(self) -> None:
        self._entries.clear()

    def resize(self, size: int) -> None:
        self._entries = deque(self._entries, maxlen=size)

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def view(self) -> list[dict[str, Any]]:
        out = []
        for e in self._entries:
            item: dict[str, Any] = {
                "method": e.method,
                "path": e.path,
                "status": e.status,
                "start": e.start,
                "end": e.end,
                "in_flight": e.in_flight,
                self.scope_key: e.scope,
            }
            if e.extra:
                item.update(e.extra)
            item["fault"] = e.fault
            if e.body is not None:
                item["body"] = e.body.decode("utf-8", "replace")
            out.append(item)
        return out
