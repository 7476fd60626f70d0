"""Lists and contactLists (statuses 0-3, the silent re-subscribe), tags and contactTags,
custom fields, options and fieldValues (§2-§4)."""

from __future__ import annotations

import httpx

from app.sandbox.activecampaign import DEFAULT_LIST_ID
from tests.sandbox.activecampaign.conftest import API, on_list, sync


async def test_contact_list_statuses_and_silent_resubscribe(ac: httpx.AsyncClient) -> None:
    c = await sync(ac, "r@example.com")
    first = await on_list(ac, c["id"], DEFAULT_LIST_ID, "1")
    assert first.status_code == 201
    body = first.json()
    assert body["contactList"]["status"] == "1" and body["contacts"][0]["id"] == c["id"]
    unsub = await on_list(ac, c["id"], int(DEFAULT_LIST_ID), 2)  # numbers are accepted too
    assert unsub.status_code == 200 and unsub.json()["contactList"]["status"] == "2"
    # The real API lets status 1 re-subscribe someone who unsubscribed, with no error.
    back = await on_list(ac, c["id"], DEFAULT_LIST_ID, 1)
    assert back.status_code == 200 and back.json()["contactList"]["status"] == "1"
    dump = (await ac.get(f"/_control/lists/{DEFAULT_LIST_ID}/contacts")).json()["contacts"]
    assert dump[0]["lists"][DEFAULT_LIST_ID]["resubscribed"] == 1
    assert (await on_list(ac, c["id"], DEFAULT_LIST_ID, 3)).status_code == 422
    missing = await on_list(ac, "999", DEFAULT_LIST_ID, 1)
    assert missing.json() == {"message": "No Result found for Subscriber with id 999"}
    no_list = await on_list(ac, c["id"], "999", 1)
    assert no_list.json() == {"message": "No Result found for _List with id 999"}


async def test_status_hook_sets_unconfirmed_and_bounced(ac: httpx.AsyncClient) -> None:
    c = await sync(ac, "h@example.com")
    await on_list(ac, c["id"], DEFAULT_LIST_ID, 1)
    for status in (0, 3):
        hooked = await ac.post(
            f"/_control/lists/{DEFAULT_LIST_ID}/actions/status",
            json={"email": "h@example.com", "status": status},
        )
        assert hooked.json()["lists"][DEFAULT_LIST_ID]["status"] == status
        listed = await ac.get(
            f"{API}/contacts", params={"listid": DEFAULT_LIST_ID, "status": status}
        )
        assert [x["id"] for x in listed.json()["contacts"]] == [c["id"]]


async def test_lists_crud_and_delete_takes_list_only_contacts(ac: httpx.AsyncClient) -> None:
    incomplete = await ac.post(f"{API}/lists", json={"list": {"name": "X"}})
    assert incomplete.status_code == 422
    made = await ac.post(
        f"{API}/lists",
        json={
            "list": {
                "name": "Second",
                "stringid": "second",
                "sender_url": "https://e.example",
                "sender_reminder": "You asked.",
            }
        },
    )
    assert made.status_code == 201
    lid = made.json()["list"]["id"]
    listed = (await ac.get(f"{API}/lists")).json()
    assert listed["meta"]["total"] == "2"
    only = await sync(ac, "only@example.com")
    both = await sync(ac, "both@example.com")
    await on_list(ac, only["id"], lid, 1)
    await on_list(ac, both["id"], lid, 1)
    await on_list(ac, both["id"], DEFAULT_LIST_ID, 1)
    assert (await ac.delete(f"{API}/lists/{lid}")).json() == {}
    gone = await ac.delete(f"{API}/lists/{lid}")
    assert gone.json() == {"message": f"No Result found for _List with id {lid}"}
    assert (await ac.get(f"{API}/contacts/{only['id']}")).status_code == 404
    assert (await ac.get(f"{API}/contacts/{both['id']}")).status_code == 200


async def test_tags_search_and_case_insensitive_uniqueness(ac: httpx.AsyncClient) -> None:
    vip = await ac.post(f"{API}/tags", json={"tag": {"tag": "vip", "tagType": "contact"}})
    assert vip.status_code == 201
    await ac.post(f"{API}/tags", json={"tag": {"tag": "vip-gold", "tagType": "contact"}})
    dup = await ac.post(f"{API}/tags", json={"tag": {"tag": "VIP", "tagType": "contact"}})
    assert dup.status_code == 422 and dup.json()["errors"][0]["code"] == "duplicate"
    contains = (await ac.get(f"{API}/tags", params={"search": "vip"})).json()
    assert contains["meta"]["total"] == "2"  # search is "contains"
    exact = (await ac.get(f"{API}/tags", params={"filters[search][eq]": "vip"})).json()
    assert [t["tag"] for t in exact["tags"]] == ["vip"]


async def test_contact_tags_by_association_id(ac: httpx.AsyncClient) -> None:
    c = await sync(ac, "t@example.com")
    tag = (await ac.post(f"{API}/tags", json={"tag": {"tag": "ours"}})).json()["tag"]
    added = await ac.post(
        f"{API}/contactTags", json={"contactTag": {"contact": int(c["id"]), "tag": tag["id"]}}
    )
    assert added.status_code == 201
    ct = added.json()["contactTag"]
    assert ct["tag"] == tag["id"] and added.json()["contacts"][0]["id"] == c["id"]
    again = await ac.post(
        f"{API}/contactTags", json={"contactTag": {"contact": c["id"], "tag": tag["id"]}}
    )
    assert again.json()["contactTag"]["id"] == ct["id"]  # idempotent by default
    of = (await ac.get(f"{API}/contacts/{c['id']}/contactTags")).json()
    assert [x["id"] for x in of["contactTags"]] == [ct["id"]] and "meta" not in of
    unknown = await ac.post(
        f"{API}/contactTags", json={"contactTag": {"contact": "999", "tag": tag["id"]}}
    )
    assert unknown.json()["errors"][0]["detail"] == "Contact not found"
    missing = await ac.post(f"{API}/contactTags", json={"contactTag": {"tag": tag["id"]}})
    assert missing.status_code == 422
    assert (await ac.delete(f"{API}/contactTags/{ct['id']}")).json() == {}
    gone = await ac.delete(f"{API}/contactTags/{ct['id']}")
    assert gone.json() == {"message": f"No Result found for SubscriberTag with id {ct['id']}"}


async def test_fields_options_and_multi_values(ac: httpx.AsyncClient) -> None:
    made = await ac.post(
        f"{API}/fields", json={"field": {"type": "listbox", "title": "Dietary needs"}}
    )
    assert made.status_code == 201
    field = made.json()["field"]
    assert field["perstag"] == "DIETARY_NEEDS" and isinstance(field["ordernum"], int)
    dup = await ac.post(f"{API}/fields", json={"field": {"type": "text", "title": "Dietary needs"}})
    assert dup.status_code == 422 and dup.json()["errors"][0]["code"] == "duplicate"
    tagged = await ac.post(
        f"{API}/fields", json={"field": {"type": "text", "title": "Badge", "perstag": "badge name"}}
    )
    assert tagged.json()["field"]["perstag"] == "BADGENAME"
    bulk = await ac.post(
        f"{API}/fieldOption/bulk",
        json={
            "fieldOptions": [
                {"field": field["id"], "label": v, "value": v} for v in ("Vegan", "Halal")
            ]
        },
    )
    assert bulk.status_code == 201
    options = bulk.json()["fieldOptions"]
    bad = await ac.post(f"{API}/fieldOptions/bulk", json={"fieldOptions": "x"})
    assert bad.json() == {
        "errors": "Bulk operation failed. Request must contain an array of fieldOption objects."
    }
    listed = (await ac.get(f"{API}/fields")).json()
    assert listed["meta"] == {"total": "2", "selected": None}
    assert len(listed["fieldOptions"]) == 2
    c = await sync(
        ac,
        "f@example.com",
        fieldValues=[{"field": field["id"], "value": "||Vegan||Halal||"}],
    )
    values = (await ac.get(f"{API}/contacts/{c['id']}/fieldValues")).json()["fieldValues"]
    assert [(v["field"], v["value"]) for v in values] == [(field["id"], "||Vegan||Halal||")]
    posted = await ac.post(
        f"{API}/fieldValues",
        json={"fieldValue": {"contact": c["id"], "field": field["id"], "value": "||Vegan||"}},
    )
    assert posted.status_code == 201
    assert posted.json()["fieldValue"]["id"] == values[0]["id"]  # one value per contact+field
    await ac.patch("/_control/config", json={"validate_option_values": True})
    wrong = await ac.post(
        f"{API}/fieldValues",
        json={"fieldValue": {"contact": c["id"], "field": field["id"], "value": "||Keto||"}},
    )
    assert wrong.status_code == 422
    empty = await ac.delete(f"{API}/fieldOptions/{options[0]['id']}")
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["content-type"] == "application/json"
    gone = await ac.get(f"{API}/fields/999")
    assert gone.json() == {"message": "No Result found for Field with id 999"}
