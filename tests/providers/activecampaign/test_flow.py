"""The flows a user meets with ActiveCampaign, end to end: the service and the sandbox over
real HTTP, real PostgreSQL, the worker draining the queue, the sandbox at its real 5/s."""

from __future__ import annotations

import asyncio
from typing import Any

from app.main import Runtime
from app.sandbox.activecampaign import DEFAULT_API_KEY
from tests.conftest import fetch
from tests.connections.conftest import drain as drain_once
from tests.connections.conftest import run_reconcile
from tests.providers.activecampaign.conftest import LIST, Ac, Service
from tests.support.sync import wait_for


async def drain(runtime: Runtime, settings: Any) -> None:
    """Run the worker until nothing is owed (a throttled row waits out its short defer)."""

    async def empty() -> bool:
        await drain_once(runtime, settings)
        rows = await fetch(runtime, "SELECT count(*) AS n FROM sync_queue WHERE state = 'ready'")
        return int(rows[0]["n"]) == 0

    await wait_for(empty, within=60, every=0.2)


async def webhook_registered(runtime: Runtime) -> bool:
    rows = await fetch(runtime, "SELECT webhook_id FROM connections")
    return bool(rows and rows[0]["webhook_id"])


async def connected(service: Service, ac: Ac, runtime: Runtime) -> dict[str, Any]:
    r = await service.connect(ac)
    assert r.status_code == 200, r.text
    await wait_for(lambda: webhook_registered(runtime), within=20)
    return dict(r.json())


async def person(ac: Ac, email: str) -> dict[str, Any]:
    found = await ac.person(email)
    assert found is not None, email
    return found


async def polite(ac: Ac, path: str, body: dict[str, Any]) -> Any:
    """A POST by another ActiveCampaign user, which waits out the account's 5/s like us."""
    for _ in range(20):
        r = await ac.api.post(path, json=body)
        if r.status_code != 429:
            assert r.status_code in (200, 201), r.text
            return r
        await asyncio.sleep(float(r.headers.get("retry-after", 1)))
    raise AssertionError("still throttled")


async def polite_put(ac: Ac, path: str, body: dict[str, Any]) -> Any:
    """A PUT by another ActiveCampaign user, which waits out the account's 5/s like us."""
    for _ in range(20):
        r = await ac.api.put(path, json=body)
        if r.status_code != 429:
            assert r.status_code == 200, r.text
            return r
        await asyncio.sleep(float(r.headers.get("retry-after", 1)))
    raise AssertionError("still throttled")


async def pulled(service: Service, runtime: Runtime) -> Any:
    """One pull of the connection, as the worker's schedule runs it."""
    from app.sync.engine import SyncEngine
    from app.sync.pull import pull_connection

    engine = SyncEngine(runtime.engine, service.settings)
    stop = asyncio.Event()
    slots = asyncio.create_task(engine.slots.run(stop))
    try:
        (conn,) = await fetch(runtime, "SELECT id FROM connections")
        return await pull_connection(engine, conn["id"])
    finally:
        stop.set()
        engine.slots.wake.set()
        await slots
        await engine.aclose()


def line(contact: dict[str, Any]) -> dict[str, Any]:
    (sync,) = [s for s in contact["sync"] if s["provider"] == "activecampaign"]
    return dict(sync)


class TestConnect:
    async def test_connect_checks_stores_encrypted_and_registers_the_webhook(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        body = await connected(service, ac, runtime)
        assert body["connected"] is True and body["audience"]["id"] == LIST
        assert DEFAULT_API_KEY not in str(body)
        rows = await fetch(runtime, "SELECT credentials::text AS c, account_key FROM connections")
        assert DEFAULT_API_KEY not in rows[0]["c"]
        hooks = (await ac.http.get("/_control/accounts")).json()["accounts"][0]["webhooks"]
        assert len(hooks) == 1 and hooks[0]["listid"] == LIST
        assert "api" not in hooks[0]["sources"]
        assert hooks[0]["url"].startswith(service.url + "/api/webhooks/activecampaign/")
        # The field map's custom fields were created on connect.
        fields = {f["perstag"] for f in (await ac.api.get("/fields")).json()["fields"]}
        assert {"DIETARY", "BADGE_NAME"} <= fields

    async def test_connect_at_the_real_five_a_second(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        # ping, lists, fields and three field creates (+ their fieldRels), then the webhook:
        # more than 5 in a second, paced by the shared limiter the API process's calls take
        # (so ActiveCampaign never has to answer 429), and everything is created.
        await ac.configure(rate_limit_per_second=5)
        await connected(service, ac, runtime)
        statuses = [r["status"] for r in await ac.requests()]
        assert len(statuses) > 5 and 429 not in statuses, statuses
        await ac.configure(rate_limit_per_second=10_000)  # our own check is not paced
        fields = {f["perstag"] for f in (await ac.api.get("/fields")).json()["fields"]}
        assert {"COMPANY", "DIETARY", "BADGE_NAME"} <= fields

    async def test_a_wrong_key_stores_nothing(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        r = await service.connect(ac, api_key="not-the-key-0000")
        assert r.status_code == 422, r.text
        assert await fetch(runtime, "SELECT id FROM connections") == []

    async def test_several_lists_need_a_choice(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        other = await ac.new_list("Second")
        r = await service.connect(ac)
        assert r.status_code == 200, r.text
        assert r.json()["audience"] is None
        chosen = await service.http.put(
            "/api/integrations/activecampaign/audience",
            json={"audience_id": other},
            headers=service.auth(),
        )
        assert chosen.status_code == 200, chosen.text


class TestFlow:
    async def test_contacts_fields_tags_unsubscribe_bounce_delete(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        await connected(service, ac, runtime)
        await ac.configure(rate_limit_per_second=5)
        await asyncio.sleep(1.1)  # the connect's own requests leave the sliding second
        await ac.http.delete("/_control/requests")
        ada = await service.create(
            email="ada@example.com",
            first_name="Ada",
            tags=["vip"],
            custom_fields={"dietary": "vegan;nut free", "badge_name": "Ada L."},
        )
        bob = await service.create(email="bob@example.com", first_name="Bob", company="Acme")
        await drain(runtime, service.settings)
        b = await person(ac, "bob@example.com")
        assert {v["perstag"]: v["value"] for v in b["fields"].values()} == {"COMPANY": "Acme"}
        p = await person(ac, "ada@example.com")
        assert p["lists"][LIST]["status"] == 1 and p["first_name"] == "Ada"
        values = {v["perstag"]: v["value"] for v in p["fields"].values()}
        assert values == {"DIETARY": "||vegan||nut free||", "BADGE_NAME": "Ada L."}
        assert set(p["tags"].values()) == {"vip"}
        assert line(await service.get(ada["id"]))["status"] == "synced"

        # A tag added at ActiveCampaign survives our updates, ours come and go.
        tag = (await polite(ac, "/tags", {"tag": {"tag": "speaker"}})).json()["tag"]
        await polite(ac, "/contactTags", {"contactTag": {"contact": p["id"], "tag": tag["id"]}})
        await service.patch(ada["id"], first_name="Ada B.", tags=["member"])
        await drain(runtime, service.settings)
        p = await person(ac, "ada@example.com")
        assert set(p["tags"].values()) == {"member", "speaker"}
        assert p["first_name"] == "Ada B."

        # Unsubscribe at ActiveCampaign reaches the contact; later edits never lift it.
        await ac.act("unsubscribe", "ada@example.com")

        async def opted_out() -> bool:
            return (await service.get(ada["id"]))["newsletter_opt_in"] is False

        await wait_for(opted_out, within=30)
        await service.patch(ada["id"], first_name="Ada C.")
        await drain(runtime, service.settings)
        await service.patch(ada["id"], newsletter_opt_in=True)
        await drain(runtime, service.settings)
        p = await person(ac, "ada@example.com")
        assert p["lists"][LIST]["status"] == 2 and p["lists"][LIST]["resubscribed"] == 0
        assert p["first_name"] == "Ada C."
        sync = line(await service.get(ada["id"]))
        assert sync["error"] and sync["error"].startswith("blocked")

        # A bounce reaches the contact's email status.
        await ac.act("bounce", "bob@example.com")

        async def bounced() -> bool:
            return (await service.get(bob["id"]))["email_status"] == "bounced"

        await wait_for(bounced, within=30)
        await service.patch(bob["id"], first_name="Robert")
        await drain(runtime, service.settings)
        p = await person(ac, "bob@example.com")
        assert p["lists"][LIST]["status"] == 3 and p["lists"][LIST]["resubscribed"] == 0

        # Delete: a contact we created, on no other list, goes.
        r = await service.http.delete(f"/api/contacts/{bob['id']}", headers=service.auth())
        assert r.status_code == 204
        await drain(runtime, service.settings)
        assert await ac.person("bob@example.com") is None
        # Never more than 5 requests a second from us: our only 429s are the ones the other
        # user's requests (above) caused.
        ours = [x for x in await ac.requests() if x["status"] == 429]
        assert len(ours) <= 2

    async def test_signup_creates_a_lead_and_email_change_moves(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        await connected(service, ac, runtime)
        await ac.act("signup", "new@example.com", first_name="Nia")

        async def lead() -> bool:
            rows = await fetch(runtime, "SELECT kind, referral FROM contacts")
            return bool(rows) and rows[0]["kind"] == "lead"

        await wait_for(lead, within=30)
        rows = await fetch(runtime, "SELECT referral, first_name FROM contacts")
        assert rows[0]["referral"] == "activecampaign" and rows[0]["first_name"] == "Nia"

        moved = await service.create(email="old@example.com")
        await drain(runtime, service.settings)
        before = await person(ac, "old@example.com")
        await service.patch(moved["id"], email="renamed@example.com")
        await drain(runtime, service.settings)
        after = await person(ac, "renamed@example.com")
        assert after["id"] == before["id"] and await ac.person("old@example.com") is None

    async def test_an_event_is_matched_by_the_persons_id_where_the_address_misses(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        await connected(service, ac, runtime)
        ada = await service.create(email="ada@example.com", first_name="Ada")
        await drain(runtime, service.settings)
        p = await person(ac, "ada@example.com")
        # Another integration renames the person at ActiveCampaign through the API (a
        # source our webhook does not listen to): nothing tells us of the new address.
        await polite_put(ac, f"/contacts/{p['id']}", {"contact": {"email": "zed@example.com"}})
        # The person unsubscribes under the new address, which no contact of ours has: the
        # delivery's contact[id] is the one the mirror holds for Ada.
        await ac.act("unsubscribe", "zed@example.com")

        async def processed() -> bool:
            rows = await fetch(
                runtime,
                "SELECT outcome FROM webhook_events WHERE event_type = 'unsubscribe'"
                " AND processed_at IS NOT NULL",
            )
            return bool(rows)

        await wait_for(processed, within=30)
        [event] = await fetch(
            runtime, "SELECT outcome FROM webhook_events WHERE event_type = 'unsubscribe'"
        )
        assert event["outcome"] == "applied"
        assert (await service.get(ada["id"]))["newsletter_opt_in"] is False

    async def test_sync_now_adopts_imports_opt_outs_and_disconnect_keeps_contacts(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        # People at ActiveCampaign before we connect: one matching, one who unsubscribed.
        for email in ("same@example.com", "gone@example.com"):
            await ac.act("signup", email, first_name="Same")
        await ac.act("unsubscribe", "gone@example.com")
        await service.create(email="same@example.com", first_name="Same")
        await service.create(email="gone@example.com", first_name="Same")
        await connected(service, ac, runtime)
        r = await service.http.post("/api/integrations/activecampaign/sync", headers=service.auth())
        assert r.status_code in (200, 202), r.text
        await ac.http.delete("/_control/requests")
        await run_reconcile(runtime, service.settings)
        await drain(runtime, service.settings)
        # The matching person is adopted and the opted-out one imported: no write at all.
        writes = [r for r in await ac.requests() if r["method"] != "GET"]
        assert [r["path"] for r in writes if "webhooks" not in r["path"]] == []
        rows = await fetch(runtime, "SELECT email, newsletter_opt_in FROM contacts ORDER BY email")
        assert [(r["email"], r["newsletter_opt_in"]) for r in rows] == [
            ("gone@example.com", False),
            ("same@example.com", True),
        ]
        p = await person(ac, "gone@example.com")
        assert p["lists"][LIST]["status"] == 2 and p["lists"][LIST]["resubscribed"] == 0

        gone = await service.http.delete("/api/integrations/activecampaign", headers=service.auth())
        assert gone.status_code == 204
        hooks = (await ac.http.get("/_control/accounts")).json()["accounts"][0]["webhooks"]
        assert hooks == []
        assert len(await ac.dump()) == 2  # the contacts stay at ActiveCampaign
        again = await service.connect(ac)
        assert again.status_code == 200

    async def test_people_a_backlog_imported_are_found_by_address_later(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        # A backlog's import does not read back the records it created: their mirror rows
        # hold no id, and every later change, delete and event finds them by address.
        from app.sync.models import PRIORITY_BULK

        await connected(service, ac, runtime)
        made = [
            await service.create(email=f"bk{i}@example.com", first_name="B", tags=["vip"])
            for i in range(60)
        ]
        await fetch(runtime, "UPDATE sync_queue SET priority = :p", p=PRIORITY_BULK)
        await drain(runtime, service.settings)
        rows = await fetch(runtime, "SELECT remote_id, remote_refs FROM sync_state")
        assert len(rows) == 60 and {r["remote_id"] for r in rows} == {""}
        assert all(r["remote_refs"]["created"] for r in rows)
        assert len(await ac.dump()) == 60

        await service.patch(made[0]["id"], first_name="Later")
        await service.patch(made[1]["id"], tags=[])
        r = await service.http.delete(f"/api/contacts/{made[2]['id']}", headers=service.auth())
        assert r.status_code == 204
        await drain(runtime, service.settings)
        p = await person(ac, "bk0@example.com")
        assert p["first_name"] == "Later" and p["lists"][LIST]["status"] == 1
        [row] = await fetch(
            runtime, "SELECT remote_id FROM sync_state WHERE email_key = 'bk0@example.com'"
        )
        assert row["remote_id"] == str(p["id"])  # learnt from the update
        assert (await person(ac, "bk1@example.com"))["tags"] == {}  # our tag, removed
        assert await ac.person("bk2@example.com") is None  # ours, on no other list: deleted

        await ac.act("unsubscribe", "bk3@example.com")  # the mirror holds no id for them

        async def opted_out() -> bool:
            return (await service.get(made[3]["id"]))["newsletter_opt_in"] is False

        await wait_for(opted_out, within=30)
        assert len(await ac.dump()) == 59

    async def test_the_pull_gives_imported_rows_their_ids_so_an_email_change_there_follows(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        # Until the pull lists them, rows an import made hold no id, and a change of address
        # at ActiveCampaign (an event naming the person by id) would find nobody.
        from app.sync.models import PRIORITY_BULK

        await connected(service, ac, runtime)
        made = [await service.create(email=f"im{i}@example.com") for i in range(60)]
        await fetch(runtime, "UPDATE sync_queue SET priority = :p", p=PRIORITY_BULK)
        await drain(runtime, service.settings)
        assert {
            r["remote_id"] for r in await fetch(runtime, "SELECT remote_id FROM sync_state")
        } == {""}
        await pulled(service, runtime)
        for i in range(3):
            p = await person(ac, f"im{i}@example.com")
            [row] = await fetch(
                runtime,
                "SELECT remote_id FROM sync_state WHERE email_key = :k",
                k=f"im{i}@example.com",
            )
            assert row["remote_id"] == str(p["id"])
        await ac.act("profile", "im0@example.com", new_email="moved@example.com")

        async def moved() -> bool:
            return (await service.get(made[0]["id"]))["email"] == "moved@example.com"

        await wait_for(moved, within=30)
        await drain(runtime, service.settings)
        assert await ac.person("im0@example.com") is None  # no second contact for the old address
        assert len(await ac.dump()) == 60


class TestPullAndTenants:
    async def test_the_pull_brings_what_a_lost_delivery_missed(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        await connected(service, ac, runtime)
        ada = await service.create(email="ada@example.com")
        bob = await service.create(email="bob@example.com")
        await drain(runtime, service.settings)
        # Our receiver is gone (the hook deleted): ActiveCampaign never retries a delivery.
        for hook in (await ac.api.get("/webhooks")).json()["webhooks"]:
            await ac.api.delete(f"/webhooks/{hook['id']}")
        await ac.act("unsubscribe", "ada@example.com")
        await ac.act("bounce", "bob@example.com")
        assert (await service.get(ada["id"]))["newsletter_opt_in"] is True
        result = await pulled(service, runtime)
        assert result is not None and result.outcomes["applied"] == 2
        assert (await service.get(ada["id"]))["newsletter_opt_in"] is False
        assert (await service.get(bob["id"]))["email_status"] == "bounced"
        writes = [r for r in await ac.requests() if r["method"] != "GET"]
        assert not [r for r in writes if r["path"].endswith("/contactLists")][2:]

    async def test_two_owners_two_accounts_never_mix(
        self, service: Service, ac: Ac, runtime: Runtime
    ) -> None:
        created = await ac.http.post(
            "/_control/accounts", json={"id": "other", "api_key": "other0key" + "1" * 55}
        )
        assert created.status_code == 201, created.text
        other_key = created.json()["api_key"]
        other_list = created.json()["lists"][0]["id"]
        await connected(service, ac, runtime)
        r = await service.connect(ac, owner="owner-b", api_key=other_key)
        assert r.status_code == 200, r.text
        await service.create(email="a@example.com")
        await service.create(owner="owner-b", email="b@example.com")
        await drain(runtime, service.settings)
        assert [p["email"] for p in await ac.dump()] == ["a@example.com"]
        assert [p["email"] for p in await ac.dump(other_list)] == ["b@example.com"]
        keys = await fetch(runtime, "SELECT DISTINCT account_key FROM connections")
        assert len(keys) == 1  # one account URL: the 5/s is the account's, shared


async def test_an_unsubscribe_at_activecampaign_reaches_mailchimp_too(
    settings: Any, runtime: Runtime, auth: Any, ac: Ac
) -> None:
    """One owner, two providers: the person's opt-out at one is the CRM's, sent to the other."""
    import httpx as _httpx

    from app.sandbox.mailchimp import DEFAULT_API_KEY as MC_KEY
    from app.sandbox.mailchimp import DEFAULT_LIST_ID as MC_LIST
    from app.sandbox.mailchimp import create_app as mailchimp_app
    from tests.providers.activecampaign.conftest import serving
    from tests.support.servers import run_server

    async with (
        run_server(mailchimp_app(), lifespan="off") as mc_url,
        _httpx.AsyncClient(base_url=mc_url, timeout=10) as mc,
        serving(settings, runtime, auth, ac, MAILCHIMP_SANDBOX_URL=mc_url) as service,
    ):
        await connected(service, ac, runtime)
        r = await service.http.post(
            "/api/integrations/mailchimp/credentials",
            json={"api_key": MC_KEY},
            headers=service.auth(),
        )
        assert r.status_code == 200, r.text
        ada = await service.create(email="ada@example.com", first_name="Ada")
        await drain(runtime, service.settings)

        async def mc_status() -> str:
            body = (await mc.get(f"/_control/lists/{MC_LIST}/members")).json()
            return str(body["members"][0]["status"]) if body["members"] else "absent"

        assert await mc_status() == "subscribed"
        await ac.act("unsubscribe", "ada@example.com")

        async def opted_out() -> bool:
            return (await service.get(ada["id"]))["newsletter_opt_in"] is False

        await wait_for(opted_out, within=30)
        await drain(runtime, service.settings)
        assert await mc_status() == "unsubscribed"
        p = await person(ac, "ada@example.com")
        assert p["lists"][LIST]["status"] == 2  # and nothing echoed back to ActiveCampaign
