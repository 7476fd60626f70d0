"""FIELD_MAP at Mailchimp: merge fields created on connect, refusals named, values synced."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from app.config import Settings
from app.connections.service import ensure_configured_connection
from app.db import session_scope
from app.main import Runtime
from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID
from tests.conftest import fetch
from tests.connections.conftest import authorize, drain, run_reconcile
from tests.support.sync import Sandbox

LIST = DEFAULT_LIST_ID
SCORE_MAP = {
    "mailchimp": {
        "custom_fields.score": {"field": "SCORE", "type": "number", "label": "Lead score"},
        "custom_fields.langs": {"field": "LANGS", "type": "list"},
    }
}


def field_map(raw: dict[str, Any]) -> Any:
    """FIELD_MAP as Settings parses it from the environment."""
    return Settings.model_validate({"FIELD_MAP": json.dumps(raw)}).FIELD_MAP


async def merge_fields(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    r = await sandbox.api("GET", f"/lists/{LIST}/merge-fields", params={"count": 100})
    assert r.status_code == 200, r.text
    return {f["tag"]: f for f in r.json()["merge_fields"]}


async def connect(svc: Any) -> Any:
    return await svc.http.post(
        "/api/integrations/mailchimp/api-key",
        json={"api_key": DEFAULT_API_KEY, "audience_id": LIST},
        headers=svc.auth(),
    )


async def test_connect_creates_the_missing_merge_fields_and_values_reach_them(
    serve: Callable[..., Any], sandbox: Sandbox, runtime: Runtime
) -> None:
    assert "COMPANY" not in await merge_fields(sandbox)  # a new audience has none
    async with serve(FIELD_MAP=field_map(SCORE_MAP)) as svc:
        r = await connect(svc)
        assert r.status_code == 200, r.text
        fields = await merge_fields(sandbox)
        assert (fields["COMPANY"]["type"], fields["COMPANY"]["name"]) == ("text", "Company")
        assert (fields["SCORE"]["type"], fields["SCORE"]["name"]) == ("number", "Lead score")
        assert fields["LANGS"]["type"] == "text"
        assert fields["FNAME"]["type"] == "text"  # existing fields are kept as they are

        created = await svc.http.post(
            "/api/contacts",
            json={
                "email": "ada@example.com",
                "first_name": "Ada",
                "company": "Analytical Engines",
                "custom_fields": {"score": "42", "langs": "en;fr"},
                "newsletter_opt_in": True,
            },
            headers=svc.auth(),
        )
        assert created.status_code == 201, created.text
        await run_reconcile(runtime, svc.settings)
        await drain(runtime, svc.settings)
        member = (await sandbox.members())["ada@example.com"]
        assert member["merge_fields"]["COMPANY"] == "Analytical Engines"
        assert member["merge_fields"]["SCORE"] == 42
        assert member["merge_fields"]["LANGS"] == "en, fr"

        # A company change alone is a change to send (the digest covers COMPANY).
        patched = await svc.http.patch(
            f"/api/contacts/{created.json()['id']}",
            json={"company": "Difference Engines"},
            headers=svc.auth(),
        )
        assert patched.status_code == 200
        await drain(runtime, svc.settings)
        member = (await sandbox.members())["ada@example.com"]
        assert member["merge_fields"]["COMPANY"] == "Difference Engines"

        # Connecting again finds every field in place: nothing more is created.
        await sandbox.clear_requests()
        assert (await connect(svc)).status_code == 200
        posts = [
            r
            for r in await sandbox.requests()
            if r["method"] == "POST" and "/merge-fields" in r["path"]
        ]
        assert posts == []


async def test_a_field_of_the_wrong_type_is_a_clear_error_and_nothing_is_connected(
    serve: Callable[..., Any], sandbox: Sandbox, runtime: Runtime
) -> None:
    wrong = {"mailchimp": {"custom_fields.score": {"field": "BIRTHDAY", "type": "number"}}}
    async with serve(FIELD_MAP=field_map(wrong)) as svc:
        r = await connect(svc)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert "FIELD_MAP entry mailchimp.custom_fields.score" in body["detail"]
        assert "BIRTHDAY is of type birthday, which cannot hold a number value" in body["detail"]
        assert body["errors"][0]["field"] == "FIELD_MAP"
        status = await svc.http.get("/api/integrations/mailchimp", headers=svc.auth())
        assert status.json()["connected"] is False
    assert await fetch(runtime, "SELECT * FROM connections") == []
    # Nothing half-done at Mailchimp either: the missing COMPANY was not created.
    assert "COMPANY" not in await merge_fields(sandbox)


async def test_a_field_mailchimp_will_not_create_is_a_clear_error(
    serve: Callable[..., Any], sandbox: Sandbox, runtime: Runtime
) -> None:
    # Fill the audience up to Mailchimp's limit of merge fields.
    have = len(await merge_fields(sandbox))
    for n in range(30 - have):
        r = await sandbox.api(
            "POST", f"/lists/{LIST}/merge-fields", json={"name": f"F{n}", "type": "text"}
        )
        assert r.status_code == 200, r.text
    async with serve() as svc:
        r = await connect(svc)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "FIELD_MAP entry mailchimp.company: Mailchimp refused to create the merge field" in (
        detail
    )
    assert "limit" in detail
    assert await fetch(runtime, "SELECT * FROM connections") == []


async def test_a_configured_connection_gets_its_fields_at_the_first_sync(
    sync_settings: Settings, sandbox: Sandbox, runtime: Runtime
) -> None:
    # MAILCHIMP_API_KEY + MAILCHIMP_AUDIENCE_ID: saved at start without a remote call.
    settings = sync_settings.model_copy(
        update={
            "MAILCHIMP_API_KEY": SecretStr(DEFAULT_API_KEY),
            "MAILCHIMP_AUDIENCE_ID": LIST,
            "MAILCHIMP_OWNER": "owner-a",
            "FIELD_MAP": field_map(SCORE_MAP),
        }
    )
    async with session_scope(runtime.sessionmaker) as session:
        await ensure_configured_connection(settings, session)
    assert "SCORE" not in await merge_fields(sandbox)
    assert await run_reconcile(runtime, settings) is not None
    fields = await merge_fields(sandbox)
    assert {"COMPANY", "SCORE", "LANGS"} <= set(fields)


async def test_a_refusal_at_sync_time_is_shown_and_the_sync_goes_on(
    sync_settings: Settings, sandbox: Sandbox, runtime: Runtime
) -> None:
    wrong = {"mailchimp": {"custom_fields.score": {"field": "BIRTHDAY", "type": "number"}}}
    settings = sync_settings.model_copy(
        update={
            "MAILCHIMP_API_KEY": SecretStr(DEFAULT_API_KEY),
            "MAILCHIMP_AUDIENCE_ID": LIST,
            "MAILCHIMP_OWNER": "owner-a",
            "FIELD_MAP": field_map(wrong),
        }
    )
    async with session_scope(runtime.sessionmaker) as session:
        await ensure_configured_connection(settings, session)
    run_id = await run_reconcile(runtime, settings)
    (run,) = await fetch(runtime, "SELECT state FROM sync_runs WHERE id = :id", id=run_id)
    assert run["state"] == "done"
    (conn,) = await fetch(runtime, "SELECT status, last_error FROM connections")
    assert conn["status"] == "active"
    assert "FIELD_MAP entry mailchimp.custom_fields.score" in conn["last_error"]


async def test_the_oauth_popup_reports_a_refused_field_map_and_stores_nothing(
    serve: Callable[..., Any], sandbox: Sandbox, runtime: Runtime
) -> None:
    wrong = {"mailchimp": {"custom_fields.score": {"field": "BIRTHDAY", "type": "number"}}}
    async with serve(FIELD_MAP=field_map(wrong)) as svc:
        callback = await authorize(await svc.connect())
        r = await svc.http.get(callback, headers={"Accept": "application/json"})
        assert r.status_code == 422
        assert r.json()["error"] == "fields_refused"
        assert "FIELD_MAP entry mailchimp.custom_fields.score" in r.json()["detail"]
    assert await fetch(runtime, "SELECT * FROM connections") == []
