"""DNC, segments, tags, fields and campaigns (reference §2-§4)."""

from __future__ import annotations

import httpx

from tests.sandbox.mautic.conftest import Sandbox, new_contact


async def test_dnc_add_defaults_to_manual_and_reason_zero_is_a_400(api: httpx.AsyncClient) -> None:
    c = await new_contact(api, email="d@x.com")
    bad = await api.post(f"/contacts/{c['id']}/dnc/email/add", json={"reason": 0})
    assert bad.status_code == 400
    assert bad.json() == {
        "errors": [
            {
                "code": 400,
                "message": "Invalid reason code given",
                "details": ["Reason code needs to be an integer and higher than 0."],
            }
        ]
    }
    added = await api.post(f"/contacts/{c['id']}/dnc/email/add", json={"comments": "ours"})
    assert added.status_code == 200
    [record] = added.json()["contact"]["doNotContact"]
    assert (record["reason"], record["channel"], record["comments"]) == (3, "email", "ours")
    assert "all" not in added.json()["contact"]["fields"]  # no serialization context


async def test_adding_dnc_never_overrides_the_persons_own_unsubscribe(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    c = await new_contact(api, email="u@x.com")
    assert (await sandbox.act("unsubscribe", "u@x.com")).status_code == 200
    await api.post(f"/contacts/{c['id']}/dnc/email/add", json={"reason": 3, "comments": "ours"})
    [record] = (await api.get(f"/contacts/{c['id']}")).json()["contact"]["doNotContact"]
    assert record["reason"] == 1
    removed = await api.post(f"/contacts/{c['id']}/dnc/email/remove")
    assert removed.json()["recordFound"] is True  # remove clears any reason, even the person's
    assert (await api.get(f"/contacts/{c['id']}")).json()["contact"]["doNotContact"] == []
    assert (await api.post(f"/contacts/{c['id']}/dnc/email/remove")).json()["recordFound"] is False


async def test_a_bounce_can_be_overridden_and_payload_dnc_reason_zero_removes(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    c = await new_contact(api, email="b@x.com")
    await sandbox.act("bounce", "b@x.com")
    body = (await api.get(f"/contacts/{c['id']}")).json()["contact"]
    assert body["doNotContact"][0]["reason"] == 2
    await api.post(f"/contacts/{c['id']}/dnc/email/add", json={"reason": 3})
    body = (await api.get(f"/contacts/{c['id']}")).json()["contact"]
    assert body["doNotContact"][0]["reason"] == 3
    edited = await api.patch(
        f"/contacts/{c['id']}/edit", json={"doNotContact": [{"channel": "email", "reason": 0}]}
    )
    assert edited.json()["contact"]["doNotContact"] == []


async def test_segments_crud_and_membership(api: httpx.AsyncClient) -> None:
    empty = (await api.get("/segments")).json()
    assert empty == {"total": 0, "lists": []}
    created = await api.post("/segments/new", json={"name": "Audience Sync"})
    assert created.status_code == 201
    segment = created.json()["list"]
    assert segment["alias"] == "audience-sync"
    listed = (await api.get("/segments")).json()
    assert listed["total"] == 1 and str(segment["id"]) in listed["lists"]
    c = await new_contact(api, email="s@x.com")
    add = await api.post(f"/segments/{segment['id']}/contact/{c['id']}/add")
    assert (add.status_code, add.content) == (200, b'{"success":1}')
    found = (await api.get("/contacts", params={"search": "segment:audience-sync"})).json()
    assert list(found["contacts"]) == [str(c["id"])]
    mine = (await api.get(f"/contacts/{c['id']}/segments")).json()
    assert mine["total"] == 1 and mine["lists"][str(segment["id"])]["alias"] == "audience-sync"
    missing = await api.post(f"/segments/{segment['id']}/contact/999/add")
    assert missing.status_code == 404
    await api.post(f"/segments/{segment['id']}/contact/{c['id']}/remove")
    assert (await api.get(f"/contacts/{c['id']}/segments")).json()["lists"] == []
    batch = (
        await api.post(f"/segments/{segment['id']}/contacts/add", json={"ids": [c["id"], 999]})
    ).json()
    assert batch == {
        "success": 1,
        "details": {str(c["id"]): {"success": True}, "999": {"success": False}},
    }
    deleted = (await api.delete(f"/segments/{segment['id']}/delete")).json()
    assert deleted["list"]["id"] is None
    assert (await api.get(f"/segments/{segment['id']}")).status_code == 404


async def test_custom_unique_field_changes_the_dedupe(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/fields/contact/new",
        json={"label": "CRM id", "alias": "crm_id", "type": "text", "isUniqueIdentifier": True},
    )
    assert created.status_code == 201
    assert created.json()["field"]["isUniqueIdentifier"] is True
    a = await new_contact(api, email="a@x.com", crm_id="42")
    b = await api.post("/contacts/new", json={"email": "other@x.com", "crm_id": "42"})
    assert b.status_code == 200  # OR across unique fields: crm_id matches
    assert b.json()["contact"]["id"] == a["id"]
    fields = (await api.get("/fields/contact", params={"limit": 100})).json()
    assert "crm_id" in {f["alias"] for f in fields["fields"]}
    assert fields["total"] == len(fields["fields"])


async def test_campaign_membership_is_success_1_even_when_nothing_changes(
    api: httpx.AsyncClient,
) -> None:
    camp = (await api.post("/campaigns/new", json={"name": "Nurture"})).json()["campaign"]
    c = await new_contact(api, email="c@x.com")
    url = f"/campaigns/{camp['id']}/contact/{c['id']}"
    for _ in range(2):
        response = await api.post(f"{url}/add")
        assert (response.status_code, response.content) == (200, b'{"success":1}')
    members = (await api.get(f"/campaigns/{camp['id']}/contacts")).json()
    assert members["total"] == "1" and members["contacts"][0]["lead_id"] == str(c["id"])
    await api.post(f"{url}/remove")
    again = await api.post(f"{url}/add")  # no restart allowed: still success, not re-added
    assert again.content == b'{"success":1}'
    assert (await api.get(f"/campaigns/{camp['id']}/contacts")).json()["contacts"] == []
    assert (await api.post(f"/campaigns/999/contact/{c['id']}/add")).status_code == 404
    assert (await api.post(f"/campaigns/{camp['id']}/contact/999/add")).status_code == 404
    listed = (await api.get(f"/contacts/{c['id']}/campaigns")).json()
    assert listed == {"total": 0, "campaigns": []}
