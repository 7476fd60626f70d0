"""Each [unverified] point of the reference is a knob: flipping it changes what it says."""

from __future__ import annotations

import base64

import httpx
import pytest

from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from tests.sandbox.mautic.conftest import Sandbox, new_contact

CREDS = {
    "grant_type": "client_credentials",
    "client_id": DEFAULT_CLIENT_ID,
    "client_secret": DEFAULT_CLIENT_SECRET,
}


async def test_token_scope_and_json_body_knobs(sandbox: Sandbox) -> None:
    assert (await sandbox.http.post("/oauth/v2/token", json=CREDS)).status_code == 200
    await sandbox.configure(token_scope="", token_accepts_json_body=False)
    by_form = await sandbox.http.post("/oauth/v2/token", data=CREDS)
    assert by_form.json()["scope"] == ""
    by_json = await sandbox.http.post("/oauth/v2/token", json=CREDS)
    assert by_json.status_code == 400
    assert by_json.json()["errors"][0]["type"] == "invalid_request"


async def test_client_credentials_by_http_basic_meet_the_basic_switch(sandbox: Sandbox) -> None:
    basic = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    data = {"grant_type": "client_credentials"}
    refused = await sandbox.http.post("/oauth/v2/token", data=data, headers=headers)
    assert refused.status_code == 403
    await sandbox.configure(api_enable_basic_auth=True)
    granted = await sandbox.http.post("/oauth/v2/token", data=data, headers=headers)
    assert granted.status_code == 200


async def test_no_credentials_message_knob(sandbox: Sandbox) -> None:
    await sandbox.configure(no_credentials_message="OAuth2 authentication required")
    body = (await sandbox.http.get("/api/contacts")).json()
    assert body["errors"][0] == {
        "message": "OAuth2 authentication required",
        "code": 401,
        "type": "access_denied",
    }


async def test_ip_address_key_knob(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    c = await new_contact(api, email="ip@x.com", ipAddress="1.2.3.4")
    assert c["ipAddresses"][0]["ipAddress"] == "1.2.3.4"
    await sandbox.configure(ip_address_key="ip")
    got = (await api.get(f"/contacts/{c['id']}")).json()["contact"]
    assert got["ipAddresses"][0]["ip"] == "1.2.3.4"


async def test_email_case_sensitivity_knob(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    await sandbox.configure(email_match_case_insensitive=False)
    a = await new_contact(api, email="Case@x.com")
    b = await api.post("/contacts/new", json={"email": "case@x.com"})
    assert b.status_code == 201  # a binary collation: a second contact
    assert b.json()["contact"]["id"] != a["id"]


async def test_unique_identifier_operator_and(api: httpx.AsyncClient, sandbox: Sandbox) -> None:
    await api.post(
        "/fields/contact/new",
        json={"label": "Ext", "alias": "ext", "type": "text", "isUniqueIdentifier": True},
    )
    await sandbox.configure(unique_identifiers_operator="AND")
    a = await new_contact(api, email="and@x.com", ext="1")
    other = await api.post("/contacts/new", json={"email": "and@x.com", "ext": "2"})
    assert other.status_code == 201  # AND: both must match
    same = await api.post("/contacts/new", json={"email": "and@x.com", "ext": "1"})
    assert same.json()["contact"]["id"] == a["id"]


async def test_campaign_ids_type_contact_not_found_and_field_202_knobs(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    camp = (await api.post("/campaigns/new", json={"name": "C"})).json()["campaign"]
    c = await new_contact(api, email="k@x.com")
    await api.post(f"/campaigns/{camp['id']}/contact/{c['id']}/add")
    await sandbox.configure(
        campaign_contacts_string_ids=False,
        contact_not_found_message="Lead not found.",
        create_custom_field_in_background=True,
    )
    members = (await api.get(f"/campaigns/{camp['id']}/contacts")).json()
    assert members["total"] == 1 and members["contacts"][0]["lead_id"] == c["id"]
    segment = (await api.post("/segments/new", json={"name": "S"})).json()["list"]
    missing = await api.post(f"/segments/{segment['id']}/contact/999/add")
    assert missing.json()["errors"][0]["message"] == "Lead not found."
    assert (await api.post("/fields/contact/new", json={"label": "Bg"})).status_code == 202


async def test_private_webhook_urls_can_be_blocked(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await sandbox.configure(block_private_webhook_urls=True)
    response = await api.post(
        "/hooks/new",
        json={
            "name": "x",
            "webhookUrl": "http://127.0.0.1:9/h",
            "triggers": ["mautic.lead_post_delete"],
        },
    )
    assert response.status_code == 400
    assert "webhookUrl" in response.json()["errors"][0]["details"]


async def test_dnc_comments_and_rate_limit_content_type_knobs(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    await new_contact(api, email="dc@x.com")
    await sandbox.configure(dnc_comments={"bounce": "Hard bounce"})
    bounced = (await sandbox.act("bounce", "dc@x.com")).json()
    assert bounced["doNotContact"][0]["comments"] == "Hard bounce"
    await sandbox.configure(api_rate_limiter_limit=1, rate_limit_html_content_type=False)
    await api.get("/contacts")
    over = await api.get("/contacts")
    assert over.status_code == 429
    assert over.headers["content-type"] == "application/json"


def test_serving_the_sandbox_alone_tunes_its_processs_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its state grows for the whole run: at the default thresholds the collector re-scanned
    # it every few batches of a bulk drain (5–16 ms of the sandbox's 14–24 ms a batch).
    import gc

    import app.sandbox.kit as kit
    from app.sandbox.kit.serve import GC_THRESHOLDS
    from app.sandbox.mautic.cli import serve_sandbox

    seen: dict[str, object] = {}
    monkeypatch.setattr(kit, "run", lambda app, **kw: seen.update(threshold=gc.get_threshold()))
    before = gc.get_threshold()
    try:
        serve_sandbox(port=0)
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    assert seen["threshold"] == GC_THRESHOLDS
