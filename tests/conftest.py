"""Shared fixtures: a real PostgreSQL per test session, the app, tokens."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import text

from app.auth.tokens import issue_token
from app.config import Environment, Settings
from app.db import stop_embedded_postgres, to_libpq_url
from app.main import Runtime, create_app, start_runtime
from app.migrate import upgrade_head
from app.models import Base

TEST_JWT_SECRET = "test-secret-" + "x" * 40
# Every table the models declare: a new table is truncated between tests without a list to edit.
TABLES = tuple(t.name for t in Base.metadata.sorted_tables)


def _server_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this session: on TEST_DATABASE_URL's server, else embedded."""
    name = f"audience_sync_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    server = _server_url()
    tmp: str | None = None
    if server:
        admin_url = to_libpq_url(server)
    else:
        from app.db import start_embedded_postgres

        tmp = tempfile.mkdtemp(prefix="as-pg-")
        os.chmod(tmp, 0o755)
        admin = start_embedded_postgres(Path(tmp), database="postgres")
        admin_url = to_libpq_url(admin)

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    url = _with_database(admin_url, name)
    upgrade_head(url)
    yield url

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())
    if tmp:
        stop_embedded_postgres(Path(tmp), mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(url)
        .set(database=name, drivername="postgresql+asyncpg")
        .render_as_string(hide_password=False)
    )


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: no .env, fixed secrets, no in-process worker unless asked."""
    values: dict[str, Any] = {
        "ENVIRONMENT": Environment.test,
        "DATABASE_URL": database_url,
        "AUTH_JWT_SECRET": TEST_JWT_SECRET,
        "ENCRYPTION_KEYS": [Fernet.generate_key().decode()],
        "WORKER_IN_PROCESS": False,
        "AUTO_MIGRATE": False,
        "MAILCHIMP_MODE": "sandbox",
        "LOG_LEVEL": "WARNING",
        "SYNC_COALESCE_SECONDS": 0,
        "DATA_DIR": tempfile.mkdtemp(prefix="as-data-"),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    """The session's settings."""
    return make_settings(database_url)


@pytest.fixture(scope="session")
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """One engine for the session, shared by every app the tests build."""
    rt = await start_runtime(settings, migrate=False)
    yield rt
    await rt.engine.dispose()


@pytest.fixture(autouse=True)
async def clean_db(runtime: Runtime) -> None:
    """Every test starts from empty tables."""
    async with runtime.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def app(settings: Settings, runtime: Runtime) -> AsyncIterator[FastAPI]:
    """The service, lifespan started, on the session's database."""
    application = create_app(settings, runtime=runtime)
    async with LifespanManager(application) as manager:
        yield manager.app  # type: ignore[misc]


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def token_for(settings: Settings) -> Callable[..., str]:
    """Mint a bearer token for an owner."""

    def make(owner: str, *, admin: bool = False) -> str:
        return issue_token(settings, owner, admin=admin)

    return make


@pytest.fixture
def auth(token_for: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """Authorization headers for an owner."""

    def make(owner: str = "owner-a", *, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {token_for(owner, admin=admin)}"}

    return make


async def fetch(runtime: Runtime, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query, as dicts (tests read the database directly to check effects)."""
    async with runtime.engine.begin() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(r) for r in result.mappings()] if result.returns_rows else []
