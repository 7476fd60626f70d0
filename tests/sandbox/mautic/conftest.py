"""Fixtures of the Mautic sandbox tests: the sandbox and a webhook receiver over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, MauticState, create_app
from tests.support.servers import run_server


@dataclass
class Sandbox:
    """The running sandbox: its URL, its state, and a client with a client_credentials token."""

    url: str
    state: MauticState
    http: httpx.AsyncClient

    async def token(
        self, client_id: str = DEFAULT_CLIENT_ID, secret: str = DEFAULT_CLIENT_SECRET
    ) -> str:
        response = await self.http.post(
            "/oauth/v2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    async def configure(self, **changes: Any) -> None:
        response = await self.http.patch("/_control/config", json=changes)
        assert response.status_code == 200, response.text

    async def act(self, action: str, email: str, **body: Any) -> httpx.Response:
        return await self.http.post(f"/_control/actions/{action}", json={"email": email, **body})


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    app = create_app()
    async with run_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield Sandbox(url, app.sandbox, http)


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """An API client authenticated with a client_credentials bearer token."""
    token = await sandbox.token()
    async with httpx.AsyncClient(
        base_url=f"{sandbox.url}/api", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as client:
        yield client


@dataclass
class Receiver:
    """A webhook endpoint that records each delivery's raw body and headers."""

    url: str = ""
    status: int = 200
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """Every (trigger, item) received, in order."""
        import json

        out = []
        for d in self.deliveries:
            for trigger, items in json.loads(d["body"]).items():
                out.extend((trigger, item) for item in items)
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: Request) -> Response:
        rec.deliveries.append({"body": await request.body(), "headers": dict(request.headers)})
        rec.arrived.set()
        return Response(status_code=rec.status)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with run_server(app) as url:
        rec.url = f"{url}/hook"
        yield rec


async def make_hook(
    api: httpx.AsyncClient, url: str, triggers: list[str], **extra: Any
) -> dict[str, Any]:
    response = await api.post(
        "/hooks/new", json={"name": "test", "webhookUrl": url, "triggers": triggers, **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()["hook"]  # type: ignore[no-any-return]


async def new_contact(api: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await api.post("/contacts/new", json=fields)
    assert response.status_code in (200, 201), response.text
    return response.json()["contact"]  # type: ignore[no-any-return]
