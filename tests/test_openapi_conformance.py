"""The OpenAPI document says what the code does (issue 11, item 6: schemathesis' findings)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from app.config import Settings
from app.main import create_app

Auth = Callable[..., dict[str, str]]


def test_every_operation_documents_the_503_of_an_unreachable_database(
    settings: Settings,
) -> None:
    document = create_app(settings).openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/healthz":  # liveness never reads the database
                continue
            response = operation["responses"].get("503")
            assert response is not None, f"{method.upper()} {path} lacks its 503"
            assert "application/problem+json" in response["content"]
            assert "Retry-After" in response["headers"], f"{method.upper()} {path}"


def test_documented_429s_and_401s_name_the_headers_they_carry(settings: Settings) -> None:
    document = create_app(settings).openapi()
    seen = set()
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, header in (("429", "Retry-After"), ("401", "WWW-Authenticate")):
                if status in operation["responses"]:
                    assert header in operation["responses"][status]["headers"]
                    seen.add(status)
    assert seen == {"429", "401"}


async def test_a_401_carries_www_authenticate(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/contacts")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("value", [0, 1, "true", "yes"])
async def test_newsletter_opt_in_is_a_json_boolean(
    client: httpx.AsyncClient, auth: Auth, value: object
) -> None:
    """The document says boolean; 0, 1 and strings were accepted as one."""
    r = await client.post(
        "/api/contacts", json={"email": "b@example.com", "newsletter_opt_in": value}, headers=auth()
    )
    assert r.status_code == 422, r.text
    created = await client.post("/api/contacts", json={"email": "b@example.com"}, headers=auth())
    r = await client.patch(
        f"/api/contacts/{created.json()['id']}", json={"newsletter_opt_in": value}, headers=auth()
    )
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_an_undocumented_method_on_import_is_405(
    client: httpx.AsyncClient, auth: Auth, method: str
) -> None:
    """/api/contacts/import is not a contact id: PATCH there was a 422 about a UUID."""
    r = await client.request(method, "/api/contacts/import", headers=auth())
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "POST"
