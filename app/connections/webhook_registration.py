"""Where a connection's webhook points, and keeping it registered (DESIGN §7).

The provider's `InboundAdapter` knows how its API lists, creates and deletes webhooks; this
says where they must point: `<PUBLIC_BASE_URL>/api/webhooks/<provider>/<webhook_token>`. It
is called after a connect or an audience choice and again by every reconcile run, so a webhook
someone deleted at the provider, or one left pointing at an old PUBLIC_BASE_URL, comes back by
itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

WEBHOOK_PREFIX = "/api/webhooks/"


def webhook_url(public_base_url: str, provider: str, webhook_token: str) -> str:
    """Where the provider posts this connection's events."""
    return f"{public_base_url.rstrip('/')}{WEBHOOK_PREFIX}{provider}/{webhook_token}"


async def direct(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a request as it is (no gate): the `call` of requests made outside the worker."""
    return await fn()
