"""PyPI `constant-contact-api-client` (the official SDK), base URL aside unchanged, against
the sandbox over real HTTP: its strict pydantic models parse every answer."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import constant_contact_api_client as cc
import httpx
import pytest
from constant_contact_api_client import models
from constant_contact_api_client.exceptions import ApiException

from app.sandbox.constantcontact import DEFAULT_LIST_ID, SandboxConfig, create_app
from tests.support.servers import run_server


def _script(base: str, token: str) -> dict[str, Any]:
    """What an integration does with the SDK, synchronously."""
    config = cc.Configuration(host=f"{base}/v3", access_token=token)  # the only change
    client = cc.ApiClient(config)
    contacts = cc.ContactsApi(client)
    lists = cc.ContactListsApi(client)
    tags = cc.ContactTagsApi(client)
    fields = cc.ContactsCustomFieldsApi(client)
    bulk = cc.BulkActivitiesApi(client)
    account = cc.AccountServicesApi(client)
    out: dict[str, Any] = {}
    out["summary"] = account.get_account_details(extra_fields="physical_address")
    out["privileges"] = account.get_user_privileges()
    out["lists"] = lists.get_all_lists(include_membership_count="all", include_count=True)
    new_list = lists.create_list(
        models.UpdateListRequest.from_dict({"name": "SDK list", "favorite": True})
    )
    out["new_list"] = new_list
    out["list"] = lists.get_list(new_list.list_id, include_membership_count="active")
    lists.update_list(new_list.list_id, models.UpdateListRequest.from_dict({"name": "SDK list 2"}))
    tag = tags.post_tag(models.PostTagRequest.from_dict({"name": "VIP"}))
    out["tag"] = tags.get_tag(tag.tag_id, include_count=True)
    out["tags"] = tags.get_all_tags(include_count=True)
    field = fields.create_custom_fields(
        models.CreateCustomFieldsRequest.from_dict({"label": "Favourite colour", "type": "string"})
    )
    out["field"] = fields.get_custom_field(field.custom_field_id)
    out["fields"] = fields.get_all_custom_fields()
    created = contacts.create_contact(
        models.CreateContactRequest.from_dict(
            {
                "email_address": {"address": "sdk@example.com", "permission_to_send": "implicit"},
                "first_name": "Sdk",
                "create_source": "Account",
                "list_memberships": [DEFAULT_LIST_ID],
                "taggings": [tag.tag_id],
                "custom_fields": [{"custom_field_id": field.custom_field_id, "value": "teal"}],
                "phone_numbers": [{"phone_number": "+1-555-555-5555", "kind": "home"}],
                "street_addresses": [{"kind": "home", "street": "1 Main St", "city": "Boston"}],
                "birthday_month": 11,
                "birthday_day": 24,
                "anniversary": "11/15/2006",
            }
        )
    )
    out["created"] = created
    try:
        contacts.create_contact(
            models.CreateContactRequest.from_dict(
                {"email_address": {"address": "SDK@example.com"}, "create_source": "Account"}
            )
        )
    except ApiException as exc:
        out["duplicate"] = (exc.status, exc.body)
    out["got"] = contacts.get_contact_by_id(
        created.contact_id,
        include="custom_fields,list_memberships,phone_numbers,street_addresses,taggings,notes",
    )
    out["updated"] = contacts.update_contact(
        created.contact_id,
        models.UpdateContactRequest.from_dict(
            {
                "email_address": {"address": "sdk@example.com", "permission_to_send": "explicit"},
                "first_name": "Sdk",
                "last_name": "Client",
                "update_source": "Account",
            }
        ),
    )
    out["signup"] = contacts.create_or_update_contact(
        models.CreateOrUpdateContactRequest.from_dict(
            {"email_address": "form@example.com", "list_memberships": [DEFAULT_LIST_ID]}
        )
    )
    out["signup_again"] = contacts.create_or_update_contact(
        models.CreateOrUpdateContactRequest.from_dict(
            {"email_address": "form@example.com", "list_memberships": [new_list.list_id]}
        )
    )
    out["all"] = contacts.get_all_contacts(
        status="all",
        lists=DEFAULT_LIST_ID,
        include="list_memberships,custom_fields",
        include_count=True,
        limit=1,
        updated_after=datetime(2020, 1, 1, tzinfo=UTC),
    )
    out["counts"] = contacts.get_contact_counts()
    contacts.update_contact(
        created.contact_id,
        models.UpdateContactRequest.from_dict(
            {
                "email_address": {
                    "address": "sdk@example.com",
                    "permission_to_send": "unsubscribed",
                },
                "update_source": "Contact",
            }
        ),
    )
    activity = bulk.create_import_json_activity(
        models.CreateImportJSONActivityRequest.from_dict(
            {
                "import_data": [
                    {
                        "email": "imp1@example.com",
                        "first_name": "Imp",
                        "cf:Favourite_colour": "red",
                    },
                    {"email": "sdk@example.com"},
                ],
                "list_ids": [DEFAULT_LIST_ID],
            }
        )
    )
    out["import"] = activity
    for _ in range(200):
        status = bulk.get_activity_by_id(activity.activity_id)
        if status.state == "completed":
            break
        time.sleep(0.05)
    out["import_done"] = status
    out["resubscribe"] = contacts.resubscribe_contact(
        created.contact_id,
        models.ResubscribeContactRequest.from_dict({"list_ids": [DEFAULT_LIST_ID]}),
    )
    out["list_add"] = bulk.create_list_add_activity(
        models.CreateListAddActivityRequest.from_dict(
            {"source": {"contact_ids": [created.contact_id]}, "list_ids": [new_list.list_id]}
        )
    )
    out["tag_add"] = bulk.create_tag_add_contact_activity(
        models.CreateTagRemoveActivityRequest.from_dict(
            {"source": {"list_ids": [DEFAULT_LIST_ID]}, "tag_ids": [tag.tag_id]}
        )
    )
    out["delete_activity"] = bulk.create_delete_activity(
        models.CreateDeleteActivityRequest.from_dict({"contact_ids": [created.contact_id]})
    )
    out["activities"] = bulk.get_all_activities(limit=10)
    contacts.delete_contact(out["signup"].contact_id)
    out["deleted"] = contacts.get_contact_by_id(out["signup"].contact_id)
    out["list_delete"] = lists.delete_list(new_list.list_id)
    out["tag_delete"] = tags.delete_tag(tag.tag_id)
    fields.delete_custom_field(field.custom_field_id)
    try:
        contacts.get_contact_by_id("00000000-0000-1000-8000-000000000000")
    except ApiException as exc:
        out["missing"] = (exc.status, exc.body)
    bad = cc.ApiClient(cc.Configuration(host=f"{base}/v3", access_token="expired"))
    try:
        cc.ContactsApi(bad).get_all_contacts()
    except ApiException as exc:
        out["unauthorized"] = (exc.status, exc.body)
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_official_sdk_runs_unchanged() -> None:
    app = create_app(SandboxConfig(rate_per_second=1000, activity_duration_ms=50))
    async with run_server(app, lifespan="off") as base:
        async with httpx.AsyncClient(base_url=base) as http:
            minted = (await http.post("/_control/tokens")).json()
        out = await asyncio.to_thread(_script, base, minted["access_token"])
    assert out["summary"].encoded_account_id
    assert out["summary"].physical_address.city == "Waltham"
    assert out["privileges"][0].privilege_name
    assert out["lists"].lists_count == 1
    assert out["lists"].lists[0].list_id == DEFAULT_LIST_ID
    assert out["new_list"].favorite is True
    assert out["list"].membership_count == 0
    assert out["tag"].contacts_count == 0
    assert [t.name for t in out["tags"].tags] == ["VIP"]
    assert out["field"].name == "Favourite_colour"
    assert out["created"].email_address.permission_to_send == "implicit"
    assert out["created"].list_memberships is None  # core properties only on create
    assert out["duplicate"][0] == 409
    assert f"Email already exists for contact {out['created'].contact_id}" in out["duplicate"][1]
    got = out["got"]
    assert got.list_memberships == [DEFAULT_LIST_ID]
    assert got.custom_fields[0].value == "teal"
    assert got.anniversary == "2006-11-15"
    assert got.street_addresses[0].city == "Boston"
    assert out["updated"].last_name == "Client"
    assert out["signup"].action == "created"
    assert out["signup_again"].action == "updated"
    assert out["all"].contacts_count == 2
    assert len(out["all"].contacts) == 1
    assert out["all"].links.next.href.startswith("/v3/contacts?cursor=")
    assert out["counts"].total == 2
    done = out["import_done"]
    assert done.state == "completed"
    assert done.percent_done == 100
    assert done.status.items_total_count == 2
    assert done.status.cannot_add_to_list_count == 1  # sdk@ unsubscribed: not re-added
    assert out["list_add"].activity_id
    assert out["tag_add"].activity_id
    assert out["delete_activity"].activity_id
    assert len(out["activities"].activities) >= 4
    assert out["deleted"].deleted_at is not None
    assert out["list_delete"].activity_id
    assert out["tag_delete"].activity_id
    assert out["missing"][0] == 404
    assert out["unauthorized"][0] == 401
    assert '"error_key":"unauthorized"' in out["unauthorized"][1].replace(" ", "")
