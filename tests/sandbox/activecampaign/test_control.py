"""The control API: accounts, dumps, actions' errors; never limited or faulted."""

from __future__ import annotations

import httpx
import pytest

from app.sandbox.activecampaign import DEFAULT_LIST_ID, AcConfig
from tests.sandbox.activecampaign.conftest import API, sync


@pytest.fixture
def config() -> AcConfig:
    return AcConfig(fault_rates={"503": 1.0})  # every API request fails; control never does


async def test_control_is_outside_limits_and_faults(ac: httpx.AsyncClient) -> None:
    assert (await ac.get(f"{API}/users/me")).status_code == 503
    for _ in range(12):  # beyond 5 a second
        assert (await ac.get("/_control/accounts")).status_code == 200
    index = (await ac.get("/_control")).json()["endpoints"]
    assert any("actions" in e for e in index)


async def test_accounts_dumps_and_action_errors(ac: httpx.AsyncClient) -> None:
    await ac.patch("/_control/config", json={"fault_rates": {"503": 0.0}})
    made = await ac.post("/_control/accounts", json={"name": "Second", "api_key": "k2"})
    assert made.status_code == 201
    body = made.json()
    assert body["api_key"] == "k2" and len(body["lists"]) == 1
    again = await ac.post("/_control/accounts", json={"api_key": "k2"})
    assert again.status_code == 400
    assert (await ac.post("/_control/accounts", json={"bogus": 1})).status_code == 400
    theirs = await ac.post(
        f"{API}/contact/sync",
        json={"contact": {"email": "theirs@example.com"}},
        headers={"Api-Token": "k2"},
    )
    assert theirs.status_code == 201
    await sync(ac, "ours@example.com")
    ours = (await ac.get("/_control/accounts/sandbox/contacts")).json()
    assert [c["email"] for c in ours["contacts"]] == ["ours@example.com"]  # tenants apart
    listed = (await ac.get(f"{API}/contacts", params={"email": "theirs@example.com"})).json()
    assert listed["contacts"] == []
    actions = f"/_control/lists/{DEFAULT_LIST_ID}/actions"
    assert (await ac.post(f"{actions}/explode", json={"email": "x@example.com"})).status_code == 404
    assert (await ac.post(f"{actions}/unsubscribe", json={})).status_code == 400
    nobody = await ac.post(f"{actions}/unsubscribe", json={"email": "nobody@example.com"})
    assert nobody.status_code == 404
    assert (await ac.get("/_control/lists/999/contacts")).status_code == 404
    moved = await ac.post(
        f"{actions}/profile", json={"email": "ours@example.com", "new_email": "new@example.com"}
    )
    assert moved.json()["email"] == "new@example.com"
