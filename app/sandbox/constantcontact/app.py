"""The sandbox as one ASGI app: `/v3` through its own dispatcher, the rest on Starlette routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from app.sandbox.constantcontact import control, oauth, snapshot
from app.sandbox.constantcontact.api import V3Api
from app.sandbox.constantcontact.config import SandboxConfig
from app.sandbox.constantcontact.state import SandboxState
from app.sandbox.kit import control_routes, on_unmount


class SandboxApp(Starlette):
    """A Starlette app whose `/v3` requests go straight to the API dispatcher."""

    api: V3Api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if path.startswith("/v3/") or path == "/v3":
                await self.api(scope, receive, send, path)
                return
        await super().__call__(scope, receive, send)


log = logging.getLogger(__name__)


def create_app(
    config: SandboxConfig | None = None, *, state_file: Path | None = None
) -> SandboxApp:
    """Build a sandbox: fresh (one account, one list, one app per mode, no contacts), or the
    snapshot in `state_file`, which is saved again at shutdown."""
    state = SandboxState(config)
    if state_file is not None:
        try:
            if snapshot.load(state, state_file):
                log.info("constantcontact sandbox: state loaded from %s", state_file)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("constantcontact sandbox: ignoring unreadable %s: %s", state_file, exc)
            state.reset()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if state_file is not None:
                snapshot.save(state, state_file)

    app = SandboxApp(
        routes=[*oauth.routes, *control_routes(with_clock=True), *control.routes],
        lifespan=lifespan,
    )
    app.state.sandbox = state
    app.state.state_file = state_file

    async def close() -> None:
        if state_file is not None:
            snapshot.save(state, state_file)

    on_unmount(app, close)  # mounted in the service, the lifespan above never runs
    app.api = V3Api(state)
    return app


def sandbox_state(app: Any) -> SandboxState:
    """The state object of an app made by `create_app`."""
    state: SandboxState = app.state.sandbox
    return state
