"""Live mode never calls a stored API endpoint that is not Mailchimp's: a clear 409, and the
connection in `error` asking to reconnect (not a 500)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import MailchimpMode, Settings
from app.main import Runtime, create_app
from tests.sync.conftest import OWNER


@pytest.fixture
async def live_api(sync_settings: Settings, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The service in live mode; the stored connection points at the sandbox (not Mailchimp)."""
    settings = sync_settings.model_copy(update={"MAILCHIMP_MODE": MailchimpMode.live})
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/integrations/mailchimp/audiences", None),
        ("PUT", "/api/integrations/mailchimp/audience", {"audience_id": "abc123"}),
    ],
)
async def test_a_stored_endpoint_failing_the_host_check_is_a_409_and_an_error_status(
    live_api: httpx.AsyncClient,
    connection: dict[str, Any],
    token_for: Callable[..., str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    headers = {"Authorization": f"Bearer {token_for(OWNER)}"}
    r = await live_api.request(method, path, json=body, headers=headers)
    assert r.status_code == 409, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("Reconnect Mailchimp")
    status = (await live_api.get("/api/integrations/mailchimp", headers=headers)).json()
    assert status["status"] == "error"
    assert status["notice"].startswith("Reconnect Mailchimp")
