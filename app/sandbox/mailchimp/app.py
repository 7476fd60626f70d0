"""The sandbox as one ASGI app: `/3.0` on a lean fast path, the rest on Starlette routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from app.sandbox.kit import local_path, on_unmount
from app.sandbox.mailchimp import control, oauth
from app.sandbox.mailchimp.api import MarketingApi
from app.sandbox.mailchimp.config import SandboxConfig
from app.sandbox.mailchimp.state import SandboxState

log = logging.getLogger(__name__)


class SandboxApp(Starlette):
    """A Starlette app whose `/3.0` requests skip routing and middleware entirely."""

    api: MarketingApi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = local_path(scope)
            if path.startswith("/3.0/") or path == "/3.0":
                await self.api(scope, receive, send, path)
                return
        await super().__call__(scope, receive, send)


def create_app(
    config: SandboxConfig | None = None, *, state_file: Path | None = None
) -> SandboxApp:
    """Build the sandbox. `state_file`: JSON snapshot loaded now and saved at shutdown."""
    state = SandboxState(config)
    if state_file is not None:
        try:
            if state.load(state_file):
                log.info("mailchimp sandbox: state loaded from %s", state_file)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mailchimp sandbox: ignoring unreadable state file %s: %s", state_file, exc)

    async def close() -> None:
        """Finish webhook deliveries, keep the data."""
        await state.hub.aclose()
        if state_file is not None:
            state.save(state_file)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await close()

    app = SandboxApp(routes=[*oauth.routes, *control.routes], lifespan=lifespan)
    app.state.sandbox = state
    app.state.state_file = state_file
    on_unmount(app, close)
    app.api = MarketingApi(state)
    return app


def sandbox_state(app: Any) -> SandboxState:
    """The state object of an app made by `create_app`."""
    state: SandboxState = app.state.sandbox
    return state
