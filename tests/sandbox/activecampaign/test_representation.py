"""Representation details (§11): account-local dates, escaped slashes, sideloads and the
smaller endpoints a client touches."""

from __future__ import annotations

import re

import httpx

from tests.sandbox.activecampaign.conftest import API, sync

LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")


async def test_dates_are_account_local_with_the_offset(ac: httpx.AsyncClient) -> None:
    c = await sync(ac, "tz@example.com")
    assert LOCAL.match(c["cdate"]) and c["cdate"][-6:] in ("-06:00", "-05:00")  # US Central
    await ac.patch("/_control/config", json={"timezone": "Asia/Kolkata"})
    again = await sync(ac, "tz@example.com")
    assert again["udate"].endswith("+05:30")
    assert (await ac.patch("/_control/config", json={"timezone": "Mars/Base"})).status_code == 400


async def test_escaped_slashes_knob(ac: httpx.AsyncClient) -> None:
    await sync(ac, "s@example.com")
    assert b"http:\\/\\/" not in (await ac.get(f"{API}/contacts")).content
    await ac.patch("/_control/config", json={"escape_slashes": True})
    raw = await ac.get(f"{API}/contacts")
    assert b"http:\\/\\/" in raw.content
    assert raw.json()["contacts"][0]["links"]["notes"].startswith("http://")


async def test_sync_with_field_values_answers_both_forms(ac: httpx.AsyncClient) -> None:
    field = (await ac.post(f"{API}/fields", json={"field": {"title": "City"}})).json()["field"]
    created = await ac.post(
        f"{API}/contact/sync",
        json={
            "contact": {
                "email": "fv@example.com",
                "fieldValues": [{"field": int(field["id"]), "value": "Albany"}],
            }
        },
    )
    body = created.json()
    assert body["fieldValues"][0]["value"] == "Albany"
    assert body["contact"]["fieldValues"] == [body["fieldValues"][0]["id"]]
    listed = await ac.get(
        f"{API}/fieldValues", params={"filters[fieldid]": field["id"], "filters[val]": "Albany"}
    )
    assert listed.json()["meta"]["total"] == "1"


async def test_field_relations_and_options_endpoints(ac: httpx.AsyncClient) -> None:
    field = (
        await ac.post(f"{API}/fields", json={"field": {"title": "Size", "type": "radio"}})
    ).json()["field"]
    rel = await ac.post(f"{API}/fieldRels", json={"fieldRel": {"field": field["id"], "relid": 0}})
    assert rel.status_code == 201 and rel.json()["fieldRel"]["relid"] == "0"
    made = await ac.post(
        f"{API}/fieldOptions/bulk",
        json={"fieldOptions": [{"field": field["id"], "label": "S", "value": "S"}]},
    )
    option = made.json()["fieldOptions"][0]
    got = (await ac.get(f"{API}/fieldOptions/{option['id']}")).json()["fieldOption"]
    assert (got["value"], got["isdefault"]) == ("S", "0")
    of = (await ac.get(f"{API}/fields/{field['id']}/options")).json()["fieldOptions"]
    assert [o["id"] for o in of] == [option["id"]]
    full = (await ac.get(f"{API}/fields/{field['id']}")).json()["field"]
    assert full["options"] == [option["id"]] and full["relations"] == [rel.json()["fieldRel"]["id"]]
    await ac.patch("/_control/config", json={"plural_option_bulk_path": False})
    plural = await ac.post(f"{API}/fieldOptions/bulk", json={"fieldOptions": []})
    assert plural.status_code == 404 and plural.headers["content-type"].startswith("text/html")


async def test_tag_update_delete_and_weight_order(ac: httpx.AsyncClient) -> None:
    names = ["gold-vip", "vip", "a-vip"]
    tags = [(await ac.post(f"{API}/tags", json={"tag": {"tag": n}})).json()["tag"] for n in names]
    weighted = await ac.get(f"{API}/tags", params={"search": "vip", "orders[search]": "weight"})
    assert [t["tag"] for t in weighted.json()["tags"]] == ["vip", "gold-vip", "a-vip"]
    renamed = await ac.put(f"{API}/tags/{tags[0]['id']}", json={"tag": {"tag": "gold"}})
    assert renamed.json()["tag"]["tag"] == "gold"
    clash = await ac.put(f"{API}/tags/{tags[0]['id']}", json={"tag": {"tag": "VIP"}})
    assert clash.status_code == 422
    assert (await ac.delete(f"{API}/tags/{tags[0]['id']}")).json() == {}
    gone = await ac.get(f"{API}/tags/{tags[0]['id']}")
    assert gone.json() == {"message": f"No Result found for Tag with id {tags[0]['id']}"}
