"""Every unverified point of the reference (Appendix A) the client meets, under each setting of
its sandbox knob: the client's rules hold whichever way Constant Contact really behaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.providers.base import AuthError, ErrorKind, PermanentError, RemoteRef, RemoteStatus
from app.providers.constantcontact.client import ConstantContactClient
from tests.providers.constantcontact.conftest import LIST, payload
from tests.sandbox.constantcontact.conftest import Sandbox


@pytest.mark.parametrize("links", ["empty_object", "omit"])
@pytest.mark.parametrize("order", ["created_at", "updated_at"])
async def test_paging_ends_whichever_way_the_last_page_says_so(
    cc: Sandbox, client: ConstantContactClient, links: str, order: str
) -> None:
    await cc.configure(last_page_links=links, contacts_order=order)
    for i in range(5):
        await client.upsert_member(LIST, payload(f"k{i}@example.com"))
    seen, offset = [], 0
    while True:
        page = await client.list_members(LIST, offset=offset, count=2)
        seen += [m.email_address for m in page.members]
        offset += len(page.members)
        if not page.members or offset >= page.total_items:
            break
    assert sorted(seen) == [f"k{i}@example.com" for i in range(5)]


@pytest.mark.parametrize("echo", [False, True])
@pytest.mark.parametrize("default", ["implicit", "explicit", "not_set"])
async def test_create_reads_the_same_whatever_post_echoes(
    cc: Sandbox, client: ConstantContactClient, echo: bool, default: str
) -> None:
    await cc.configure(echo_subresources_on_create=echo, default_permission_on_create=default)
    member = await client.upsert_member(LIST, payload("e@example.com", tags=["t"]))
    assert member.status == RemoteStatus.subscribed and member.created
    stored = (await cc.dump())["e@example.com"]
    assert stored["list_memberships"] == [LIST] and len(stored["taggings"]) == 1
    # We always say what the person agreed to; the default is never relied on.
    assert stored["email_address"]["permission_to_send"] == "explicit"


@pytest.mark.parametrize("shape", ["array", "object"])
async def test_error_bodies_of_either_shape(
    cc: Sandbox, client: ConstantContactClient, shape: str
) -> None:
    await cc.configure(error_body_shape=shape, fault_rates={"403": 1.0})
    with pytest.raises(AuthError) as err:
        await client.ping()
    assert err.value.status == 403 and "forbidden" in err.value.message.lower()


@pytest.mark.parametrize("status", [204, 404])
async def test_forgetting_twice_is_fine(
    cc: Sandbox, client: ConstantContactClient, status: int
) -> None:
    await cc.configure(delete_deleted_status=status)
    member = await client.upsert_member(LIST, payload("f@example.com"))
    ref = RemoteRef(email="f@example.com", remote_id=member.remote_id)
    await client.forget_member(LIST, "f@example.com", remote=ref)
    await client.forget_member(LIST, "f@example.com", remote=ref)
    assert (await cc.dump())["f@example.com"]["deleted_at"]


@pytest.mark.parametrize("moves", [True, False])
@pytest.mark.parametrize("inclusive", [False, True])
async def test_the_pull_sees_an_unsubscribe_whatever_updated_at_does(
    cc: Sandbox, client: ConstantContactClient, moves: bool, inclusive: bool
) -> None:
    await cc.configure(unsubscribe_moves_updated_at=moves, after_filters_inclusive=inclusive)
    since = datetime.now(UTC) - timedelta(seconds=2)
    await client.upsert_member(LIST, payload("u@example.com"))
    await cc.act("u@example.com", "unsubscribe")
    events = [e for e in await client.pull_changes(LIST, since) if e.email == "u@example.com"]
    assert [e.kind for e in events] == ["unsubscribe"]  # once: the two queries are merged


@pytest.mark.parametrize("rule", ["reject_contact_optouts", "allow", "ignore"])
async def test_a_local_opt_out_then_edits_never_lift_it(
    cc: Sandbox, client: ConstantContactClient, rule: str
) -> None:
    await cc.configure(put_resubscribe=rule)
    member = await client.upsert_member(LIST, payload("o@example.com"))
    ref = RemoteRef(email="o@example.com", remote_id=member.remote_id)
    await client.update_member(
        LIST,
        payload("o@example.com", consent="unsubscribed", consent_if_new="unsubscribed"),
        remote=ref,
    )
    # Our own (account) opt-out: edits with consent untouched keep it.
    out = await client.upsert_member(
        LIST, payload("o@example.com", fields={"first_name": "O"}), remote=ref
    )
    assert out.status == RemoteStatus.unsubscribed
    assert (await cc.dump())["o@example.com"]["email_address"][
        "permission_to_send"
    ] == "unsubscribed"


async def test_a_deleted_contact_is_revived_onto_our_list(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    member = await client.upsert_member(LIST, payload("d@example.com"))
    await client.forget_member(
        LIST, "d@example.com", remote=RemoteRef("d@example.com", member.remote_id)
    )
    # Deleted there, consenting here, never pushed by this mirror: the 409 names it; revived.
    again = await client.upsert_member(LIST, payload("d@example.com"), remote=None)
    assert again.remote_id == member.remote_id
    stored = (await cc.dump())["d@example.com"]
    assert not stored.get("deleted_at") and stored["list_memberships"] == [LIST]


async def test_a_person_bounced_there_is_cleaned_not_resubscribed(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    member = await client.upsert_member(LIST, payload("h@example.com"))
    await cc.act("h@example.com", "bounce")
    out = await client.upsert_member(
        LIST,
        payload("h@example.com", fields={"first_name": "H"}),
        remote=RemoteRef("h@example.com", member.remote_id),
    )
    assert out.status == RemoteStatus.cleaned
    assert (await cc.dump())["h@example.com"]["email_address"]["permission_to_send"] == "temp_hold"


async def test_an_unknown_custom_field_is_a_field_error(client: ConstantContactClient) -> None:
    with pytest.raises(PermanentError) as err:
        await client.upsert_member(LIST, payload("c@example.com", fields={"no_such": "x"}))
    assert err.value.kind is ErrorKind.merge_fields


def test_the_pull_interval_stretches_with_tenants_of_a_shared_quota() -> None:
    from app.sync.pull import pull_interval

    assert pull_interval(900, None, 500) == 900  # no shared quota: as configured
    assert pull_interval(900, 10_000, 1) == 900
    # 50 tenants × 2 requests a pull within a tenth of 10,000 a day: every 2.4 h each.
    assert pull_interval(900, 10_000, 50) == pytest.approx(8640)
