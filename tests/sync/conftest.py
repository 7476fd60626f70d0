"""Fixtures of the sync tests: a real sandbox over TCP, a connection, an engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.connections.service import connection_service
from app.db import session_scope
from app.main import Runtime, create_app
from app.providers import registry
from app.providers.base import Audience
from app.providers.mailchimp.connect import api_key_account
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID, SandboxConfig
from app.sandbox.mailchimp import create_app as create_sandbox
from app.sync.engine import SyncEngine
from tests.support.servers import run_server
from tests.support.sync import Sandbox

OWNER = "owner-a"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """A fresh Mailchimp sandbox on a real port."""
    app = create_sandbox(SandboxConfig())
    async with run_server(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield Sandbox(url=url, http=http, app=app, list_id=DEFAULT_LIST_ID, api_key=DEFAULT_API_KEY)


@pytest.fixture
def sync_settings(settings: Settings, sandbox: Sandbox) -> Settings:
    """The session's settings aimed at this test's sandbox, with short timeouts."""
    return settings.model_copy(
        update={
            "MAILCHIMP_SANDBOX_URL": sandbox.url,
            "MAILCHIMP_TIMEOUT_SECONDS": 2.0,
            "SYNC_BACKOFF_BASE_SECONDS": 0.05,
            "SYNC_BACKOFF_MAX_SECONDS": 0.5,
            "SYNC_POLL_INTERVAL_SECONDS": 0.2,
        }
    )


@pytest.fixture
async def connection(runtime: Runtime, sync_settings: Settings) -> dict[str, Any]:
    """OWNER connected to the sandbox's default audience."""
    account = api_key_account(sync_settings, DEFAULT_API_KEY)
    account.account_name = "Sandbox"
    async with session_scope(runtime.sessionmaker) as session:
        row = await connection_service.save(
            session,
            provider=registry.get("mailchimp"),
            settings=sync_settings,
            owner_id=OWNER,
            account=account,
            audience=Audience(id=DEFAULT_LIST_ID, name="Sandbox audience", member_count=0),
        )
    return dict(row)


@pytest.fixture
def make_engine(runtime: Runtime, sync_settings: Settings) -> Callable[..., SyncEngine]:
    """Build engines on the test database (override settings with keyword arguments)."""

    def make(**overrides: Any) -> SyncEngine:
        settings = sync_settings.model_copy(update=overrides) if overrides else sync_settings
        return SyncEngine(runtime.engine, settings)

    return make


@pytest.fixture
async def sync_app(sync_settings: Settings, runtime: Runtime) -> AsyncIterator[FastAPI]:
    """The service (no in-process worker) with settings aimed at the sandbox."""
    from asgi_lifespan import LifespanManager

    application = create_app(sync_settings, runtime=runtime)
    async with LifespanManager(application) as manager:
        yield manager.app  # type: ignore[misc]


@pytest.fixture
async def api(sync_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP client of the service."""
    transport = httpx.ASGITransport(app=sync_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
