"""What a statement costs PostgreSQL: capture the SQL a call sends, then count its buffers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from app.main import Runtime

Captured = list[tuple[str, Any]]


@contextmanager
def capturing(runtime: Runtime, keep: Callable[[str], bool]) -> Iterator[Captured]:
    """The (statement, parameters) the runtime's engine sends while inside, where `keep`."""
    captured: Captured = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if keep(statement):
            captured.append((statement, parameters))

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", capture)
    try:
        yield captured
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", capture)


async def explained(runtime: Runtime, statement: str, parameters: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of a captured statement, run again and rolled back."""
    async with runtime.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            result = await conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters
            )
            raw = result.scalar_one()
        finally:
            await transaction.rollback()
    plan = raw if isinstance(raw, list) else json.loads(raw)
    return dict(plan[0])


def buffers(node: dict[str, Any]) -> int:
    """Shared buffers the statement touched (the top node counts its children's)."""
    return int(node["Shared Hit Blocks"]) + int(node["Shared Read Blocks"])


async def buffers_read(runtime: Runtime, statement: str, parameters: Any) -> int:
    """Shared buffers one captured statement touches when run again (rolled back)."""
    return buffers((await explained(runtime, statement, parameters))["Plan"])
