"""Webhooks: CRUD, signed JSON deliveries, queue mode, the lossy failure policy (reference §7)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx

from tests.sandbox.mautic.conftest import Receiver, Sandbox, make_hook, new_contact
from tests.support.servers import free_port

CONTACT_TRIGGERS = [
    "mautic.lead_post_save_new",
    "mautic.lead_post_save_update",
    "mautic.lead_post_delete",
    "mautic.lead_channel_subscription_changed",
    "mautic.lead_points_change",
    "mautic.lead_list_change",
]


async def test_hooks_crud_secret_generated_put_replaces_patch_adds(api: httpx.AsyncClient) -> None:
    triggers = (await api.get("/hooks/triggers")).json()["triggers"]
    assert "mautic.lead_channel_subscription_changed" in triggers
    assert "mautic.email_on_bounce" not in triggers  # bounces arrive as subscription changes
    hook = await make_hook(api, "https://example.com/in", ["mautic.lead_post_save_new"])
    assert len(hook["secret"]) >= 16
    assert hook["webhookUrl"] == "https://example.com/in"
    patched = (
        await api.patch(f"/hooks/{hook['id']}/edit", json={"triggers": ["mautic.lead_post_delete"]})
    ).json()["hook"]
    assert patched["triggers"] == ["mautic.lead_post_save_new", "mautic.lead_post_delete"]
    put = (
        await api.put(
            f"/hooks/{hook['id']}/edit",
            json={
                "name": "t",
                "webhookUrl": "https://example.com/in",
                "triggers": ["mautic.lead_post_delete"],
            },
        )
    ).json()["hook"]
    assert put["triggers"] == ["mautic.lead_post_delete"]
    listed = (await api.get("/hooks")).json()
    assert listed["total"] == 1 and str(hook["id"]) in listed["hooks"]
    bad = await api.post("/hooks/new", json={"name": "x", "webhookUrl": "not a url"})
    assert bad.status_code == 400
    assert (await api.delete(f"/hooks/{hook['id']}/delete")).json()["hook"]["id"] is None


async def test_immediate_delivery_is_signed_over_the_exact_raw_body(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    hook = await make_hook(api, receiver.url, CONTACT_TRIGGERS, secret="s3cret")
    c = await new_contact(api, email="wh@x.com", firstname="Zoë", website="https://x.com/a")
    assert len(receiver.deliveries) == 1  # immediate: sent before the API call answered
    delivery = receiver.deliveries[0]
    raw = delivery["body"]
    expected = base64.b64encode(hmac.new(b"s3cret", raw, hashlib.sha256).digest()).decode()
    assert delivery["headers"]["webhook-signature"] == expected
    assert delivery["headers"]["content-type"] == "application/json"
    assert delivery["headers"]["x-origin-base-url"] == sandbox.url
    assert b"https:\\/\\/x.com\\/a" in raw and b"Zo\\u00eb" in raw  # PHP json_encode bytes
    body = json.loads(raw)
    [item] = body["mautic.lead_post_save_new"]
    assert item["contact"]["id"] == c["id"]
    assert "all" not in item["contact"]["fields"]  # webhooks carry no fields.all
    assert item["timestamp"].endswith("+00:00")
    assert hook["secret"] == "s3cret"


async def test_people_actions_fire_subscription_changes_and_updates(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    await new_contact(api, email="p@x.com")
    await make_hook(api, receiver.url, CONTACT_TRIGGERS)
    assert (await sandbox.act("unsubscribe", "p@x.com")).status_code == 200
    assert (await sandbox.act("bounce", "p@x.com")).status_code == 200  # reason 1 stays
    await sandbox.act("profile", "p@x.com", fields={"city": "Oslo"})
    events = receiver.events()
    assert [t for t, _ in events] == [
        "mautic.lead_post_save_update",
        "mautic.lead_channel_subscription_changed",
        "mautic.lead_post_save_update",
    ]
    change = events[1][1]
    assert (change["channel"], change["old_status"], change["new_status"]) == (
        "email",
        "contactable",
        "unsubscribed",
    )
    signup = await sandbox.act("signup", "new@x.com", fields={"firstname": "N"})
    assert signup.status_code == 200
    assert receiver.events()[-1][0] == "mautic.lead_post_save_new"


async def test_merge_fires_delete_for_the_loser(api: httpx.AsyncClient, receiver: Receiver) -> None:
    a = await new_contact(api, email="a@x.com")
    b = await new_contact(api, email="b@x.com")
    await make_hook(api, receiver.url, ["mautic.lead_post_delete"])
    await api.patch(f"/contacts/{a['id']}/edit", json={"email": "b@x.com"})
    [(trigger, item)] = receiver.events()
    assert trigger == "mautic.lead_post_delete"
    assert item["id"] == b["id"] and item["contact"]["id"] is None


async def test_queue_mode_groups_up_to_ten_events_per_post(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    await sandbox.configure(queue_mode="command_process", webhook_cron_seconds=0)
    await make_hook(api, receiver.url, CONTACT_TRIGGERS)
    await api.post("/contacts/batch/new", json=[{"email": f"q{i}@x.com"} for i in range(3)])
    assert receiver.deliveries == []
    assert (await sandbox.http.post("/_control/webhooks/process")).json()["posts"] == 1
    assert len(receiver.events()) == 3  # one POST with 3 items
    receiver.deliveries.clear()
    await api.post("/contacts/batch/new", json=[{"email": f"r{i}@x.com"} for i in range(12)])
    c = await new_contact(api, email="q0@x.com", points=5)
    assert c["points"] == 5
    await sandbox.http.post("/_control/webhooks/process")
    sizes = [sum(len(v) for v in json.loads(d["body"]).values()) for d in receiver.deliveries]
    assert sizes == [10, 4]  # 12 new + the update + the points change
    last = json.loads(receiver.deliveries[-1]["body"])
    assert set(last) == {
        "mautic.lead_post_save_new",
        "mautic.lead_post_save_update",
        "mautic.lead_points_change",
    }


async def test_5x_policy_loses_events_on_non_2xx_and_keeps_them_on_transport_errors(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    await sandbox.configure(queue_mode="command_process", webhook_cron_seconds=0)
    hook = await make_hook(api, receiver.url, ["mautic.lead_post_save_new"])
    receiver.status = 500
    await new_contact(api, email="lost@x.com")
    await sandbox.http.post("/_control/webhooks/process")
    receiver.status = 200
    await sandbox.http.post("/_control/webhooks/process")
    assert len(receiver.deliveries) == 1  # the 500 lost the event: no second attempt
    await api.patch(
        f"/hooks/{hook['id']}/edit", json={"webhookUrl": f"http://127.0.0.1:{free_port()}/x"}
    )
    await new_contact(api, email="kept@x.com")
    await sandbox.http.post("/_control/webhooks/process")
    state = (await sandbox.http.get("/_control/webhook-deliveries")).json()
    assert state["hooks"][0]["queued"] == 1  # connection refused: the row stays
    await api.patch(f"/hooks/{hook['id']}/edit", json={"webhookUrl": receiver.url})
    await sandbox.http.post("/_control/webhooks/process")
    assert receiver.events()[-1][1]["contact"]["fields"]["core"]["email"]["value"] == "kept@x.com"


async def test_410_unpublishes_at_once_and_persistent_failure_after_the_limit(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    hook = await make_hook(api, receiver.url, ["mautic.lead_post_save_new"])
    receiver.status = 410
    await new_contact(api, email="g1@x.com")
    assert (await api.get(f"/hooks/{hook['id']}")).json()["hook"]["isPublished"] is False
    await new_contact(api, email="g2@x.com")
    assert len(receiver.deliveries) == 1
    await sandbox.configure(webhook_disable_limit=3)
    other = await make_hook(api, receiver.url, ["mautic.lead_post_save_new"])
    receiver.status = 503
    for i in range(3):
        await new_contact(api, email=f"f{i}@x.com")
        published = (await api.get(f"/hooks/{other['id']}")).json()["hook"]["isPublished"]
        assert published is (i < 2)


async def test_7x_policy_keeps_failed_rows_and_retries_later(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    await sandbox.configure(
        queue_mode="command_process", webhook_cron_seconds=0, webhook_policy="7.x"
    )
    await make_hook(api, receiver.url, ["mautic.lead_post_save_new"])
    receiver.status = 500
    await new_contact(api, email="retry@x.com")
    await sandbox.http.post("/_control/webhooks/process")
    receiver.status = 200
    await sandbox.http.post("/_control/webhooks/process")
    assert len(receiver.deliveries) == 1  # unhealthy and not yet due
    await sandbox.http.post("/_control/clock", json={"advance_seconds": 3601})
    await sandbox.http.post("/_control/webhooks/process")
    assert len(receiver.deliveries) == 2
    assert receiver.events()[-1][0] == "mautic.lead_post_save_new"


async def test_webhook_fault_knobs_drop_and_duplicate(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    await make_hook(api, receiver.url, ["mautic.lead_post_save_new"])
    await sandbox.configure(webhook_fault_rates={"drop": 1.0})
    await new_contact(api, email="dropped@x.com")
    assert receiver.deliveries == []
    await sandbox.configure(webhook_fault_rates={"drop": 0.0, "duplicate": 1.0})
    await new_contact(api, email="twice@x.com")
    assert len(receiver.deliveries) == 2
    assert receiver.deliveries[0]["body"] == receiver.deliveries[1]["body"]


async def test_concurrent_requests_each_deliver_their_own_events(
    api: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    import asyncio

    await make_hook(api, receiver.url, ["mautic.lead_post_save_new"])
    await sandbox.configure(webhook_delay_ms=100)
    batch = asyncio.create_task(
        api.post("/contacts/batch/new", json=[{"email": f"c{i}@x.com"} for i in range(3)])
    )
    await asyncio.wait_for(receiver.arrived.wait(), 10)  # the batch is delivering one by one
    failed = await api.post("/contacts/new", json={"email": "not-an-email"})
    assert failed.status_code == 400
    # The failing request answered without delivering (or waiting for) the batch's events.
    assert len(receiver.deliveries) < 3
    assert (await batch).status_code == 201
    emails = sorted(i["contact"]["fields"]["core"]["email"]["value"] for _, i in receiver.events())
    assert emails == ["c0@x.com", "c1@x.com", "c2@x.com"]


async def test_the_company_field_links_a_company_and_fires_company_change(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    await make_hook(api, receiver.url, ["mautic.lead_company_change"])
    c = await new_contact(api, email="co@x.com", company="Acme")
    [(trigger, item)] = receiver.events()
    assert trigger == "mautic.lead_company_change"
    assert item["added"] is True
    assert item["company"]["fields"]["all"]["companyname"] == "Acme"
    assert item["contact"]["id"] == c["id"]
    await api.patch(f"/contacts/{c['id']}/edit", json={"company": "acme", "city": "Oslo"})
    assert len(receiver.events()) == 1  # same company (case-insensitive): no new link
    companies = (await api.get("/companies")).json()
    assert companies["total"] == 1
    company_id = next(iter(companies["companies"]))
    removed = await api.post(f"/companies/{company_id}/contact/{c['id']}/remove")
    assert removed.json() == {"success": 1}
    assert receiver.events()[-1][1]["added"] is False
