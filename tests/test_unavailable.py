"""The database down answers 503 (not 500, not a dropped socket); any 500 keeps the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from app.auth.tokens import TokenVerifier
from app.config import Settings
from app.db import create_engine, make_sessionmaker
from app.main import Runtime, create_app
from tests.support.dbproxy import DatabaseProxy, database_proxy
from tests.support.servers import run_server


class Connection:
    """One raw keep-alive HTTP/1.1 connection: what a client reusing its socket sees."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        lines = [f"GET {path} HTTP/1.1", "Host: test"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout=30)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(fields.get("content-length", "0")))
        return int(status_line.split()[1]), fields, orjson.loads(body) if body else None


async def connect(base: str) -> Connection:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    return Connection(reader, writer)


@pytest.fixture
async def proxied(settings: Settings) -> AsyncIterator[tuple[DatabaseProxy, Runtime]]:
    """A runtime whose database connections go through a proxy the test can stop."""
    assert settings.DATABASE_URL
    async with database_proxy(settings.DATABASE_URL) as proxy:
        engine = create_engine(proxy.url_for(settings.DATABASE_URL), pool_size=2, pool_timeout=2)
        rt = Runtime(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine),
            token_verifier=TokenVerifier(settings),
        )
        try:
            yield proxy, rt
        finally:
            await engine.dispose()


async def test_database_down_answers_503_and_keeps_the_connection(
    settings: Settings,
    proxied: tuple[DatabaseProxy, Runtime],
    auth: Callable[..., dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, rt = proxied
    app = create_app(settings, runtime=rt)
    async with run_server(app) as base:
        conn = await connect(base)
        status, _, _ = await conn.get("/api/contacts", auth())
        assert status == 200
        await proxy.stop()
        for _ in range(3):  # refused connections and terminated backends alike
            status, headers, body = await conn.get("/api/contacts", auth())
            assert status == 503, body
            assert headers["content-type"] == "application/problem+json"
            assert int(headers["retry-after"]) > 0
            assert body["status"] == 503 and body["type"].endswith("/database-unavailable")
        await proxy.start()
        status, _, body = await conn.get("/api/contacts", auth())  # the same socket, still open
        assert status == 200, body
        conn.writer.close()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, "a database outage logs one line per request, no traceback"


async def test_an_unexpected_error_is_an_ordinary_500(
    settings: Settings, runtime: Runtime, auth: Callable[..., dict[str, str]]
) -> None:
    app: FastAPI = create_app(settings, runtime=runtime)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async with run_server(app) as base:
        conn = await connect(base)
        status, headers, body = await conn.get("/boom", {})
        assert status == 500
        assert headers["content-type"] == "application/problem+json"
        assert body["request_id"] == headers["x-request-id"]
        assert "a bug" not in orjson.dumps(body).decode()
        status, _, _ = await conn.get("/healthz", {})  # answered on the same connection
        assert status == 200
        conn.writer.close()


async def test_a_missing_unix_socket_is_503_too(
    settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    """The embedded server (`make run`) is reached over a unix socket, which a stopped
    server removes: connecting then fails with FileNotFoundError, not a refusal."""
    engine = create_engine(
        "postgresql+asyncpg://postgres@/audience_sync?host=/nonexistent-socket-dir",
        pool_size=1,
        pool_timeout=2,
    )
    rt = Runtime(
        settings=settings,
        engine=engine,
        sessionmaker=make_sessionmaker(engine),
        token_verifier=TokenVerifier(settings),
    )
    try:
        app = create_app(settings, runtime=rt)
        async with run_server(app) as base:
            conn = await connect(base)
            status, headers, body = await conn.get("/api/contacts", auth())
            assert status == 503, body
            assert int(headers["retry-after"]) > 0
            status, _, _ = await conn.get("/healthz", {})
            assert status == 200
            conn.writer.close()
    finally:
        await engine.dispose()
