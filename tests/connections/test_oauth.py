"""The OAuth popup flow end to end: the service and the sandbox over real HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from app.config import MailchimpMode
from app.connections.crypto import decrypt_credentials
from app.connections.oauth import sign_state
from app.connections.service import reencrypt_credentials
from app.db import session_scope
from app.main import Runtime
from app.sandbox.mailchimp import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_LIST_ID,
)
from tests.conftest import fetch
from tests.connections.conftest import (
    OTHER,
    OWNER,
    SPA_ORIGIN,
    LogCapture,
    Service,
    authorize,
    sandbox_webhooks,
)
from tests.support.sync import Sandbox, wait_for

JSON = {"Accept": "application/json"}


async def connections(runtime: Runtime) -> list[dict[str, Any]]:
    return await fetch(runtime, "SELECT * FROM connections")


async def webhook_registered(runtime: Runtime) -> bool:
    rows = await fetch(runtime, "SELECT webhook_id FROM connections")
    return bool(rows and rows[0]["webhook_id"])


class TestConnectFlow:
    async def test_connect_popup_to_connected_with_webhook(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        url = await service.connect()
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        assert url.startswith(f"{sandbox.url}/oauth2/authorize?")
        assert query["client_id"] == [DEFAULT_CLIENT_ID]
        assert query["response_type"] == ["code"]
        assert query["redirect_uri"] == [f"{service.url}/api/integrations/mailchimp/callback"]
        assert query["state"][0]

        callback = await authorize(url)
        assert callback.startswith(f"{service.url}/api/integrations/mailchimp/callback?")
        page = await service.http.get(callback)

        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "Connected to Sandbox Audience" in page.text
        # The outcome goes to the SPA's origin and the service's own console, never to "*".
        assert f'["{SPA_ORIGIN}","{service.url}"]' in page.text
        assert "postMessage(outcome, origins[i])" in page.text
        assert '"*"' not in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'nonce-" in page.headers["content-security-policy"]

        status = await service.status()
        assert status["connected"] is True
        assert status["status"] == "active"
        assert status["notice"] is None
        assert status["account_name"] == "Sandbox Account"
        assert status["audience"] == {"id": DEFAULT_LIST_ID, "name": "Sandbox Audience"}

        # The webhook is registered once the callback's transaction committed.
        await wait_for(lambda: webhook_registered(runtime), within=20)
        (row,) = await connections(runtime)
        hooks = await sandbox_webhooks(sandbox)
        assert len(hooks) == 1
        hook = hooks[0]
        assert hook["id"] == row["webhook_id"]
        assert hook["url"] == f"{service.url}/api/webhooks/mailchimp/{row['webhook_token']}"
        assert hook["sources"] == {"user": True, "admin": True, "api": False}
        assert hook["events"] == {
            "subscribe": True,
            "unsubscribe": True,
            "profile": True,
            "cleaned": True,
            "upemail": True,
            "campaign": False,
        }
        assert row["auth_kind"] == "oauth"
        assert row["account_key"].startswith("mailchimp:us1:account:")
        # The first audience selection starts a full sync.
        runs = await fetch(runtime, "SELECT kind, state, dry_run FROM sync_runs")
        assert runs == [{"kind": "initial", "state": "queued", "dry_run": False}]
        assert (await service.status())["webhook_registered"] is True

    async def test_replayed_state_is_refused_and_changes_nothing(
        self, service: Service, runtime: Runtime
    ) -> None:
        callback = await authorize(await service.connect())
        assert (await service.http.get(callback)).status_code == 200
        (before,) = await connections(runtime)

        again = await service.http.get(callback)
        assert again.status_code == 400
        assert "already used" in again.text
        as_json = await service.http.get(callback, headers=JSON)
        assert as_json.status_code == 400
        assert as_json.headers["content-type"].startswith("application/problem+json")
        assert as_json.json()["error"] == "state_used"
        (after,) = await connections(runtime)
        assert after["updated_at"] == before["updated_at"]
        assert after["credentials"] == before["credentials"]

    async def test_several_audiences_wait_for_a_choice(
        self, service: Service, sandbox: Sandbox, runtime: Runtime
    ) -> None:
        accounts = (await sandbox.http.get("/_control/accounts")).json()["accounts"]
        second = await sandbox.http.post(
            f"/_control/accounts/{accounts[0]['id']}/lists", json={"name": "Second list"}
        )
        assert second.status_code == 201
        second_id = second.json()["id"]

        page = await service.http.get(await authorize(await service.connect()))
        assert page.status_code == 200
        assert "Choose the audience" in page.text
        status = await service.status()
        assert status["status"] == "needs_audience"
        assert status["audience"] is None
        assert status["notice"]
        assert await fetch(runtime, "SELECT id FROM sync_runs") == []

        listed = await service.http.get(
            "/api/integrations/mailchimp/audiences", headers=service.auth()
        )
        assert listed.status_code == 200
        assert {a["id"]: a["name"] for a in listed.json()} == {
            DEFAULT_LIST_ID: "Sandbox Audience",
            second_id: "Second list",
        }
        assert all(isinstance(a["member_count"], int) for a in listed.json())

        chosen = await service.http.put(
            "/api/integrations/mailchimp/audience",
            json={"audience_id": second_id},
            headers=service.auth(),
        )
        assert chosen.status_code == 200, chosen.text
        assert chosen.json()["status"] == "active"
        assert chosen.json()["audience"] == {"id": second_id, "name": "Second list"}
        runs = await fetch(runtime, "SELECT kind, state FROM sync_runs")
        assert runs == [{"kind": "initial", "state": "queued"}]
        await wait_for(lambda: webhook_registered(runtime), within=20)
        assert len(await sandbox_webhooks(sandbox, second_id)) == 1
        assert await sandbox_webhooks(sandbox, DEFAULT_LIST_ID) == []

        unknown = await service.http.put(
            "/api/integrations/mailchimp/audience",
            json={"audience_id": "0000000000"},
            headers=service.auth(),
        )
        assert unknown.status_code == 422


class TestRefusals:
    """Each refusal is readable on the page and as problem+json, and stores nothing."""

    @pytest.fixture
    async def nothing_stored(self, runtime: Runtime) -> Any:
        yield
        assert await connections(runtime) == []
        used = await fetch(runtime, "SELECT nonce FROM oauth_states WHERE used_at IS NOT NULL")
        assert used == []

    async def test_consent_denied(self, service: Service, nothing_stored: None) -> None:
        callback = await authorize(await service.connect(), decision="deny")
        assert "error=access_denied" in callback
        page = await service.http.get(callback)
        assert page.status_code == 400
        assert "access was declined" in page.text
        assert '"error":"access_denied"' in page.text  # what the opener receives
        problem = await service.http.get(callback, headers=JSON)
        assert problem.json()["error"] == "access_denied"

    async def test_missing_state(self, service: Service, nothing_stored: None) -> None:
        r = await service.http.get("/api/integrations/mailchimp/callback?code=abc", headers=JSON)
        assert r.status_code == 400
        assert r.json()["error"] == "state_missing"

    async def test_tampered_state(self, service: Service, nothing_stored: None) -> None:
        callback = await authorize(await service.connect())
        state = parse_qs(urlsplit(callback).query)["state"][0]
        header, payload, signature = state.split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        tampered = callback.replace(state, f"{header}.{flipped}.{signature}")
        r = await service.http.get(tampered, headers=JSON)
        assert r.status_code == 400
        assert r.json()["error"] == "state_invalid"
        page = await service.http.get(tampered)
        assert "not valid" in page.text

    async def test_expired_state(
        self, service: Service, runtime: Runtime, nothing_stored: None
    ) -> None:
        await service.connect()  # a real nonce exists; its state is re-signed in the past
        (nonce,) = await fetch(runtime, "SELECT nonce FROM oauth_states")
        old, _ = sign_state(
            service.settings, owner_id=OWNER, nonce=nonce["nonce"], now=time.time() - 601
        )
        r = await service.http.get(
            "/api/integrations/mailchimp/callback", params={"state": old, "code": "x"}, headers=JSON
        )
        assert r.status_code == 400
        assert r.json()["error"] == "state_expired"

    async def test_state_of_another_owner(
        self, service: Service, runtime: Runtime, nothing_stored: None
    ) -> None:
        callback = await authorize(await service.connect(OWNER))
        # An API caller authenticated as someone else cannot complete OWNER's attempt...
        r = await service.http.get(callback, headers={**JSON, **service.auth(OTHER)})
        assert r.status_code == 403
        assert r.json()["error"] == "state_owner"
        # ...and a state naming OTHER cannot spend OWNER's nonce.
        (nonce,) = await fetch(runtime, "SELECT nonce FROM oauth_states")
        forged, _ = sign_state(service.settings, owner_id=OTHER, nonce=nonce["nonce"])
        r = await service.http.get(
            "/api/integrations/mailchimp/callback",
            params={"state": forged, "code": "x"},
            headers=JSON,
        )
        assert r.status_code == 403
        assert r.json()["error"] == "state_owner"

    async def test_failed_code_exchange(self, service: Service, nothing_stored: None) -> None:
        callback = await authorize(await service.connect())
        code = parse_qs(urlsplit(callback).query)["code"][0]
        r = await service.http.get(callback.replace(code, "not-a-code"), headers=JSON)
        assert r.status_code == 400
        assert r.json()["error"] == "exchange_failed"
        assert "invalid_grant" in r.json()["detail"]

    async def test_account_without_audience(
        self, serve: Callable[..., Any], sandbox: Sandbox, nothing_stored: None
    ) -> None:
        created = await sandbox.http.post(
            "/_control/accounts", json={"name": "Empty", "with_list": False}
        )
        account = created.json()
        async with serve(
            MAILCHIMP_CLIENT_ID=account["client_id"],
            MAILCHIMP_CLIENT_SECRET=SecretStr(account["client_secret"]),
        ) as svc:
            callback = await authorize(await svc.connect())
            page = await svc.http.get(callback)
            assert page.status_code == 422
            assert "has no audience yet" in page.text

    async def test_metadata_pointing_at_a_foreign_host(
        self, serve: Callable[..., Any], sandbox: Sandbox, nothing_stored: None
    ) -> None:
        # Live mode with the OAuth endpoints at the sandbox: its metadata names an API host
        # that is not https://us1.api.mailchimp.com, which live mode must refuse.
        async with serve(
            MAILCHIMP_MODE=MailchimpMode.live,
            MAILCHIMP_OAUTH_BASE=sandbox.url,
            MAILCHIMP_CLIENT_ID=DEFAULT_CLIENT_ID,
            MAILCHIMP_CLIENT_SECRET=SecretStr(DEFAULT_CLIENT_SECRET),
        ) as svc:
            callback = await authorize(await svc.connect())
            r = await svc.http.get(callback, headers=JSON)
            assert r.status_code == 502
            assert r.json()["error"] == "foreign_host"


class TestRedirectToSettings:
    async def test_app_settings_url_gets_a_303(
        self, serve: Callable[..., Any], runtime: Runtime
    ) -> None:
        async with serve(APP_SETTINGS_URL="http://localhost:5173/settings") as svc:
            ok = await svc.http.get(await authorize(await svc.connect()))
            assert ok.status_code == 303
            assert ok.headers["location"] == (
                "http://localhost:5173/settings?mailchimp=connected&status=active"
            )
            denied = await svc.http.get(await authorize(await svc.connect(), decision="deny"))
            assert denied.status_code == 303
            assert denied.headers["location"].endswith("?mailchimp=error&error=access_denied")


class TestSecrets:
    async def test_token_never_in_a_response_or_a_log_line(
        self, serve: Callable[..., Any], sandbox: Sandbox, runtime: Runtime
    ) -> None:
        responses: list[httpx.Response] = []
        async with serve(LOG_LEVEL="DEBUG") as svc:
            root = logging.getLogger()
            capture = LogCapture(root.handlers[0].formatter if root.handlers else None)
            root.addHandler(capture)
            try:
                callback = await authorize(await svc.connect())
                responses.append(await svc.http.get(callback))
                responses.append(await svc.http.get(callback))  # refused replay
                responses.append(await svc.http.get(callback, headers=JSON))
                await wait_for(lambda: webhook_registered(runtime), within=20)
                for path in ("", "/mailchimp", "/mailchimp/audiences"):
                    responses.append(
                        await svc.http.get(f"/api/integrations{path}", headers=svc.auth())
                    )
                responses.append(
                    await svc.http.post(
                        "/api/integrations/mailchimp/sync?dry_run=true", headers=svc.auth()
                    )
                )
                responses.append(
                    await svc.http.delete("/api/integrations/mailchimp", headers=svc.auth())
                )
            finally:
                root.removeHandler(capture)
        assert len(capture.lines) > 0
        for r in responses:
            assert DEFAULT_ACCESS_TOKEN not in r.text
            assert DEFAULT_ACCESS_TOKEN not in str(r.headers)
        leaked = [line for line in capture.lines if DEFAULT_ACCESS_TOKEN in line]
        assert leaked == []

    async def test_credentials_column_holds_ciphertext(
        self, service: Service, runtime: Runtime
    ) -> None:
        await service.http.get(await authorize(await service.connect()))
        (row,) = await connections(runtime)
        stored = row["credentials"]
        assert DEFAULT_ACCESS_TOKEN not in stored
        assert "access_token" not in stored
        assert stored.startswith("gAAAA")  # a Fernet token
        assert decrypt_credentials(service.settings, stored) == {
            "access_token": DEFAULT_ACCESS_TOKEN
        }

    async def test_key_rotation_reencrypts_under_the_new_key(
        self, service: Service, runtime: Runtime
    ) -> None:
        await service.http.get(await authorize(await service.connect()))
        (before,) = await connections(runtime)
        new_key = Fernet.generate_key().decode()
        rotated = service.settings.model_copy(
            update={"ENCRYPTION_KEYS": [SecretStr(new_key), *service.settings.ENCRYPTION_KEYS]}
        )
        async with session_scope(runtime.sessionmaker) as session:
            assert await reencrypt_credentials(rotated, session) == 1
        (after,) = await connections(runtime)
        assert after["credentials"] != before["credentials"]
        only_new = service.settings.model_copy(update={"ENCRYPTION_KEYS": [SecretStr(new_key)]})
        assert decrypt_credentials(only_new, after["credentials"]) == {
            "access_token": DEFAULT_ACCESS_TOKEN
        }


class TestRefusalsNameTheProvider:
    """A failed connect is titled with the provider's display name, not Mailchimp's."""

    async def test_callback_problem_title_is_the_providers(self, service: Service) -> None:
        r = await service.http.get("/api/integrations/mailchimp/callback?code=abc", headers=JSON)
        assert r.json()["title"] == "Mailchimp was not connected"

    async def test_another_provider_is_named(self, service: Service, runtime: Runtime) -> None:
        from dataclasses import replace

        from app.connections.oauth import OAuthFailure, OAuthNotConfigured
        from app.connections.service import connection_service, oauth_failure
        from app.providers import registry
        from app.providers.base import ConnectRefused

        mailchimp = registry.get("mailchimp")
        other = replace(mailchimp, spec=replace(mailchimp.spec, display_name="Acme Mail"))
        failure = oauth_failure(other, ConnectRefused("no", code="exchange_failed"))
        assert isinstance(failure, OAuthFailure)
        assert failure.title == "Acme Mail was not connected"
        missing = oauth_failure(other, ConnectRefused("no app", code="oauth_not_configured"))
        assert isinstance(missing, OAuthNotConfigured)
        assert missing.title == "Acme Mail OAuth is not configured"
        async with session_scope(runtime.sessionmaker) as session:
            with pytest.raises(OAuthFailure) as raised:
                await connection_service.complete_oauth(
                    session,
                    provider=other,
                    reader=runtime.sessionmaker,
                    settings=service.settings,
                    transport=httpx.AsyncHTTPTransport(),
                    state=None,
                    code="abc",
                    error=None,
                    caller=None,
                )
        assert raised.value.title == "Acme Mail was not connected"
        assert raised.value.code == "state_missing"
