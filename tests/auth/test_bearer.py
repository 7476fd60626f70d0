"""HS256 bearer tokens: every way a token can be wrong is a 401 problem, admins are admins."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import OctKey

from app.auth.deps import AdminDep, PrincipalDep
from app.config import Settings
from app.main import Runtime, create_app
from tests.conftest import TEST_JWT_SECRET

OTHER_SECRET = "another-secret-" + "y" * 40


def b64(data: Any) -> str:
    """Base64url without padding, as JOSE writes it."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def hs256(claims: dict[str, Any], secret: str = TEST_JWT_SECRET) -> str:
    """A token signed with `secret`."""
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, OctKey.import_key(secret))


def valid_claims(**extra: Any) -> dict[str, Any]:
    """Claims that pass, unless `extra` spoils them."""
    now = int(time.time())
    return {"sub": "owner-a", "iat": now, "exp": now + 600, **extra}


@pytest.fixture
async def who_app(settings: Settings, runtime: Runtime) -> AsyncIterator[FastAPI]:
    """The service plus two test-only routes that show the principal and guard an admin page."""
    application = create_app(settings, runtime=runtime)

    @application.get("/_test/whoami")
    async def whoami(principal: PrincipalDep) -> dict[str, Any]:
        return {"owner_id": principal.owner_id, "is_admin": principal.is_admin}

    @application.get("/_test/admin-only")
    async def admin_only(principal: AdminDep) -> dict[str, str]:
        return {"admin": principal.owner_id}

    async with LifespanManager(application) as manager:
        yield manager.app  # type: ignore[misc]


@pytest.fixture
async def who(who_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `who_app`."""
    transport = httpx.ASGITransport(app=who_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def assert_unauthorized(response: httpx.Response, reason: str | None = None) -> None:
    """A 401 problem that asks for a bearer token."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    problem = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= problem.keys()
    assert problem["status"] == 401
    assert problem["instance"] == "/api/contacts"
    if reason:
        assert reason in problem["detail"]


class TestRejectedTokens:
    async def test_missing_header(self, client: httpx.AsyncClient) -> None:
        assert_unauthorized(await client.get("/api/contacts"), "bearer token is required")

    @pytest.mark.parametrize(
        "header",
        [
            "Basic b3duZXItYTpwYXNzd29yZA==",  # another scheme
            "Bearer",  # no token at all
            "Bearer not-a-jwt",
            "Bearer a.b",  # two segments
            "Bearer " + b64({"alg": "HS256"}) + ".bm90IGpzb24.c2ln",  # payload is not JSON
            "Bearer " + b64(["alg"]) + "." + b64({"sub": "x"}) + ".c2ln",  # header not an object
        ],
    )
    async def test_malformed(self, client: httpx.AsyncClient, header: str) -> None:
        response = await client.get("/api/contacts", headers={"Authorization": header})
        assert_unauthorized(response)

    async def test_expired(self, client: httpx.AsyncClient) -> None:
        now = int(time.time())
        token = hs256(valid_claims(iat=now - 7200, exp=now - 3600))
        response = await client.get("/api/contacts", headers={"Authorization": f"Bearer {token}"})
        assert_unauthorized(response, "expired")

    async def test_without_expiry(self, client: httpx.AsyncClient) -> None:
        claims = valid_claims()
        del claims["exp"]
        response = await client.get(
            "/api/contacts", headers={"Authorization": f"Bearer {hs256(claims)}"}
        )
        assert_unauthorized(response, "exp")

    async def test_signed_with_another_secret(self, client: httpx.AsyncClient) -> None:
        token = hs256(valid_claims(), secret=OTHER_SECRET)
        response = await client.get("/api/contacts", headers={"Authorization": f"Bearer {token}"})
        assert_unauthorized(response)

    async def test_alg_none(self, client: httpx.AsyncClient) -> None:
        token = b64({"alg": "none", "typ": "JWT"}) + "." + b64(valid_claims()) + "."
        response = await client.get("/api/contacts", headers={"Authorization": f"Bearer {token}"})
        assert_unauthorized(response, "none")

    async def test_signature_of_another_token(self, client: httpx.AsyncClient) -> None:
        # Claims swapped under a valid signature: the signature no longer matches.
        header, _, signature = hs256(valid_claims()).split(".")
        forged = f"{header}.{b64(valid_claims(sub='owner-b', role='admin'))}.{signature}"
        response = await client.get("/api/contacts", headers={"Authorization": f"Bearer {forged}"})
        assert_unauthorized(response)

    @pytest.mark.parametrize("sub", [None, "", "   "])
    async def test_without_subject(self, client: httpx.AsyncClient, sub: str | None) -> None:
        claims = valid_claims()
        if sub is None:
            del claims["sub"]
        else:
            claims["sub"] = sub
        response = await client.get(
            "/api/contacts", headers={"Authorization": f"Bearer {hs256(claims)}"}
        )
        assert_unauthorized(response)

    async def test_nothing_is_written_for_a_rejected_token(
        self, client: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        token = hs256(valid_claims(), secret=OTHER_SECRET)
        response = await client.post(
            "/api/contacts",
            json={"email": "x@example.com"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 401
        async with runtime.engine.connect() as conn:
            from sqlalchemy import text

            assert (await conn.execute(text("SELECT count(*) FROM contacts"))).scalar() == 0


class TestPrincipal:
    async def test_sub_is_the_owner(self, who: httpx.AsyncClient) -> None:
        response = await who.get(
            "/_test/whoami", headers={"Authorization": f"Bearer {hs256(valid_claims())}"}
        )
        assert response.json() == {"owner_id": "owner-a", "is_admin": False}

    async def test_role_admin_makes_an_admin(self, who: httpx.AsyncClient) -> None:
        token = hs256(valid_claims(role="admin"))
        headers = {"Authorization": f"Bearer {token}"}
        assert (await who.get("/_test/whoami", headers=headers)).json() == {
            "owner_id": "owner-a",
            "is_admin": True,
        }
        response = await who.get("/_test/admin-only", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"admin": "owner-a"}

    @pytest.mark.parametrize("role", [None, "user", "Admin", ["admin"]])
    async def test_anything_else_is_not_admin(self, who: httpx.AsyncClient, role: Any) -> None:
        claims = valid_claims() if role is None else valid_claims(role=role)
        headers = {"Authorization": f"Bearer {hs256(claims)}"}
        assert (await who.get("/_test/whoami", headers=headers)).json()["is_admin"] is False
        response = await who.get("/_test/admin-only", headers=headers)
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"

    async def test_issued_tokens_verify(
        self, who: httpx.AsyncClient, token_for: Callable[..., str]
    ) -> None:
        headers = {"Authorization": f"Bearer {token_for('owner-z', admin=True)}"}
        assert (await who.get("/_test/whoami", headers=headers)).json() == {
            "owner_id": "owner-z",
            "is_admin": True,
        }
