"""The worker against the sandbox over real HTTP: DESIGN §5's table, observed at "Mailchimp"."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.main import Runtime
from app.sync.engine import SyncEngine
from tests.conftest import fetch
from tests.support.sync import Sandbox, queue_empty, wait_for
from tests.sync.conftest import OWNER

pytestmark = pytest.mark.usefixtures("connection")

Engine = Callable[..., SyncEngine]


def h(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


class Api:
    """The contacts API for OWNER."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    async def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("newsletter_opt_in", True)
        r = await self.client.post("/api/contacts", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def patch(self, contact_id: str, **body: Any) -> dict[str, Any]:
        r = await self.client.patch(f"/api/contacts/{contact_id}", json=body, headers=self.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def delete(self, contact_id: str) -> None:
        r = await self.client.delete(f"/api/contacts/{contact_id}", headers=self.headers)
        assert r.status_code == 204

    async def forget(self, contact_id: str) -> None:
        r = await self.client.post(f"/api/contacts/{contact_id}/forget", headers=self.headers)
        assert r.status_code == 200

    async def get(self, contact_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/contacts/{contact_id}", headers=self.headers)
        assert r.status_code == 200
        return dict(r.json())


@pytest.fixture
def crm(api: httpx.AsyncClient, token_for: Callable[..., str]) -> Api:
    return Api(api, token_for(OWNER))


async def drain(make_engine: Engine, **overrides: Any) -> None:
    engine = make_engine(**overrides)
    try:
        await engine.run_until_idle(limit_seconds=30)
    finally:
        await engine.aclose()


class TestCreateAndUpdate:
    async def test_consenting_contact_is_created_with_fields_and_tags(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        c = await crm.create(
            email="Ada@Example.com",
            first_name="Ada",
            last_name="Lovelace",
            phone="555",
            tags=["vip", "donor"],
        )
        await drain(make_engine)
        m = (await sandbox.members())["ada@example.com"]
        assert m["status"] == "subscribed"
        assert m["email_address"] == "Ada@example.com"
        assert m["merge_fields"]["FNAME"] == "Ada"
        assert m["merge_fields"]["PHONE"] == "555"
        assert {t["name"] for t in m["tags"]} == {"vip", "donor"}
        assert await queue_empty(runtime)
        sync = (await crm.get(c["id"]))["sync"][0]
        assert sync["status"] == "synced"
        assert sync["remote_status"] == "subscribed"
        assert sync["last_synced_at"] is not None

    async def test_no_consent_creates_no_member(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        await crm.create(email="quiet@example.com", newsletter_opt_in=False)
        await sandbox.clear_requests()
        await drain(make_engine)
        assert "quiet@example.com" not in await sandbox.members()
        assert await sandbox.requests() == []

    async def test_unchanged_contact_costs_no_call(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        c = await crm.create(email="same@example.com", first_name="S")
        await drain(make_engine)
        await sandbox.clear_requests()
        # A change that maps to nothing Mailchimp holds (notes) re-queues the key...
        await crm.patch(c["id"], notes="called on Monday")
        assert not await queue_empty(runtime)
        await drain(make_engine)
        # ...and the worker completes it without a request.
        assert await sandbox.requests() == []
        assert await queue_empty(runtime)

    async def test_field_change_updates_without_status(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        c = await crm.create(email="ed@example.com", first_name="Ed")
        await drain(make_engine)
        await sandbox.clear_requests()
        await crm.patch(c["id"], first_name="Edward")
        await drain(make_engine)
        m = (await sandbox.members())["ed@example.com"]
        assert m["merge_fields"]["FNAME"] == "Edward"
        reqs = await sandbox.requests()
        assert [(r["method"], r["status"]) for r in reqs] == [("PUT", 200)]

    async def test_opt_out_unsubscribes(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        c = await crm.create(email="bye@example.com")
        await drain(make_engine)
        await crm.patch(c["id"], newsletter_opt_in=False)
        await drain(make_engine)
        assert (await sandbox.members())["bye@example.com"]["status"] == "unsubscribed"


class TestTags:
    async def test_tags_are_additive_and_only_ours_are_removed(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        c = await crm.create(email="tag@example.com", tags=["a", "b"])
        await drain(make_engine)
        # Someone adds a tag in Mailchimp.
        r = await sandbox.api(
            "POST",
            f"/lists/{sandbox.list_id}/members/{h('tag@example.com')}/tags",
            json={"tags": [{"name": "theirs", "status": "active"}]},
        )
        assert r.status_code == 204
        await crm.patch(c["id"], tags=["b", "c"])
        await drain(make_engine)
        m = (await sandbox.members())["tag@example.com"]
        assert {t["name"] for t in m["tags"]} == {"b", "c", "theirs"}
        inactive = {t["name"] for t in m["tags_all"] if t["status"] == "inactive"}
        assert inactive == {"a"}


class TestGone:
    async def test_delete_archives_and_recreate_resubscribes(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        c = await crm.create(email="arc@example.com", first_name="Arc")
        await drain(make_engine)
        await crm.delete(c["id"])
        await drain(make_engine)
        assert (await sandbox.members())["arc@example.com"]["status"] == "archived"
        await crm.create(email="arc@example.com", first_name="Back")
        await drain(make_engine)
        m = (await sandbox.members())["arc@example.com"]
        assert m["status"] == "subscribed"
        assert m["merge_fields"]["FNAME"] == "Back"

    async def test_delete_of_never_pushed_contact_touches_nothing(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        # A member that only exists in Mailchimp, with the same address as a local contact
        # that never consented: deleting the contact must not archive it.
        r = await sandbox.api(
            "PUT",
            f"/lists/{sandbox.list_id}/members/{h('theirs@example.com')}",
            json={"email_address": "theirs@example.com", "status_if_new": "subscribed"},
        )
        assert r.status_code == 200
        c = await crm.create(email="theirs@example.com", newsletter_opt_in=False)
        await drain(make_engine)
        await crm.delete(c["id"])
        await drain(make_engine)
        assert (await sandbox.members())["theirs@example.com"]["status"] == "subscribed"

    async def test_forget_erases_and_never_pushes_again(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        c = await crm.create(email="gdpr@example.com", first_name="G")
        await drain(make_engine)
        await crm.forget(c["id"])
        await drain(make_engine)
        dump = await sandbox.members()
        assert "gdpr@example.com" not in dump
        assert dump[h("gdpr@example.com")]["status"] == "forgotten"
        again = await crm.create(email="gdpr@example.com", first_name="G2")
        await sandbox.clear_requests()
        await drain(make_engine)
        assert await sandbox.requests() == []
        sync = (await crm.get(again["id"]))["sync"][0]
        assert sync["status"] == "rejected"
        assert sync["error_kind"] == "forgotten"
        tomb = await fetch(runtime, "SELECT remote_id FROM sync_tombstones")
        assert tomb == [{"remote_id": h("gdpr@example.com")}]


class TestEmailChange:
    async def test_move_keeps_the_member(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        c = await crm.create(email="old@example.com", first_name="O")
        await drain(make_engine)
        before = (await sandbox.members())["old@example.com"]
        await crm.patch(c["id"], email="new@example.com")
        await drain(make_engine)
        dump = await sandbox.members()
        assert "old@example.com" not in dump
        after = dump["new@example.com"]
        assert after["unique_email_id"] == before["unique_email_id"]
        assert after["status"] == "subscribed"

    async def test_move_onto_existing_member_archives_old(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        c = await crm.create(email="a1@example.com", first_name="A")
        await drain(make_engine)
        r = await sandbox.api(
            "PUT",
            f"/lists/{sandbox.list_id}/members/{h('b1@example.com')}",
            json={"email_address": "b1@example.com", "status_if_new": "subscribed"},
        )
        assert r.status_code == 200
        await crm.patch(c["id"], email="b1@example.com", first_name="B")
        await drain(make_engine)
        dump = await sandbox.members()
        assert dump["a1@example.com"]["status"] == "archived"
        assert dump["b1@example.com"]["status"] == "subscribed"
        assert dump["b1@example.com"]["merge_fields"]["FNAME"] == "B"


class TestConsent:
    @pytest.mark.parametrize("action", ["unsubscribe", "clean"])
    async def test_provider_opt_out_is_never_resubscribed(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, action: str
    ) -> None:
        c = await crm.create(email="person@example.com", first_name="P")
        await drain(make_engine)
        assert (await sandbox.act(action, "person@example.com")).status_code == 200
        await crm.patch(c["id"], first_name="Renamed")
        await drain(make_engine)
        m = (await sandbox.members())["person@example.com"]
        assert m["status"] == ("unsubscribed" if action == "unsubscribe" else "cleaned")
        assert m["merge_fields"]["FNAME"] == "Renamed"  # data still follows the CRM

    async def test_local_reopt_in_after_unsubscribe_goes_pending(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        c = await crm.create(email="back@example.com")
        await drain(make_engine)
        await sandbox.act("unsubscribe", "back@example.com")
        await crm.patch(c["id"], first_name="Learns")  # the worker learns the status
        await drain(make_engine)
        await crm.patch(c["id"], newsletter_opt_in=False)
        await crm.patch(c["id"], newsletter_opt_in=True)  # a fresh, local re-opt-in
        await drain(make_engine)
        assert (await sandbox.members())["back@example.com"]["status"] == "pending"

    async def test_compliance_refusal_turns_local_consent_off(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        await sandbox.configure(fail_emails={"blocked@example.com": "compliance"})
        c = await crm.create(email="blocked@example.com")
        ok = await crm.create(email="fine@example.com")
        await drain(make_engine)
        got = await crm.get(c["id"])
        assert got["newsletter_opt_in"] is False
        assert got["sync"][0]["status"] == "rejected"
        assert got["sync"][0]["error_kind"] == "compliance"
        assert (await crm.get(ok["id"]))["sync"][0]["status"] == "synced"
        changes = await fetch(
            runtime,
            "SELECT source FROM contact_changes WHERE contact_id = :c ORDER BY id",
            c=c["id"],
        )
        assert [x["source"] for x in changes] == ["api", "provider"]
        assert await queue_empty(runtime)  # the consent change queues nothing back

    async def test_fake_email_is_rejected_once(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        c = await crm.create(email="someone@mailinator.com")
        await drain(make_engine)
        sync = (await crm.get(c["id"]))["sync"][0]
        assert sync["status"] == "rejected"
        assert sync["error_kind"] == "invalid_email"
        assert "looks fake" in sync["error"]
        assert await queue_empty(runtime)


class TestBatch:
    async def test_backlog_goes_through_the_batch_endpoint(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        for i in range(60):
            await crm.create(email=f"bulk{i}@example.com", first_name=f"B{i}", tags=["bulk"])
        await crm.create(email="bad@mailinator.com")
        await sandbox.clear_requests()
        await drain(make_engine, SYNC_BATCH_THRESHOLD=10)
        reqs = await sandbox.requests()
        assert [r["method"] for r in reqs] == ["POST"]
        assert reqs[0]["path"].endswith(f"/lists/{sandbox.list_id}")
        dump = await sandbox.members()
        assert all(dump[f"bulk{i}@example.com"]["status"] == "subscribed" for i in range(60))
        assert "bad@mailinator.com" not in dump
        rejected = await fetch(
            runtime, "SELECT error_kind FROM sync_state WHERE error_kind IS NOT NULL"
        )
        assert rejected == [{"error_kind": "invalid_email"}]

    async def test_coalescing_sends_the_latest_state_only(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        c = await crm.create(email="hot@example.com", first_name="v0")
        for i in range(1, 101):
            await crm.patch(c["id"], first_name=f"v{i}")
        await sandbox.clear_requests()
        await drain(make_engine)
        reqs = await sandbox.requests()
        assert len(reqs) <= 3
        assert (await sandbox.members())["hot@example.com"]["merge_fields"]["FNAME"] == "v100"


async def backlog(
    runtime: Runtime,
    connection: dict[str, Any],
    n: int,
    *,
    prefix: str,
    due_in: float = 0.0,
    step: float = 0.0,
    priority: int = 1,
) -> list[str]:
    """n consenting contacts queued at bulk priority, the i-th due `due_in + i·step` s from now."""
    rows = await fetch(
        runtime,
        """
        WITH c AS (
            INSERT INTO contacts (owner_id, email, email_key, first_name, newsletter_opt_in,
                                  newsletter_changed_at)
            SELECT :owner, :prefix || g || '@example.com', :prefix || g || '@example.com',
                   'B' || g, true, now()
            FROM generate_series(1, :n) AS g
            RETURNING id, email_key
        )
        INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id, priority,
                                available_at)
        SELECT :conn, :conn, c.email_key, c.id, :priority,
               now() + make_interval(secs => :due + :step * row_number() OVER (ORDER BY c.id))
        FROM c RETURNING email_key
        """,
        owner=OWNER,
        prefix=prefix,
        n=n,
        conn=connection["id"],
        due=due_in,
        step=step,
        priority=priority,
    )
    return [r["email_key"] for r in rows]


def singles(requests: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """The paths of single-member requests for any of `keys`."""
    hashes = {h(k) for k in keys}
    return [r["path"] for r in requests if r["path"].rsplit("/", 1)[-1] in hashes]


class TestBacklogStaysBulk:
    """A backlog goes by batch while live changes interleave with it; live changes go alone."""

    async def test_live_rows_do_not_leave_a_remainder_of_the_backlog_alone(
        self,
        crm: Api,
        sandbox: Sandbox,
        make_engine: Engine,
        runtime: Runtime,
        connection: dict[str, Any],
    ) -> None:
        keys = await backlog(runtime, connection, 300, prefix="bk")
        await crm.create(email="live@example.com")  # claimed first, beside the backlog
        await sandbox.clear_requests()
        await drain(make_engine, SYNC_CLAIM_SIZE=100)
        reqs = await sandbox.requests()
        assert singles(reqs, keys) == []
        batches = [r for r in reqs if r["method"] == "POST" and r["path"].endswith(sandbox.list_id)]
        assert len(batches) == 3  # 100 each, not 99 + 100 + 100 + 1 alone
        assert singles(reqs, ["live@example.com"])  # the live change went alone
        members = await sandbox.members()
        assert all(members[k]["status"] == "subscribed" for k in keys)
        assert await queue_empty(runtime)

    async def test_a_failed_batch_is_retried_by_batch_while_live_changes_go_alone(
        self,
        crm: Api,
        sandbox: Sandbox,
        make_engine: Engine,
        runtime: Runtime,
        connection: dict[str, Any],
    ) -> None:
        # The first batch meets an outage; its rows are retried about 1 s later. Spread by
        # their own jitter, the worker (woken by live changes) used to claim them a few at a
        # time, and groups under the threshold went one request a member.
        keys = await backlog(runtime, connection, 60, prefix="br")
        await sandbox.clear_requests()
        # The outage lasts until the first batch has met it (not a fixed time: on a loaded
        # machine the engine's first batch came after a short outage was over).
        await sandbox.configure(outage_seconds=60)
        engine = make_engine(SYNC_BACKOFF_BASE_SECONDS=1.0, SYNC_BACKOFF_MAX_SECONDS=2.0)
        task = asyncio.create_task(engine.run(grace_seconds=5))

        async def first_batch_failed() -> bool:
            return any(
                r["method"] == "POST" and r["path"].endswith(sandbox.list_id)
                for r in await sandbox.requests()
            )

        try:
            await wait_for(first_batch_failed, within=30)
            await sandbox.configure(outage_seconds=0)
            for i in range(8):
                await crm.create(email=f"live{i}@example.com")
                await asyncio.sleep(0.1)
            await wait_for(lambda: queue_empty(runtime), within=30)
        finally:
            engine.stop()
            await task
            await engine.aclose()
        reqs = await sandbox.requests()
        batches = [r for r in reqs if r["method"] == "POST" and r["path"].endswith(sandbox.list_id)]
        assert [r["status"] for r in batches][0] == 503  # the failure happened
        assert singles(reqs, keys) == []
        assert [r["status"] for r in batches][1:] == [200]  # all 60 again, in one batch
        members = await sandbox.members()
        assert all(members[k]["status"] == "subscribed" for k in keys)
        assert all(f"live{i}@example.com" in members for i in range(8))

    async def test_live_rows_claimed_do_not_wait_for_the_backlogs_claim(
        self,
        crm: Api,
        sandbox: Sandbox,
        make_engine: Engine,
        runtime: Runtime,
        connection: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Claimed in one transaction with the backlog's rows, a live change's group started
        # only once that claim (and its planning's turn on the loop) was done: P4's late
        # rounds. The backlog's claim here waits until the live change reached the sandbox.
        from app.sync.models import PRIORITY_BULK
        from app.sync.queue import QueueRepository

        await backlog(runtime, connection, 60, prefix="bc")
        await crm.create(email="live-first@example.com")
        await sandbox.clear_requests()
        claim = QueueRepository.claim
        seen: list[bool] = []

        async def slow_bulk_claim(self: QueueRepository, **kw: Any) -> Any:
            if kw.get("max_priority") == PRIORITY_BULK and not seen:
                for _ in range(50):  # at most 5 s
                    if singles(await sandbox.requests(), ["live-first@example.com"]):
                        break
                    await asyncio.sleep(0.1)
                seen.append(bool(singles(await sandbox.requests(), ["live-first@example.com"])))
            return await claim(self, **kw)

        monkeypatch.setattr(QueueRepository, "claim", slow_bulk_claim)
        await drain(make_engine)
        assert seen == [True]  # sent while the backlog's claim waited
        assert await queue_empty(runtime)

    async def test_live_changes_faster_than_singles_go_wait_for_a_batch(
        self, sandbox: Sandbox, make_engine: Engine, runtime: Runtime, connection: dict[str, Any]
    ) -> None:
        # A fan-out burst: live changes arrive far faster than the account takes them one by
        # one (10 in flight, 1 s each). Claimed as they came, every one went alone.
        await sandbox.configure(latency_ms=1000)
        await sandbox.clear_requests()
        engine = make_engine()
        task = asyncio.create_task(engine.run(grace_seconds=5))
        keys: list[str] = []
        try:
            for i in range(30):
                keys += await backlog(runtime, connection, 10, prefix=f"burst{i}-", priority=0)
                await asyncio.sleep(0.05)
            await wait_for(lambda: queue_empty(runtime), within=60)
        finally:
            engine.stop()
            await task
            await engine.aclose()
        reqs = await sandbox.requests()
        alone = singles(reqs, keys)
        batches = [r for r in reqs if r["method"] == "POST" and r["path"].endswith(sandbox.list_id)]
        assert batches, "the burst never went by batch"
        assert len(alone) < 100, len(alone)  # about a batch's worth, not all 300
        members = await sandbox.members()
        assert all(members[k]["status"] == "subscribed" for k in keys)


class TestCoalescingHold:
    async def test_a_just_sent_key_waits_a_quiet_one_goes_at_once(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        from app.sync import outbox

        c = await crm.create(email="hot2@example.com", first_name="a")
        await drain(make_engine)
        outbox.configure(30.0)
        try:
            await crm.patch(c["id"], first_name="b")
            await crm.create(email="quiet2@example.com")
            rows = await fetch(
                runtime,
                "SELECT email_key, available_at > now() AS held FROM sync_queue ORDER BY 1",
            )
            assert rows == [
                {"email_key": "hot2@example.com", "held": True},
                {"email_key": "quiet2@example.com", "held": False},
            ]
            await sandbox.clear_requests()
            await drain(make_engine)
            assert [r["path"].rsplit("/", 1)[-1] for r in await sandbox.requests()] == [
                h("quiet2@example.com")
            ]
            assert (await sandbox.members())["hot2@example.com"]["merge_fields"]["FNAME"] == "a"
        finally:
            outbox.configure(0.0)


class TestMirrorRefs:
    async def test_the_ids_we_set_survive_later_sends(
        self, crm: Api, sandbox: Sandbox, make_engine: Engine, runtime: Runtime
    ) -> None:
        c = await crm.create(email="refs@example.com", first_name="R", tags=["vip"])
        await drain(make_engine)
        (row,) = await fetch(runtime, "SELECT remote_id, remote_refs FROM sync_state")
        assert row["remote_id"] == h("refs@example.com")
        assert row["remote_refs"] == {}  # Mailchimp addresses tags by name: nothing to keep
        # What a provider with tag ids would have recorded stays through a tags-only send
        # and a field update (refs a send reports are merged over the known ones).
        async with runtime.engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(
                text("""UPDATE sync_state SET remote_refs = '{"tags": {"vip": "7"}}'""")
            )
        await crm.patch(c["id"], tags=["vip", "donor"])
        await drain(make_engine)
        await crm.patch(c["id"], first_name="Rita")
        await drain(make_engine)
        (row,) = await fetch(runtime, "SELECT remote_refs, pushed_tags FROM sync_state")
        assert row["remote_refs"] == {"tags": {"vip": "7"}}
        assert sorted(row["pushed_tags"]) == ["donor", "vip"]
        m = (await sandbox.members())["refs@example.com"]
        assert m["merge_fields"]["FNAME"] == "Rita"
