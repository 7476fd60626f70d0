"""Fixtures of the Mailchimp sandbox tests: a fresh sandbox and an authenticated client."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID, SandboxApp, create_app
from app.sandbox.mailchimp.state import SandboxState

MEMBERS = f"/3.0/lists/{DEFAULT_LIST_ID}/members"
LIST = f"/3.0/lists/{DEFAULT_LIST_ID}"
PROBLEM_TYPE = "application/problem+json; charset=utf-8"
ERROR_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"


def md5(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


def member_url(email: str) -> str:
    return f"{MEMBERS}/{md5(email)}"


def assert_problem(
    response: httpx.Response, status: int, title: str, detail: str | None = None
) -> dict[str, Any]:
    """An error answer exactly as reference §2.3 shows it; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_TYPE
    body = response.json()
    assert body["type"] == ERROR_TYPE
    assert body["title"] == title
    assert body["status"] == status
    assert body["instance"] == response.headers["x-request-id"]
    assert response.headers["link"].endswith(
        '/schema/3.0/Definitions/ProblemDetailDocument.json>; rel="describedBy"'
    )
    if detail is not None:
        assert body["detail"] == detail
    return body


@pytest.fixture(autouse=True)
def clean_db() -> None:
    """The sandbox needs no database: override the suite's autouse table truncation."""


@pytest.fixture
def sandbox() -> SandboxApp:
    return create_app()


@pytest.fixture
def state(sandbox: SandboxApp) -> SandboxState:
    return sandbox.state.sandbox  # type: ignore[no-any-return]


@pytest.fixture
async def mc(sandbox: SandboxApp) -> AsyncIterator[httpx.AsyncClient]:
    """The default account's client, in-process (ASGI transport)."""
    transport = httpx.ASGITransport(app=sandbox)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sandbox.test", auth=("anystring", DEFAULT_API_KEY)
    ) as client:
        yield client


class Members:
    """Shortcuts to put the default audience in a given state."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def put(self, email: str, **body: Any) -> httpx.Response:
        return await self.client.put(member_url(email), json={"email_address": email, **body})

    async def make(self, email: str, status: str, **body: Any) -> dict[str, Any]:
        """A member with `status` (archived: subscribed, then DELETE)."""
        initial = "subscribed" if status == "archived" else status
        response = await self.put(email, status_if_new=initial, **body)
        assert response.status_code == 200, response.text
        if status == "archived":
            deleted = await self.client.delete(member_url(email))
            assert deleted.status_code == 204, deleted.text
        return await self.get(email)

    async def get(self, email: str) -> dict[str, Any]:
        response = await self.client.get(member_url(email))
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def members(mc: httpx.AsyncClient) -> Members:
    return Members(mc)
