"""OAuth: authorize (auto and the Allow/Deny page), token exchange, metadata."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx

from app.sandbox.mailchimp import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_LIST_ID,
    SandboxApp,
    create_app,
)

REDIRECT = "https://app.example.com/oauth/mailchimp/callback"


def _query(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _authorize_params(**extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": DEFAULT_CLIENT_ID,
        "redirect_uri": REDIRECT,
        "state": "xyz-123",
        **extra,
    }


async def _exchange(client: httpx.AsyncClient, code: str, **overrides: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "redirect_uri": REDIRECT,
        "code": code,
        **overrides,
    }
    return await client.post("/oauth2/token", data=form)


async def test_auto_authorize_token_and_metadata(mc: httpx.AsyncClient) -> None:
    anon = httpx.AsyncClient(transport=mc._transport, base_url="http://sandbox.test")
    async with anon:
        params = _query(await anon.get("/oauth2/authorize", params=_authorize_params(auto="1")))
        assert params["state"] == "xyz-123"
        token = await _exchange(anon, params["code"])
        assert token.status_code == 200
        body = token.json()
        assert body == {"access_token": DEFAULT_ACCESS_TOKEN, "expires_in": 0, "scope": None}
        access = body["access_token"]

        reused = await _exchange(anon, params["code"])
        assert reused.status_code == 400
        assert reused.json() == {"error": "invalid_grant"}
        bad = await _exchange(anon, "not-a-code")
        assert bad.json() == {"error": "invalid_grant"}

        for scheme in ("OAuth", "Bearer"):
            meta = await anon.get(
                "/oauth2/metadata", headers={"Authorization": f"{scheme} {access}"}
            )
            assert meta.status_code == 200
            data = meta.json()
            assert data["dc"] == "us1"
            assert data["accountname"] == "Sandbox Account"
            assert data["api_endpoint"] == "http://sandbox.test"
            assert set(data["login"]) == {
                "email",
                "avatar",
                "login_id",
                "login_name",
                "login_email",
            }
            assert data["role"] == "owner"
            assert data["login_url"] == "http://sandbox.test"
            assert isinstance(data["user_id"], int)
        unknown = await anon.get("/oauth2/metadata", headers={"Authorization": "OAuth nope"})
        assert unknown.status_code == 401

        lists = await anon.get(
            f"{data['api_endpoint']}/3.0/lists", headers={"Authorization": f"Bearer {access}"}
        )
        assert lists.status_code == 200
        assert lists.json()["lists"][0]["id"] == DEFAULT_LIST_ID


async def test_allow_and_deny_page(mc: httpx.AsyncClient) -> None:
    page = await mc.get("/oauth2/authorize", params=_authorize_params())
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    html = page.text
    assert "Allow" in html
    assert "Deny" in html
    action = re.search(r"<form method='post' action='([^']+)'", html)
    assert action is not None
    assert action.group(1) == "http://sandbox.test/oauth2/authorize"
    hidden = dict(re.findall(r"<input type='hidden' name='([^']+)' value='([^']*)'>", html))
    assert hidden["client_id"] == DEFAULT_CLIENT_ID

    denied = _query(await mc.post(action.group(1), data={**hidden, "decision": "deny"}))
    assert denied == {"error": "access_denied", "state": "xyz-123"}

    allowed = _query(await mc.post(action.group(1), data={**hidden, "decision": "allow"}))
    assert allowed["state"] == "xyz-123"
    assert (await _exchange(mc, allowed["code"])).status_code == 200

    link = re.search(r"<a id='allow-link' href='([^']+)'", html)
    assert link is not None
    via_link = _query(await mc.get(link.group(1).replace("&amp;", "&")))
    assert via_link["code"]


async def test_authorize_errors(mc: httpx.AsyncClient) -> None:
    unknown = await mc.get("/oauth2/authorize", params=_authorize_params(client_id="999"))
    assert unknown.status_code == 400
    no_redirect = await mc.get(
        "/oauth2/authorize", params={"client_id": DEFAULT_CLIENT_ID, "response_type": "code"}
    )
    assert no_redirect.status_code == 400


async def test_token_errors(mc: httpx.AsyncClient) -> None:
    code = _query(await mc.get("/oauth2/authorize", params=_authorize_params(auto="1")))["code"]
    wrong_secret = await _exchange(mc, code, client_secret="nope")
    assert wrong_secret.status_code == 401
    assert wrong_secret.json() == {"error": "invalid_client"}
    wrong_grant = await _exchange(mc, code, grant_type="password")
    assert wrong_grant.json() == {"error": "unsupported_grant_type"}
    wrong_redirect = await _exchange(mc, code, redirect_uri="https://evil.example.com/cb")
    assert wrong_redirect.json() == {"error": "invalid_grant"}


async def test_expired_code(mc: httpx.AsyncClient) -> None:
    await mc.patch("/_control/config", json={"oauth_code_ttl_seconds": 0})
    code = _query(await mc.get("/oauth2/authorize", params=_authorize_params(auto="1")))["code"]
    expired = await _exchange(mc, code)
    assert expired.status_code == 400
    assert expired.json() == {"error": "invalid_grant"}


async def test_other_account_through_the_same_app(mc: httpx.AsyncClient) -> None:
    other = (await mc.post("/_control/accounts", json={"name": "Second Shop"})).json()
    params = _query(
        await mc.get(
            "/oauth2/authorize", params=_authorize_params(auto="1", account_id=other["id"])
        )
    )
    access = (await _exchange(mc, params["code"])).json()["access_token"]
    meta = await mc.get("/oauth2/metadata", headers={"Authorization": f"OAuth {access}"}, auth=None)
    assert meta.json()["accountname"] == "Second Shop"
    lists = await mc.get("/3.0/lists", headers={"Authorization": f"Bearer {access}"}, auth=None)
    assert [item["id"] for item in lists.json()["lists"]] == [other["lists"][0]["id"]]


async def test_tokens_survive_a_restart(sandbox: SandboxApp) -> None:
    """The default account's token is derived, so a fresh sandbox still accepts it."""
    fresh = create_app()
    transport = httpx.ASGITransport(app=fresh)
    async with httpx.AsyncClient(transport=transport, base_url="http://sb") as client:
        response = await client.get(
            "/3.0/ping", headers={"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"}
        )
    assert response.status_code == 200
