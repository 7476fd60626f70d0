"""The Constant Contact client's rules against the sandbox over real HTTP (DESIGN §14.5)."""

from __future__ import annotations

import httpx
import pytest

from app.providers.base import (
    AuthError,
    ErrorKind,
    PermanentError,
    QuotaExhausted,
    RemoteRef,
    RemoteStatus,
    ThrottledError,
)
from app.providers.constantcontact.client import ConstantContactClient, check_live_base
from app.providers.constantcontact.spec import SPEC
from tests.providers.constantcontact.conftest import LIST, other_list, paths, payload
from tests.sandbox.constantcontact.conftest import Sandbox


def ref(member: object) -> RemoteRef:
    return RemoteRef(
        email=member.email_address,  # type: ignore[attr-defined]
        remote_id=member.remote_id,  # type: ignore[attr-defined]
        refs=member.refs,  # type: ignore[attr-defined]
    )


async def test_spec_declares_the_application_limits() -> None:
    assert SPEC.limits.rate_per_application == 4
    assert SPEC.limits.daily_quota_per_application == 10_000
    assert SPEC.capabilities.reoptin == "resubscribe_email"
    assert SPEC.capabilities.inbound == "pull"
    assert SPEC.connect.pkce and SPEC.connect.token_expires


def test_the_live_host_rule() -> None:
    assert check_live_base("https://api.cc.email/v3/") == "https://api.cc.email/v3"
    for bad in ("https://evil.example/v3", "http://api.cc.email/v3", "https://api.cc.email"):
        with pytest.raises(ValueError):
            check_live_base(bad)


async def test_a_new_person_is_created_on_our_list(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    member = await client.upsert_member(
        LIST, payload("ann@example.com", fields={"first_name": "Ann"}, tags=["vip"])
    )
    assert member.created and member.status == RemoteStatus.subscribed
    stored = (await cc.dump())["ann@example.com"]
    assert stored["contact_id"] == member.remote_id
    assert stored["list_memberships"] == [LIST]
    assert stored["email_address"]["permission_to_send"] == "explicit"
    assert stored["first_name"] == "Ann"
    assert member.refs["tags"].keys() == {"vip"}
    assert stored["taggings"] == [member.refs["tags"]["vip"]]
    assert "POST /v3/contacts" in await paths(cc)


async def test_an_existing_person_is_a_full_update_keeping_what_we_do_not_own(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    theirs = await other_list(cc)
    api = await cc.api()
    async with api:
        field = (
            await api.post("/contact_custom_fields", json={"label": "Shoe size", "type": "string"})
        ).json()["custom_field_id"]
        created = await api.post(
            "/contacts",
            json={
                "email_address": {"address": "bo@example.com", "permission_to_send": "implicit"},
                "create_source": "Account",
                "job_title": "Baker",
                "list_memberships": [theirs],
                "custom_fields": [{"custom_field_id": field, "value": "42"}],
            },
        )
        assert created.status_code == 201, created.text
    # Never pushed by us: the create meets the 409 and becomes an update of that contact.
    member = await client.upsert_member(
        LIST, payload("bo@example.com", fields={"first_name": "Bo"}), remote=None
    )
    stored = (await cc.dump())["bo@example.com"]
    assert member.remote_id == stored["contact_id"] == created.json()["contact_id"]
    assert set(stored["list_memberships"]) == {theirs, LIST}
    assert stored["job_title"] == "Baker"  # PUT would have nulled it had we not sent it back
    assert stored["first_name"] == "Bo"
    assert stored["custom_fields"][0]["value"] == "42"
    assert stored["email_address"]["permission_to_send"] == "implicit"
    log = await paths(cc)
    assert not any("sign_up_form" in p for p in log)
    # A later update by id: GET then PUT.
    await client.upsert_member(
        LIST, payload("bo@example.com", fields={"first_name": "Bob"}), remote=ref(member)
    )
    assert (await cc.dump())["bo@example.com"]["first_name"] == "Bob"
    assert (await cc.dump())["bo@example.com"]["job_title"] == "Baker"


@pytest.mark.parametrize("put_resubscribe", ["reject_contact_optouts", "allow", "ignore"])
@pytest.mark.parametrize("signup", ["always", "account_optouts_only", "never"])
async def test_an_unsubscribe_at_constant_contact_is_never_reversed(
    cc: Sandbox, client: ConstantContactClient, put_resubscribe: str, signup: str
) -> None:
    await cc.configure(put_resubscribe=put_resubscribe, signup_form_resubscribes=signup)
    member = await client.upsert_member(LIST, payload("cy@example.com"))
    assert (await cc.act("cy@example.com", "unsubscribe")).status_code == 200
    # Later edits of the CRM (consent untouched) keep the person unsubscribed.
    again = await client.upsert_member(
        LIST, payload("cy@example.com", fields={"first_name": "Cy"}), remote=ref(member)
    )
    assert again.status == RemoteStatus.unsubscribed
    stored = (await cc.dump())["cy@example.com"]
    assert stored["email_address"]["permission_to_send"] == "unsubscribed"
    assert stored["first_name"] == "Cy"
    # Someone the CRM never pushed who unsubscribed there: the person's decision comes back.
    with pytest.raises(PermanentError) as err:
        await client.upsert_member(LIST, payload("cy@example.com"), remote=None)
    assert err.value.kind is ErrorKind.compliance
    assert not any("sign_up_form" in p for p in await paths(cc))


async def test_local_opt_out_is_permission_unsubscribed(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    member = await client.upsert_member(LIST, payload("di@example.com"))
    out = await client.update_member(
        LIST,
        payload("di@example.com", consent="unsubscribed", consent_if_new="unsubscribed"),
        remote=ref(member),
    )
    assert out.status == RemoteStatus.unsubscribed
    stored = (await cc.dump())["di@example.com"]
    assert stored["email_address"]["permission_to_send"] == "unsubscribed"
    assert LIST in stored["list_memberships"]


@pytest.mark.parametrize("pending_state", ["pending_confirmation", "unsubscribed"])
async def test_re_opt_in_sends_the_one_resubscribe_email(
    cc: Sandbox, client: ConstantContactClient, pending_state: str
) -> None:
    await cc.configure(resubscribe_pending_state=pending_state)
    member = await client.upsert_member(LIST, payload("ed@example.com"))
    await cc.act("ed@example.com", "unsubscribe")
    back = await client.upsert_member(
        LIST, payload("ed@example.com", consent="pending"), remote=ref(member)
    )
    assert back.status == RemoteStatus.pending
    assert back.refs["resubscribe_sent"] is True
    emails = (await cc.http.get("/_control/emails")).json()["emails"]
    assert [e["kind"] for e in emails] == ["resubscribe"]
    # Asked again: no second email; the person stays pending (or unsubscribed) until they act.
    waiting = RemoteStatus.pending if pending_state == "pending_confirmation" else "unsubscribed"
    twice = await client.upsert_member(
        LIST, payload("ed@example.com", consent="pending"), remote=ref(back)
    )
    assert twice.status == waiting
    assert len((await cc.http.get("/_control/emails")).json()["emails"]) == 1
    # Without the mirror's memory: the second call meets the 409 and says so calmly.
    fresh = RemoteRef(email="ed@example.com", remote_id=member.remote_id)
    third = await client.upsert_member(
        LIST, payload("ed@example.com", consent="pending"), remote=fresh
    )
    assert third.status == waiting
    assert len((await cc.http.get("/_control/emails")).json()["emails"]) == 1
    await cc.act("ed@example.com", "confirm_resubscribe")
    stored = (await cc.dump())["ed@example.com"]
    assert stored["email_address"]["permission_to_send"] == "explicit"


async def test_tags_by_id_ours_only(cc: Sandbox, client: ConstantContactClient) -> None:
    member = await client.upsert_member(LIST, payload("fi@example.com", tags=["vip"]))
    api = await cc.api()
    async with api:
        theirs = (await api.post("/contact_tags", json={"name": "theirs"})).json()["tag_id"]
        stored = (await cc.dump())["fi@example.com"]
        contact = (
            await api.get(f"/contacts/{member.remote_id}", params={"include": "taggings"})
        ).json()
        body = {k: v for k, v in contact.items() if k not in ("contact_id", "created_at")}
        body["update_source"] = "Account"
        body["taggings"] = [*stored["taggings"], theirs]
        assert (await api.put(f"/contacts/{member.remote_id}", json=body)).status_code == 200
    refs = await client.update_tags(
        LIST, "fi@example.com", add=["new"], remove=["vip"], remote=ref(member)
    )
    assert refs is not None and set(refs["tags"]) == {"new"}
    stored = (await cc.dump())["fi@example.com"]
    assert set(stored["taggings"]) == {theirs, refs["tags"]["new"]}


async def test_delete_leaves_our_list_and_forget_deletes(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    theirs = await other_list(cc)
    member = await client.upsert_member(LIST, payload("gus@example.com"))
    api = await cc.api()
    async with api:
        contact = (
            await api.get(f"/contacts/{member.remote_id}", params={"include": "list_memberships"})
        ).json()
        body = {k: v for k, v in contact.items() if k not in ("contact_id", "created_at")}
        body |= {"update_source": "Account", "list_memberships": [LIST, theirs]}
        assert (await api.put(f"/contacts/{member.remote_id}", json=body)).status_code == 200
    assert await client.archive_member(LIST, "gus@example.com", remote=ref(member)) is True
    stored = (await cc.dump())["gus@example.com"]
    assert stored["list_memberships"] == [theirs]
    assert stored["email_address"]["permission_to_send"] == "explicit"
    assert await client.archive_member(LIST, "gus@example.com", remote=ref(member)) is False
    await client.forget_member(LIST, "gus@example.com", remote=ref(member))
    assert (await cc.dump())["gus@example.com"].get("deleted_at")
    await client.forget_member(LIST, "gus@example.com", remote=ref(member))  # idempotent


async def test_email_change_keeps_the_contact(cc: Sandbox, client: ConstantContactClient) -> None:
    member = await client.upsert_member(LIST, payload("old@example.com"))
    moved = await client.move_member(
        LIST, "old@example.com", payload("new@example.com"), remote=ref(member)
    )
    assert moved.remote_id == member.remote_id and moved.email_address == "new@example.com"
    await client.upsert_member(LIST, payload("taken@example.com"))
    with pytest.raises(PermanentError) as err:
        await client.move_member(
            LIST, "new@example.com", payload("taken@example.com"), remote=ref(moved)
        )
    assert err.value.kind is ErrorKind.member_exists


async def test_a_backlog_goes_through_one_import_activity(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    theirs = await other_list(cc)
    api = await cc.api()
    async with api:
        made = await api.post(
            "/contacts",
            json={
                "email_address": {"address": "gone@example.com"},
                "create_source": "Account",
                "list_memberships": [theirs],
            },
        )
        assert made.status_code == 201, made.text
    await cc.act("gone@example.com", "unsubscribe")
    await cc.http.delete("/_control/requests")
    people = [payload(f"p{i}@example.com", fields={"first_name": f"P{i}"}) for i in range(30)]
    outcomes = await client.batch_upsert(LIST, [*people, payload("gone@example.com")])
    assert [o.email_key for o in outcomes][-1] == "gone@example.com"
    assert all(o.state is not None for o in outcomes[:-1])
    assert outcomes[-1].error is not None and outcomes[-1].error.kind is ErrorKind.compliance
    stored = await cc.dump()
    assert all(LIST in stored[f"p{i}@example.com"]["list_memberships"] for i in range(30))
    assert stored["p3@example.com"]["first_name"] == "P3"
    assert stored["gone@example.com"]["email_address"]["permission_to_send"] == "unsubscribed"
    log = await paths(cc)
    assert log.count("POST /v3/activities/contacts_json_import") == 1
    assert len(log) < 10  # one import, its polls, one page back, one look at the refused
    # With nobody refused (and no tags) not even the page is read back.
    await cc.http.delete("/_control/requests")
    more = [payload(f"n{i}@example.com") for i in range(60)]
    assert all(o.state is not None for o in await client.batch_upsert(LIST, more))
    log = await paths(cc)
    assert log.count("POST /v3/activities/contacts_json_import") == 1
    assert len(log) <= 3  # the import and its polls
    dumped = await cc.dump()
    assert all(LIST in dumped[f"n{i}@example.com"]["list_memberships"] for i in (0, 59))
    api = await cc.api()
    async with api:
        activities = (await api.get("/activities")).json()["activities"]
    imports = [a for a in activities if "cannot_add_to_list_count" in a.get("status", {})]
    assert sorted(a["status"]["cannot_add_to_list_count"] for a in imports) == [0, 1]


async def test_a_tagged_backlog_is_tagged_by_activities(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    people = [payload(f"tg{i}@example.com", tags=[f"t{i % 2}"]) for i in range(40)]
    await cc.http.delete("/_control/requests")
    outcomes = await client.batch_upsert(LIST, people)
    assert all(o.state is not None for o in outcomes)
    log = await paths(cc)
    assert log.count("POST /v3/activities/contacts_taggings_add") == 2
    assert len(log) < 15  # not 40 updates
    stored = await cc.dump()
    first = outcomes[0].state
    assert first is not None and set(first.refs["tags"]) == {"t0"}
    assert stored["tg0@example.com"]["taggings"] == [first.refs["tags"]["t0"]]
    assert first.remote_id == stored["tg0@example.com"]["contact_id"]


async def test_pages_follow_cursors(cc: Sandbox, client: ConstantContactClient) -> None:
    for i in range(7):
        await client.upsert_member(LIST, payload(f"m{i}@example.com"))
    seen: list[str] = []
    offset = 0
    while True:
        page = await client.list_members(LIST, offset=offset, count=3)
        seen += [m.email_address for m in page.members]
        offset += len(page.members)
        if not page.members or offset >= page.total_items:
            break
    assert sorted(seen) == sorted(f"m{i}@example.com" for i in range(7))


async def test_pull_changes_brings_opt_outs_signups_and_bounces(
    cc: Sandbox, client: ConstantContactClient
) -> None:
    from datetime import UTC, datetime, timedelta

    since = datetime.now(UTC) - timedelta(seconds=5)
    await client.upsert_member(LIST, payload("u@example.com"))
    await client.upsert_member(LIST, payload("b@example.com"))
    await cc.act("u@example.com", "unsubscribe")
    await cc.act("b@example.com", "bounce")
    await cc.act("signup@example.com", "signup", first_name="Sig")
    events = {e.email: e for e in await client.pull_changes(LIST, since)}
    assert events["u@example.com"].kind == "unsubscribe"
    assert events["b@example.com"].kind == "cleaned"
    assert events["signup@example.com"].kind == "subscribe"
    assert events["signup@example.com"].fields["first_name"] == "Sig"


async def test_errors_map_onto_the_tree(cc: Sandbox, client: ConstantContactClient) -> None:
    await cc.configure(fault_rates={"429_quota": 1.0})
    with pytest.raises(QuotaExhausted):
        await client.ping()
    await cc.configure(fault_rates={"429_quota": 0.0, "429_throttled": 1.0})
    with pytest.raises(ThrottledError) as err:
        await client.ping()
    assert not isinstance(err.value, QuotaExhausted)
    await cc.configure(fault_rates={"429_throttled": 0.0})
    async with httpx.AsyncHTTPTransport() as transport:
        bad = ConstantContactClient(transport, api_base=f"{cc.base}/v3", access_token="nope")
        with pytest.raises(AuthError):
            await bad.ping()


async def test_a_refused_token_is_renewed_once(cc: Sandbox) -> None:
    class Source:
        def __init__(self) -> None:
            self.calls: list[str | None] = []

        async def access_token(self, *, stale: str | None = None) -> str:
            self.calls.append(stale)
            if stale is None:
                return "expired-token"
            return str((await cc.mint())["access_token"])

    source = Source()
    async with httpx.AsyncHTTPTransport() as transport:
        client = ConstantContactClient(transport, api_base=f"{cc.base}/v3", tokens=source)
        await client.ping()
    assert source.calls == [None, "expired-token"]
