"""The shared request limits for the clients the API process builds (DESIGN §14.3).

A user's request makes provider calls of its own: the account and its audiences at connect,
the lists, custom fields and the audience chosen on the Settings page. They count against a
provider's rates and daily quota like the workers' requests. The limiter lives in app.sync,
which app.connections may not import (the import contract), so app.wiring hands one in at
start-up (`install`) and takes it back at shutdown; without one (a script, a unit test) the
clients go unmetered as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from app.providers.base import RequestLimiter

if TYPE_CHECKING:
    from app.providers.registry import Provider


class LimitsFor(Protocol):
    """The limiter of one connection's requests (None: the provider declares no rate)."""

    def __call__(
        self, provider: Provider, *, account_key: str, tenant: str
    ) -> RequestLimiter | None:
        """A limiter holding `provider`'s limits for `account_key`, fair to `tenant`."""


_installed: list[LimitsFor] = []


def install(limits: LimitsFor) -> None:
    """Meter the clients of this process through `limits` (app.wiring, at start-up)."""
    _installed[:] = [limits]


def uninstall(limits: LimitsFor) -> None:
    """Stop metering through `limits` (shutdown); another one installed since stays."""
    if _installed and _installed[0] is limits:
        _installed.clear()


def limiter_for(provider: Provider, *, account_key: str, tenant: str) -> RequestLimiter | None:
    """The installed limiter for one connection's requests; None when none is installed."""
    if not _installed:
        return None
    return _installed[0](provider, account_key=account_key, tenant=tenant)
