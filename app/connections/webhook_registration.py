"""Where a connection's webhook points, and keeping it registered (DESIGN §7).

The provider's `InboundAdapter` knows how its API lists, creates and deletes webhooks; this
says where they must point: `<PUBLIC_BASE_URL>/api/webhooks/<provider>/<webhook_token>`. It
is called after a connect or an audience choice and again by every reconcile run, so a webhook
someone deleted at the provider, or one left pointing at an old PUBLIC_BASE_URL, comes back by
itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import text

WEBHOOK_PREFIX = "/api/webhooks/"

# A transaction-scoped advisory lock per connection: ended by commit, rollback or a lost
# session, so a dead process never keeps it.
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('audience-sync:webhook:' || :id, 0))")


def webhook_url(public_base_url: str, provider: str, webhook_token: str) -> str:
    """Where the provider posts this connection's events."""
    return f"{public_base_url.rstrip('/')}{WEBHOOK_PREFIX}{provider}/{webhook_token}"


async def direct(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a request as it is (no gate): the `call` of requests made outside the worker."""
    return await fn()


@asynccontextmanager
async def one_at_a_time(
    begin: Callable[[], AbstractAsyncContextManager[Any]], connection_id: uuid.UUID
) -> AsyncIterator[None]:
    """Keep the webhook of one connection from one place at a time, in every process.

    A connect's background registration, another replica's and a reconcile run may keep the
    same webhook at once: each would list none and create one, and the next run would delete
    the duplicates. Under this lock the second lists what the first created and keeps it.
    `begin` opens a transaction (`AsyncEngine.begin`, `async_sessionmaker.begin`); it stays
    open, idle, while the provider's requests are in flight — a few per connect or run.
    """
    async with begin() as conn:
        await conn.execute(_LOCK, {"id": str(connection_id)})
        yield
