"""PyPI `activecampaign-python` 1.0.10, unchanged (base URL aside), against the sandbox over
real HTTP. It is a dev dependency (pyproject.toml): this test runs in CI, never skipped.

The client never raises on HTTP errors and returns `.json()` whenever the Content-Type says
JSON (and `.text` otherwise), so the script checks bodies, not exceptions.
"""

from __future__ import annotations

import asyncio
from typing import Any

from activecampaign.client import Client

from app.sandbox.activecampaign import DEFAULT_API_KEY, DEFAULT_LIST_ID, AcConfig, create_app
from tests.support.servers import run_server


def _script(base: str) -> dict[str, Any]:
    """What an integration does with the client, synchronously."""
    client = Client(base, DEFAULT_API_KEY)  # the only change: where "ActiveCampaign" is
    out: dict[str, Any] = {"me": client.users.retrieve_logged_in_user()}
    field = client.contacts.create_a_custom_field(
        {"field": {"type": "dropdown", "title": "Dietary", "visible": 1}}
    )["field"]
    client.contacts.create_a_custom_field_relationship_to_list(
        {"fieldRel": {"field": field["id"], "relid": 0}}
    )
    out["options"] = client.contacts.create_custom_field_options(
        {"fieldOptions": [{"field": field["id"], "label": "Vegan", "value": "Vegan"}]}
    )
    out["fields"] = client.contacts.list_all_custom_fields(limit=100)
    created = client.contacts.create_a_contact(
        {"contact": {"email": "official@example.com", "firstName": "Off"}}
    )
    out["created"] = created
    cid = created["contact"]["id"]
    out["duplicate"] = client.contacts.create_a_contact(
        {"contact": {"email": "official@example.com"}}
    )
    out["synced"] = client.contacts.create_or_update_contact(
        {
            "contact": {
                "email": "official@example.com",
                "lastName": "Icial",
                "fieldValues": [{"field": field["id"], "value": "Vegan"}],
            }
        }
    )
    out["value"] = client.contacts.create_a_custom_field_value(
        {"fieldValue": {"contact": cid, "field": field["id"], "value": "Vegan"}}
    )
    out["values"] = client.contacts.retrieve_a_contacts_field_values(cid)
    out["updated"] = client.contacts.update_a_contact(cid, {"contact": {"phone": "+1 555"}})
    out["found"] = client.contacts.list_all_contacts(email="official@example.com")
    out["subscribed"] = client.contacts.update_list_status_for_a_contact(
        {"contactList": {"list": DEFAULT_LIST_ID, "contact": cid, "status": 1}}
    )
    tag = client.tags.create_a_tag({"tag": {"tag": "attendee", "tagType": "contact"}})["tag"]
    out["tags"] = client.tags.list_all_tags(search="attend")
    added = client.contacts.add_a_tag_to_contact({"contactTag": {"contact": cid, "tag": tag["id"]}})
    out["contact_tags"] = client.contacts.retrieve_contact_tags(cid)
    out["untagged"] = client.contacts.remove_a_tag_from_a_contact(added["contactTag"]["id"])
    made_list = client.lists.create_a_list(
        {
            "list": {
                "name": "Badges",
                "stringid": "badges",
                "sender_url": "https://event.example",
                "sender_reminder": "You registered for the event.",
            }
        }
    )["list"]
    out["lists"] = client.lists.retrieve_all_lists()
    out["list"] = client.lists.retrieve_a_list(made_list["id"])
    hook = client.webhooks.create_a_webhook(
        {
            "webhook": {
                "name": "sync",
                "url": "http://127.0.0.1:9/hook",
                "events": ["subscribe", "unsubscribe"],
                "sources": ["public", "admin", "system"],
                "listid": DEFAULT_LIST_ID,
            }
        }
    )["webhook"]
    out["hooks"] = client.webhooks.list_all_webhooks()
    out["hook_updated"] = client.webhooks.update_a_webhook(hook["id"], {"webhook": {"name": "s2"}})
    out["events"] = client.webhooks.list_all_webhook_events()  # its wrong plural path
    out["hook_deleted"] = client.webhooks.delete_a_webhook(hook["id"])
    out["got"] = client.contacts.retrieve_a_contact(cid)
    out["deleted"] = client.contacts.delete_a_contact(cid)
    out["missing"] = client.contacts.retrieve_a_contact(cid)
    out["list_deleted"] = client.lists.delete_a_list(made_list["id"])
    return out


async def test_activecampaign_python_runs_unchanged() -> None:
    app = create_app(AcConfig(rate_limit_per_second=1000))
    async with run_server(app, lifespan="off") as base:
        out = await asyncio.to_thread(_script, base)
    assert out["me"]["user"]["email"]
    assert out["options"]["fieldOptions"][0]["value"] == "Vegan"
    assert out["fields"]["meta"]["total"] == "1"
    assert out["created"]["contact"]["email"] == "official@example.com"
    assert out["duplicate"]["errors"][0]["code"] == "duplicate"
    assert out["synced"]["contact"]["lastName"] == "Icial"
    assert out["value"]["fieldValue"]["value"] == "Vegan"
    assert [v["value"] for v in out["values"]["fieldValues"]] == ["Vegan"]
    assert out["updated"]["contact"]["phone"] == "+1 555"
    assert out["found"]["meta"]["total"] == "1"
    assert out["subscribed"]["contactList"]["status"] == "1"
    assert [t["tag"] for t in out["tags"]["tags"]] == ["attendee"]
    assert len(out["contact_tags"]["contactTags"]) == 1
    assert out["untagged"] == {}
    assert out["lists"]["meta"]["total"] == "2"
    assert out["list"]["list"]["name"] == "Badges"
    assert out["hooks"]["meta"]["total"] == "1"
    assert out["hook_updated"]["webhook"]["name"] == "s2"
    assert len(out["events"]["webhookEvents"]) == 25
    assert out["hook_deleted"] == {}
    assert out["got"]["contactLists"][0]["list"] == DEFAULT_LIST_ID
    assert out["deleted"] == {}
    assert out["missing"] == {
        "message": f"No Result found for Subscriber with id {out['got']['contact']['id']}"
    }
    assert out["list_deleted"] == {}
