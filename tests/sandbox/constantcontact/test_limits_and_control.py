"""4/s and the daily quota per application, faults, the request log, people's actions."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from app.sandbox.constantcontact import (
    DEFAULT_LIST_ID,
    LONG_LIVED_CLIENT_ID,
    ROTATING_CLIENT_ID,
    create_app,
)
from tests.sandbox.constantcontact.conftest import Sandbox

THROTTLED = {"error_key": "throttled", "error_message": "Too Many Requests"}
QUOTA = {"error_key": "quota_exceeded", "error_message": "Limit Exceeded"}


async def test_four_a_second_per_application(sandbox: Sandbox) -> None:
    await sandbox.configure(rate_per_second=4)
    other = (await sandbox.http.post("/_control/accounts", json={})).json()["id"]
    first = await sandbox.api()
    second = await sandbox.api(account_id=other)  # same app, another tenant
    async with first, second:
        answers = await asyncio.gather(*(c.get("/account/summary") for c in (first, second) * 4))
        statuses = [r.status_code for r in answers]
        # 8 at once against a bucket of 4 shared by both tenants of the application
        assert 429 in statuses and statuses.count(200) >= 4
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.json() == THROTTLED  # an object, not an array
        assert "retry-after" not in refused.headers
        other_app = await sandbox.api(client_id=LONG_LIVED_CLIENT_ID)
        async with other_app:
            assert (await other_app.get("/account/summary")).status_code == 200
    await sandbox.configure(record_bodies=True, rate_per_second=100)
    async with await sandbox.api() as third:
        await third.post("/contact_tags", json={"name": "Logged"})
    log = (await sandbox.http.get("/_control/requests")).json()["requests"]
    assert '"Logged"' in log[-1]["body"] and log[-1]["account"] == "p07e1l8cdif9dl"
    decisions = {e["decision"] for e in log}
    assert {"admitted", "throttled"} <= decisions
    assert {e["client_id"] for e in log} == {ROTATING_CLIENT_ID, LONG_LIVED_CLIENT_ID}


async def test_daily_quota_is_shared_and_resets_at_midnight_utc(sandbox: Sandbox) -> None:
    await sandbox.configure(daily_quota=3, retry_after_header=True)
    other = (await sandbox.http.post("/_control/accounts", json={})).json()["id"]
    first = await sandbox.api()
    second = await sandbox.api(account_id=other)
    async with first, second:
        for client in (first, second, first):
            assert (await client.get("/contacts")).status_code == 200
        over = await second.get("/contacts")
        assert over.status_code == 429
        assert over.json() == QUOTA
        assert int(over.headers["retry-after"]) >= 1
        limits = (await sandbox.http.get("/_control/limits")).json()
        assert limits["used_today"] == {ROTATING_CLIENT_ID: 3}
        await sandbox.http.post("/_control/clock/advance", json={"to_next_midnight": True})
        assert (await second.get("/contacts")).status_code == 200


async def test_quota_keyed_by_account_is_a_knob(sandbox: Sandbox) -> None:
    await sandbox.configure(daily_quota=1, quota_key="account")
    other = (await sandbox.http.post("/_control/accounts", json={})).json()["id"]
    first = await sandbox.api()
    second = await sandbox.api(account_id=other)
    async with first, second:
        assert (await first.get("/contacts")).status_code == 200
        assert (await second.get("/contacts")).status_code == 200
        assert (await first.get("/contacts")).status_code == 429


async def test_faults_and_outages(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    await sandbox.configure(fault_rates={"503": 1.0})
    failed = await api.get("/contacts")
    assert failed.status_code == 503
    assert failed.json() == [
        {
            "error_key": "service_unavailable",
            "error_message": "Our internal service is temporarily unavailable.",
        }
    ]
    await sandbox.configure(fault_rates={"503": 0.0, "429_quota": 1.0})
    assert (await api.get("/contacts")).json() == QUOTA
    await sandbox.configure(fault_rates={"429_quota": 0.0, "conflict_409": 1.0})
    assert (await api.get("/contacts")).status_code == 200  # only sign_up_form races
    race = await api.post(
        "/contacts/sign_up_form",
        json={"email_address": "r@example.com", "list_memberships": [DEFAULT_LIST_ID]},
    )
    assert race.status_code == 409
    await sandbox.configure(fault_rates={"conflict_409": 0.0}, error_body_shape="object")
    await sandbox.configure(outage_seconds=30)
    down = await api.get("/contacts")
    assert down.status_code == 503 and isinstance(down.json(), dict)
    bad = await sandbox.http.patch("/_control/config", json={"fault_rates": {"418": 1}})
    assert bad.status_code == 400
    unknown = await sandbox.http.patch("/_control/config", json={"nope": 1})
    assert unknown.status_code == 400


async def test_people_actions(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    await api.post(
        "/contacts",
        json={
            "email_address": {"address": "p@example.com"},
            "create_source": "Account",
            "list_memberships": [DEFAULT_LIST_ID],
        },
    )
    held = await sandbox.act("p@example.com", "temp_hold")
    assert held.json()["email_address"]["permission_to_send"] == "temp_hold"
    gone = await sandbox.act("p@example.com", "unsubscribe", reason="bored")
    block = gone.json()["email_address"]
    assert block["permission_to_send"] == "unsubscribed"
    assert block["opt_out_source"] == "Contact" and block["opt_out_reason"] == "bored"
    assert gone.json()["update_source"] == "Contact"
    # a form signup into a list by someone unknown, with Confirmed Opt-in on
    await sandbox.http.patch("/_control/accounts/p07e1l8cdif9dl", json={"confirmed_opt_in": True})
    signup = await sandbox.http.post(
        f"/_control/lists/{DEFAULT_LIST_ID}/actions/signup",
        json={"email": "lead@example.com", "first_name": "Lead"},
    )
    assert signup.status_code == 200
    lead = signup.json()
    assert lead["email_address"]["permission_to_send"] == "pending_confirmation"
    assert lead["create_source"] == "Contact" and lead["list_memberships"] == [DEFAULT_LIST_ID]
    kinds = [e["kind"] for e in (await sandbox.http.get("/_control/emails")).json()["emails"]]
    assert kinds == ["confirm_opt_in"]
    confirmed = await sandbox.act("lead@example.com", "confirm")
    assert confirmed.json()["email_address"]["permission_to_send"] == "explicit"
    assert confirmed.json()["email_address"]["confirm_status"] == "confirmed"
    listed = await api.get("/contacts", params={"lists": DEFAULT_LIST_ID, "status": "all"})
    assert len(listed.json()["contacts"]) == 2
    unknown = await sandbox.act("nobody@example.com", "unsubscribe")
    assert unknown.status_code == 404
    assert (await sandbox.act("p@example.com", "dance")).status_code == 404


async def test_reset_and_config_round_trip(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    await api.post(
        "/contacts",
        json={"email_address": {"address": "r@example.com"}, "create_source": "Account"},
    )
    await sandbox.configure(daily_quota=5, signup_form_resubscribes="never")
    config = (await sandbox.http.get("/_control/config")).json()
    assert config["daily_quota"] == 5 and config["signup_form_resubscribes"] == "never"
    assert (await sandbox.http.post("/_control/reset")).status_code == 200
    assert (await sandbox.dump()) == {}
    config = (await sandbox.http.get("/_control/config")).json()
    assert config["signup_form_resubscribes"] == "always"
    assert (await api.get("/contacts")).status_code == 401  # grants are gone too
    apps = (await sandbox.http.get("/_control/apps")).json()["apps"]
    assert {a["refresh_token_type"] for a in apps} == {"rotating", "long_lived"}


async def test_mounted_under_the_service_prefix() -> None:
    service = FastAPI()
    service.mount("/_sandbox/constantcontact", create_app())
    transport = httpx.ASGITransport(app=service)
    root = "http://svc.test/_sandbox/constantcontact"
    async with httpx.AsyncClient(transport=transport, base_url=root) as client:
        token = (await client.post(f"{root}/_control/tokens")).json()["access_token"]
        summary = await client.get(
            f"{root}/v3/account/summary", headers={"authorization": f"Bearer {token}"}
        )
        assert summary.status_code == 200
        page = await client.get(
            f"{root}/oauth2/default/v1/authorize",
            params={
                "client_id": ROTATING_CLIENT_ID,
                "redirect_uri": "http://app.test/cb",
                "response_type": "code",
                "scope": "contact_data",
            },
        )
        assert f"action='{root}/oauth2/default/v1/authorize'" in page.text
