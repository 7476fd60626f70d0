"""Every [unverified] point of the reference the client meets, under every setting of its
sandbox knob: one scenario (a new person with fields and tags, an unsubscribe that blocks a
re-subscribe, a page of members, a backlog, a lookup) must hold under each."""

from __future__ import annotations

from typing import Any

import pytest

from app.providers.activecampaign.client import ActiveCampaignClient
from app.providers.base import ErrorKind, PermanentError, RemoteRef, TransientError
from tests.providers.activecampaign.conftest import LIST, Ac, payload

KNOBS: list[dict[str, Any]] = [
    {},
    {"auth_failure_status": 401},
    {"rate_limit_headers_always": True},
    {"rate_limit_status": 503},
    {"limit_over_max": "422"},
    {"sync_create_status": 200},
    {"contact_list_update_status": 201},
    {"sync_blank_clears": False},
    {"email_case_insensitive": False},
    {"updated_after_inclusive": False},
    {"validate_option_values": True},
    {"field_value_create_status": 200},
    {"plural_option_bulk_path": False},
    {"duplicate_tag_status": 400},
    {"duplicate_contact_tag": "422"},
    {"bulk_import_rate_status": 400},
    {"import_info_false_seconds": 0.2, "import_info_false_form": "false"},
    {"import_info_false_seconds": 0.2, "import_info_false_form": "status_false"},
    {"webhook_field_keys": ["id"]},
    {"error_body_5xx": "empty"},
    {"escape_slashes": True},
    {"timezone": "Asia/Kolkata"},
    {"bulk_import_enabled": False},
]


@pytest.mark.parametrize(
    "knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults"
)
async def test_the_rules_hold_under_every_knob(
    ac: Ac, client: ActiveCampaignClient, knobs: dict[str, Any]
) -> None:
    await ac.configure(**knobs)
    await client.create_field(title="Diet", perstag="DIET", kind="listbox")
    m = await client.upsert_member(
        LIST,
        payload("ada@example.com", fields={"firstName": "Ada", "DIET": ["vegan"]}, tags=["vip"]),
    )
    person = await ac.person("ada@example.com")
    assert person is not None and person["lists"][LIST]["status"] == 1
    assert set(person["tags"].values()) == {"vip"}
    assert [v["value"] for v in person["fields"].values()] == ["||vegan||"]
    await ac.act("unsubscribe", "ada@example.com")
    ref = RemoteRef(email=m.email_address, remote_id=m.remote_id, refs=m.refs)
    with pytest.raises(PermanentError) as err:
        await client.upsert_member(LIST, payload("ada@example.com"), remote=ref)
    assert err.value.kind is ErrorKind.compliance
    await client.update_tags(LIST, "ada@example.com", add=["vip"], remove=[], remote=ref)
    page = await client.list_members(LIST)
    assert [(x.email_address, x.status) for x in page.members] == [
        ("ada@example.com", "unsubscribed")
    ]
    outcomes = await client.batch_upsert(
        LIST, [payload(f"b{i}@example.com", tags=["t"]) for i in range(10)]
    )
    assert all(o.state is not None for o in outcomes)
    dump = {p["email"]: p for p in await ac.dump()}
    assert all(dump[f"b{i}@example.com"]["lists"][LIST]["status"] == 1 for i in range(10))
    assert dump["ada@example.com"]["lists"][LIST]["resubscribed"] == 0
    assert await client.find_contact("b1@example.com") is not None


@pytest.mark.parametrize("headers_always", [False, True])
async def test_an_outage_is_transient_not_a_throttle(
    ac: Ac, client: ActiveCampaignClient, headers_always: bool
) -> None:
    await ac.configure(rate_limit_headers_always=headers_always, fault_rates={"503": 1.0})
    with pytest.raises(TransientError):
        await client.list_audiences()
