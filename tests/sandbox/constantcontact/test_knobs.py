"""The knobs standing for the reference's unverified points: each setting is observable."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.sandbox.constantcontact import DEFAULT_LIST_ID
from tests.sandbox.constantcontact.conftest import Sandbox


async def _create(api: httpx.AsyncClient, email: str, **body: Any) -> dict[str, Any]:
    response = await api.post(
        "/contacts",
        json={"email_address": {"address": email}, "create_source": "Account", **body},
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_never_more_than_the_rate_in_any_second(sandbox: Sandbox) -> None:
    await sandbox.configure(rate_per_second=4)
    clients = [await sandbox.api() for _ in range(3)]  # three "workers", one application

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(6):
            response = await client.get("/contacts")
            if response.status_code == 429:
                await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for client in clients:
            await client.aclose()
    log = (await sandbox.http.get("/_control/requests")).json()["requests"]
    admitted = sorted(e["admitted_at"] for e in log if e["decision"] == "admitted")
    assert admitted
    busiest = max(sum(1 for u in admitted if t <= u < t + 1.0) for t in admitted)
    assert busiest <= 4


async def test_email_case_and_default_permission(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    await sandbox.configure(email_case_sensitive=True, default_permission_on_create="explicit")
    first = await _create(api, "Case@example.com")
    second = await _create(api, "case@example.com")  # another contact when case matters
    assert first["contact_id"] != second["contact_id"]
    assert first["email_address"]["permission_to_send"] == "explicit"


async def test_echo_subresources_and_deleted_opt_out_fields(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    await sandbox.configure(echo_subresources_on_create=True, deleted_shows_opt_out_fields=True)
    created = await _create(api, "echo@example.com", list_memberships=[DEFAULT_LIST_ID])
    assert created["list_memberships"] == [DEFAULT_LIST_ID]
    await api.delete(f"/contacts/{created['contact_id']}")
    block = (await api.get(f"/contacts/{created['contact_id']}")).json()["email_address"]
    assert block["permission_to_send"] == "implicit" and "opt_out_date" in block


async def test_put_unsubscribe_source_and_updated_at_knobs(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    await sandbox.configure(
        opt_out_source_follows_update_source=False, unsubscribe_moves_updated_at=False
    )
    created = await _create(api, "src@example.com")
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 5})
    put = await api.put(
        f"/contacts/{created['contact_id']}",
        json={
            "email_address": {"address": "src@example.com", "permission_to_send": "unsubscribed"},
            "update_source": "Contact",
        },
    )
    assert put.json()["email_address"]["opt_out_source"] == "Account"
    assert (await _create(api, "other@example.com"))["contact_id"]
    await sandbox.act("other@example.com", "unsubscribe")
    other = (await sandbox.dump())["other@example.com"]
    assert other["updated_at"] == other["created_at"]  # only opt_out_date moved


async def test_order_inclusive_after_cursor_expiry_and_malformed_ids(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    first = await _create(api, "o1@example.com")
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 2})
    second = await _create(api, "o2@example.com")
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 2})
    await api.put(
        f"/contacts/{first['contact_id']}",
        json={"email_address": {"address": "o1@example.com"}, "update_source": "Account"},
    )
    await sandbox.configure(contacts_order="updated_at")
    ordered = (await api.get("/contacts")).json()["contacts"]
    assert [c["contact_id"] for c in ordered] == [second["contact_id"], first["contact_id"]]
    at = second["updated_at"]
    strict = (await api.get("/contacts", params={"updated_after": at})).json()["contacts"]
    assert [c["contact_id"] for c in strict] == [first["contact_id"]]
    await sandbox.configure(after_filters_inclusive=True)
    inclusive = (await api.get("/contacts", params={"updated_after": at})).json()["contacts"]
    assert len(inclusive) == 2
    await sandbox.configure(cursor_ttl_seconds=60, contacts_order="created_at")
    page = (await api.get("/contacts", params={"limit": 1})).json()
    await sandbox.http.post("/_control/clock/advance", json={"seconds": 61})
    stale = await api.get(page["_links"]["next"]["href"].removeprefix("/v3"))
    assert stale.status_code == 400
    await sandbox.configure(malformed_id_status=404)
    assert (await api.get("/contacts/nope")).status_code == 404


async def test_resubscribe_state_conflict_window_and_id_token(
    sandbox: Sandbox, api: httpx.AsyncClient
) -> None:
    await sandbox.configure(resubscribe_pending_state="unsubscribed", conflict_window_ms=60_000)
    created = await _create(api, "rs@example.com")
    await sandbox.act("rs@example.com", "unsubscribe")
    sent = await api.put(
        f"/contacts/resubscribe/{created['contact_id']}", json={"list_ids": [DEFAULT_LIST_ID]}
    )
    assert sent.status_code == 200
    block = (await sandbox.dump())["rs@example.com"]["email_address"]
    assert block["permission_to_send"] == "unsubscribed"
    body = {"email_address": "race@example.com", "list_memberships": [DEFAULT_LIST_ID]}
    assert (await api.post("/contacts/sign_up_form", json=body)).status_code == 201
    race = await api.post("/contacts/sign_up_form", json=body)
    assert race.status_code == 409
    assert race.json()[0]["error_message"].startswith("You sent simultaneous requests")
    await sandbox.configure(id_token="always")
    assert "id_token" in await sandbox.mint()


async def test_endpoint_rates_limit_one_route(sandbox: Sandbox, api: httpx.AsyncClient) -> None:
    bad = await sandbox.http.patch("/_control/config", json={"endpoint_rates": {"x": 0}})
    assert bad.status_code == 400
    await sandbox.configure(endpoint_rates={"POST /v3/contacts/sign_up_form": 1})
    body = {"email_address": "ep@example.com", "list_memberships": [DEFAULT_LIST_ID]}
    assert (await api.post("/contacts/sign_up_form", json=body)).status_code == 201
    limited = await api.post("/contacts/sign_up_form", json=body)
    assert limited.status_code == 429
    assert limited.json() == {"error_key": "throttled", "error_message": "Too Many Requests"}
    assert (await api.get("/contacts")).status_code == 200  # other routes unaffected
