"""Fixtures of the ActiveCampaign sandbox tests: a fresh sandbox, a client, a webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.sandbox.activecampaign import DEFAULT_API_KEY, AcConfig, AcState, create_app
from app.sandbox.activecampaign.app import ActiveCampaignSandbox
from tests.support.servers import run_server

API = "/api/3"


@pytest.fixture
def config() -> AcConfig:
    """Functional tests are not about the 5/s limit: it has its own tests."""
    return AcConfig(rate_limit_per_second=10_000)


@pytest.fixture
def sandbox(config: AcConfig) -> ActiveCampaignSandbox:
    return create_app(config)


@pytest.fixture
def state(sandbox: ActiveCampaignSandbox) -> AcState:
    return sandbox.state.sandbox  # type: ignore[no-any-return]


@pytest.fixture
async def ac(sandbox: ActiveCampaignSandbox) -> AsyncIterator[httpx.AsyncClient]:
    """The default account's client over a real TCP port (webhooks need a running loop
    and a server that answers while a delivery is under way)."""
    async with (
        run_server(sandbox, lifespan="off") as base,
        httpx.AsyncClient(base_url=base, headers={"Api-Token": DEFAULT_API_KEY}) as client,
    ):
        yield client


async def sync(ac: httpx.AsyncClient, email: str, **fields: Any) -> dict[str, Any]:
    """`contact/sync` one contact; its record."""
    response = await ac.post(f"{API}/contact/sync", json={"contact": {"email": email, **fields}})
    assert response.status_code in (200, 201), response.text
    return response.json()["contact"]  # type: ignore[no-any-return]


async def on_list(ac: httpx.AsyncClient, contact: str, list_id: str, status: Any) -> httpx.Response:
    return await ac.post(
        f"{API}/contactLists",
        json={"contactList": {"contact": contact, "list": list_id, "status": status}},
    )


@dataclass
class Receiver:
    """A live webhook endpoint: records form POSTs; `/gone` answers 410."""

    url: str
    gone_url: str
    posts: list[list[tuple[str, str]]] = field(default_factory=list)
    gone_hits: int = 0

    def of(self, kind: str) -> list[dict[str, str]]:
        return [dict(p) for p in self.posts if dict(p)["type"] == kind]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: dict[str, Receiver] = {}

    async def hook(request: Request) -> PlainTextResponse:
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        form = await request.form()
        holder["r"].posts.append([(k, str(v)) for k, v in form.multi_items()])
        return PlainTextResponse("ok")

    async def gone(request: Request) -> PlainTextResponse:
        holder["r"].gone_hits += 1
        return PlainTextResponse("gone", status_code=410)

    app = Starlette(
        routes=[
            Route("/hook/secret", hook, methods=["POST"]),
            Route("/gone", gone, methods=["POST"]),
        ]
    )
    async with run_server(app, lifespan="off") as base:
        holder["r"] = Receiver(url=f"{base}/hook/secret", gone_url=f"{base}/gone")
        yield holder["r"]


async def deliveries(ac: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every delivery so far, after waiting for those under way."""
    response = await ac.get("/_control/webhook-deliveries", params={"wait": 1})
    return response.json()["deliveries"]  # type: ignore[no-any-return]
