"""The official `mailchimp-marketing` client, base URL aside unchanged, against the sandbox."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import mailchimp_marketing as MailchimpMarketing
import pytest
from mailchimp_marketing.api_client import ApiClientError

from app.sandbox.mailchimp import DEFAULT_API_KEY, DEFAULT_LIST_ID, create_app
from tests.support.servers import run_server


def _script(base: str) -> dict[str, Any]:
    """What a real integration does, synchronously, with the official client."""
    client = MailchimpMarketing.Client()
    client.set_config({"api_key": DEFAULT_API_KEY, "server": "us1"})
    client.api_client.host = f"{base}/3.0"  # the only change: where "Mailchimp" is
    out: dict[str, Any] = {}
    email = "official@example.com"
    h = hashlib.md5(email.encode()).hexdigest()
    out["ping"] = client.ping.get()
    out["lists"] = client.lists.get_all_lists(count=1000)
    out["added"] = client.lists.add_list_member(
        DEFAULT_LIST_ID,
        {"email_address": email, "status": "subscribed", "merge_fields": {"FNAME": "Off"}},
    )
    out["updated"] = client.lists.update_list_member(
        DEFAULT_LIST_ID, h, {"merge_fields": {"LNAME": "Icial"}}
    )
    out["upserted"] = client.lists.set_list_member(
        DEFAULT_LIST_ID, h, {"email_address": email, "status_if_new": "subscribed"}
    )
    out["got"] = client.lists.get_list_member(DEFAULT_LIST_ID, h)
    client.lists.update_list_member_tags(
        DEFAULT_LIST_ID, h, {"tags": [{"name": "VIP", "status": "active"}], "is_syncing": True}
    )
    out["tags"] = client.lists.get_list_member_tags(DEFAULT_LIST_ID, h)
    out["batch"] = client.lists.batch_list_members(
        DEFAULT_LIST_ID,
        {
            "members": [
                {"email_address": f"batch{i}@example.com", "status": "subscribed"} for i in range(5)
            ]
            + [{"email_address": email, "status": "subscribed"}],
            "update_existing": True,
        },
    )
    try:
        client.lists.add_list_member(
            DEFAULT_LIST_ID, {"email_address": email, "status": "subscribed"}
        )
    except ApiClientError as exc:
        out["exists"] = (exc.status_code, json.loads(exc.text))
    client.lists.delete_list_member(DEFAULT_LIST_ID, h)
    out["archived"] = client.lists.get_list_member(DEFAULT_LIST_ID, h)["status"]
    client.lists.delete_list_member_permanent(DEFAULT_LIST_ID, h)
    try:
        client.lists.get_list_member(DEFAULT_LIST_ID, h)
    except ApiClientError as exc:
        out["forgotten_get"] = exc.status_code
    try:
        client.lists.set_list_member(
            DEFAULT_LIST_ID, h, {"email_address": email, "status_if_new": "subscribed"}
        )
    except ApiClientError as exc:
        out["forgotten_put"] = json.loads(exc.text)["title"]
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_official_client_runs_unchanged() -> None:
    app = create_app()
    async with run_server(app, lifespan="off") as base:
        out = await asyncio.to_thread(_script, base)
    assert out["ping"] == {"health_status": "Everything's Chimpy!"}
    assert out["lists"]["lists"][0]["id"] == DEFAULT_LIST_ID
    assert out["added"]["status"] == "subscribed"
    assert out["updated"]["merge_fields"]["LNAME"] == "Icial"
    assert out["upserted"]["merge_fields"]["FNAME"] == "Off"
    assert out["got"]["email_address"] == "official@example.com"
    assert [t["name"] for t in out["tags"]["tags"]] == ["VIP"]
    assert out["batch"]["total_created"] == 5
    assert out["batch"]["total_updated"] == 1
    assert out["exists"][0] == 400
    assert out["exists"][1]["title"] == "Member Exists"
    assert out["archived"] == "archived"
    assert out["forgotten_get"] == 404
    assert out["forgotten_put"] == "Forgotten Email Not Subscribed"
