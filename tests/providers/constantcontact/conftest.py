"""Fixtures of the Constant Contact client tests: the sandbox over real HTTP and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.providers.base import ContactPayload
from app.providers.constantcontact.client import ConstantContactClient
from app.sandbox.constantcontact import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_LIST_ID,
    SandboxConfig,
    create_app,
)
from tests.sandbox.constantcontact.conftest import Sandbox
from tests.support.servers import run_server

LIST = DEFAULT_LIST_ID


@pytest.fixture
async def cc() -> AsyncIterator[Sandbox]:
    """A fresh Constant Contact sandbox (rate limit lifted, fast activities)."""
    app = create_app(SandboxConfig(rate_per_second=10_000, activity_duration_ms=20))
    async with run_server(app, lifespan="off") as base, httpx.AsyncClient(base_url=base) as http:
        yield Sandbox(base, app, http)


@pytest.fixture
async def client(cc: Sandbox) -> AsyncIterator[ConstantContactClient]:
    token = (await cc.mint())["access_token"]
    async with httpx.AsyncHTTPTransport() as transport:
        yield ConstantContactClient(
            transport, api_base=f"{cc.base}/v3", access_token=token, timeout=10
        )


def payload(email: str, **kw: Any) -> ContactPayload:
    """A payload with our usual defaults (a new person subscribes)."""
    kw.setdefault("fields", {})
    kw.setdefault("consent_if_new", "subscribed")
    return ContactPayload(email_address=email, **kw)


async def paths(cc: Sandbox) -> list[str]:
    """Every `METHOD path` the sandbox saw."""
    body = (await cc.http.get("/_control/requests")).json()
    return [f"{r['method']} {r['path']}" for r in body["requests"]]


async def other_list(cc: Sandbox, name: str = "Theirs") -> str:
    """A list of the account's own (not ours)."""
    response = await cc.http.post(
        f"/_control/accounts/{DEFAULT_ACCOUNT_ID}/lists", json={"name": name}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["list_id"])
