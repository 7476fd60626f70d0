"""Constant Contact end to end: the service, the worker and the sandbox over real HTTP and a
real PostgreSQL (the OAuth popup with PKCE, contacts on the list, the pull, rotating refresh
tokens under several workers, the quota shared by tenants and its midnight pause)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from app.config import Settings
from app.connections.crypto import decrypt_credentials, encrypt_credentials
from app.connections.tokens import StoredTokens
from app.db import make_sessionmaker
from app.main import Runtime
from app.providers import registry
from app.sandbox.constantcontact import (
    DEFAULT_LIST_ID,
    LONG_LIVED_CLIENT_ID,
    LONG_LIVED_CLIENT_SECRET,
    PKCE_CLIENT_ID,
    ROTATING_CLIENT_ID,
    ROTATING_CLIENT_SECRET,
    SandboxConfig,
    create_app,
)
from app.sync.engine import SyncEngine
from app.sync.pull import pull_connection
from tests.conftest import fetch
from tests.connections.conftest import OTHER, OWNER, Service, authorize, drain, run_reconcile
from tests.sandbox.constantcontact.conftest import Sandbox as CCSandbox
from tests.support.servers import run_server

PID = "constantcontact"
QUOTA_NOTICE = "Constant Contact's daily limit is reached; sync resumes at midnight UTC"


@pytest.fixture
async def cc() -> AsyncIterator[CCSandbox]:
    """A Constant Contact sandbox on a real port (its own rate lifted: ours holds 4/s)."""
    app = create_app(SandboxConfig(rate_per_second=1000, activity_duration_ms=20))
    async with run_server(app, lifespan="off") as base, httpx.AsyncClient(base_url=base) as http:
        yield CCSandbox(base, app, http)


@pytest.fixture
async def ccservice(serve: Callable[..., Any], cc: CCSandbox) -> AsyncIterator[Service]:
    async with serve(
        CONSTANTCONTACT_SANDBOX_URL=cc.base,
        CONSTANTCONTACT_CLIENT_ID=ROTATING_CLIENT_ID,
        CONSTANTCONTACT_CLIENT_SECRET=SecretStr(ROTATING_CLIENT_SECRET),
        CONSTANTCONTACT_TIMEOUT_SECONDS=5.0,
    ) as svc:
        yield svc


async def connect(svc: Service, owner: str = OWNER, account_id: str | None = None) -> str:
    """The popup: POST …/connect, the sandbox's Allow (auto=1), the callback page."""
    r = await svc.http.post(f"/api/integrations/{PID}/connect", headers=svc.auth(owner))
    assert r.status_code == 200, r.text
    url = str(r.json()["authorize_url"])
    if account_id:
        url += f"&account_id={account_id}"
    page = await svc.http.get(await authorize(url))
    assert page.status_code == 200, page.text
    return url


async def status(svc: Service, owner: str = OWNER) -> dict[str, Any]:
    r = await svc.http.get(f"/api/integrations/{PID}", headers=svc.auth(owner))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def add_contact(svc: Service, email: str, owner: str = OWNER, **fields: Any) -> str:
    body = {"email": email, "newsletter_opt_in": True, **fields}
    r = await svc.http.post("/api/contacts", json=body, headers=svc.auth(owner))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def connection(runtime: Runtime, owner: str = OWNER) -> dict[str, Any]:
    (row,) = await fetch(
        runtime, "SELECT * FROM connections WHERE owner_id = :o AND provider = :p", o=owner, p=PID
    )
    return row


async def contact(runtime: Runtime, email: str) -> dict[str, Any]:
    (row,) = await fetch(runtime, "SELECT * FROM contacts WHERE email = :e", e=email)
    return row


async def pull(runtime: Runtime, settings: Settings, connection_id: Any) -> Any:
    """One scheduled pull of the connection now (the engine's slot loop running)."""
    return await with_engine(runtime, settings, lambda e: pull_connection(e, connection_id))


async def with_engine(runtime: Runtime, settings: Settings, job: Callable[[Any], Any]) -> Any:
    """Run `job(engine)` with the engine's slot loop running (requests need slots)."""
    engine = SyncEngine(runtime.engine, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.slots.run(stop))
    try:
        return await job(engine)
    finally:
        stop.set()
        engine.slots.wake.set()
        await task
        await engine.aclose()


class TestConnect:
    async def test_the_popup_with_pkce_connects_the_account(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        r = await ccservice.http.post(f"/api/integrations/{PID}/connect", headers=ccservice.auth())
        url = str(r.json()["authorize_url"])
        query = parse_qs(urlsplit(url).query)
        assert url.startswith(f"{cc.base}/oauth2/default/v1/authorize?")
        assert query["client_id"] == [ROTATING_CLIENT_ID]
        assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
        assert set(query["scope"][0].split()) == {"account_read", "contact_data", "offline_access"}
        assert query["redirect_uri"] == [f"{ccservice.url}/api/integrations/{PID}/callback"]
        callback = await authorize(url)
        page = await ccservice.http.get(callback)
        assert page.status_code == 200, page.text
        assert "postMessage(outcome, origins[i])" in page.text
        # The code is single-use and so is the state.
        assert (await ccservice.http.get(callback)).status_code == 400

        line = await status(ccservice)
        assert line["connected"] and line["status"] == "active" and line["notice"] is None
        assert line["account_name"] == "Sandbox Org"
        assert line["audience"] == {"id": DEFAULT_LIST_ID, "name": "General Interest"}
        row = await connection(runtime)
        assert row["account_key"] == "constantcontact:account:p07e1l8cdif9dl"
        assert row["api_endpoint"] == f"{cc.base}/v3"
        creds = decrypt_credentials(ccservice.settings, row["credentials"])
        assert creds["refresh_token"] and creds["access_token"]
        assert "refresh_token" not in row["credentials"]  # encrypted at rest
        grants = (await cc.http.get("/_control/tokens")).json()
        assert len(grants["grants"]) == 1

        listing = await ccservice.http.get("/api/integrations", headers=ccservice.auth())
        entry = next(e for e in listing.json()["items"] if e["provider"] == PID)
        assert entry["available"] is True and entry["connected"] is True
        assert [m["kind"] for m in entry["connect"]] == ["oauth"]

    async def test_several_lists_ask_which_one(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        made = await cc.http.post(
            "/_control/accounts/p07e1l8cdif9dl/lists", json={"name": "Newsletter"}
        )
        other = made.json()["list_id"]
        await connect(ccservice)
        line = await status(ccservice)
        assert line["status"] == "needs_audience" and line["audience"] is None
        assert line["notice"] == "Choose the Constant Contact contact list to sync to."
        listed = await ccservice.http.get(
            f"/api/integrations/{PID}/audiences", headers=ccservice.auth()
        )
        assert listed.status_code == 200, listed.text
        r = await ccservice.http.put(
            f"/api/integrations/{PID}/audience",
            json={"audience_id": other},
            headers=ccservice.auth(),
        )
        assert r.status_code == 200, r.text
        assert (await status(ccservice))["audience"] == {"id": other, "name": "Newsletter"}
        await add_contact(ccservice, "nl@example.com")
        await drain(runtime, ccservice.settings)
        assert (await cc.dump())["nl@example.com"]["list_memberships"] == [other]

    async def test_a_denied_popup_connects_nothing(
        self, ccservice: Service, runtime: Runtime
    ) -> None:
        r = await ccservice.http.post(f"/api/integrations/{PID}/connect", headers=ccservice.auth())
        callback = await authorize(str(r.json()["authorize_url"]), decision="deny")
        page = await ccservice.http.get(callback)
        assert page.status_code == 400
        assert "declined" in page.text
        assert await fetch(runtime, "SELECT id FROM connections") == []


@pytest.mark.parametrize(
    ("knob", "pkce", "client"),
    [
        ("allowed", True, "rotating"),
        ("required", True, "rotating"),
        ("forbidden", False, "rotating"),
        ("allowed", True, "long_lived"),
        ("allowed", True, "public"),
    ],
)
async def test_the_popup_under_every_pkce_rule_and_app_kind(
    serve: Callable[..., Any],
    cc: CCSandbox,
    runtime: Runtime,
    knob: str,
    pkce: bool,
    client: str,
) -> None:
    """PKCE on a confidential app is unverified (reference §0.3): CONSTANTCONTACT_PKCE follows
    the app; a public PKCE app has no secret; long-lived apps hand the same refresh token."""
    await cc.configure(pkce_on_confidential=knob, id_token="always")
    ids = {
        "rotating": (ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET),
        "long_lived": (LONG_LIVED_CLIENT_ID, LONG_LIVED_CLIENT_SECRET),
        "public": (PKCE_CLIENT_ID, ""),
    }[client]
    async with serve(
        CONSTANTCONTACT_SANDBOX_URL=cc.base,
        CONSTANTCONTACT_CLIENT_ID=ids[0],
        CONSTANTCONTACT_CLIENT_SECRET=SecretStr(ids[1]),
        CONSTANTCONTACT_PKCE=pkce,
    ) as svc:
        url = await connect(svc)
        assert ("code_challenge=" in url) is (pkce or client == "public")
        assert (await status(svc))["status"] == "active"
        row = await connection(runtime)
        creds = decrypt_credentials(svc.settings, row["credentials"])
        creds["expires_at"] = 0
        await fetch(
            runtime,
            "UPDATE connections SET credentials = :c WHERE id = :id",
            c=encrypt_credentials(svc.settings, creds),
            id=row["id"],
        )
        await add_contact(svc, "pk@example.com")
        await drain(runtime, svc.settings)  # renews first, then sends
        assert "pk@example.com" in await cc.dump()
        renewed = decrypt_credentials(svc.settings, (await connection(runtime))["credentials"])
        assert renewed["access_token"] != creds["access_token"]
        same = renewed["refresh_token"] == creds["refresh_token"]
        assert same is (client == "long_lived")


class TestSync:
    async def test_contacts_appear_unsubscribes_come_back_and_are_never_reversed(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        await add_contact(ccservice, "ann@example.com", first_name="Ann", tags=["vip"])
        await add_contact(ccservice, "bo@example.com", first_name="Bo")
        await drain(runtime, ccservice.settings)
        people = await cc.dump()
        assert people["ann@example.com"]["list_memberships"] == [DEFAULT_LIST_ID]
        assert people["ann@example.com"]["first_name"] == "Ann"
        assert people["ann@example.com"]["email_address"]["permission_to_send"] == "explicit"
        assert len(people["ann@example.com"]["taggings"]) == 1
        assert not any(
            "sign_up_form" in r["path"]
            for r in (await cc.http.get("/_control/requests")).json()["requests"]
        )

        # SafeUnsubscribe at Constant Contact reaches the contact by the scheduled pull.
        assert (await cc.act("ann@example.com", "unsubscribe")).status_code == 200
        row = await connection(runtime)
        result = await pull(runtime, ccservice.settings, row["id"])
        assert result is not None and result.outcomes["applied"] == 1
        ann = await contact(runtime, "ann@example.com")
        assert ann["newsletter_opt_in"] is False
        # A later edit goes out, and never re-subscribes her.
        r = await ccservice.http.patch(
            f"/api/contacts/{ann['id']}", json={"first_name": "Annie"}, headers=ccservice.auth()
        )
        assert r.status_code == 200, r.text
        await drain(runtime, ccservice.settings)
        stored = (await cc.dump())["ann@example.com"]
        assert stored["first_name"] == "Annie"
        assert stored["email_address"]["permission_to_send"] == "unsubscribed"

        # A person's own form signup into our list becomes a lead; an address change moves.
        await cc.act("new@example.com", "signup", first_name="Nia")
        await cc.act("bo@example.com", "change_email", new_email="bo2@example.com")
        await fetch(runtime, "UPDATE connections SET last_pull_at = now() - interval '1 hour'")
        await pull(runtime, ccservice.settings, row["id"])
        lead = await contact(runtime, "new@example.com")
        assert lead["kind"] == "lead" and lead["referral"] == PID
        assert lead["first_name"] == "Nia" and lead["newsletter_opt_in"] is True
        moved = await fetch(runtime, "SELECT email FROM contacts WHERE first_name = 'Bo'")
        assert moved == [{"email": "bo2@example.com"}]

    async def test_another_persons_unsubscribe_under_the_contacts_old_address_is_not_its(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        ada = await add_contact(ccservice, "ada@example.com", first_name="Ada")
        await drain(runtime, ccservice.settings)
        # At Constant Contact Ada's person takes a new address; someone else then signs up
        # under her old one and unsubscribes. The pull reads the opt-outs first: that one
        # names the old address, which the mirror holds for Ada's person, not theirs.
        await cc.act("ada@example.com", "change_email", new_email="zed@example.com")
        await cc.act("ada@example.com", "signup", first_name="Someone")
        assert (await cc.act("ada@example.com", "unsubscribe")).status_code == 200
        row = await connection(runtime)
        await fetch(runtime, "UPDATE connections SET last_pull_at = now() - interval '1 hour'")
        result = await pull(runtime, ccservice.settings, row["id"])
        assert result is not None
        (mine,) = await fetch(
            runtime, "SELECT email, newsletter_opt_in FROM contacts WHERE id = :id", id=ada
        )
        # Ada moved with her person, and the other person's unsubscribe was not hers.
        assert mine == {"email": "zed@example.com", "newsletter_opt_in": True}
        assert result.outcomes["ignored"] == 1, result.outcomes

    async def test_a_backlog_goes_by_import_and_later_edits_find_the_contacts(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        for i in range(60):
            await add_contact(ccservice, f"bulk{i}@example.com", first_name=f"B{i}")
        await cc.http.delete("/_control/requests")
        await drain(runtime, ccservice.settings)
        log = [
            f"{r['method']} {r['path']}"
            for r in (await cc.http.get("/_control/requests")).json()["requests"]
        ]
        assert log.count("POST /v3/activities/contacts_json_import") >= 1
        assert len(log) <= 10, log  # 60 people in a handful of requests, not 120
        people = await cc.dump()
        assert all(
            DEFAULT_LIST_ID in people[f"bulk{i}@example.com"]["list_memberships"] for i in range(60)
        )
        # An edit of one of them later: the contact is found (its id learnt) and updated.
        bulk = await contact(runtime, "bulk7@example.com")
        r = await ccservice.http.patch(
            f"/api/contacts/{bulk['id']}", json={"last_name": "Later"}, headers=ccservice.auth()
        )
        assert r.status_code == 200, r.text
        await drain(runtime, ccservice.settings)
        stored = (await cc.dump())["bulk7@example.com"]
        assert stored["last_name"] == "Later" and stored["first_name"] == "B7"
        (mirror,) = await fetch(
            runtime, "SELECT remote_id FROM sync_state WHERE email_key = 'bulk7@example.com'"
        )
        assert mirror["remote_id"] == stored["contact_id"]

    async def test_re_opt_in_email_change_delete_and_a_tag_of_theirs(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        cid = await add_contact(ccservice, "re@example.com", tags=["ours"])
        mid = await add_contact(ccservice, "mv@example.com")
        did = await add_contact(ccservice, "del@example.com")
        await drain(runtime, ccservice.settings)
        # A tag set at Constant Contact survives our later edits.
        api = await cc.api()
        async with api:
            theirs = (await api.post("/contact_tags", json={"name": "theirs"})).json()["tag_id"]
            person = (await cc.dump())["re@example.com"]
            got = (
                await api.get(f"/contacts/{person['contact_id']}", params={"include": "taggings"})
            ).json()
            body = {k: v for k, v in got.items() if k not in ("contact_id", "created_at")}
            body |= {"update_source": "Account", "taggings": [*got["taggings"], theirs]}
            assert (
                await api.put(f"/contacts/{person['contact_id']}", json=body)
            ).status_code == 200
        # The person unsubscribes there; the pull brings it; the CRM re-opts in later.
        await cc.act("re@example.com", "unsubscribe")
        await pull(runtime, ccservice.settings, (await connection(runtime))["id"])
        assert (await contact(runtime, "re@example.com"))["newsletter_opt_in"] is False
        await asyncio.sleep(1.1)  # the re-opt-in is surely after the unsubscribe (1 s stamps)
        r = await ccservice.http.patch(
            f"/api/contacts/{cid}",
            json={"newsletter_opt_in": True, "tags": []},
            headers=ccservice.auth(),
        )
        assert r.status_code == 200, r.text
        # A local address change and a delete.
        r = await ccservice.http.patch(
            f"/api/contacts/{mid}", json={"email": "moved@example.com"}, headers=ccservice.auth()
        )
        assert r.status_code == 200, r.text
        r = await ccservice.http.delete(f"/api/contacts/{did}", headers=ccservice.auth())
        assert r.status_code in (200, 204), r.text
        await drain(runtime, ccservice.settings)
        await drain(runtime, ccservice.settings)
        people = await cc.dump()
        emails = (await cc.http.get("/_control/emails")).json()["emails"]
        assert [e["kind"] for e in emails] == ["resubscribe"]  # once
        again = people["re@example.com"]
        assert again["email_address"]["permission_to_send"] in (
            "pending_confirmation",
            "unsubscribed",
        )
        assert again["taggings"] == [theirs]  # ours removed, theirs kept
        assert "mv@example.com" not in people
        assert people["moved@example.com"]["list_memberships"] == [DEFAULT_LIST_ID]
        gone = people["del@example.com"]
        assert DEFAULT_LIST_ID not in gone["list_memberships"]  # off our list, not unsubscribed
        assert gone["email_address"]["permission_to_send"] == "explicit"

    async def test_sync_now_and_disconnect(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        for i in range(3):
            await add_contact(ccservice, f"s{i}@example.com")
        await connect(ccservice)
        await run_reconcile(runtime, ccservice.settings)
        await drain(runtime, ccservice.settings)
        assert {f"s{i}@example.com" for i in range(3)} <= set(await cc.dump())
        r = await ccservice.http.post(f"/api/integrations/{PID}/sync", headers=ccservice.auth())
        assert r.status_code in (200, 202), r.text
        await run_reconcile(runtime, ccservice.settings)
        gone = await ccservice.http.delete(f"/api/integrations/{PID}", headers=ccservice.auth())
        assert gone.status_code == 204
        assert await fetch(runtime, "SELECT id FROM connections") == []
        people = await cc.dump()  # the contacts stay at Constant Contact
        assert all(
            DEFAULT_LIST_ID in people[f"s{i}@example.com"]["list_memberships"] for i in range(3)
        )


class TestTokens:
    async def _expire(self, runtime: Runtime, settings: Settings) -> dict[str, Any]:
        row = await connection(runtime)
        creds = decrypt_credentials(settings, row["credentials"])
        creds["expires_at"] = 0  # due for renewal now
        await fetch(
            runtime,
            "UPDATE connections SET credentials = :c WHERE id = :id",
            c=encrypt_credentials(settings, creds),
            id=row["id"],
        )
        return creds

    async def test_four_workers_renewing_at_once_spend_the_refresh_token_once(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        creds = await self._expire(runtime, ccservice.settings)
        row = await connection(runtime)
        provider = registry.get(PID)
        maker = make_sessionmaker(runtime.engine)
        workers = [
            StoredTokens(maker, ccservice.settings, provider, row["id"], initial=creds)
            for _ in range(4)
        ]
        tokens = await asyncio.gather(*(w.access_token() for w in workers))
        assert len(set(tokens)) == 1 and tokens[0] != creds["access_token"]
        # One refresh at the authorization server: the grant's chain has two tokens.
        (grant,) = (await cc.http.get("/_control/tokens")).json()["grants"]
        assert len(grant["chain"]) == 2 and not grant["revoked"]
        stored = decrypt_credentials(ccservice.settings, (await connection(runtime))["credentials"])
        assert stored["access_token"] == tokens[0]
        assert stored["refresh_token"] != creds["refresh_token"]  # rotated, and committed
        assert (await connection(runtime))["status"] == "active"
        # The old refresh token is spent: reusing it is the exact invalid_grant.
        reuse = await cc.http.post(
            "/oauth2/default/v1/token",
            data={"grant_type": "refresh_token", "refresh_token": creds["refresh_token"]},
            auth=(ROTATING_CLIENT_ID, ROTATING_CLIENT_SECRET),
        )
        assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"

    @pytest.mark.parametrize("revoke", [False, True])
    async def test_tokens_expiring_every_few_seconds_under_several_workers(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime, revoke: bool
    ) -> None:
        # Whether a refresh revokes the old access tokens is unverified: both ways hold.
        await cc.configure(access_token_ttl_seconds=3, revoke_access_on_refresh=revoke)
        await connect(ccservice)
        for i in range(6):
            await add_contact(ccservice, f"t{i}@example.com")
        # Three workers drain at once while tokens keep expiring (renewed a fifth ahead).
        await asyncio.gather(*(drain(runtime, ccservice.settings) for _ in range(3)))
        await asyncio.sleep(3)
        await add_contact(ccservice, "late@example.com")
        await asyncio.gather(*(drain(runtime, ccservice.settings) for _ in range(2)))
        assert (await connection(runtime))["status"] == "active"
        people = await cc.dump()
        assert {f"t{i}@example.com" for i in range(6)} | {"late@example.com"} <= set(people)
        # Renewed several times, never with a spent refresh token (that revokes nothing here,
        # but the connection would be in error: invalid_grant is final).
        (grant,) = (await cc.http.get("/_control/tokens")).json()["grants"]
        assert len(grant["chain"]) >= 2 and not grant["revoked"]

    async def test_invalid_grant_asks_for_a_reconnect(
        self, ccservice: Service, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        creds = await self._expire(runtime, ccservice.settings)
        creds["refresh_token"] = "spent-refresh-token"
        row = await connection(runtime)
        await fetch(
            runtime,
            "UPDATE connections SET credentials = :c WHERE id = :id",
            c=encrypt_credentials(ccservice.settings, creds),
            id=row["id"],
        )
        await add_contact(ccservice, "x@example.com")
        await drain(runtime, ccservice.settings)
        line = await status(ccservice)
        assert line["status"] == "error"
        assert line["notice"].startswith("Reconnect Constant Contact")
        assert (await fetch(runtime, "SELECT count(*) AS n FROM sync_queue"))[0]["n"] == 1


class TestQuota:
    async def test_two_tenants_share_the_application_and_four_a_second(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        other = (await cc.http.post("/_control/accounts", json={"organization_name": "B"})).json()
        await connect(ccservice, OWNER)
        await connect(ccservice, OTHER, account_id=other["encoded_account_id"])
        for i in range(5):
            await add_contact(ccservice, f"a{i}@example.com", OWNER)
            await add_contact(ccservice, f"b{i}@example.com", OTHER)
        await cc.http.delete("/_control/requests")
        await asyncio.gather(*(drain(runtime, ccservice.settings) for _ in range(2)))
        log = [
            r
            for r in (await cc.http.get("/_control/requests")).json()["requests"]
            if r["path"].startswith("/v3/")
        ]
        accounts = [r["account"] for r in log]
        assert len(set(accounts)) == 2
        # Both tenants are served from the start, not one after the other.
        first = accounts[: len(accounts) // 2]
        assert len(set(first)) == 2
        starts = sorted(float(r["start"]) for r in log)
        assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 4

    async def test_a_spent_quota_pauses_until_midnight_then_everything_resumes(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        spent = (await cc.http.get("/_control/limits")).json()
        used = max([int(v) for v in _used(spent)] or [0])
        await cc.configure(daily_quota=used + 2)
        for i in range(4):
            await add_contact(ccservice, f"q{i}@example.com")
        await drain(runtime, ccservice.settings)
        line = await status(ccservice)
        assert line["status"] == "paused"
        assert line["notice"] == QUOTA_NOTICE
        assert len(await cc.dump()) < 4
        assert (await fetch(runtime, "SELECT count(*) AS n FROM sync_queue"))[0]["n"] >= 1
        # Midnight UTC passes for Constant Contact and for us.
        r = await cc.http.post("/_control/clock/advance", json={"to_next_midnight": True})
        assert r.status_code == 200, r.text
        await fetch(
            runtime,
            "UPDATE limit_buckets SET paused_until = now() - interval '1 second'"
            " WHERE paused_until IS NOT NULL",
        )
        await fetch(runtime, "UPDATE connections SET next_probe_at = now()")
        # (the rows waited for the same midnight)
        await fetch(runtime, "UPDATE sync_queue SET available_at = now()")
        await with_engine(runtime, ccservice.settings, lambda e: e.probe_paused())
        assert (await status(ccservice))["status"] == "active"
        await drain(runtime, ccservice.settings)
        assert {f"q{i}@example.com" for i in range(4)} <= set(await cc.dump())
        assert (await status(ccservice))["notice"] is None

    async def test_our_own_count_of_the_day_pauses_before_constant_contact_must(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        await add_contact(ccservice, "first@example.com")
        await drain(runtime, ccservice.settings)  # the application's bucket exists now
        await fetch(
            runtime,
            "UPDATE limit_buckets SET quota_used = 10000,"
            " quota_day = CAST(timezone('UTC', now()) AS date) WHERE quota_day IS NOT NULL",
        )
        await add_contact(ccservice, "second@example.com")
        await drain(runtime, ccservice.settings)
        line = await status(ccservice)
        assert line["status"] == "paused" and line["notice"] == QUOTA_NOTICE
        assert "second@example.com" not in await cc.dump()
        # Bulk work past its share only waits: live changes still go, nobody is paused.
        await fetch(runtime, "UPDATE connections SET status = 'active', status_reason = NULL")
        await fetch(
            runtime, "UPDATE limit_buckets SET quota_used = 8000 WHERE quota_day IS NOT NULL"
        )
        await fetch(runtime, "UPDATE sync_queue SET available_at = now()")
        await drain(runtime, ccservice.settings)
        assert "second@example.com" in await cc.dump()
        assert (await status(ccservice))["status"] == "active"


def _used(limits: dict[str, Any]) -> list[Any]:
    spent = limits.get("used_today") or {}
    if isinstance(spent, dict):
        return list(spent.values())
    return [spent]


__all__ = ["UTC", "datetime", "timedelta"]


class TestDevelopment:
    async def test_the_demo_owner_is_connected_to_the_sandbox_without_a_popup(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        from app.connections.service import connection_service
        from app.db import session_scope

        provider = registry.get(PID)
        configured = provider.connect.configured(ccservice.settings, provider.sandbox_seed())
        assert configured is not None
        owner, account, audience = configured
        assert owner == "demo" and audience.id == DEFAULT_LIST_ID
        async with session_scope(make_sessionmaker(runtime.engine)) as session:
            await connection_service.save(
                session,
                provider=provider,
                settings=ccservice.settings,
                owner_id=owner,
                account=account,
                audience=audience,
            )
        await add_contact(ccservice, "ada@example.com", owner="demo", first_name="Ada")
        await drain(runtime, ccservice.settings)
        assert (await cc.dump())["ada@example.com"]["list_memberships"] == [DEFAULT_LIST_ID]
        # The first request minted the pair through the sandbox; it is stored encrypted.
        row = await connection(runtime, "demo")
        creds = decrypt_credentials(ccservice.settings, row["credentials"])
        assert creds["refresh_token"] and "sandbox_seed" not in creds
        assert row["status"] == "active"


async def test_the_api_processs_calls_count_against_the_application_limits(
    ccservice: Service, cc: CCSandbox, runtime: Runtime
) -> None:
    # Connect (the account summary, the lists, the custom fields of FIELD_MAP) and the
    # Settings page (the lists, a list chosen) are the API process's own requests: every one
    # of them takes a token of the application's rate and counts in the day's quota, as the
    # workers' requests do (nothing else runs here: no worker drains the queue).
    made = await cc.http.post("/_control/accounts/p07e1l8cdif9dl/lists", json={"name": "News"})
    other = made.json()["list_id"]
    await connect(ccservice)
    listed = await ccservice.http.get(
        f"/api/integrations/{PID}/audiences", headers=ccservice.auth()
    )
    assert listed.status_code == 200, listed.text
    r = await ccservice.http.put(
        f"/api/integrations/{PID}/audience", json={"audience_id": other}, headers=ccservice.auth()
    )
    assert r.status_code == 200, r.text
    sent = [
        f"{q['method']} {q['path']}"
        for q in (await cc.http.get("/_control/requests")).json()["requests"]
        if str(q["path"]).startswith("/v3/")
    ]
    assert "GET /v3/account/summary" in sent and "GET /v3/contact_lists" in sent, sent
    rows = await fetch(
        runtime,
        "SELECT quota_used, quota_day FROM limit_buckets WHERE key = :k",
        k="constantcontact:application:app",
    )
    # At least one token per request (a token handed over too late to keep the spacing is
    # counted and not spent: the day's count may run ahead of the requests, never behind).
    assert len(rows) == 1 and rows[0]["quota_day"] == datetime.now(UTC).date()
    assert rows[0]["quota_used"] >= len(sent), (rows, sent)


class TestQuotaInTheApi:
    """A user's request when the application's day is spent: the quota notice, not 'try again'."""

    async def test_our_count_spent_answers_with_the_notice_and_midnight(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)  # the application's bucket exists now
        await fetch(
            runtime,
            "UPDATE limit_buckets SET quota_used = 10000,"
            " quota_day = CAST(timezone('UTC', now()) AS date) WHERE quota_day IS NOT NULL",
        )
        r = await ccservice.http.get(f"/api/integrations/{PID}/audiences", headers=ccservice.auth())
        assert_quota_problem(r)

    async def test_constant_contacts_quota_exceeded_answers_with_the_notice(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        await connect(ccservice)
        spent = (await cc.http.get("/_control/limits")).json()
        await cc.configure(daily_quota=max([int(v) for v in _used(spent)] or [0]))
        r = await ccservice.http.get(f"/api/integrations/{PID}/audiences", headers=ccservice.auth())
        assert_quota_problem(r)

    async def test_connecting_on_a_spent_day_says_so_and_connects_nothing(
        self, ccservice: Service, cc: CCSandbox, runtime: Runtime
    ) -> None:
        spent = (await cc.http.get("/_control/limits")).json()
        await cc.configure(daily_quota=max([int(v) for v in _used(spent)] or [0]))
        r = await ccservice.http.post(f"/api/integrations/{PID}/connect", headers=ccservice.auth())
        page = await ccservice.http.get(await authorize(str(r.json()["authorize_url"])))
        assert page.status_code == 503, page.text
        assert QUOTA_NOTICE in page.text.replace("&#x27;", "'").replace("&#39;", "'")
        assert await fetch(runtime, "SELECT id FROM connections") == []


def assert_quota_problem(r: httpx.Response) -> None:
    """503 problem+json naming the daily limit, Retry-After the seconds to 00:00 UTC."""
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert QUOTA_NOTICE in r.json()["detail"]
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert abs(int(r.headers["retry-after"]) - (midnight - now).total_seconds()) < 120
