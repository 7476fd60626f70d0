"""The API and Basic-auth switches, the OAuth2 token server, bearer checks (reference §0)."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import httpx

from app.sandbox.mautic import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    USER_CLIENT_ID,
    USER_CLIENT_SECRET,
)
from app.sandbox.mautic.constants import DEFAULT_REDIRECT_URI
from tests.sandbox.mautic.conftest import Sandbox

API_DISABLED = (
    b'{"errors":[{"message":"API disabled. You need to enable the API in the API settings of '
    b'Mautic\\u0027s Configuration.","code":403,"type":"api_disabled"}]}'
)
BASIC_DISABLED = (
    b'{"errors":[{"message":"Basic Auth disabled. You need to enable HTTP basic auth in the API '
    b'settings of Mautic\\u0027s Configuration.","code":403,"type":"access_denied"}]}'
)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_api_switch_off_answers_the_exact_403_everywhere_even_the_token_endpoint(
    sandbox: Sandbox,
) -> None:
    await sandbox.configure(api_enabled=False)
    for method, path in (
        ("GET", "/api/contacts"),
        ("POST", "/oauth/v2/token"),
        ("GET", "/api/no/such/route"),
    ):
        response = await sandbox.http.request(method, path)
        assert response.status_code == 403
        assert response.content == API_DISABLED
        assert "mautic-version" not in response.headers  # a listener answer, not a view
    assert (await sandbox.http.get("/_control/config")).status_code == 200


async def test_basic_auth_switch_and_credentials(sandbox: Sandbox) -> None:
    response = await sandbox.http.get(
        "/api/contacts", headers=basic(ADMIN_USERNAME, ADMIN_PASSWORD)
    )
    assert (response.status_code, response.content) == (403, BASIC_DISABLED)
    await sandbox.configure(api_enable_basic_auth=True)
    good = await sandbox.http.get("/api/contacts", headers=basic(ADMIN_USERNAME, ADMIN_PASSWORD))
    assert good.status_code == 200
    assert good.headers["mautic-version"] == "5.1.0"
    bad = await sandbox.http.get("/api/contacts", headers=basic(ADMIN_USERNAME, "wrong"))
    assert bad.status_code == 401
    assert bad.json() == {
        "errors": [
            {
                "message": "Authorization denied, invalid credentials.",
                "code": 401,
                "type": "access_denied",
            }
        ]
    }


async def test_client_credentials_token_body_headers_and_no_refresh_token(sandbox: Sandbox) -> None:
    response = await sandbox.http.post(
        "/oauth/v2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        },
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert list(body) == ["access_token", "expires_in", "token_type", "scope"]
    assert body["expires_in"] == 3600
    assert body["token_type"] == "bearer"
    assert body["scope"] is None
    assert len(body["access_token"]) == 86
    calls = await sandbox.http.get(
        "/api/contacts", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert calls.status_code == 200


async def test_token_errors_in_mautics_rewritten_shape(sandbox: Sandbox) -> None:
    async def token(**data: str) -> httpx.Response:
        return await sandbox.http.post("/oauth/v2/token", data=data)

    cases = [
        ({}, "invalid_request", "Invalid grant_type parameter or parameter missing"),
        (
            {"grant_type": "password"},
            "invalid_request",
            "Invalid grant_type parameter or parameter missing",
        ),
        (
            {"grant_type": "client_credentials"},
            "invalid_client",
            "Client id was not found in the headers or body",
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": "x",
            },
            "invalid_client",
            "The client credentials are invalid",
        ),
        (
            {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID},
            "invalid_client",
            'The client_secret is mandatory for the "client_credentials" grant type',
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": USER_CLIENT_ID,
                "client_secret": USER_CLIENT_SECRET,
            },
            "unauthorized_client",
            "The grant type is unauthorized for this client_id",
        ),
        (
            {
                "grant_type": "refresh_token",
                "client_id": USER_CLIENT_ID,
                "client_secret": USER_CLIENT_SECRET,
            },
            "invalid_request",
            'No "refresh_token" parameter found',
        ),
    ]
    for data, type_, message in cases:
        response = await token(**data)
        assert response.status_code == 400, data
        assert response.json() == {"errors": [{"message": message, "code": 400, "type": type_}]}
        assert "cache-control" not in response.headers  # the rewrite replaces the response


async def _code(sandbox: Sandbox, client_id: str = USER_CLIENT_ID) -> str:
    response = await sandbox.http.get(
        "/oauth/v2/authorize",
        params={
            "client_id": client_id,
            "redirect_uri": DEFAULT_REDIRECT_URI,
            "response_type": "code",
            "state": "xyz",
            "auto": "1",
        },
    )
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"]
    return query["code"][0]


async def test_authorization_code_then_refresh_tokens_rotate_and_are_single_use(
    sandbox: Sandbox,
) -> None:
    page = await sandbox.http.get(
        "/oauth/v2/authorize",
        params={
            "client_id": USER_CLIENT_ID,
            "redirect_uri": DEFAULT_REDIRECT_URI,
            "response_type": "code",
        },
    )
    assert page.status_code == 200
    assert "<form" in page.text
    code = await _code(sandbox)
    creds = {"client_id": USER_CLIENT_ID, "client_secret": USER_CLIENT_SECRET}
    mismatch = await sandbox.http.post(
        "/oauth/v2/token",
        data={
            **creds,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://evil/",
        },
    )
    assert mismatch.json()["errors"][0]["type"] == "redirect_uri_mismatch"
    first = await sandbox.http.post(
        "/oauth/v2/token",
        data={
            **creds,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": DEFAULT_REDIRECT_URI,
        },
    )
    assert first.status_code == 200, first.text
    assert list(first.json()) == [
        "access_token",
        "expires_in",
        "token_type",
        "scope",
        "refresh_token",
    ]
    again = await sandbox.http.post(
        "/oauth/v2/token",
        data={
            **creds,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": DEFAULT_REDIRECT_URI,
        },
    )
    assert again.json()["errors"][0] == {
        "message": "Code doesn't exist or is invalid for the client",
        "code": 400,
        "type": "invalid_grant",
    }
    old_refresh = first.json()["refresh_token"]
    renewed = await sandbox.http.post(
        "/oauth/v2/token",
        data={**creds, "grant_type": "refresh_token", "refresh_token": old_refresh},
    )
    assert renewed.status_code == 200
    assert renewed.json()["refresh_token"] != old_refresh
    # The loser of two concurrent refreshes: the old refresh token is gone.
    reused = await sandbox.http.post(
        "/oauth/v2/token",
        data={**creds, "grant_type": "refresh_token", "refresh_token": old_refresh},
    )
    assert reused.status_code == 400
    assert reused.json()["errors"][0] == {
        "message": "Invalid refresh token",
        "code": 400,
        "type": "invalid_grant",
    }
    user_call = await sandbox.http.get(
        "/api/users/self", headers={"Authorization": f"Bearer {renewed.json()['access_token']}"}
    )
    assert user_call.json()["username"] == ADMIN_USERNAME


async def test_authorization_codes_live_30_seconds(sandbox: Sandbox) -> None:
    code = await _code(sandbox)
    await sandbox.http.post("/_control/clock", json={"advance_seconds": 31})
    response = await sandbox.http.post(
        "/oauth/v2/token",
        data={
            "client_id": USER_CLIENT_ID,
            "client_secret": USER_CLIENT_SECRET,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": DEFAULT_REDIRECT_URI,
        },
    )
    assert response.json()["errors"][0]["message"] == "The authorization code has expired"


async def test_short_token_knob_then_expired_token_answers_401(sandbox: Sandbox) -> None:
    await sandbox.configure(access_token_lifetime_seconds=5)
    token = await sandbox.token()
    headers = {"Authorization": f"Bearer {token}"}
    assert (await sandbox.http.get("/api/contacts", headers=headers)).status_code == 200
    await sandbox.http.post("/_control/clock", json={"advance_seconds": 6})
    expired = await sandbox.http.get("/api/contacts", headers=headers)
    assert expired.status_code == 401
    assert expired.json() == {
        "errors": [
            {
                "message": "The access token provided has expired.",
                "code": 401,
                "type": "invalid_grant",
            }
        ]
    }


async def test_bearer_variants_and_401_bodies(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    by_query = await sandbox.http.get("/api/contacts", params={"access_token": token})
    assert by_query.status_code == 200
    both = await sandbox.http.get(
        "/api/contacts",
        params={"access_token": token},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert both.status_code == 400
    assert both.json()["errors"][0]["type"] == "invalid_request"
    invalid = await sandbox.http.get("/api/contacts", headers={"Authorization": "Bearer nope"})
    assert invalid.json() == {
        "errors": [
            {
                "message": "The access token provided is invalid.",
                "code": 401,
                "type": "invalid_grant",
            }
        ]
    }
    none = await sandbox.http.get("/api/contacts")
    assert none.status_code == 401
    assert none.json()["errors"][0]["type"] == "access_denied"


async def test_locale_knob_translates_messages_but_not_types(sandbox: Sandbox) -> None:
    await sandbox.configure(locale="es")
    response = await sandbox.http.get("/api/contacts")
    assert response.json() == {
        "errors": [
            {
                "message": "La autorización a la API está denegada.",
                "code": 401,
                "type": "access_denied",
            }
        ]
    }


async def test_rate_limiter_knob_body_headers_and_per_token_buckets(sandbox: Sandbox) -> None:
    await sandbox.configure(api_rate_limiter_limit=2)
    token = await sandbox.token()
    headers = {"Authorization": f"Bearer {token}"}
    first = await sandbox.http.get("/api/contacts", headers=headers)
    assert first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    await sandbox.http.get("/api/contacts", headers=headers)
    over = await sandbox.http.get("/api/contacts", headers=headers)
    assert over.status_code == 429
    assert over.headers["content-type"].startswith("text/html")
    assert over.content == (
        b'{ "errors": [ { "code": 429, "message": "You exceeded the rate limit of 2 API calls per '
        b'hour.", "details": [] } ]}'
    )
    fresh = await sandbox.token()  # each new access token starts a fresh bucket
    assert (
        await sandbox.http.get("/api/contacts", headers={"Authorization": f"Bearer {fresh}"})
    ).status_code == 200


async def test_read_only_role_answers_the_permission_403_to_writes(sandbox: Sandbox) -> None:
    await sandbox.configure(api_role="read_only")
    headers = {"Authorization": f"Bearer {await sandbox.token()}"}
    assert (await sandbox.http.get("/api/contacts", headers=headers)).status_code == 200
    response = await sandbox.http.post(
        "/api/contacts/new", json={"email": "a@x.com"}, headers=headers
    )
    assert response.status_code == 403
    assert response.content == (
        b'{"errors":[{"code":403,"message":"You do not have access to the requested '
        b'area\\/action.","details":[]}]}'
    )
