"""Backlogs through `import/bulk_import` against the sandbox: chunks, polling, per-contact
refusals, consent decided per person afterwards, the fallback without a bulk importer."""

from __future__ import annotations

from typing import Any

import pytest

from app.providers.activecampaign.client import ActiveCampaignClient, _chunks
from app.providers.base import ErrorKind, RemoteStatus
from tests.providers.activecampaign.conftest import LIST, Ac, payload


def people(n: int, prefix: str = "bulk") -> list:
    return [
        payload(f"{prefix}{i}@example.com", fields={"firstName": f"N{i}", "lastName": "B"})
        for i in range(n)
    ]


def imports_of(requests: list) -> list:
    return [r for r in requests if r["path"].endswith("/import/bulk_import")]


def items_sent(ac: Ac) -> dict[str, dict]:
    """Every contact item of every import the sandbox was sent, by address (the last)."""
    return {
        str(item["email"]).lower(): item
        for account in ac.state.accounts.values()
        for batch in account.batches.values()
        for item in batch.contacts
    }


class TestBulkImport:
    async def test_a_backlog_lands_subscribed_in_few_requests(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        outcomes = await client.batch_upsert(LIST, people(40))
        assert all(o.state is not None and o.error is None for o in outcomes)
        assert {o.state.status for o in outcomes if o.state} == {RemoteStatus.subscribed}
        assert all(o.state.refs.get("created") for o in outcomes if o.state)
        dump = await ac.dump()
        assert len(dump) == 40 and {p["lists"][LIST]["status"] for p in dump} == {1}
        assert {p["first_name"] for p in dump} == {f"N{i}" for i in range(40)}
        requests = await ac.requests()
        assert len(requests) < 20  # not 3 a person
        assert not [r for r in requests if r["path"].endswith("/contactLists")]
        assert len(imports_of(requests)) == 1  # fields and subscription in one import

    async def test_nobody_unsubscribed_or_bounced_is_subscribed_again(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await client.batch_upsert(LIST, people(12))
        await ac.act("unsubscribe", "bulk1@example.com")
        await ac.act("bounce", "bulk2@example.com")
        again = [payload(p.email_address, fields={"firstName": "Z"}) for p in people(12)]
        outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, again)}
        for key in ("bulk1@example.com", "bulk2@example.com"):
            assert outcomes[key].error is not None
            assert outcomes[key].error.kind is ErrorKind.compliance
        dump = {p["email"]: p for p in await ac.dump()}
        assert dump["bulk1@example.com"]["lists"][LIST]["status"] == 2
        assert dump["bulk2@example.com"]["lists"][LIST]["status"] == 3
        assert all(p["lists"][LIST]["resubscribed"] == 0 for p in dump.values())
        assert dump["bulk3@example.com"]["first_name"] == "Z"

    async def test_a_refused_address_is_rejected_the_rest_land(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        batch = people(11)
        batch.insert(4, payload("broken@example"))
        outcomes = await client.batch_upsert(LIST, batch)
        bad = [o for o in outcomes if o.error is not None]
        assert [o.email_key for o in bad] == ["broken@example"]
        assert bad[0].error is not None and bad[0].error.kind is ErrorKind.invalid_email
        assert len(await ac.dump()) == 11

    async def test_without_a_bulk_importer_everyone_goes_alone(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await ac.configure(bulk_import_enabled=False)
        outcomes = await client.batch_upsert(LIST, people(12))
        assert all(o.state is not None for o in outcomes)
        assert len(await ac.dump()) == 12

    @pytest.mark.parametrize("form", ["false", "status_false"])
    async def test_an_early_false_from_import_info_is_waited_out(
        self, ac: Ac, client: ActiveCampaignClient, form: str
    ) -> None:
        await ac.configure(import_info_false_seconds=0.2, import_info_false_form=form)
        outcomes = await client.batch_upsert(LIST, people(10))
        assert all(o.state is not None for o in outcomes)

    async def test_a_few_go_through_contact_sync(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        outcomes = await client.batch_upsert(LIST, people(3))
        assert all(o.state is not None for o in outcomes)
        imports = (await ac.http.get("/_control/imports")).json()["imports"]
        assert imports == []


def test_chunks_respect_count_and_bytes() -> None:
    items = [{"email": f"{i}@example.com"} for i in range(600)]
    assert [len(c) for c in _chunks(items)] == [250, 250, 100]
    big = [{"email": f"{i}@example.com", "x": "y" * 3000} for i in range(300)]
    chunks = _chunks(big)
    import orjson

    assert all(len(orjson.dumps({"contacts": c})) < 400_000 for c in chunks)
    assert sum(len(c) for c in chunks) == 300


class TestBulkTags:
    async def test_new_contacts_are_tagged_by_the_import_and_ours_can_go(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        from app.providers.base import RemoteRef

        batch = [payload(f"tg{i}@example.com", tags=["vip", "2026"]) for i in range(20)]
        outcomes = await client.batch_upsert(LIST, batch)
        states = [o.state for o in outcomes]
        assert all(s is not None and s.tags == ["2026", "vip"] for s in states)
        dump = {p["email"]: p for p in await ac.dump()}
        assert all(set(p["tags"].values()) == {"vip", "2026"} for p in dump.values())
        requests = await ac.requests()
        assert len(requests) < 20  # no request per person, tags included
        assert len(imports_of(requests)) == 1  # fields, subscription and tags in one
        state = states[0]
        assert state is not None
        ref = RemoteRef(email=state.email_address, remote_id=state.remote_id, refs=state.refs)
        refs = await client.update_tags(
            LIST, state.email_address, add=[], remove=["vip"], remote=ref
        )
        assert refs == {"tags": {"2026": None}}
        person = await ac.person(state.email_address)
        assert person is not None and set(person["tags"].values()) == {"2026"}

    async def test_an_existing_contact_keeps_its_own_tag_unclaimed(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        other = await ac.new_list("Other")
        await ac.act("signup", "known@example.com", list_id=other)
        person = await ac.person("known@example.com")
        assert person is not None
        tag = (await ac.api.post("/tags", json={"tag": {"tag": "vip"}})).json()["tag"]
        await ac.api.post(
            "/contactTags", json={"contactTag": {"contact": person["id"], "tag": tag["id"]}}
        )
        batch = [payload(f"n{i}@example.com", tags=["vip"]) for i in range(12)]
        batch.append(payload("known@example.com", tags=["vip"]))
        outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, batch)}
        known = outcomes["known@example.com"].state
        assert known is not None and "tags" not in known.refs and not known.created
        assert known.status == "subscribed"


class TestOneImport:
    """One import a batch: fields, `subscribe` and (on people we never pushed) tags, for
    everyone the snapshot of our list's people at 0, 2 and 3 does not hold."""

    async def test_people_held_at_0_2_or_3_are_never_sent_a_subscription(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await client.batch_upsert(LIST, people(12))
        await ac.act("status", "bulk1@example.com", status=0)  # unconfirmed (double opt-in)
        await ac.act("unsubscribe", "bulk2@example.com")
        await ac.act("bounce", "bulk3@example.com")
        fresh = ActiveCampaignClient(
            client._transport, api_url=ac.url, api_key=client._key, import_poll=(0.05, 0.1)
        )
        again = [payload(p.email_address, fields={"firstName": "Z"}) for p in people(12)]
        outcomes = {o.email_key: o for o in await fresh.batch_upsert(LIST, again)}
        sent = items_sent(ac)
        held = ("bulk1@example.com", "bulk2@example.com", "bulk3@example.com")
        for key in held:
            assert "subscribe" not in sent[key] and sent[key]["first_name"] == "Z"
        assert "subscribe" in sent["bulk4@example.com"]
        first = outcomes["bulk1@example.com"].state
        assert first is not None and first.status == RemoteStatus.pending
        for key in held[1:]:
            error = outcomes[key].error
            assert error is not None and error.kind is ErrorKind.compliance
        dump = {p["email"]: p for p in await ac.dump()}
        assert [dump[k]["lists"][LIST]["status"] for k in held] == [0, 2, 3]
        assert all(p["lists"][LIST]["resubscribed"] == 0 for p in dump.values())

    async def test_an_unsubscribe_after_the_snapshot_is_refused_by_the_import(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        await client.batch_upsert(LIST, people(12))  # the snapshot is taken, then kept
        await ac.act("unsubscribe", "bulk5@example.com")
        again = [payload(p.email_address, fields={"firstName": "Z"}) for p in people(12)]
        outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, again)}
        assert "subscribe" in items_sent(ac)["bulk5@example.com"]  # the snapshot missed it
        error = outcomes["bulk5@example.com"].error
        assert error is not None and error.kind is ErrorKind.compliance
        person = await ac.person("bulk5@example.com")
        assert person is not None and person["lists"][LIST]["status"] == 2
        assert person["lists"][LIST]["resubscribed"] == 0

    async def test_0_and_3_are_read_for_every_batch_2_once_for_a_while(
        self, ac: Ac, client: ActiveCampaignClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        read: list[tuple[int, ...]] = []
        pages = client._held_pages

        async def spy(audience_id: str, statuses: tuple[int, ...], max_pages: int) -> Any:
            read.append(statuses)
            return await pages(audience_id, statuses, max_pages)

        monkeypatch.setattr(client, "_held_pages", spy)
        await client.batch_upsert(LIST, people(12))
        await ac.act("bounce", "bulk7@example.com")
        again = [payload(p.email_address, fields={"firstName": "Z"}) for p in people(12)]
        outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, again)}
        assert read == [(0, 3), (2,), (0, 3)]
        assert "subscribe" not in items_sent(ac)["bulk7@example.com"]  # the bounce was seen
        error = outcomes["bulk7@example.com"].error
        assert error is not None and error.kind is ErrorKind.compliance
        monkeypatch.setattr("app.providers.activecampaign.client.HELD_SECONDS", 0.0)
        await client.batch_upsert(LIST, people(12, prefix="more"))
        assert read[3:] == [(0, 3), (2,)]

    async def test_too_many_held_people_subscribe_by_a_second_import(self, ac: Ac) -> None:
        import httpx

        from app.sandbox.activecampaign import DEFAULT_API_KEY

        async with httpx.AsyncHTTPTransport() as transport:
            client = ActiveCampaignClient(
                transport,
                api_url=ac.url,
                api_key=DEFAULT_API_KEY,
                import_poll=(0.05, 0.1),
                held_max_pages=0,
            )
            await client.batch_upsert(LIST, people(12))
            assert len(imports_of(await ac.requests())) == 2  # data, then the subscription
            await ac.act("bounce", "bulk2@example.com")
            again = [payload(p.email_address, fields={"firstName": "Z"}) for p in people(12)]
            outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, again)}
        error = outcomes["bulk2@example.com"].error
        assert error is not None and error.kind is ErrorKind.compliance
        person = await ac.person("bulk2@example.com")
        assert person is not None and person["lists"][LIST]["status"] == 3

    async def test_tags_go_in_the_import_only_for_people_never_pushed(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        batch = [
            payload(f"seen{i}@example.com", tags=["vip"], unseen=i % 2 == 0) for i in range(12)
        ]
        outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, batch)}
        sent = items_sent(ac)
        for i in range(12):
            key = f"seen{i}@example.com"
            state = outcomes[key].state
            assert state is not None and state.status == RemoteStatus.subscribed
            if i % 2 == 0:  # created by the import with our tag: ours
                assert sent[key]["tags"] == ["vip"] and state.tags == ["vip"]
            else:  # the mirror knew them: their tags are the engine's to add (and to own)
                assert "tags" not in sent[key] and state.tags == []


async def test_side_by_side_batches_read_the_fields_and_add_an_option_once(
    ac: Ac, client: ActiveCampaignClient
) -> None:
    import asyncio

    await client.create_field(title="Dietary", perstag="DIETARY", kind="listbox")
    await ac.http.delete("/_control/requests")
    worker = ActiveCampaignClient(  # the worker's client: nothing cached yet
        client._transport, api_url=ac.url, api_key=client._key, import_poll=(0.05, 0.1)
    )
    diet = {"DIETARY": ["vegan", "nut free"]}
    batches = [[payload(f"o{j}-{i}@example.com", fields=diet) for i in range(10)] for j in range(4)]
    await asyncio.gather(*(worker.batch_upsert(LIST, b) for b in batches))
    requests = await ac.requests()
    assert sum(1 for r in requests if r["path"].endswith("/fieldOption/bulk")) == 1
    assert sum(1 for r in requests if r["path"].endswith("/fields")) == 1
    (account,) = ac.state.accounts.values()
    assert sorted(o.value for o in account.options.values()) == ["nut free", "vegan"]
    assert len(await ac.dump()) == 40


async def test_in_a_backlog_an_import_refused_for_the_rate_is_asked_again(
    ac: Ac, limited: ActiveCampaignClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One import of a batch refused for the rate while the other was made: failing the batch
    # would send it again with half its people existing, whose tags then go one by one.
    from app.sandbox.kit.gate import Refusal

    limiter = ac.state.bulk_multi
    hit = limiter.hit
    calls: list[int] = []
    refused: list[int] = []

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the batch's second import, the first one made
            refused.append(1)
            raise Refusal("rate", limit=100)
        return hit(*args, **kwargs)

    monkeypatch.setattr(limiter, "hit", once)
    batch = [payload(f"r{i}@example.com", tags=["vip"]) for i in range(300)]
    outcomes = await limited.batch_upsert(LIST, batch)
    assert refused == [1]
    assert all(o.error is None and o.state is not None for o in outcomes)
    assert all(o.state.refs.get("tags") == {"vip": None} for o in outcomes if o.state)
    assert len(await ac.dump()) == 300


async def test_side_by_side_imports_hold_at_most_two_of_the_accounts_slots(
    ac: Ac, client: ActiveCampaignClient
) -> None:
    # An import waits for the import rate (100 a minute) inside its account slot: a dozen
    # of them queued together would hold every slot, and the other groups' reads with them.
    import asyncio
    import contextlib

    holding: dict[str | None, int] = {}
    most: dict[str | None, int] = {}

    class Slow:
        @contextlib.asynccontextmanager
        async def slot(self, op: str | None = None) -> Any:
            holding[op] = holding.get(op, 0) + 1
            most[op] = max(most.get(op, 0), holding[op])
            try:
                if op == "bulk_import":
                    await asyncio.sleep(0.05)  # its turn of the import rate
                yield
            finally:
                holding[op] -= 1

    worker = ActiveCampaignClient(
        client._transport,
        api_url=ac.url,
        api_key=client._key,
        import_poll=(0.05, 0.1),
        limiter=Slow(),
    )
    batches = [people(260, prefix=f"s{j}-") for j in range(3)]  # two imports each
    results = await asyncio.gather(*(worker.batch_upsert(LIST, b) for b in batches))
    assert all(o.error is None and o.state is not None for r in results for o in r)
    assert len(imports_of(await ac.requests())) == 6
    assert most["bulk_import"] == 2  # six imports side by side, two in the slots at a time
    assert len(await ac.dump()) == 780


class TestLazyIds:
    """The import's ids say who it created (ids only grow); their records are not read back,
    and every later call finds such a contact by address, its refs checked against the span
    of the ids that import created."""

    async def lazy(self, client: ActiveCampaignClient, n: int = 12) -> list:
        batch = [payload(f"lz{i}@example.com", tags=["vip"], unseen=True) for i in range(n)]
        states = [o.state for o in await client.batch_upsert(LIST, batch)]
        assert all(s is not None for s in states)
        return states

    @staticmethod
    def ref(state: Any) -> Any:
        from app.providers.base import RemoteRef

        # As the engine hands it back from the mirror: no id, the refs.
        return RemoteRef(email=state.email_address, remote_id=None, refs=state.refs)

    async def test_the_people_an_import_created_are_not_read_back(
        self, ac: Ac, client: ActiveCampaignClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        other = await ac.new_list("Other")
        await ac.act("signup", "known@example.com", list_id=other)
        read: list[list[str]] = []
        records = client._records

        async def spy(ids: list[str]) -> Any:
            read.append(list(ids))
            return await records(ids)

        monkeypatch.setattr(client, "_records", spy)
        batch = [payload(f"lz{i}@example.com", tags=["vip"], unseen=True) for i in range(30)]
        batch.append(payload("known@example.com", tags=["vip"], unseen=True))
        outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, batch)}
        known = await ac.person("known@example.com")
        state = outcomes["known@example.com"].state
        assert known is not None and state is not None
        assert read == [[str(known["id"])]]  # only the record of the one that existed
        assert state.remote_id == str(known["id"]) and not state.created
        ids = sorted(int(p["id"]) for p in await ac.dump() if p["email"] != "known@example.com")
        for i in range(30):
            made = outcomes[f"lz{i}@example.com"].state
            assert made is not None and made.remote_id == "" and made.created
            assert made.status == RemoteStatus.subscribed and made.tags == ["vip"]
            lo, hi = made.refs["ids"]
            assert lo <= ids[0] and hi == ids[-1]

    async def test_a_later_update_finds_the_contact_and_learns_its_id(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        state = (await self.lazy(client))[0]
        person = await ac.person(state.email_address)
        assert person is not None
        again = payload(state.email_address, fields={"firstName": "Later"})
        upserted = await client.upsert_member(LIST, again, remote=self.ref(state))
        assert upserted.remote_id == str(person["id"])
        assert upserted.refs["created"] is True and upserted.refs["tags"] == {"vip": None}
        updated = await client.update_member(LIST, again, remote=self.ref(state))
        assert updated.remote_id == str(person["id"]) and updated.refs["created"] is True
        assert len(await ac.dump()) == 12

    async def test_delete_forget_and_tag_removal_find_it_by_address(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        first, second, third = (await self.lazy(client))[:3]
        refs = await client.update_tags(
            LIST, first.email_address, add=[], remove=["vip"], remote=self.ref(first)
        )
        assert refs == {"tags": {}}
        person = await ac.person(first.email_address)
        assert person is not None and person["tags"] == {}
        # Created by our import and on no other list: a delete takes the contact.
        assert await client.archive_member(LIST, second.email_address, remote=self.ref(second))
        assert await ac.person(second.email_address) is None
        await client.forget_member(LIST, third.email_address, remote=self.ref(third))
        assert await ac.person(third.email_address) is None

    async def test_an_email_change_moves_the_contact_it_finds_by_the_old_address(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        state = (await self.lazy(client))[0]
        before = await ac.person(state.email_address)
        moved = await client.move_member(
            LIST, state.email_address, payload("renamed@example.com"), remote=self.ref(state)
        )
        after = await ac.person("renamed@example.com")
        assert before is not None and after is not None and after["id"] == before["id"]
        assert moved.remote_id == str(before["id"]) and moved.refs["created"] is True
        assert await ac.person(state.email_address) is None

    async def test_a_contact_made_again_by_someone_else_is_not_taken_for_ours(
        self, ac: Ac, client: ActiveCampaignClient
    ) -> None:
        first, second = (await self.lazy(client))[:2]
        for state in (first, second):  # deleted at ActiveCampaign, signed up again there
            person = await ac.person(state.email_address)
            assert person is not None
            await ac.api.delete(f"/contacts/{person['id']}")
            await ac.act("signup", state.email_address)
            person = await ac.person(state.email_address)
            assert person is not None
            tag = (await ac.api.get("/tags")).json()["tags"][0]
            await ac.api.post(
                "/contactTags", json={"contactTag": {"contact": person["id"], "tag": tag["id"]}}
            )
        # Not created by us: a delete keeps it and its own tag.
        assert await client.archive_member(LIST, first.email_address, remote=self.ref(first))
        person = await ac.person(first.email_address)
        assert person is not None and set(person["tags"].values()) == {"vip"}
        refs = await client.update_tags(
            LIST, second.email_address, add=[], remove=["vip"], remote=self.ref(second)
        )
        assert refs == {"created": None, "tags": {}, "ids": None}
        person = await ac.person(second.email_address)
        assert person is not None and set(person["tags"].values()) == {"vip"}
        state = await client.upsert_member(
            LIST, payload(first.email_address), remote=self.ref(first)
        )
        assert state.refs["created"] is None and state.refs["tags"] is None

    async def test_batches_side_by_side_share_one_read_of_the_held_people(
        self, ac: Ac, client: ActiveCampaignClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import asyncio

        read: list[tuple[int, ...]] = []
        pages = client._held_pages

        async def spy(audience_id: str, statuses: tuple[int, ...], max_pages: int) -> Any:
            read.append(statuses)
            await asyncio.sleep(0.05)  # the account's rate: the other batches ask meanwhile
            return await pages(audience_id, statuses, max_pages)

        monkeypatch.setattr(client, "_held_pages", spy)
        batches = [people(12, prefix=f"side{j}-") for j in range(6)]
        results = await asyncio.gather(*(client.batch_upsert(LIST, b) for b in batches))
        assert all(o.state is not None and o.error is None for r in results for o in r)
        # The first batch's read, then one shared by the batches that asked while it ran: at
        # least two (the first starts its read before the others ask), fewer than one a batch.
        assert 1 < read.count((0, 3)) < 6
        assert len(await ac.dump()) == 72


def count_highest_id_reads(client: ActiveCampaignClient, monkeypatch: pytest.MonkeyPatch) -> list:
    """Every read of the account's highest contact id (`_next_contact_id`), as it is made."""
    reads: list[int] = []
    read = client._next_contact_id

    async def spy() -> int:
        reads.append(1)
        return await read()

    monkeypatch.setattr(client, "_next_contact_id", spy)
    return reads


# The import's answer is polled: under every setting of the `false` answer it gives early.
ANSWER_KNOBS = [
    {},
    {"import_info_false_seconds": 0.2, "import_info_false_form": "false"},
    {"import_info_false_seconds": 0.2, "import_info_false_form": "status_false"},
]


@pytest.mark.parametrize(
    "knobs", ANSWER_KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults"
)
class TestNextIdFromAnswers:
    """Which contacts an import created is told by the next contact id before it; an import
    of ours sent after a batch asked, and answered before the batch's import is sent, tells
    it (its highest id), so that batch reads no highest id of its own."""

    @staticmethod
    def parked(client: ActiveCampaignClient, monkeypatch: pytest.MonkeyPatch) -> tuple:
        """The first batch to take its snapshot waits there until `go` is set."""
        import asyncio

        asked, go = asyncio.Event(), asyncio.Event()
        snapshot = client._snapshot

        async def spy(audience_id: str) -> Any:
            held = await snapshot(audience_id)
            if not asked.is_set():
                asked.set()
                await go.wait()
            return held

        monkeypatch.setattr(client, "_snapshot", spy)
        return asked, go

    async def test_an_answer_sent_after_a_batch_asked_tells_it_the_next_id(
        self,
        ac: Ac,
        client: ActiveCampaignClient,
        monkeypatch: pytest.MonkeyPatch,
        knobs: dict[str, Any],
    ) -> None:
        import asyncio

        await ac.configure(**knobs)
        await ac.act("signup", "known@example.com")  # existed before either batch
        reads = count_highest_id_reads(client, monkeypatch)
        asked, go = self.parked(client, monkeypatch)
        later = [payload(f"b{i}@example.com", tags=["vip"]) for i in range(260)]  # two imports
        later += [payload(e, tags=["vip"]) for e in ("known@example.com", "late@example.com")]
        waiting = asyncio.create_task(client.batch_upsert(LIST, later))
        await asked.wait()
        # Made by someone else after the batch asked, before the other batch's import: below
        # that import's ids, so not taken for ours.
        await ac.act("signup", "late@example.com")
        first = await client.batch_upsert(LIST, people(12, prefix="a"))
        assert all(o.state is not None and o.state.created for o in first)
        go.set()
        outcomes = {o.email_key: o for o in await waiting}
        assert len(reads) == 1  # the first batch's only
        for key in ("known@example.com", "late@example.com"):
            state = outcomes[key].state
            person = await ac.person(key)
            assert state is not None and person is not None
            assert not state.created and state.remote_id == str(person["id"])
            assert not state.refs.get("tags")  # the tag went in the import: not claimed
        ids = sorted(int(p["id"]) for p in await ac.dump() if p["email"].startswith("b"))
        for i in range(260):
            state = outcomes[f"b{i}@example.com"].state
            assert state is not None and state.created and state.remote_id == ""
            assert state.refs["tags"] == {"vip": None}
            lo, hi = state.refs["ids"]
            assert lo <= ids[0] and hi == ids[-1]
        assert len(ids) == 260

    async def test_an_answer_from_before_a_batch_asked_is_not_trusted(
        self,
        ac: Ac,
        client: ActiveCampaignClient,
        monkeypatch: pytest.MonkeyPatch,
        knobs: dict[str, Any],
    ) -> None:
        await ac.configure(**knobs)
        reads = count_highest_id_reads(client, monkeypatch)
        await client.batch_upsert(LIST, people(12, prefix="a"))
        # Made by someone else after that import was answered, before the next batch asked:
        # above that import's ids, so its answer would take this contact for ours.
        await ac.act("signup", "late@example.com")
        batch = [payload(f"b{i}@example.com", tags=["vip"]) for i in range(11)]
        batch.append(payload("late@example.com", tags=["vip"]))
        outcomes = {o.email_key: o for o in await client.batch_upsert(LIST, batch)}
        late = outcomes["late@example.com"].state
        assert late is not None and not late.created and not late.refs.get("tags")
        assert len(reads) == 2  # each batch read its own
        assert all(outcomes[f"b{i}@example.com"].state.created for i in range(11))  # type: ignore[union-attr]
