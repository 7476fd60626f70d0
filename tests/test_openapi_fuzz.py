"""schemathesis over the service's OpenAPI document, authenticated, against the ASGI app.

The document is the one `/openapi.json` serves (`app.openapi()`), loaded at import so that
schemathesis can make one test per operation. The requests go in-process to an app on the
session's real database; schemathesis drives it on its own event-loop thread, so that app
owns its engine (opened in its lifespan there) instead of sharing the session runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from app.auth.tokens import issue_token
from app.config import Settings
from app.main import Runtime, create_app
from tests.conftest import fetch, make_settings

Auth = Callable[..., dict[str, str]]

FUZZ_OWNER = "fuzz-owner"

# Building the app touches no database; only its lifespan (run by schemathesis) does.
schema = schemathesis.openapi.from_dict(
    create_app(make_settings("postgresql+asyncpg://unused@127.0.0.1/unused")).openapi()
)


@schemathesis.check
def not_a_server_error_but_an_absent_provider(
    ctx: Any, response: Any, case: schemathesis.Case
) -> bool | None:
    """A 5xx is a defect, except the documented 503 a connect answers when the provider is
    not answering: no sandbox listens on a port here (the app runs in-process), so a
    credentials body that passes validation reaches nobody."""
    if response.status_code == 503:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if body.get("type", "").endswith("/unavailable") and "not answering" in body.get(
            "detail", ""
        ):
            return None
    return schemathesis.checks.not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_but_an_absent_provider,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_settings(database_url: str) -> Settings:
    """Settings on the session's database."""
    return make_settings(database_url)


@pytest.fixture(scope="module")
def service(fuzz_settings: Settings) -> FastAPI:
    """The app under fuzzing; its lifespan starts on the first request schemathesis sends."""
    return create_app(fuzz_settings)


@pytest.fixture(scope="module")
def bearer(fuzz_settings: Settings) -> dict[str, str]:
    """Authorization header of the fuzzing owner."""
    return {"Authorization": f"Bearer {issue_token(fuzz_settings, FUZZ_OWNER)}"}


# The OAuth callback is a page for the popup that Mailchimp redirects to: a browser gets
# HTML whatever the outcome, an API client (Accept: application/json) gets problem+json.
# It is fuzzed for server errors only.
OAUTH_CALLBACK = "/api/integrations/{provider}/callback"
FUZZ_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@schema.exclude(path=OAUTH_CALLBACK).parametrize()
@FUZZ_SETTINGS
def test_api_conforms_to_its_schema(
    case: schemathesis.Case, service: FastAPI, bearer: dict[str, str]
) -> None:
    case.call_and_validate(app=service, headers=bearer, checks=CHECKS)


@schema.include(path=OAUTH_CALLBACK).parametrize()
@FUZZ_SETTINGS
def test_oauth_callback_never_fails_on_our_side(
    case: schemathesis.Case, service: FastAPI, bearer: dict[str, str]
) -> None:
    case.call_and_validate(
        app=service, headers=bearer, checks=[schemathesis.checks.not_a_server_error]
    )


class TestFoundByFuzzing:
    """Inputs schemathesis once turned into 500s, pinned as plain examples."""

    @pytest.mark.parametrize(
        "body",
        [
            {"email": "nul@example.com", "addr1": "a\x00b"},
            {"email": "nul@example.com", "custom_fields": {"\x00": None}},
            {"email": "nul@example.com", "tags": ["ok", "b\x00d"]},
        ],
    )
    async def test_nul_in_body_is_422(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime, body: dict[str, Any]
    ) -> None:
        response = await client.post("/api/contacts", json=body, headers=auth())
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert "NUL" in response.text
        assert await fetch(runtime, "SELECT id FROM contacts") == []

    @pytest.mark.parametrize("param", ["q", "tag"])
    async def test_nul_in_filters_is_422(
        self, client: httpx.AsyncClient, auth: Auth, param: str
    ) -> None:
        response = await client.get("/api/contacts", params={param: "a\x00"}, headers=auth())
        assert response.status_code == 422

    async def test_patch_custom_fields_null_clears_them(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        created = await client.post(
            "/api/contacts",
            json={"email": "cf@example.com", "custom_fields": {"plan": "pro"}},
            headers=auth(),
        )
        response = await client.patch(
            f"/api/contacts/{created.json()['id']}",
            json={"custom_fields": None},
            headers=auth(),
        )
        assert response.status_code == 200
        assert response.json()["custom_fields"] == {}

    async def test_body_that_is_not_utf8_is_a_422_problem(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        # FastAPI answers an undecodable body with an undocumented 400; every operation
        # documents 422 for a body it cannot use.
        response = await client.post(
            "/api/contacts",
            content=b'{"email": "\xff"}',
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"] == [{"field": "body", "message": "not parsable"}]
