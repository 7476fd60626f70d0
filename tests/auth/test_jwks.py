"""RS256 tokens verified against a JWKS served over real HTTP: issuer, audience, rotation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import RSAKey

from app.auth.tokens import JWKS_MIN_REFRESH_SECONDS, JWKS_TTL_SECONDS, TokenVerifier
from app.config import Settings
from app.errors import Unauthorized
from app.main import Runtime, create_app
from tests.auth.test_bearer import hs256
from tests.conftest import make_settings
from tests.support.servers import run_server

ISSUER = "https://login.example.com/"
AUDIENCE = "audience-sync"


def rsa_key(kid: str) -> RSAKey:
    """A fresh RSA private key named `kid`."""
    return RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)


def rs256(key: RSAKey, **extra: Any) -> str:
    """A token the issuer would sign with `key`; `extra` overrides claims (None removes one)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "owner-rs",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(extra)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)


@dataclasses.dataclass
class Issuer:
    """A tiny identity provider: its published keys and how often they were fetched."""

    url: str
    keys: list[RSAKey]
    fetches: int = 0

    def publish(self, *keys: RSAKey) -> None:
        """Replace the published key set (a rotation)."""
        self.keys = list(keys)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def first_key() -> RSAKey:
    """The issuer's key at the start of each test (generated once: RSA is slow)."""
    return rsa_key("key-1")


@pytest.fixture(scope="module")
def second_key() -> RSAKey:
    """The key the issuer rotates to."""
    return rsa_key("key-2")


@pytest.fixture
async def issuer(first_key: RSAKey) -> AsyncIterator[Issuer]:
    """The JWKS endpoint on a real port."""
    jwks_app = FastAPI()
    state = Issuer(url="", keys=[first_key])

    @jwks_app.get("/.well-known/jwks.json")
    async def jwks() -> dict[str, Any]:
        state.fetches += 1
        return {"keys": [k.as_dict(private=False) for k in state.keys]}

    async with run_server(jwks_app, lifespan="off") as base:
        state.url = f"{base}/.well-known/jwks.json"
        yield state


@pytest.fixture
def jwks_settings(database_url: str, issuer: Issuer) -> Settings:
    """Settings that verify RS256 tokens from the issuer, with issuer and audience checks."""
    return make_settings(
        database_url, AUTH_JWKS_URL=issuer.url, AUTH_ISSUER=ISSUER, AUTH_AUDIENCE=AUDIENCE
    )


@pytest.fixture
def clock() -> FakeClock:
    """The verifier's clock."""
    return FakeClock()


@pytest.fixture
def verifier(jwks_settings: Settings, clock: FakeClock) -> TokenVerifier:
    """A verifier on the issuer's JWKS whose clock the test controls."""
    return TokenVerifier(jwks_settings, clock=clock)


@pytest.fixture
async def jwks_client(
    jwks_settings: Settings, runtime: Runtime, verifier: TokenVerifier
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the service configured for the issuer (sharing the session's database)."""
    rt = dataclasses.replace(runtime, settings=jwks_settings, token_verifier=verifier)
    application = create_app(jwks_settings, runtime=rt)
    async with LifespanManager(application) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestOverHttp:
    async def test_valid_rs256_token_is_the_owner(
        self, jwks_client: httpx.AsyncClient, first_key: RSAKey
    ) -> None:
        response = await jwks_client.post(
            "/api/contacts", json={"email": "rs@example.com"}, headers=bearer(rs256(first_key))
        )
        assert response.status_code == 201, response.text
        listed = await jwks_client.get("/api/contacts", headers=bearer(rs256(first_key)))
        assert [c["email"] for c in listed.json()["items"]] == ["rs@example.com"]

    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            ({"iss": "https://evil.example.com/"}, "iss"),
            ({"iss": None}, "iss"),
            ({"aud": "another-service"}, "aud"),
            ({"aud": None}, "aud"),
        ],
    )
    async def test_wrong_issuer_or_audience_is_401(
        self,
        jwks_client: httpx.AsyncClient,
        first_key: RSAKey,
        claims: dict[str, Any],
        reason: str,
    ) -> None:
        response = await jwks_client.get(
            "/api/contacts", headers=bearer(rs256(first_key, **claims))
        )
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert reason in response.json()["detail"]

    async def test_audience_list_containing_ours_is_accepted(
        self, jwks_client: httpx.AsyncClient, first_key: RSAKey
    ) -> None:
        token = rs256(first_key, aud=["billing", AUDIENCE])
        assert (await jwks_client.get("/api/contacts", headers=bearer(token))).status_code == 200

    async def test_key_the_issuer_never_published_is_401(
        self, jwks_client: httpx.AsyncClient
    ) -> None:
        stranger = rsa_key("key-1")  # same kid, different key: the signature cannot match
        response = await jwks_client.get("/api/contacts", headers=bearer(rs256(stranger)))
        assert response.status_code == 401

    async def test_hs256_token_is_refused_when_a_jwks_is_configured(
        self, jwks_client: httpx.AsyncClient
    ) -> None:
        token = hs256({"sub": "owner-rs", "iss": ISSUER, "aud": AUDIENCE, "exp": 2**31})
        assert (await jwks_client.get("/api/contacts", headers=bearer(token))).status_code == 401

    async def test_unreachable_jwks_is_401_not_500(
        self, database_url: str, runtime: Runtime, first_key: RSAKey
    ) -> None:
        settings = make_settings(database_url, AUTH_JWKS_URL="http://127.0.0.1:9/jwks.json")
        rt = dataclasses.replace(runtime, settings=settings, token_verifier=TokenVerifier(settings))
        application = create_app(settings, runtime=rt)
        async with (
            LifespanManager(application) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://testserver"
            ) as c,
        ):
            response = await c.get("/api/contacts", headers=bearer(rs256(first_key)))
        assert response.status_code == 401
        assert "key set" in response.json()["detail"]


class TestKeyRotation:
    async def test_keys_are_fetched_once_and_cached(
        self, verifier: TokenVerifier, issuer: Issuer, first_key: RSAKey
    ) -> None:
        for _ in range(3):
            assert (await verifier.verify(rs256(first_key))).owner_id == "owner-rs"
        assert issuer.fetches == 1

    async def test_new_key_after_rotation_triggers_one_refetch(
        self,
        verifier: TokenVerifier,
        issuer: Issuer,
        clock: FakeClock,
        first_key: RSAKey,
        second_key: RSAKey,
    ) -> None:
        await verifier.verify(rs256(first_key))
        issuer.publish(second_key)
        clock.now += JWKS_MIN_REFRESH_SECONDS + 1
        principal = await verifier.verify(rs256(second_key, role="admin"))
        assert principal.owner_id == "owner-rs"
        assert principal.is_admin
        assert issuer.fetches == 2
        # The retired key is gone from the refreshed set.
        with pytest.raises(Unauthorized):
            await verifier.verify(rs256(first_key))

    async def test_unknown_keys_cannot_make_every_request_refetch(
        self, verifier: TokenVerifier, issuer: Issuer, first_key: RSAKey
    ) -> None:
        await verifier.verify(rs256(first_key))
        for n in range(5):
            with pytest.raises(Unauthorized):
                await verifier.verify(rs256(rsa_key(f"made-up-{n}")))
        assert issuer.fetches == 1  # still within the refresh interval: no refetch storm

    async def test_keys_are_refetched_when_the_cache_expires(
        self,
        verifier: TokenVerifier,
        issuer: Issuer,
        clock: FakeClock,
        first_key: RSAKey,
        second_key: RSAKey,
    ) -> None:
        await verifier.verify(rs256(first_key))
        issuer.publish(first_key, second_key)
        clock.now += JWKS_TTL_SECONDS + 1
        await verifier.verify(rs256(first_key))
        assert issuer.fetches == 2
