"""The sandbox as one ASGI app: `/v3` through its own dispatcher, the rest on Starlette routes."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from app.sandbox.constantcontact import control, oauth
from app.sandbox.constantcontact.api import V3Api
from app.sandbox.constantcontact.config import SandboxConfig
from app.sandbox.constantcontact.realism import Gate
from app.sandbox.constantcontact.state import SandboxState


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


def create_app(config: SandboxConfig | None = None) -> SandboxApp:
    """Build a fresh sandbox (one account, one list, one app per mode, no contacts)."""
    state = SandboxState(config)
    gate = Gate(state)
    app = SandboxApp(routes=[*oauth.routes, *control.routes])
    app.state.sandbox = state
    app.state.gate = gate
    app.api = V3Api(state, gate)
    return app


def sandbox_state(app: Any) -> SandboxState:
    """The state object of an app made by `create_app`."""
    state: SandboxState = app.state.sandbox
    return state
