"""The ActiveCampaign client's rules against the ActiveCampaign sandbox over real HTTP
(DESIGN §14.5, reference §9)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.providers.activecampaign.client import ActiveCampaignClient, _patient
from app.providers.base import (
    AudienceMissing,
    AuthError,
    ErrorKind,
    PermanentError,
    RemoteRef,
    RemoteStatus,
    ThrottledError,
    TransientError,
)
from tests.providers.activecampaign.conftest import LIST, Ac, payload


def ref(member: object) -> RemoteRef:
    """The RemoteRef the mirror would hand back after `member` was stored."""
    return RemoteRef(
        email=member.email_address,  # type: ignore[attr-defined]
        remote_id=member.remote_id,  # type: ignore[attr-defined]
        refs=member.refs,  # type: ignore[attr-defined]
    )


class TestAccount:
    async def test_ping_and_lists(self, client: ActiveCampaignClient) -> None:
        await client.ping()
        audiences = await client.list_audiences()
        assert [a.id for a in audiences] == [LIST]
        assert (await client.get_audience(LIST)).name

    async def test_a_wrong_key_is_an_auth_error_under_both_statuses(self, ac: Ac) -> None:
        async with httpx.AsyncHTTPTransport() as transport:
            bad = ActiveCampaignClient(transport, api_url=ac.url, api_key="wrong-key-123")
            with pytest.raises(AuthError):
                await bad.ping()
            await ac.configure(auth_failure_status=401)
            with pytest.raises(AuthError):
                await bad.ping()

    async def test_a_missing_list_is_audience_missing(self, client: ActiveCampaignClient) -> None:
        with pytest.raises(AudienceMissing):
            await client.get_audience("999")

    async def test_the_base_url_may_carry_api_3(self, ac: Ac) -> None:
        async with httpx.AsyncHTTPTransport() as transport:
            c = ActiveCampaignClient(
                transport, api_url=ac.url + "/api/3/", api_key=ac.api.headers["Api-Token"]
            )
            await c.ping()


class TestUpsert:
    async def test_a_new_consenting_person_joins_with_status_1_and_fields(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        m = await client.upsert_member(
            LIST, payload("ada@example.com", fields={"firstName": "Ada", "phone": "+44 1"})
        )
        assert m.status == RemoteStatus.subscribed and m.created and m.refs["created"]
        person = await ac.person("ada@example.com")
        assert person is not None
        assert person["lists"][LIST]["status"] == 1
        assert person["first_name"] == "Ada" and person["phone"] == "+44 1"

    async def test_under_both_create_statuses(self, ac: Ac, client: ActiveCampaignClient) -> None:
        await ac.configure(sync_create_status=200)
        m = await client.upsert_member(LIST, payload("b@example.com"))
        assert m.created and m.status == RemoteStatus.subscribed

    async def test_an_existing_person_at_2_is_never_sent_1(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        m = await client.upsert_member(LIST, payload("u@example.com"))
        await ac.act("unsubscribe", "u@example.com")
        # An edit of a contact the CRM holds as opted out: stays unsubscribed, no error.
        again = await client.update_member(
            LIST,
            payload("u@example.com", fields={"firstName": "U"}, consent_if_new="unsubscribed"),
            remote=ref(m),
        )
        assert again.status == RemoteStatus.unsubscribed
        # A consenting contact (an upsert, with or without an explicit wish) is refused:
        # ActiveCampaign has no way back, and a 1 would silently re-subscribe the person.
        for consent in (None, "subscribed"):
            with pytest.raises(PermanentError) as err:
                await client.upsert_member(
                    LIST, payload("u@example.com", consent=consent), remote=ref(m)
                )
            assert err.value.kind is ErrorKind.compliance and "blocked" in err.value.message
        person = await ac.person("u@example.com")
        assert person is not None
        assert person["lists"][LIST]["status"] == 2 and person["lists"][LIST]["resubscribed"] == 0
        statuses = [
            r
            for r in await ac.requests()
            if r["method"] == "POST" and r["path"].endswith("/contactLists")
        ]
        assert len(statuses) == 1  # only the first subscription

    async def test_a_first_push_onto_an_unsubscribed_person_is_blocked(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await client.upsert_member(LIST, payload("v@example.com"))
        await ac.act("unsubscribe", "v@example.com")
        with pytest.raises(PermanentError) as err:
            await client.upsert_member(LIST, payload("v@example.com"))  # no mirror: remote None
        assert err.value.kind is ErrorKind.compliance
        person = await ac.person("v@example.com")
        assert person is not None and person["lists"][LIST]["status"] == 2

    async def test_a_bounced_person_stays_bounced(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        m = await client.upsert_member(LIST, payload("x@example.com"))
        await ac.act("bounce", "x@example.com")
        again = await client.update_member(
            LIST,
            payload("x@example.com", fields={"lastName": "X"}, consent_if_new="unsubscribed"),
            remote=ref(m),
        )
        assert again.status == RemoteStatus.cleaned
        with pytest.raises(PermanentError):
            await client.upsert_member(
                LIST, payload("x@example.com", consent="subscribed"), remote=ref(m)
            )
        person = await ac.person("x@example.com")
        assert person is not None and person["lists"][LIST]["status"] == 3

    async def test_a_local_opt_out_is_status_2(self, ac: Ac, client: ActiveCampaignClient) -> None:
        m = await client.upsert_member(LIST, payload("o@example.com"))
        out = await client.update_member(
            LIST,
            payload("o@example.com", consent="unsubscribed", consent_if_new="unsubscribed"),
            remote=ref(m),
        )
        assert out.status == RemoteStatus.unsubscribed
        person = await ac.person("o@example.com")
        assert person is not None and person["lists"][LIST]["status"] == 2

    async def test_update_never_creates(self, ac: Ac, client: ActiveCampaignClient) -> None:
        with pytest.raises(PermanentError) as err:
            await client.update_member(LIST, payload("nobody@example.com"))
        assert err.value.kind is ErrorKind.not_found
        assert await ac.person("nobody@example.com") is None

    async def test_an_existing_contact_of_another_list_joins_ours(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        other = await ac.new_list("Other")
        await ac.act("signup", "both@example.com", list_id=other, first_name="Bo")
        m = await client.upsert_member(LIST, payload("both@example.com"))
        assert not m.created and "created" not in m.refs
        person = await ac.person("both@example.com")
        assert person is not None and person["lists"][LIST]["status"] == 1
        assert person["first_name"] == "Bo"  # not sent: kept (empty values are never sent)

    async def test_the_lookup_checks_the_address(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await client.upsert_member(LIST, payload("a+b@example.com"))
        await client.upsert_member(LIST, payload("ab@example.com"))
        found = await client.find_contact("a+b@example.com")
        assert found is not None and found["email"] == "a+b@example.com"
        assert await client.find_contact("a@example.com") is None


class TestCustomFields:
    async def test_fields_by_perstag_and_multi_values(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        diet = await client.create_field(title="Dietary", perstag="DIETARY", kind="listbox")
        await client.create_field(title="Badge name", perstag="BADGE_NAME", kind="text")
        await client.upsert_member(
            LIST,
            payload(
                "f@example.com",
                fields={"DIETARY": ["vegan", "nut free"], "BADGE_NAME": "Ada L."},
            ),
        )
        person = await ac.person("f@example.com")
        assert person is not None
        values = {v["perstag"]: v["value"] for v in person["fields"].values()}
        assert values == {"DIETARY": "||vegan||nut free||", "BADGE_NAME": "Ada L."}
        assert str(diet["id"]) in person["fields"]

    async def test_option_values_are_added_when_the_account_validates_them(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await ac.configure(validate_option_values=True)
        await client.create_field(title="Volunteer", perstag="VOLUNTEER", kind="dropdown")
        await client.upsert_member(LIST, payload("g@example.com", fields={"VOLUNTEER": ["yes"]}))
        person = await ac.person("g@example.com")
        assert person is not None
        assert [v["value"] for v in person["fields"].values()] == ["||yes||"]

    async def test_an_unknown_field_is_a_field_refusal(self, client: ActiveCampaignClient) -> None:
        with pytest.raises(PermanentError) as err:
            await client.upsert_member(LIST, payload("h@example.com", fields={"NOPE": "x"}))
        assert err.value.kind is ErrorKind.merge_fields


class TestTags:
    async def test_ours_by_id_theirs_never(self, ac: Ac, client: ActiveCampaignClient) -> None:
        m = await client.upsert_member(LIST, payload("t@example.com", tags=["vip"]))
        assert set(m.refs["tags"]) == {"vip"}
        person = await ac.person("t@example.com")
        assert person is not None
        # A tag added at ActiveCampaign by someone else.
        tag = (await ac.api.post("/tags", json={"tag": {"tag": "speaker"}})).json()["tag"]
        await ac.api.post(
            "/contactTags", json={"contactTag": {"contact": person["id"], "tag": tag["id"]}}
        )
        r = ref(m)
        refs = await client.update_tags(LIST, "t@example.com", add=["speaker"], remove=[], remote=r)
        assert refs is not None and set(refs["tags"]) == {"vip"}  # speaker stays theirs
        r = RemoteRef(email=r.email, remote_id=r.remote_id, refs={**r.refs, **refs})
        refs = await client.update_tags(
            LIST, "t@example.com", add=[], remove=["vip", "speaker"], remote=r
        )
        assert refs == {"tags": {}}
        person = await ac.person("t@example.com")
        assert person is not None and set(person["tags"].values()) == {"speaker"}

    @pytest.mark.parametrize("duplicate", ["existing", "422"])
    async def test_a_tag_the_contact_has_is_not_claimed(
        self, ac: Ac, client: ActiveCampaignClient, duplicate: str
    ) -> None:
        await ac.configure(duplicate_contact_tag=duplicate, duplicate_tag_status=400)
        m = await client.upsert_member(LIST, payload("d@example.com"))
        await client.update_tags(LIST, "d@example.com", add=["a"], remove=[], remote=ref(m))
        other = ActiveCampaignClient(
            client._transport, api_url=ac.url, api_key=ac.api.headers["Api-Token"]
        )
        # A second client (another worker, an empty cache) finds the tag, claims nothing.
        refs = await other.update_tags(LIST, "d@example.com", add=["A"], remove=[], remote=ref(m))
        assert refs == {"tags": {}}


class TestMoveArchiveForget:
    async def test_email_change_keeps_the_contact(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        m = await client.upsert_member(LIST, payload("old@example.com"))
        moved = await client.move_member(
            LIST, "old@example.com", payload("new@example.com"), remote=ref(m)
        )
        assert moved.remote_id == m.remote_id and moved.status == RemoteStatus.subscribed
        assert await ac.person("old@example.com") is None
        assert await ac.person("new@example.com") is not None

    async def test_a_move_onto_a_taken_address_is_member_exists(
        self, client: ActiveCampaignClient
    ) -> None:
        m = await client.upsert_member(LIST, payload("one@example.com"))
        await client.upsert_member(LIST, payload("two@example.com"))
        with pytest.raises(PermanentError) as err:
            await client.move_member(
                LIST, "one@example.com", payload("two@example.com"), remote=ref(m)
            )
        assert err.value.kind is ErrorKind.member_exists

    async def test_archive_deletes_only_our_list_only_contact(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        ours = await client.upsert_member(LIST, payload("mine@example.com", tags=["x"]))
        assert await client.archive_member(LIST, "mine@example.com", remote=ref(ours))
        assert await ac.person("mine@example.com") is None
        other = await ac.new_list("Other")
        await ac.act("signup", "theirs@example.com", list_id=other)
        theirs = await client.upsert_member(LIST, payload("theirs@example.com"))
        await client.update_tags(
            LIST, "theirs@example.com", add=["y"], remove=[], remote=ref(theirs)
        )
        tagged = await client.update_tags(
            LIST, "theirs@example.com", add=[], remove=[], remote=ref(theirs)
        )
        assert tagged is None
        person = await ac.person("theirs@example.com")
        assert person is not None
        r = RemoteRef(
            email="theirs@example.com",
            remote_id=theirs.remote_id,
            refs={"tags": {"y": person["contact_tags"][next(iter(person["contact_tags"]))]}},
        )
        assert await client.archive_member(LIST, "theirs@example.com", remote=r)
        person = await ac.person("theirs@example.com")
        # Not ours to delete: consent untouched (still 1 on our list), our tag gone.
        assert person is not None and person["lists"][LIST]["status"] == 1
        assert person["lists"][other]["status"] == 1 and person["tags"] == {}
        assert not await client.archive_member(LIST, "nobody@example.com")

    async def test_forget_deletes_the_contact(self, ac: Ac, client: ActiveCampaignClient) -> None:
        m = await client.upsert_member(LIST, payload("gdpr@example.com"))
        await client.forget_member(LIST, "gdpr@example.com", remote=ref(m))
        assert await ac.person("gdpr@example.com") is None
        await client.forget_member(LIST, "gdpr@example.com", remote=ref(m))  # absent is fine


class TestPages:
    async def test_members_with_their_list_status(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        for i in range(5):
            await client.upsert_member(
                LIST, payload(f"p{i}@example.com", fields={"firstName": f"P{i}"})
            )
        await ac.act("unsubscribe", "p1@example.com")
        await ac.act("bounce", "p2@example.com")
        await ac.act("status", "p3@example.com", status=0)
        page = await client.list_members(LIST, count=3)
        assert [m.email_address for m in page.members] == [f"p{i}@example.com" for i in range(3)]
        assert page.total_items == 5
        rest = await client.list_members(LIST, offset=3, count=10)
        statuses = {m.email_address: m.status for m in (*page.members, *rest.members)}
        assert statuses == {
            "p0@example.com": "subscribed",
            "p1@example.com": "unsubscribed",
            "p2@example.com": "cleaned",
            "p3@example.com": "pending",
            "p4@example.com": "subscribed",
        }
        assert page.members[0].fields == {"firstName": "P0"}

    async def test_changes_since_a_time(self, ac: Ac, client: ActiveCampaignClient) -> None:
        await client.upsert_member(LIST, payload("early@example.com"))
        await ac.http.post("/_control/clock", json={"advance_seconds": 3600})
        page = await client.list_members(LIST, count=1000)
        since = max(m.last_changed for m in page.members if m.last_changed)
        assert since is not None
        await ac.http.post("/_control/clock", json={"advance_seconds": 60})
        await ac.act("unsubscribe", "early@example.com")
        await client.upsert_member(LIST, payload("late@example.com"))
        from datetime import timedelta

        changed = await client.list_members(LIST, since_last_changed=since + timedelta(seconds=30))
        assert {m.email_address: m.status for m in changed.members} == {
            "early@example.com": "unsubscribed",
            "late@example.com": "subscribed",
        }


class TestErrors:
    async def test_429_is_throttled_with_retry_after(
        self, ac: Ac, limited: ActiveCampaignClient
    ) -> None:
        await ac.configure(rate_limit_per_second=1)
        with pytest.raises(ThrottledError) as err:
            await asyncio.gather(*(limited.ping() for _ in range(5)))
        assert err.value.retry_after is not None and err.value.status == 429

    async def test_without_the_shared_limiter_a_429_is_waited_out(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        # Connect-time calls (no limiter yet) pace themselves by ActiveCampaign's Retry-After.
        await ac.configure(rate_limit_per_second=2)
        await asyncio.gather(*(client.ping() for _ in range(5)))

    async def test_in_a_backlog_a_read_refused_for_the_rate_is_asked_again(
        self, ac: Ac, limited: ActiveCampaignClient
    ) -> None:
        # A read inside a bulk import (its records, their ids) waits a 429 out in place:
        # failing it would fail an import already made, and the batch's retry could no
        # longer tell the people that import created.
        await ac.configure(rate_limit_per_second=2)
        token = _patient.set(True)
        try:
            await asyncio.gather(*(limited.list_audiences() for _ in range(5)))
        finally:
            _patient.reset(token)
        # Outside a backlog the engine cools the account down instead.
        with pytest.raises(ThrottledError):
            await asyncio.gather(*(limited.list_audiences() for _ in range(5)))

    async def test_503_at_the_limit_is_throttled_and_an_outage_transient(
        self, ac: Ac, client: ActiveCampaignClient, limited: ActiveCampaignClient
    ) -> None:
        await ac.configure(rate_limit_per_second=1, rate_limit_status=503)
        with pytest.raises(ThrottledError) as err:
            await asyncio.gather(*(limited.ping() for _ in range(5)))
        assert err.value.status == 503
        await ac.configure(rate_limit_per_second=10_000, fault_rates={"503": 1.0})
        with pytest.raises(TransientError):
            await client.list_audiences()

    @pytest.mark.parametrize("body", ["html", "empty"])
    async def test_5xx_bodies_are_transient(
        self, ac: Ac, client: ActiveCampaignClient, body: str
    ) -> None:
        await ac.configure(error_body_5xx=body, fault_rates={"500": 1.0})
        with pytest.raises(TransientError):
            await client.upsert_member(LIST, payload("e@example.com"))

    async def test_an_empty_200_is_retried_not_believed(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await ac.configure(fault_rates={"empty_200": 1.0})
        with pytest.raises(TransientError):
            await client.upsert_member(LIST, payload("e@example.com"))

    async def test_an_intermittent_403_is_asked_again(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await ac.configure(fault_rates={"403": 0.5}, seed=3)
        for _ in range(5):
            await client.list_audiences()

    async def test_an_invalid_email_is_refused(self, client: ActiveCampaignClient) -> None:
        with pytest.raises(PermanentError) as err:
            await client.upsert_member(LIST, payload("not-an-email"))
        assert err.value.kind is ErrorKind.invalid_email


class TestErrorShapes:
    """The error tree from bodies the sandbox has no knob for (pure, no HTTP)."""

    def test_both_shapes_and_the_bulk_rate_body(self) -> None:
        from app.providers.activecampaign.client import error_from

        dup = {
            "errors": [
                {
                    "title": "Email address already exists in the system",
                    "code": "duplicate",
                    "source": {"pointer": "/data/attributes/email"},
                }
            ]
        }
        e = error_from(422, dup, {}, op="move", json=True)
        assert isinstance(e, PermanentError) and e.kind is ErrorKind.member_exists
        e = error_from(
            404, {"message": "No Result found for _List with id 4"}, {}, op="x", json=True
        )
        assert isinstance(e, AudienceMissing)
        e = error_from(
            404,
            {"errors": [{"title": "Not Found", "detail": "Contact not found"}]},
            {},
            op="x",
            json=True,
        )
        assert isinstance(e, PermanentError) and e.kind is ErrorKind.not_found
        e = error_from(422, {"errors": "Bulk operation failed."}, {}, op="fields", json=True)
        assert isinstance(e, PermanentError) and "Bulk operation failed." in e.message
        rate = {"success": 0, "message": "Rate limit exceeded.", "failureReasons": ["Up to 100"]}
        e = error_from(400, rate, {"retry-after": "60"}, op="bulk_import", json=True)
        assert isinstance(e, ThrottledError) and e.retry_after == 60.0
        assert isinstance(error_from(402, {}, {}, op="x", json=True), AuthError)
        assert isinstance(error_from(404, None, {}, op="x", json=False), TransientError)
