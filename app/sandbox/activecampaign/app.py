"""The sandbox as one ASGI app: `/api/3` on a lean path, `/_control` on Starlette routes,
and nginx's HTML 404 for every other path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.sandbox.activecampaign import constants as c
from app.sandbox.activecampaign import control
from app.sandbox.activecampaign.api import ActiveCampaignApi
from app.sandbox.activecampaign.config import AcConfig
from app.sandbox.activecampaign.state import AcState
from app.sandbox.kit import local_path, on_unmount

log = logging.getLogger(__name__)


class ActiveCampaignSandbox(Starlette):
    """A Starlette app whose `/api/3` requests skip routing and middleware entirely."""

    api: ActiveCampaignApi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = local_path(scope)
            if path == c.API_PREFIX or path.startswith(c.API_PREFIX + "/"):
                await self.api(scope, receive, send, path)
                return
        await super().__call__(scope, receive, send)


async def _html_404(request: Request, exc: Exception) -> Response:
    return Response(c.HTML_404, 404, media_type="text/html")


def create_app(
    config: AcConfig | None = None, *, state_file: Path | None = None
) -> ActiveCampaignSandbox:
    """Build the sandbox (one account with one list). `state_file`: a JSON snapshot of the
    accounts, loaded now and saved when the app stops (alone or mounted)."""
    state = AcState(config)
    if state_file is not None:
        try:
            if state.load(state_file):
                log.info("activecampaign sandbox: state loaded from %s", state_file)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("activecampaign sandbox: ignoring unreadable %s: %s", state_file, exc)

    async def close() -> None:
        await state.hub.aclose()
        if state_file is not None:
            state.save(state_file)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await close()

    app = ActiveCampaignSandbox(
        routes=control.routes,
        lifespan=lifespan,
        exception_handlers={404: _html_404},
    )
    app.state.sandbox = state
    on_unmount(app, close)
    app.api = ActiveCampaignApi(state)
    return app


def sandbox_state(app: Any) -> AcState:
    state: AcState = app.state.sandbox
    return state
