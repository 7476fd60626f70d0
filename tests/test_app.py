"""The application shell: framework errors, 500s, request ids, CORS, health, metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app.config import Settings
from app.contacts import service as contact_service_module
from app.db import create_engine, make_sessionmaker, to_libpq_url
from app.main import Runtime, create_app
from tests.conftest import make_settings

Auth = Callable[..., dict[str, str]]
SPA = "https://app.example.com"
SECRET_DETAIL = "password=hunter2 in /srv/app/internal.py"
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` after its lifespan started; app errors become responses, not raises."""
    async with LifespanManager(app) as manager:
        # raise_app_exceptions=False: look at the 500 the server sends, as a real client would.
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    """The response is an RFC 9457 problem with `status`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    return dict(body)


class TestFrameworkErrors:
    async def test_unknown_path_is_a_404_problem(self, client: httpx.AsyncClient) -> None:
        problem = assert_problem(await client.get("/api/nothing-here"), 404)
        assert problem["instance"] == "/api/nothing-here"

    async def test_wrong_method_is_a_405_problem_with_allow(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        response = await client.put("/api/contacts", json={}, headers=auth())
        assert_problem(response, 405)
        assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}


class TestUnexpectedErrors:
    @pytest.fixture
    async def crashing(
        self, settings: Settings, runtime: Runtime
    ) -> AsyncIterator[httpx.AsyncClient]:
        """The service plus a test-only route that fails the way a bug would."""
        app = create_app(settings, runtime=runtime)

        @app.get("/_test/boom")
        async def boom() -> None:
            raise RuntimeError(SECRET_DETAIL)

        async with serve(app) as c:
            yield c

    async def test_500_leaks_nothing_and_names_the_request(
        self, crashing: httpx.AsyncClient
    ) -> None:
        response = await crashing.get("/_test/boom", headers={"X-Request-ID": "req-boom-1"})
        problem = assert_problem(response, 500)
        assert SECRET_DETAIL not in response.text
        assert "RuntimeError" not in response.text
        assert "Traceback" not in response.text
        assert problem["title"] == "Internal Server Error"
        assert problem["request_id"] == "req-boom-1"
        assert response.headers["x-request-id"] == "req-boom-1"

    async def test_500_from_a_failing_service_rolls_back(
        self,
        settings: Settings,
        runtime: Runtime,
        auth: Auth,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def broken_view(*args: object, **kwargs: object) -> None:
            raise ValueError(SECRET_DETAIL)

        # The contact is written, then building its API view fails: nothing may stay.
        monkeypatch.setattr(contact_service_module, "_out", broken_view)
        async with serve(create_app(settings, runtime=runtime)) as c:
            response = await c.post(
                "/api/contacts", json={"email": "half@example.com"}, headers=auth()
            )
        problem = assert_problem(response, 500)
        assert SECRET_DETAIL not in response.text
        assert problem["request_id"] == response.headers["x-request-id"]
        async with runtime.engine.connect() as conn:
            from sqlalchemy import text

            assert (await conn.execute(text("SELECT count(*) FROM contacts"))).scalar() == 0


class TestRequestId:
    async def test_valid_incoming_id_is_echoed(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": "abc-123.DEF:4_5"})
        assert response.headers["x-request-id"] == "abc-123.DEF:4_5"

    async def test_missing_id_is_minted(self, client: httpx.AsyncClient) -> None:
        first = (await client.get("/healthz")).headers["x-request-id"]
        second = (await client.get("/healthz")).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", first)
        assert first != second

    @pytest.mark.parametrize("bad", ["has spaces", "x" * 129, "<script>", "a/b", ""])
    async def test_invalid_id_is_replaced(self, client: httpx.AsyncClient, bad: str) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": bad})
        assert response.headers["x-request-id"] != bad
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])

    async def test_problems_carry_the_request_id(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/contacts", headers={"X-Request-ID": "req-401"})
        assert assert_problem(response, 401)["request_id"] == "req-401"
        assert response.headers["x-request-id"] == "req-401"


class TestCors:
    @pytest.fixture
    async def spa_client(
        self, database_url: str, runtime: Runtime
    ) -> AsyncIterator[httpx.AsyncClient]:
        """The service allowing only the SPA's origin."""
        settings = make_settings(database_url, CORS_ORIGINS=SPA)
        async with serve(create_app(settings, runtime=runtime)) as c:
            yield c

    async def test_preflight_from_the_spa_allows_auth_and_if_match(
        self, spa_client: httpx.AsyncClient
    ) -> None:
        response = await spa_client.options(
            "/api/contacts/00000000-0000-0000-0000-000000000001",
            headers={
                "Origin": SPA,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "Authorization, If-Match, Content-Type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == SPA
        assert response.headers["access-control-allow-credentials"] == "true"
        allowed = {
            h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
        }
        assert {"authorization", "if-match", "content-type"} <= allowed
        assert "PATCH" in response.headers["access-control-allow-methods"]

    async def test_actual_request_exposes_etag(
        self, spa_client: httpx.AsyncClient, auth: Auth
    ) -> None:
        created = await spa_client.post(
            "/api/contacts",
            json={"email": "cors@example.com"},
            headers={**auth(), "Origin": SPA},
        )
        assert created.status_code == 201
        assert created.headers["access-control-allow-origin"] == SPA
        exposed = {
            h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")
        }
        assert {"etag", "location", "x-request-id"} <= exposed

    async def test_other_origins_get_no_cors_headers(self, spa_client: httpx.AsyncClient) -> None:
        preflight = await spa_client.options(
            "/api/contacts",
            headers={
                "Origin": "https://evil.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        simple = await spa_client.get("/healthz", headers={"Origin": "https://evil.example.com"})
        assert simple.status_code == 200
        # Without Allow-Origin the browser hands the response to no script of that origin.
        assert "access-control-allow-origin" not in simple.headers


class TestHealth:
    async def test_healthz(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_readyz_at_head(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "database": "ok", "migrations": "head"}

    @pytest.fixture
    async def scratch_db(self, database_url: str) -> AsyncIterator[str]:
        """An empty database on the test server: no migrations applied."""
        admin = to_libpq_url(database_url)
        name = f"audience_sync_scratch_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
            yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()

    @contextlib.asynccontextmanager
    async def client_on(self, url: str, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
        engine = create_engine(url, pool_size=1)
        rt = dataclasses.replace(runtime, engine=engine, sessionmaker=make_sessionmaker(engine))
        try:
            async with serve(create_app(runtime.settings, runtime=rt)) as c:
                yield c
        finally:
            await engine.dispose()

    async def test_readyz_503_without_migrations(self, scratch_db: str, runtime: Runtime) -> None:
        async with self.client_on(scratch_db, runtime) as c:
            problem = assert_problem(await c.get("/readyz"), 503)
        assert "migration head" in str(problem["detail"])

    async def test_readyz_503_when_schema_is_behind(
        self, scratch_db: str, runtime: Runtime
    ) -> None:
        conn = await asyncpg.connect(to_libpq_url(scratch_db))
        try:
            await conn.execute(
                "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
                "INSERT INTO alembic_version VALUES ('0000older0000')"
            )
        finally:
            await conn.close()
        async with self.client_on(scratch_db, runtime) as c:
            assert_problem(await c.get("/readyz"), 503)

    async def test_readyz_503_when_database_is_unreachable(self, runtime: Runtime) -> None:
        async with self.client_on("postgresql+asyncpg://postgres@127.0.0.1:9/none", runtime) as c:
            problem = assert_problem(await c.get("/readyz"), 503)
        assert "unreachable" in str(problem["detail"])


class TestMetrics:
    async def test_prometheus_text(self, client: httpx.AsyncClient, auth: Auth) -> None:
        await client.get("/api/contacts", headers=auth())
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert "# TYPE audience_sync_http_requests_total counter" in text
        # Counted by route template, never by raw path.
        line = (
            r'audience_sync_http_requests_total\{method="GET",route="/api/contacts",status="200"\}'
        )
        assert re.search(line + r" [1-9]", text)
        assert 'audience_sync_queue_depth{state="ready"} 0.0' in text


class TestOpenApi:
    async def test_every_documented_422_is_problem_json(self, client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()
        documented = [
            (path, method)
            for path, operations in schema["paths"].items()
            for method, operation in operations.items()
            if "422" in operation.get("responses", {})
        ]
        assert documented  # the contacts API has parameters and bodies
        wrong = [
            (path, method)
            for path, method in documented
            if list(schema["paths"][path][method]["responses"]["422"]["content"])
            != ["application/problem+json"]
        ]
        assert wrong == []
