"""Mautic end to end: the service over TCP, the Mautic sandbox over TCP, real PostgreSQL.

Connect with credentials, contacts into the segment with fields and tags, a Mautic-only tag
kept, the person's unsubscribe and bounce coming back by signed webhook and never lifted by
later edits, a form signup → a lead, delete, Sync Now, disconnect (our hook removed), and the
webhook receiver's refusals with nothing written.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import MauticMode, Settings, parse_enrollment
from app.main import Runtime
from app.providers.mautic.inbound import signature
from app.sandbox.mautic import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from app.sync.engine import SyncEngine
from app.sync.pull import pull_connection
from tests.conftest import fetch
from tests.connections.conftest import OTHER, OWNER, Service, drain, wait_for
from tests.providers.mautic import conftest as mautic_fixtures
from tests.providers.mautic.conftest import Mautic
from tests.support.sync import Sandbox
from tests.webhooks.test_pull import slots_running

mautic = mautic_fixtures.mautic


@pytest.fixture
def sync_settings(settings: Settings, sandbox: Sandbox, mautic: Mautic) -> Settings:
    """Both sandboxes of this test, short timeouts."""
    return settings.model_copy(
        update={
            "MAILCHIMP_SANDBOX_URL": sandbox.url,
            "MAUTIC_MODE": MauticMode.sandbox,
            "MAUTIC_SANDBOX_URL": mautic.url,
            "MAUTIC_TIMEOUT_SECONDS": 5.0,
            "SYNC_BACKOFF_BASE_SECONDS": 0.05,
            "SYNC_BACKOFF_MAX_SECONDS": 0.5,
            "SYNC_POLL_INTERVAL_SECONDS": 0.2,
        }
    )


class Crm:
    """The contacts API of OWNER on the served service."""

    def __init__(self, service: Service) -> None:
        self.http = service.http
        self.headers = service.auth(OWNER)

    async def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("newsletter_opt_in", True)
        r = await self.http.post("/api/contacts", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def patch(self, contact_id: str, **body: Any) -> dict[str, Any]:
        r = await self.http.patch(f"/api/contacts/{contact_id}", json=body, headers=self.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def get(self, contact_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/contacts/{contact_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def delete(self, contact_id: str) -> None:
        r = await self.http.delete(f"/api/contacts/{contact_id}", headers=self.headers)
        assert r.status_code == 204, r.text


async def connect(service: Service, mautic: Mautic, **overrides: Any) -> httpx.Response:
    body = {
        "base_url": "https://mautic.example.com",
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "audience_id": mautic.segment,
    } | overrides
    return await service.http.post(
        "/api/integrations/mautic/credentials", json=body, headers=service.auth(OWNER)
    )


async def hooks(mautic: Mautic) -> list[dict[str, Any]]:
    found = (await mautic.api.get("/hooks")).json()["hooks"]
    return list(found.values()) if isinstance(found, dict) else list(found)


async def remote(mautic: Mautic) -> dict[str, dict[str, Any]]:
    """Every sandbox contact by lower-cased email (with its segment and campaign ids)."""
    body = (await mautic.http.get("/_control/contacts")).json()
    out = {}
    for c in body["contacts"]:
        email = c["fields"]["all"].get("email")
        if email:
            out[str(email).lower()] = c
    return out


@pytest.fixture
async def connected(service: Service, mautic: Mautic) -> Service:
    r = await connect(service, mautic)
    assert r.status_code == 200, r.text
    assert r.json()["connected"] is True
    # The webhook is registered after the response (a background task).
    await wait_for(lambda: _has_hook(mautic), within=10)
    return service


async def processed_event(runtime: Runtime, event_type: str) -> dict[str, Any]:
    """The webhook event of `event_type`, once the receiver has applied it."""
    sql = "SELECT outcome, processed_at FROM webhook_events WHERE event_type = :t"

    async def applied() -> bool:
        return any(r["processed_at"] is not None for r in await fetch(runtime, sql, t=event_type))

    await wait_for(applied, within=10)
    [event] = await fetch(runtime, sql, t=event_type)
    return event


async def _has_hook(mautic: Mautic) -> bool:
    return any("/api/webhooks/mautic/" in h["webhookUrl"] for h in await hooks(mautic))


class TestConnect:
    async def test_mautic_is_offered_with_its_credentials_form(self, service: Service) -> None:
        r = await service.http.get("/api/integrations", headers=service.auth())
        (item,) = [i for i in r.json()["items"] if i["provider"] == "mautic"]
        assert item["available"] is True
        (method,) = item["connect"]
        assert method["kind"] == "credentials"
        names = [f["name"] for f in method["fields"]]
        assert names == ["base_url", "client_id", "client_secret"]

    async def test_credentials_mautic_refuses_store_nothing(
        self, service: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        r = await connect(service, mautic, client_secret="wrong-secret")
        assert r.status_code == 422, r.text
        assert not await fetch(runtime, "SELECT id FROM connections")
        assert not await hooks(mautic)

    async def test_the_host_rule_refuses_plain_http_and_ip_literals_in_live_mode(
        self, serve: Callable[..., Any], mautic: Mautic, runtime: Runtime
    ) -> None:
        async with serve(MAUTIC_MODE=MauticMode.live) as svc:
            for url in ("http://mautic.example.com", "https://10.0.0.7", "https://127.0.0.1"):
                r = await connect(svc, mautic, base_url=url)
                assert r.status_code == 422, (url, r.text)
                assert r.json()["errors"][0]["field"] == "base_url"
            # A host that resolves to loopback is refused unless MAUTIC_ALLOW_PRIVATE_HOSTS.
            r = await connect(svc, mautic, base_url="https://localhost")
            assert r.status_code == 422, r.text
        assert not await fetch(runtime, "SELECT id FROM connections")

    async def test_connect_stores_the_secrets_encrypted_and_registers_a_signed_hook(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        (row,) = await fetch(runtime, "SELECT * FROM connections")
        assert row["provider"] == "mautic" and row["status"] == "active"
        assert row["audience_id"] == mautic.segment
        assert DEFAULT_CLIENT_SECRET not in row["credentials"]
        (hook,) = [h for h in await hooks(mautic) if row["webhook_token"] in h["webhookUrl"]]
        assert "mautic.lead_channel_subscription_changed" in hook["triggers"]
        assert hook["secret"] and hook["secret"] not in row["credentials"]
        status = (
            await connected.http.get("/api/integrations/mautic", headers=connected.auth(OWNER))
        ).json()
        assert status["webhook_registered"] is True
        assert "secret" not in str(status).lower() or DEFAULT_CLIENT_SECRET not in str(status)


class TestFlows:
    async def test_contacts_reach_the_segment_and_the_persons_decisions_come_back(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        settings = connected.settings
        ada = await crm.create(
            email="ada@example.com", first_name="Ada", last_name="Lovelace", tags=["vip"]
        )
        bob = await crm.create(email="bob@example.com", first_name="Bob")
        await drain(runtime, settings)
        people = await remote(mautic)
        a = people["ada@example.com"]
        assert int(mautic.segment) in a["segments"]
        assert a["fields"]["all"]["firstname"] == "Ada"
        assert a["fields"]["all"]["lastname"] == "Lovelace"
        assert {t["tag"] for t in a["tags"]} == {"vip"}
        assert int(mautic.segment) in people["bob@example.com"]["segments"]

        # A tag someone set in Mautic survives our edits.
        r = await mautic.api.patch(f"/contacts/{a['id']}/edit", json={"tags": ["mautic-only"]})
        assert r.status_code == 200, r.text
        await crm.patch(ada["id"], tags=["vip", "donor"], first_name="Augusta")
        await drain(runtime, settings)
        a = (await remote(mautic))["ada@example.com"]
        assert {t["tag"] for t in a["tags"]} == {"vip", "donor", "mautic-only"}
        assert a["fields"]["all"]["firstname"] == "Augusta"

        # The person unsubscribes at Mautic; bob's address bounces: both come back signed.
        await mautic.act("unsubscribe", "ada@example.com")
        await mautic.act("bounce", "bob@example.com")
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is False
        b = await crm.get(bob["id"])
        assert b["newsletter_opt_in"] is False and b["email_status"] == "bounced"

        # Later edits never lift the person's do-not-contact.
        await crm.patch(ada["id"], first_name="Ada", newsletter_opt_in=True)
        await drain(runtime, settings)
        a = (await remote(mautic))["ada@example.com"]
        assert a["fields"]["all"]["firstname"] == "Ada"
        (dnc,) = a["doNotContact"]
        assert dnc["reason"] == 1
        mine = await crm.get(ada["id"])
        assert "blocked" in str(mine["sync"])

        # A complaint (a feedback loop's DNC): complained, never softened.
        carla = await crm.create(email="carla@example.com")
        await drain(runtime, settings)
        await mautic.act("complaint", "carla@example.com")
        c = await crm.get(carla["id"])
        assert c["newsletter_opt_in"] is False and c["email_status"] == "complained"

        # A form signup at Mautic: a new lead with referral=mautic.
        await mautic.act("signup", "carol@example.com", fields={"firstname": "Carol"})
        rows = await fetch(
            runtime,
            "SELECT kind, referral, first_name FROM contacts WHERE email = 'carol@example.com'",
        )
        assert rows == [{"kind": "lead", "referral": "mautic", "first_name": "Carol"}]

        # Deleted locally: out of our segment, the contact stays in Mautic (created by us, but
        # kept while anything else holds it is Mautic's rule; here it is only ours → deleted).
        await crm.delete(bob["id"])
        await drain(runtime, settings)
        people = await remote(mautic)
        assert (
            "bob@example.com" not in people
            or int(mautic.segment) not in people["bob@example.com"]["segments"]
        )

    async def test_sync_now_then_disconnect_removes_our_hook_and_keeps_the_people(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        await crm.create(email="dora@example.com", first_name="Dora")
        await drain(runtime, connected.settings)
        r = await connected.http.post(
            "/api/integrations/mautic/sync", headers=connected.auth(OWNER), json={}
        )
        assert r.status_code in (200, 202), r.text
        r = await connected.http.delete("/api/integrations/mautic", headers=connected.auth(OWNER))
        assert r.status_code in (200, 204), r.text
        assert not await _has_hook(mautic)
        assert "dora@example.com" in await remote(mautic)
        # Reconnect: a new hook, the same people.
        r = await connect(connected, mautic)
        assert r.status_code == 200, r.text
        await wait_for(lambda: _has_hook(mautic), within=10)


class TestWebhookRefusals:
    async def _post(
        self, service: Service, token: str, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        return await service.http.post(
            f"/api/webhooks/mautic/{token}",
            content=body,
            headers={"Content-Type": "application/json"} | headers,
        )

    async def test_forged_replayed_and_wrongly_signed_deliveries_write_nothing(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        ada = await crm.create(email="ada@example.com")
        await drain(runtime, connected.settings)
        (row,) = await fetch(runtime, "SELECT webhook_token FROM connections")
        token = row["webhook_token"]
        (hook,) = await hooks(mautic)
        now = datetime.now(UTC).isoformat()
        item = {
            "contact": {"id": 1, "fields": {"core": {"email": {"value": "ada@example.com"}}}},
            "channel": "email",
            "old_status": "contactable",
            "new_status": "unsubscribed",
            "timestamp": now,
        }
        body = json.dumps({"mautic.lead_channel_subscription_changed": [item]}).encode()
        before = await fetch(runtime, "SELECT count(*) AS n FROM webhook_events")
        # Missing, forged, and signed with another secret: 401.
        for headers in (
            {},
            {"Webhook-Signature": "Zm9yZ2Vk"},
            {"Webhook-Signature": signature(body, "another-secret")},
        ):
            r = await self._post(connected, token, body, headers)
            assert r.status_code == 401, r.text
        # Signed right, but tampered after signing: 401.
        good = signature(body, hook["secret"])
        r = await self._post(
            connected, token, body.replace(b"ada@", b"eve@"), {"Webhook-Signature": good}
        )
        assert r.status_code == 401
        # Unknown token: 404; unparsable: 400; oversized: 400.
        r = await self._post(connected, "not-our-token", body, {"Webhook-Signature": good})
        assert r.status_code == 404
        junk = b"not json"
        r = await self._post(
            connected, token, junk, {"Webhook-Signature": signature(junk, hook["secret"])}
        )
        assert r.status_code == 400
        big = b'{"x":"' + b"a" * (600 * 1024) + b'"}'
        r = await self._post(
            connected, token, big, {"Webhook-Signature": signature(big, hook["secret"])}
        )
        assert r.status_code == 400
        assert await fetch(runtime, "SELECT count(*) AS n FROM webhook_events") == before
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is True
        # The genuine delivery, twice (a replay): applied once.
        for _ in range(2):
            r = await self._post(connected, token, body, {"Webhook-Signature": good})
            assert r.status_code == 200, r.text
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is False
        rows = await fetch(runtime, "SELECT count(*) AS n FROM webhook_events")
        assert rows[0]["n"] == before[0]["n"] + 1


class TestTokenExpiryDuringADrain:
    @pytest.mark.parametrize(
        ("lifetime", "latency_ms", "people"), [(2, 80, 70), (3, 120, 70), (4, 100, 100)]
    )
    async def test_two_workers_across_expiry_and_early_revocation_fail_no_send(
        self,
        connected: Service,
        mautic: Mautic,
        runtime: Runtime,
        lifetime: int,
        latency_ms: int,
        people: int,
    ) -> None:
        # Short tokens and slow requests; one send and one segment add a person (batches
        # off), 4 at a time: the drain outlives a token at least once.
        await mautic.configure(access_token_lifetime_seconds=lifetime, latency_ms=latency_ms)
        crm = Crm(connected)
        emails = [f"p{i}@example.com" for i in range(people)]
        for email in emails:
            await crm.create(email=email, first_name="P")
        # The token of the connect (minted before the knob, an hour's) goes: every later
        # one is short, so the drain meets expiries, not only the revocations below.
        await mautic.http.post("/_control/tokens/expire")
        await mautic.http.delete("/_control/requests")

        def sent(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                log = await mautic.requests()
                return sum(1 for r in log if str(r["path"]).startswith("/api")) >= n

            return check

        async def revoke() -> None:
            # Tokens revoked early too (a 401 mid-drain), once the drain is under way and
            # again a few requests later (a retry may meet the second): each 401 renews
            # the token it refused, and the send is retried.
            for after in (people // 2, people):
                await wait_for(sent(after), within=60, every=0.02)
                await mautic.http.post("/_control/tokens/expire")

        settings = connected.settings.model_copy(update={"SYNC_BATCH_THRESHOLD": 10_000})
        engines = [create_async_engine(runtime.engine.url) for _ in range(2)]
        # Two identities, as two worker processes have (one identity would share leases).
        workers = [
            SyncEngine(e, settings, worker_id=f"token-test-{i}") for i, e in enumerate(engines)
        ]
        try:
            await asyncio.gather(revoke(), *(w.run_until_idle(limit_seconds=90) for w in workers))
        finally:
            for w in workers:
                await w.aclose()
            for e in engines:
                await e.dispose()
        found = await remote(mautic)
        state = await fetch(runtime, "SELECT status, last_error FROM connections")
        assert all(int(mautic.segment) in found[e]["segments"] for e in emails), state
        assert all(found[e]["fields"]["all"]["firstname"] == "P" for e in emails)
        failed = await fetch(
            runtime,
            "SELECT (SELECT count(*) FROM sync_queue) AS queued,"
            " (SELECT count(*) FROM sync_state WHERE error_kind IS NOT NULL) AS rejected,"
            " (SELECT status FROM connections) AS status",
        )
        assert failed == [{"queued": 0, "rejected": 0, "status": "active"}]
        log = await mautic.requests()
        api = [r for r in log if str(r["path"]).startswith("/api")]
        tokens = [r for r in log if str(r["path"]) == "/oauth/v2/token"]
        span = max(r["end"] for r in api) - min(r["start"] for r in api)
        assert span > lifetime, span  # the drain did outlive a token
        # Renewed before expiry and once per revocation, not once per worker or request:
        # the first token, the two revocations, and one per 4/5 of a life of the drain
        # (two workers may each renew when their turns straddle an expiry).
        expiries = int(span / (0.8 * lifetime)) + 1
        assert 3 <= len(tokens) <= 3 + 2 * expiries, (len(tokens), span)
        # 401s only where a token was revoked or went stale: at most the requests in flight
        # (4) and one per worker at each of the three revocations, none at a natural expiry.
        refused = [r for r in api if r["status"] == 401]
        assert len(refused) <= 3 * (4 + 2), len(refused)
        # Nothing sent twice beyond those retries: one send and one segment add a person.
        assert len(api) - len(refused) == 2 * people, len(api)


class TestEnrollment:
    async def test_a_newly_qualified_contact_joins_the_campaign_once_and_stays(
        self, serve: Callable[..., Any], mautic: Mautic, runtime: Runtime
    ) -> None:
        r = await mautic.api.post("/campaigns/new", json={"name": "Hot leads"})
        assert r.status_code == 201, r.text
        campaign = int(r.json()["campaign"]["id"])
        rules = parse_enrollment(
            [
                {
                    "campaign_id": campaign,
                    "lead_status_in": ["qualified", "converted"],
                    "min_score": 70,
                    "score_field": "score",
                }
            ]
        )
        async with serve(MAUTIC_ENROLLMENT=rules) as svc:
            assert (await connect(svc, mautic)).status_code == 200
            crm = Crm(svc)
            hot = await crm.create(
                email="hot@example.com",
                kind="lead",
                lead_status="qualified",
                custom_fields={"score": 85},
            )
            cold = await crm.create(
                email="cold@example.com",
                kind="lead",
                lead_status="qualified",
                custom_fields={"score": 40},
            )
            await drain(runtime, svc.settings)
            people = await remote(mautic)
            assert people["hot@example.com"]["campaigns"] == [campaign]
            assert people["cold@example.com"]["campaigns"] == []

            def adds(log: list[dict[str, Any]]) -> int:
                return sum(
                    1
                    for r in log
                    if "/contact/" in str(r["path"]) and "campaigns" in str(r["path"])
                )

            # Recorded: an edit never adds again; Mautic's own removal is never undone.
            await mautic.http.delete("/_control/requests")
            hid = people["hot@example.com"]["id"]
            r = await mautic.api.post(f"/campaigns/{campaign}/contact/{hid}/remove")
            assert r.status_code == 200, r.text
            await crm.patch(hot["id"], first_name="Hot", custom_fields={"score": 90})
            # Dropping below the threshold never removes anyone (cold rises, joins once).
            await crm.patch(cold["id"], custom_fields={"score": 75})
            await drain(runtime, svc.settings)
            people = await remote(mautic)
            assert people["hot@example.com"]["campaigns"] == []
            assert people["hot@example.com"]["fields"]["all"]["firstname"] == "Hot"
            assert people["cold@example.com"]["campaigns"] == [campaign]
            await crm.patch(cold["id"], custom_fields={"score": 10}, lead_status="lost")
            await drain(runtime, svc.settings)
            assert (await remote(mautic))["cold@example.com"]["campaigns"] == [campaign]
            # Only cold's one add went out after the first drain (and the test's removal).
            assert adds(await mautic.requests()) == 2


def test_a_bad_enrollment_rule_refuses_to_start_naming_it(settings: Settings) -> None:
    bad = (
        '[{"campaign_id": 3, "lead_status_in": ["qualified"]}, {"campaign_id": 4, "min_score": 5}]'
    )
    with pytest.raises(ValueError, match=r"MAUTIC_ENROLLMENT rule 2 .*min_score needs score_field"):
        settings.model_validate(settings.model_dump() | {"MAUTIC_ENROLLMENT": bad})
    for value, message in (
        ('[{"campaign_id": 0, "min_score": 1, "score_field": "s"}]', "rule 1"),
        ('[{"campaign_id": 2}]', "names no condition"),
        ('{"campaign_id": 2, "lead_status_in": []}', "rule 1"),
        ("[not json", "not JSON"),
        ('[{"campaign_id": 2, "lead_status_in": ["a"], "surprise": 1}]', "surprise"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_enrollment(value)


class TestEmailChange:
    async def test_changes_either_way_and_a_collision_is_refused_not_merged(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        settings = connected.settings
        ada = await crm.create(email="ada@example.com", first_name="Ada")
        await drain(runtime, settings)
        aid = (await remote(mautic))["ada@example.com"]["id"]

        # Ours: the same Mautic contact gets the new address.
        await crm.patch(ada["id"], email="ada.l@example.com")
        await drain(runtime, settings)
        people = await remote(mautic)
        assert people["ada.l@example.com"]["id"] == aid and "ada@example.com" not in people

        # Onto an address another Mautic contact has: refused (Mautic would merge the two).
        other = await mautic.new_contact(email="taken@example.com", firstname="Someone")
        await crm.patch(ada["id"], email="taken@example.com")
        await drain(runtime, settings)
        before = await remote(mautic)
        assert before["ada.l@example.com"]["id"] == aid
        assert before["taken@example.com"]["id"] == other["id"]
        assert before["taken@example.com"]["segments"] == []
        sync = (await crm.get(ada["id"]))["sync"][0]
        assert sync["status"] == "rejected" and sync["error_kind"] == "collision"
        # Later edits never write onto the other person either.
        await crm.patch(ada["id"], first_name="Augusta")
        await drain(runtime, settings)
        after = await remote(mautic)
        assert after["taken@example.com"] == before["taken@example.com"]
        assert after["ada.l@example.com"]["id"] == aid

        # At Mautic: the person changes their address; the contact follows, nothing echoes.
        bob = await crm.create(email="bob@example.com", first_name="Bob")
        await drain(runtime, settings)
        await mautic.act("change-email", "bob@example.com", new_email="robert@example.com")
        assert (await crm.get(bob["id"]))["email"] == "robert@example.com"
        await mautic.http.delete("/_control/requests")
        await drain(runtime, settings)
        writes = [r for r in await mautic.requests() if r.get("method") != "GET"]
        assert not writes, writes

    async def test_after_a_refused_collision_edits_reach_the_person_and_the_move_is_retried(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        settings = connected.settings
        ada = await crm.create(email="ada@example.com", first_name="Ada")
        await drain(runtime, settings)
        aid = (await remote(mautic))["ada@example.com"]["id"]
        other = await mautic.new_contact(email="taken@example.com", firstname="Someone")

        async def sync_line() -> dict[str, Any]:
            return dict((await crm.get(ada["id"]))["sync"][0])

        await crm.patch(ada["id"], email="taken@example.com")
        await drain(runtime, settings)
        assert (await sync_line())["error_kind"] == "collision"

        # Another edit while the address is refused: it reaches Ada's record by its id,
        # under the address it holds; the address change stays refused and shown.
        await crm.patch(ada["id"], first_name="Augusta")
        await drain(runtime, settings)
        people = await remote(mautic)
        assert people["ada@example.com"]["id"] == aid
        assert people["ada@example.com"]["fields"]["all"]["firstname"] == "Augusta"
        assert people["ada@example.com"]["segments"]
        taken = people["taken@example.com"]
        assert taken["id"] == other["id"] and taken["segments"] == []
        assert taken["fields"]["all"]["firstname"] == "Someone"
        sync = await sync_line()
        assert sync["status"] == "rejected" and sync["error_kind"] == "collision"
        assert sync["remote_status"] == "subscribed"
        assert str(other["id"]) in sync["error"]

        # Another address someone else holds: checked again, refused again.
        third = await mautic.new_contact(email="also@example.com", firstname="Third")
        await crm.patch(ada["id"], email="also@example.com")
        await drain(runtime, settings)
        people = await remote(mautic)
        assert people["ada@example.com"]["id"] == aid
        assert people["also@example.com"]["id"] == third["id"]
        assert people["also@example.com"]["segments"] == []
        assert (await sync_line())["error_kind"] == "collision"

        # A free address: the move goes ahead, the refusal is gone.
        await crm.patch(ada["id"], email="augusta@example.com")
        await drain(runtime, settings)
        people = await remote(mautic)
        assert people["augusta@example.com"]["id"] == aid and "ada@example.com" not in people
        assert people["augusta@example.com"]["fields"]["all"]["firstname"] == "Augusta"
        sync = await sync_line()
        assert sync["status"] == "synced" and sync["error_kind"] is None

        # Refused again, then the other person lets the address go at Mautic: the next
        # change (any field) checks again and moves the address too.
        await crm.patch(ada["id"], email="taken@example.com")
        await drain(runtime, settings)
        assert (await sync_line())["error_kind"] == "collision"
        r = await mautic.api.delete(f"/contacts/{other['id']}/delete")
        assert r.status_code == 200, r.text

        # Its delete reaches us by webhook: about that person, not about our contact.
        event = await processed_event(runtime, "mautic.lead_post_delete")
        assert event["outcome"] == "ignored"
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is True
        await crm.patch(ada["id"], last_name="King")
        await drain(runtime, settings)
        people = await remote(mautic)
        assert people["taken@example.com"]["id"] == aid and "augusta@example.com" not in people
        assert people["taken@example.com"]["fields"]["all"]["lastname"] == "King"
        sync = await sync_line()
        assert sync["status"] == "synced" and sync["error_kind"] is None
        # Nobody was merged away: the third person is still there, untouched.
        assert people["also@example.com"]["id"] == third["id"]

    async def _refused_move(
        self, crm: Crm, mautic: Mautic, runtime: Runtime, settings: Settings
    ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """Ada's move onto an address another Mautic person holds, refused: her record keeps
        the old address."""
        ada = await crm.create(email="ada@example.com", first_name="Ada")
        await drain(runtime, settings)
        aid = (await remote(mautic))["ada@example.com"]["id"]
        other = await mautic.new_contact(email="taken@example.com", firstname="Someone")
        await crm.patch(ada["id"], email="taken@example.com")
        await drain(runtime, settings)
        sync = (await crm.get(ada["id"]))["sync"][0]
        assert sync["status"] == "rejected" and sync["error_kind"] == "collision"
        return ada, aid, other

    async def _never_lifted(
        self, crm: Crm, mautic: Mautic, runtime: Runtime, settings: Settings, ada: Any, aid: Any
    ) -> None:
        # Later edits (even a local re-opt-in) never lift the person's do-not-contact, and
        # the other person is never written to.
        await crm.patch(ada["id"], first_name="Augusta", newsletter_opt_in=True)
        await drain(runtime, settings)
        people = await remote(mautic)
        mine = people["ada@example.com"]
        assert mine["id"] == aid and mine["fields"]["all"]["firstname"] == "Augusta"
        (dnc,) = mine["doNotContact"]
        assert dnc["reason"] == 1
        assert people["taken@example.com"]["fields"]["all"]["firstname"] == "Someone"
        assert people["taken@example.com"]["doNotContact"] == []
        sync = (await crm.get(ada["id"]))["sync"][0]
        assert sync["error_kind"] == "collision"
        # The refused re-opt-in leaves the row addressing her record: the next edit too.
        await crm.patch(ada["id"], last_name="King")
        await drain(runtime, settings)
        people = await remote(mautic)
        assert people["ada@example.com"]["fields"]["all"]["lastname"] == "King"
        assert people["ada@example.com"]["doNotContact"][0]["reason"] == 1
        assert not people["taken@example.com"]["fields"]["all"].get("lastname")
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is False

    async def test_while_a_move_is_refused_the_persons_unsubscribe_reaches_the_contact(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        settings = connected.settings
        ada, aid, _other = await self._refused_move(crm, mautic, runtime, settings)
        # Another owner's contact has the old address: never matched across owners.
        r = await connected.http.post(
            "/api/contacts",
            json={"email": "ada@example.com", "newsletter_opt_in": True},
            headers=connected.auth(OTHER),
        )
        assert r.status_code == 201, r.text
        theirs = r.json()["id"]
        # The person unsubscribes at Mautic: the webhook names their record (by its id)
        # under the address it still holds, which no contact of ours has any more.
        await mautic.act("unsubscribe", "ada@example.com")

        async def opted_out() -> bool:
            return (await crm.get(ada["id"]))["newsletter_opt_in"] is False

        await wait_for(opted_out, within=10)
        [event] = await fetch(
            runtime,
            "SELECT outcome FROM webhook_events"
            " WHERE event_type = 'mautic.lead_channel_subscription_changed'",
        )
        assert event["outcome"] == "applied"
        r = await connected.http.get(f"/api/contacts/{theirs}", headers=connected.auth(OTHER))
        assert r.status_code == 200 and r.json()["newsletter_opt_in"] is True, r.text
        await self._never_lifted(crm, mautic, runtime, settings, ada, aid)

        # A form signup under the old address is her record's (Mautic matches it by email):
        # the contact found by its id, no lead made of the address.
        await mautic.act("signup", "ada@example.com", fields={"firstname": "Augusta"})

        signup = await processed_event(runtime, "mautic.form_on_submit")
        assert signup["outcome"] != "created"
        assert (
            await fetch(
                runtime,
                "SELECT id FROM contacts WHERE email = 'ada@example.com' AND owner_id = :owner",
                owner=OWNER,
            )
            == []
        )

    async def test_while_a_move_is_refused_the_pull_attributes_statuses_by_id(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        settings = connected.settings
        ada, aid, _other = await self._refused_move(crm, mautic, runtime, settings)
        await mautic.configure(webhook_fault_rates={"drop": 1.0})
        (conn,) = await fetch(runtime, "SELECT id FROM connections")

        # The other person (who holds the contact's new address) unsubscribes: not ours.
        await mautic.act("unsubscribe", "taken@example.com")
        async with slots_running(SyncEngine(runtime.engine, settings)) as engine:
            assert await pull_connection(engine, conn["id"]) is not None
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is True

        # Our person unsubscribes under the address their record still holds: by its id.
        await mautic.act("unsubscribe", "ada@example.com")
        async with slots_running(SyncEngine(runtime.engine, settings)) as engine:
            assert await pull_connection(engine, conn["id"]) is not None
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is False
        # Later edits never lift it (the other person's own DNC stays theirs).
        await crm.patch(ada["id"], first_name="Augusta", newsletter_opt_in=True)
        await drain(runtime, settings)
        people = await remote(mautic)
        mine = people["ada@example.com"]
        assert mine["id"] == aid and mine["fields"]["all"]["firstname"] == "Augusta"
        (dnc,) = mine["doNotContact"]
        assert dnc["reason"] == 1
        assert people["taken@example.com"]["fields"]["all"]["firstname"] == "Someone"
        assert (await crm.get(ada["id"]))["sync"][0]["error_kind"] == "collision"


class TestLossyWebhooks:
    async def test_the_scheduled_pull_brings_back_what_a_dropped_delivery_lost(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        ada = await crm.create(email="ada@example.com")
        bob = await crm.create(email="bob@example.com")
        await drain(runtime, connected.settings)
        # Mautic 5 deletes queued events on any failure: these two never arrive.
        await mautic.configure(webhook_fault_rates={"drop": 1.0})
        await mautic.act("unsubscribe", "ada@example.com")
        await mautic.act("bounce", "bob@example.com")
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is True
        (conn,) = await fetch(runtime, "SELECT id FROM connections")
        async with slots_running(SyncEngine(runtime.engine, connected.settings)) as engine:
            result = await pull_connection(engine, conn["id"])
        assert result is not None
        assert (await crm.get(ada["id"]))["newsletter_opt_in"] is False
        b = await crm.get(bob["id"])
        assert b["newsletter_opt_in"] is False and b["email_status"] == "bounced"

    async def test_an_address_changed_at_mautic_with_the_delivery_lost_follows_by_the_pull(
        self, connected: Service, mautic: Mautic, runtime: Runtime
    ) -> None:
        crm = Crm(connected)
        bob = await crm.create(email="bob@example.com", first_name="Bob")
        await drain(runtime, connected.settings)
        bid = (await remote(mautic))["bob@example.com"]["id"]
        await mautic.configure(webhook_fault_rates={"drop": 1.0})
        await mautic.act("change-email", "bob@example.com", new_email="robert@example.com")
        await mautic.act("unsubscribe", "robert@example.com")
        assert (await crm.get(bob["id"]))["email"] == "bob@example.com"
        (conn,) = await fetch(runtime, "SELECT id FROM connections")
        async with slots_running(SyncEngine(runtime.engine, connected.settings)) as engine:
            assert await pull_connection(engine, conn["id"]) is not None
        # The contact follows the person's id, and the unsubscribe at the new address lands.
        b = await crm.get(bob["id"])
        assert b["email"] == "robert@example.com" and b["newsletter_opt_in"] is False
        # A later edit goes to the same Mautic contact and never puts the old address back.
        await crm.patch(bob["id"], first_name="Robert")
        await drain(runtime, connected.settings)
        people = await remote(mautic)
        assert "bob@example.com" not in people
        assert people["robert@example.com"]["id"] == bid
        assert people["robert@example.com"]["fields"]["all"]["firstname"] == "Robert"
