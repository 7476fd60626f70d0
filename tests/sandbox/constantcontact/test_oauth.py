"""The authorization server: consent, PKCE, every token-request shape, JWTs, rotation."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from app.sandbox.constantcontact import (
    LONG_LIVED_CLIENT_ID,
    LONG_LIVED_CLIENT_SECRET,
    PKCE_CLIENT_ID,
    ROTATING_CLIENT_ID,
    ROTATING_CLIENT_SECRET,
)
from app.sandbox.constantcontact.auth import s256
from tests.sandbox.constantcontact.conftest import REDIRECT, Sandbox

AUTHORIZE = "/oauth2/default/v1/authorize"
TOKEN = "/oauth2/default/v1/token"
SCOPES = "account_read+contact_data+offline_access"
INVALID_REFRESH = {
    "error": "invalid_grant",
    "error_description": "The refresh token is invalid or expired.",
}


def _basic(user: str, password: str | None = None) -> str:
    raw = user if password is None else f"{user}:{password}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def _query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def _code(
    sandbox: Sandbox, client_id: str = ROTATING_CLIENT_ID, scope: str = SCOPES, **extra: str
) -> str:
    extras = "".join(f"&{k}={v}" for k, v in extra.items())
    response = await sandbox.http.get(
        f"{AUTHORIZE}?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code"
        f"&scope={scope}&state=st-1&auto=1{extras}"
    )
    assert response.status_code == 302, response.text
    query = _query(response.headers["location"])
    assert query["state"] == "st-1"
    return query["code"]


async def _exchange(sandbox: Sandbox, code: str) -> dict[str, Any]:
    response = await sandbox.http.post(
        f"{TOKEN}?code={code}&redirect_uri={REDIRECT}&grant_type=authorization_code",
        headers={
            "authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET),
            "content-type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def _refresh(
    sandbox: Sandbox,
    token: str,
    client_id: str = ROTATING_CLIENT_ID,
    secret: str = ROTATING_CLIENT_SECRET,
) -> Any:
    return await sandbox.http.post(
        TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": token},
        headers={"authorization": _basic(client_id, secret)},
    )


async def test_consent_page_allow_and_deny(sandbox: Sandbox) -> None:
    params = {
        "client_id": ROTATING_CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "contact_data offline_access",
        "state": "xyz",
    }
    page = await sandbox.http.get(AUTHORIZE, params=params)
    assert page.status_code == 200
    assert "id='allow'" in page.text and "id='deny'" in page.text
    denied = await sandbox.http.post(AUTHORIZE, data={**params, "decision": "deny"})
    assert denied.status_code == 302
    assert _query(denied.headers["location"]) == {
        "error": "access_denied",
        "error_description": "The resource owner or authorization server denied the request.",
        "state": "xyz",
    }
    allowed = await sandbox.http.post(AUTHORIZE, data={**params, "decision": "allow"})
    query = _query(allowed.headers["location"])
    assert allowed.headers["location"].startswith(REDIRECT + "?")
    assert query["state"] == "xyz" and len(query["code"]) > 20


async def test_scope_separators_plus_and_space_but_not_encoded_plus(sandbox: Sandbox) -> None:
    for scope in ("contact_data+offline_access", "contact_data%20offline_access"):
        assert await _code(sandbox, scope=scope)
    bad = await sandbox.http.get(
        f"{AUTHORIZE}?client_id={ROTATING_CLIENT_ID}&redirect_uri={REDIRECT}"
        "&response_type=code&scope=contact_data%2Boffline_access&state=s&auto=1"
    )
    assert _query(bad.headers["location"])["error"] == "invalid_scope"


async def test_unknown_client_and_unregistered_redirect_show_an_error_page(
    sandbox: Sandbox,
) -> None:
    unknown = await sandbox.http.get(
        AUTHORIZE, params={"client_id": "nope", "redirect_uri": REDIRECT, "auto": "1"}
    )
    assert unknown.status_code == 400 and "location" not in unknown.headers
    patched = await sandbox.http.patch(
        f"/_control/apps/{ROTATING_CLIENT_ID}", json={"redirect_uris": [REDIRECT]}
    )
    assert patched.status_code == 200
    elsewhere = await sandbox.http.get(
        AUTHORIZE,
        params={
            "client_id": ROTATING_CLIENT_ID,
            "redirect_uri": REDIRECT + "/other",
            "response_type": "code",
            "scope": "contact_data",
            "auto": "1",
        },
    )
    assert elsewhere.status_code == 400 and "location" not in elsewhere.headers
    assert await _code(sandbox, scope="contact_data")


async def test_documented_shape_and_jwt_claims_verify_against_the_jwks(sandbox: Sandbox) -> None:
    body = await _exchange(sandbox, await _code(sandbox))
    assert set(body) == {"token_type", "expires_in", "access_token", "scope", "refresh_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert body["scope"] == "account_read contact_data offline_access"
    assert len(body["refresh_token"]) <= 50
    keys = (await sandbox.http.get("/oauth2/aus1lm3ry9mF7x2Ja0h8/v1/keys")).json()
    assert keys == (await sandbox.http.get("/oauth2/default/v1/keys")).json()
    token = jwt.decode(body["access_token"], KeySet.import_key_set(keys), algorithms=["RS256"])
    assert token.header["alg"] == "RS256" and token.header["kid"] == keys["keys"][0]["kid"]
    claims = token.claims
    assert claims["iss"] == "https://identity.constantcontact.com/oauth2/aus1lm3ry9mF7x2Ja0h8"
    assert claims["aud"] == "https://api.cc.email/v3"
    assert claims["cid"] == ROTATING_CLIENT_ID
    assert claims["scp"] == ["account_read", "contact_data", "offline_access"]
    assert claims["jti"].startswith("AT.")
    assert claims["exp"] - claims["iat"] == 86400
    assert claims["sub"] == "owner@sandbox.example"
    assert claims["uid"].startswith("00u") and claims["platform_user_id"]
    assert claims["ver"] == 1 and claims["auth_time"]


async def test_every_token_request_shape_is_accepted(sandbox: Sandbox) -> None:
    # query string + JSON body while claiming form encoding (phpfui)
    code = await _code(sandbox)
    phpfui = await sandbox.http.post(
        f"{TOKEN}?code={code}&redirect_uri={REDIRECT}&grant_type=authorization_code",
        content=json.dumps(
            {"client_id": ROTATING_CLIENT_ID, "client_secret": ROTATING_CLIENT_SECRET, "code": code}
        ),
        headers={
            "authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET),
            "content-type": "application/x-www-form-urlencoded",
        },
    )
    assert phpfui.status_code == 200, phpfui.text
    # form body + Basic id:secret (django-ctct)
    form_basic = await sandbox.http.post(
        TOKEN,
        data={
            "code": await _code(sandbox),
            "redirect_uri": REDIRECT,
            "grant_type": "authorization_code",
        },
        headers={"authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET)},
    )
    assert form_basic.status_code == 200, form_basic.text
    # form body with client_id and client_secret, no Basic (Node integrations)
    form_params = await sandbox.http.post(
        TOKEN,
        data={
            "code": await _code(sandbox),
            "redirect_uri": REDIRECT,
            "grant_type": "authorization_code",
            "client_id": ROTATING_CLIENT_ID,
            "client_secret": ROTATING_CLIENT_SECRET,
        },
    )
    assert form_params.status_code == 200, form_params.text
    # refresh with params in the query string (CF7) and with redirect_uri in the body (WPForms)
    query_refresh = await sandbox.http.post(
        f"{TOKEN}?refresh_token={form_params.json()['refresh_token']}&grant_type=refresh_token",
        headers={"authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET)},
    )
    assert query_refresh.status_code == 200, query_refresh.text
    body_refresh = await sandbox.http.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": query_refresh.json()["refresh_token"],
            "redirect_uri": REDIRECT,
            "client_id": ROTATING_CLIENT_ID,
            "client_secret": ROTATING_CLIENT_SECRET,
        },
    )
    assert body_refresh.status_code == 200, body_refresh.text


async def test_pkce_public_app_with_basic_id_only(sandbox: Sandbox) -> None:
    verifier = secrets.token_urlsafe(48)
    missing = await sandbox.http.get(
        AUTHORIZE,
        params={
            "client_id": PKCE_CLIENT_ID,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "scope": "contact_data offline_access",
            "auto": "1",
        },
    )
    assert _query(missing.headers["location"])["error"] == "invalid_request"
    code = await _code(
        sandbox,
        client_id=PKCE_CLIENT_ID,
        scope="contact_data+offline_access",
        code_challenge=s256(verifier),
        code_challenge_method="S256",
    )
    form = {
        "client_id": PKCE_CLIENT_ID,
        "code": code,
        "redirect_uri": REDIRECT,
        "grant_type": "authorization_code",
    }
    wrong = await sandbox.http.post(
        TOKEN,
        data={**form, "code_verifier": secrets.token_urlsafe(48)},
        headers={"authorization": _basic(PKCE_CLIENT_ID)},
    )
    assert wrong.status_code == 400
    assert wrong.json() == {
        "error": "invalid_grant",
        "error_description": "PKCE verification failed.",
    }
    code = await _code(
        sandbox,
        client_id=PKCE_CLIENT_ID,
        scope="contact_data+offline_access",
        code_challenge=s256(verifier),
        code_challenge_method="S256",
    )
    ok = await sandbox.http.post(
        TOKEN,
        data={**form, "code": code, "code_verifier": verifier},
        headers={"authorization": _basic(PKCE_CLIENT_ID)},
    )
    assert ok.status_code == 200, ok.text
    assert "refresh_token" in ok.json()


async def test_pkce_forbidden_on_confidential_apps_is_a_knob(sandbox: Sandbox) -> None:
    verifier = secrets.token_urlsafe(48)
    assert await _code(
        sandbox, code_challenge=s256(verifier), code_challenge_method="S256"
    )  # accepted by default
    await sandbox.configure(pkce_on_confidential="forbidden")
    refused = await sandbox.http.get(
        f"{AUTHORIZE}?client_id={ROTATING_CLIENT_ID}&redirect_uri={REDIRECT}&response_type=code"
        f"&scope={SCOPES}&auto=1&code_challenge={s256(verifier)}&code_challenge_method=S256"
    )
    assert _query(refused.headers["location"])["error"] == "invalid_request"


async def test_code_is_single_use_bound_to_redirect_and_expires(sandbox: Sandbox) -> None:
    code = await _code(sandbox)
    mismatch = await sandbox.http.post(
        TOKEN,
        data={"code": code, "redirect_uri": REDIRECT + "/x", "grant_type": "authorization_code"},
        headers={"authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET)},
    )
    assert mismatch.status_code == 400 and mismatch.json()["error"] == "invalid_grant"
    await _exchange(sandbox, code)
    again = await sandbox.http.post(
        f"{TOKEN}?code={code}&redirect_uri={REDIRECT}&grant_type=authorization_code",
        headers={"authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET)},
    )
    assert again.status_code == 400
    assert again.json() == {
        "error": "invalid_grant",
        "error_description": "The authorization code is invalid or has expired.",
    }
    late = await _code(sandbox)
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 301})
    expired = await sandbox.http.post(
        f"{TOKEN}?code={late}&redirect_uri={REDIRECT}&grant_type=authorization_code",
        headers={"authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET)},
    )
    assert expired.json()["error"] == "invalid_grant"


async def test_client_authentication_errors(sandbox: Sandbox) -> None:
    code = await _code(sandbox)
    wrong = await sandbox.http.post(
        f"{TOKEN}?code={code}&redirect_uri={REDIRECT}&grant_type=authorization_code",
        headers={"authorization": _basic(ROTATING_CLIENT_ID, "wrong")},
    )
    assert wrong.status_code == 401
    assert wrong.json() == {
        "error": "invalid_client",
        "error_description": "Client authentication failed. Either the client or the client "
        "credentials are invalid.",
    }
    no_grant = await sandbox.http.post(TOKEN, data={"code": code})
    assert no_grant.status_code == 400 and no_grant.json()["error"] == "invalid_request"
    odd = await sandbox.http.post(TOKEN, data={"grant_type": "password"})
    assert odd.json()["error"] == "unsupported_grant_type"


async def test_rotating_refresh_is_single_use_with_the_exact_error(sandbox: Sandbox) -> None:
    first = await _exchange(sandbox, await _code(sandbox))
    second = await _refresh(sandbox, first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    reused = await _refresh(sandbox, first["refresh_token"])
    assert reused.status_code == 400
    assert reused.json() == INVALID_REFRESH
    third = await _refresh(sandbox, second.json()["refresh_token"])
    assert third.status_code == 200
    # the old access token stays valid until its exp (revoke_access_on_refresh=false)
    summary = await sandbox.http.get(
        "/v3/account/summary", headers={"authorization": f"Bearer {first['access_token']}"}
    )
    assert summary.status_code == 200
    chain = (await sandbox.http.get("/_control/tokens")).json()["grants"][-1]["chain"]
    assert [link["superseded_at"] is None for link in chain] == [False, False, True]


async def test_long_lived_refresh_returns_the_same_value(sandbox: Sandbox) -> None:
    body = await sandbox.mint(client_id=LONG_LIVED_CLIENT_ID)
    for _ in range(3):
        again = await _refresh(
            sandbox, body["refresh_token"], LONG_LIVED_CLIENT_ID, LONG_LIVED_CLIENT_SECRET
        )
        assert again.status_code == 200
        assert again.json()["refresh_token"] == body["refresh_token"]
        assert again.json()["access_token"] != body["access_token"]


async def test_refresh_tokens_expire_after_180_days_unused(sandbox: Sandbox) -> None:
    body = await sandbox.mint()
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 181 * 86_400})
    late = await _refresh(sandbox, body["refresh_token"])
    assert late.json() == INVALID_REFRESH


async def test_grace_and_revocation_knobs(sandbox: Sandbox) -> None:
    await sandbox.configure(refresh_reuse_grace_seconds=30, revoke_access_on_refresh=True)
    body = await sandbox.mint()
    new = await _refresh(sandbox, body["refresh_token"])
    within = await _refresh(sandbox, body["refresh_token"])
    assert within.status_code == 200
    assert within.json()["refresh_token"] == new.json()["refresh_token"]
    old = await sandbox.http.get(
        "/v3/account/summary", headers={"authorization": f"Bearer {body['access_token']}"}
    )
    assert old.status_code == 401


async def test_offline_access_and_openid_decide_the_token_fields(sandbox: Sandbox) -> None:
    no_refresh = await _exchange(sandbox, await _code(sandbox, scope="contact_data"))
    assert "refresh_token" not in no_refresh and "id_token" not in no_refresh
    with_id = await _exchange(
        sandbox, await _code(sandbox, scope="openid+contact_data+offline_access")
    )
    assert "id_token" in with_id and "refresh_token" in with_id


async def test_access_token_ttl_knob_and_expiry_by_the_sandbox_clock(sandbox: Sandbox) -> None:
    await sandbox.configure(access_token_ttl_seconds=60)
    body = await sandbox.mint()
    assert body["expires_in"] == 60
    headers = {"authorization": f"Bearer {body['access_token']}"}
    assert (await sandbox.http.get("/v3/account/summary", headers=headers)).status_code == 200
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 61})
    expired = await sandbox.http.get("/v3/account/summary", headers=headers)
    assert expired.status_code == 401
    assert expired.json() == {"error_key": "unauthorized", "error_message": "Unauthorized"}


async def test_second_issuer_token_url_and_device_flow(sandbox: Sandbox) -> None:
    body = await sandbox.mint()
    other = await sandbox.http.post(
        "/oauth2/aus1lm3ry9mF7x2Ja0h8/v1/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        headers={"authorization": _basic(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET)},
    )
    assert other.status_code == 200
    from app.sandbox.constantcontact.constants import DEVICE_CLIENT_ID

    device = await sandbox.http.post(
        "/oauth2/default/v1/device/authorize",
        data={"client_id": DEVICE_CLIENT_ID, "scope": "contact_data offline_access"},
    )
    assert device.status_code == 200
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    form = {
        "client_id": DEVICE_CLIENT_ID,
        "device_code": device.json()["device_code"],
        "grant_type": grant,
    }
    pending = await sandbox.http.post(TOKEN, params=form)
    assert pending.json()["error"] == "authorization_pending"
    approve = await sandbox.http.get(device.json()["verification_uri_complete"] + "&auto=1")
    assert approve.status_code == 200
    done = await sandbox.http.post(TOKEN, params=form)
    assert done.status_code == 200 and "refresh_token" in done.json()


@pytest.mark.parametrize("status", [401, 403])
async def test_missing_authorization_header(sandbox: Sandbox, status: int) -> None:
    await sandbox.configure(missing_auth_status=status)
    response = await sandbox.http.get("/v3/contacts")
    assert response.status_code == status
    if status == 401:
        assert response.json() == {"error_key": "unauthorized", "error_message": "Unauthorized"}
    else:
        assert response.json()[0]["error_key"] == "forbidden"


async def test_implicit_apps_get_a_fragment_without_refresh_token(sandbox: Sandbox) -> None:
    created = await sandbox.http.post(
        "/_control/apps", json={"client_id": "implicit-app", "flow": "implicit"}
    )
    assert created.status_code == 201
    response = await sandbox.http.get(
        f"{AUTHORIZE}?client_id=implicit-app&redirect_uri={REDIRECT}&response_type=token"
        "&scope=contact_data+offline_access&state=i&auto=1"
    )
    fragment = parse_qs(urlsplit(response.headers["location"]).fragment)
    assert fragment["token_type"] == ["Bearer"] and fragment["state"] == ["i"]
    assert "refresh_token" not in fragment and fragment["access_token"]


async def test_secret_rotation_and_token_revocation(sandbox: Sandbox) -> None:
    body = await sandbox.mint()
    rotated = await sandbox.http.post(f"/_control/apps/{ROTATING_CLIENT_ID}/rotate-secret")
    new_secret = rotated.json()["client_secret"]
    assert new_secret != ROTATING_CLIENT_SECRET
    old = await _refresh(sandbox, body["refresh_token"])
    assert old.status_code == 401 and old.json()["error"] == "invalid_client"
    new = await _refresh(sandbox, body["refresh_token"], ROTATING_CLIENT_ID, new_secret)
    assert new.status_code == 200
    jti = jwt.decode(
        new.json()["access_token"],
        KeySet.import_key_set((await sandbox.http.get("/oauth2/default/v1/keys")).json()),
    ).claims["jti"]
    headers = {"authorization": f"Bearer {new.json()['access_token']}"}
    assert (await sandbox.http.get("/v3/contacts", headers=headers)).status_code == 200
    revoked = await sandbox.http.post(f"/_control/tokens/{jti}/revoke")
    assert revoked.status_code == 200
    assert (await sandbox.http.get("/v3/contacts", headers=headers)).status_code == 401
