"""Every Mailchimp event end to end: a person acts in the sandbox, the sandbox delivers the
webhook to the served service, the CRM changes — and the worker sends nothing back."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import ContactKind
from app.main import Runtime
from tests.support.sync import Sandbox
from tests.webhooks.conftest import (
    Crm,
    Engine,
    Hook,
    assert_no_echo,
    contact_row,
    count,
    drain,
    md5,
    mirror_row,
    one,
)


async def webhook_changes(runtime: Runtime) -> list[dict[str, Any]]:
    return await fetch_changes(runtime, "webhook:mailchimp")


async def fetch_changes(runtime: Runtime, source: str) -> list[dict[str, Any]]:
    from tests.conftest import fetch

    return await fetch(
        runtime, "SELECT * FROM contact_changes WHERE source = :s ORDER BY id", s=source
    )


class TestUnsubscribe:
    async def test_consent_off_mirror_unsubscribed_no_echo(
        self,
        hook: Hook,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        await hook.act("unsubscribe", "ada@example.com")
        contact = await contact_row(runtime, "ada@example.com")
        event = await one(runtime, "SELECT * FROM webhook_events")
        assert contact["newsletter_opt_in"] is False
        assert contact["newsletter_unsubscribed_at"] == event["fired_at"]
        assert contact["email_status"] == "ok"
        mirror = await mirror_row(runtime, "ada@example.com")
        assert mirror["remote_status"] == "unsubscribed"
        assert mirror["remote_changed_at"] == event["fired_at"]
        (change,) = await webhook_changes(runtime)
        assert change["fields"]["before"] == {"newsletter_opt_in": True}
        assert change["fields"]["after"] == {"newsletter_opt_in": False}
        assert change["fields"]["event"] == "unsubscribe"
        await assert_no_echo(runtime, sandbox, make_engine)
        assert (await sandbox.members())["ada@example.com"]["status"] == "unsubscribed"

    async def test_then_a_local_edit_updates_fields_never_status(
        self,
        hook: Hook,
        crm: Crm,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        await hook.act("unsubscribe", "ada@example.com")
        await crm.patch(ada["id"], first_name="Augusta", tags=["vip", "math"])
        await drain(make_engine)
        member = (await sandbox.members())["ada@example.com"]
        assert member["merge_fields"]["FNAME"] == "Augusta"
        assert {t["name"] for t in member["tags"]} == {"vip", "math"}
        assert member["status"] == "unsubscribed"
        assert [r["method"] for r in await sandbox.requests()]  # the edit did go out
        assert (await contact_row(runtime, "ada@example.com"))["newsletter_opt_in"] is False
        assert (await crm.get(ada["id"]))["sync"][0]["remote_status"] == "unsubscribed"

    async def test_abuse_report_is_a_complaint(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        await hook.act("abuse", "ada@example.com")
        contact = await contact_row(runtime, "ada@example.com")
        assert contact["newsletter_opt_in"] is False
        assert contact["email_status"] == "complained"
        assert (await mirror_row(runtime, "ada@example.com"))["remote_status"] == "cleaned"


class TestCleaned:
    async def test_hard_bounce(
        self,
        hook: Hook,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        await hook.act("clean", "ada@example.com")
        contact = await contact_row(runtime, "ada@example.com")
        assert contact["newsletter_opt_in"] is False
        assert contact["email_status"] == "bounced"
        assert (await mirror_row(runtime, "ada@example.com"))["remote_status"] == "cleaned"
        (change,) = await webhook_changes(runtime)
        assert change["fields"]["after"] == {"newsletter_opt_in": False, "email_status": "bounced"}
        assert change["fields"]["reason"] == "hard"
        await assert_no_echo(runtime, sandbox, make_engine)


class TestSubscribe:
    async def test_signup_creates_a_lead_without_echo(
        self, hook: Hook, crm: Crm, runtime: Runtime, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        await sandbox.clear_requests()
        await hook.act(
            "signup",
            "New.Person@Example.com",
            merge_fields={"FNAME": "New", "LNAME": "Person", "PHONE": "+1 555 0100"},
        )
        lead = await contact_row(runtime, "new.person@example.com")
        assert lead["kind"] == "lead"
        assert lead["lead_status"] == "new"
        assert lead["referral"] == "mailchimp"
        assert (lead["first_name"], lead["last_name"], lead["phone"]) == (
            "New",
            "Person",
            "+1 555 0100",
        )
        assert lead["newsletter_opt_in"] is True
        assert lead["owner_id"] == "owner-a"
        (change,) = await webhook_changes(runtime)
        assert change["op"] == "create"
        assert change["contact_id"] == lead["id"]
        mirror = await mirror_row(runtime, "new.person@example.com")
        assert mirror["remote_status"] == "subscribed"
        assert mirror["remote_id"] == md5("new.person@example.com")
        assert mirror["contact_id"] == lead["id"]
        assert (await crm.get(str(lead["id"])))["sync"][0]["status"] == "synced"
        await assert_no_echo(runtime, sandbox, make_engine)
        event = await one(runtime, "SELECT outcome FROM webhook_events")
        assert event["outcome"] == "created"

    @pytest.mark.parametrize(
        "service_overrides", [{"SYNC_KINDS": frozenset({ContactKind.client, ContactKind.contact})}]
    )
    async def test_a_signup_when_leads_are_not_synced_is_never_ours_to_archive(
        self,
        hook: Hook,
        crm: Crm,
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
        service_overrides: dict[str, Any],
    ) -> None:
        await hook.act("signup", "walkin@example.com", merge_fields={"FNAME": "Walk"})
        lead = await contact_row(runtime, "walkin@example.com")
        assert lead["kind"] == "lead"
        mirror = await mirror_row(runtime, "walkin@example.com")
        assert mirror["remote_status"] == "subscribed"
        assert mirror["pushed_digest"] is None  # the person's member, not one we pushed
        # Edited in the CRM: leads are not synced, so nothing is sent — least of all an archive.
        await crm.patch(str(lead["id"]), first_name="Walter")
        await sandbox.clear_requests()
        engine = make_engine(**service_overrides)
        try:
            await engine.run_until_idle(limit_seconds=30)
        finally:
            await engine.aclose()
        assert await sandbox.requests() == []
        assert (await sandbox.members())["walkin@example.com"]["status"] == "subscribed"

    @pytest.mark.parametrize("service_overrides", [{"INBOUND_SIGNUPS": False}])
    async def test_signups_off_creates_nothing(self, hook: Hook, runtime: Runtime) -> None:
        await hook.act("signup", "someone@example.com")
        assert await count(runtime, "contacts") == 0
        event = await one(runtime, "SELECT outcome FROM webhook_events")
        assert event["outcome"] == "unknown_contact"

    async def test_resubscribe_turns_consent_back_on(
        self,
        hook: Hook,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        await hook.act("unsubscribe", "ada@example.com")
        await hook.act("signup", "ada@example.com")
        contact = await contact_row(runtime, "ada@example.com")
        assert contact["newsletter_opt_in"] is True
        assert contact["kind"] == "contact"  # known people stay what they were
        assert (await mirror_row(runtime, "ada@example.com"))["remote_status"] == "subscribed"
        assert len(await webhook_changes(runtime)) == 2
        await assert_no_echo(runtime, sandbox, make_engine)

    async def test_subscribe_of_a_known_contact_without_consent(
        self, hook: Hook, crm: Crm, runtime: Runtime, sandbox: Sandbox, make_engine: Engine
    ) -> None:
        # Never pushed (no consent), then the person signs up on a Mailchimp form.
        quiet = await crm.create(email="quiet@example.com", first_name="Q", newsletter_opt_in=False)
        await drain(make_engine)
        await hook.act("signup", "quiet@example.com", merge_fields={"FNAME": "Form"})
        contact = await contact_row(runtime, "quiet@example.com")
        assert contact["newsletter_opt_in"] is True
        assert contact["first_name"] == "Q"  # the CRM keeps its data
        assert str(contact["id"]) == quiet["id"]
        # The member was not ours: the worker now pushes the CRM's data to it, once.
        await drain(make_engine)
        member = (await sandbox.members())["quiet@example.com"]
        assert member["merge_fields"]["FNAME"] == "Q"
        assert member["status"] == "subscribed"
        await sandbox.clear_requests()
        await assert_no_echo(runtime, sandbox, make_engine)


class TestProfile:
    async def test_ignored_by_default(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        await hook.act("profile", "ada@example.com", merge_fields={"FNAME": "Countess"})
        assert (await contact_row(runtime, "ada@example.com"))["first_name"] == "Ada"
        assert await webhook_changes(runtime) == []
        event = await one(runtime, "SELECT outcome FROM webhook_events")
        assert event["outcome"] == "ignored"

    @pytest.mark.parametrize("service_overrides", [{"INBOUND_PROFILE_UPDATES": True}])
    async def test_names_and_phone_when_enabled(
        self,
        hook: Hook,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        await hook.act(
            "profile", "ada@example.com", merge_fields={"FNAME": "Countess", "PHONE": "42"}
        )
        contact = await contact_row(runtime, "ada@example.com")
        assert (contact["first_name"], contact["last_name"], contact["phone"]) == (
            "Countess",
            "Lovelace",
            "42",
        )
        (change,) = await webhook_changes(runtime)
        assert change["fields"]["before"] == {"first_name": "Ada", "phone": None}
        assert change["fields"]["after"] == {"first_name": "Countess", "phone": "42"}
        await assert_no_echo(runtime, sandbox, make_engine)

    @pytest.mark.parametrize("service_overrides", [{"INBOUND_PROFILE_UPDATES": True}])
    async def test_company_through_the_field_map(
        self,
        hook: Hook,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        # The audience has the COMPANY merge field (connecting creates it).
        r = await sandbox.api(
            "POST",
            f"/lists/{sandbox.list_id}/merge-fields",
            json={"tag": "COMPANY", "name": "Company", "type": "text"},
        )
        assert r.status_code == 200, r.text
        await sandbox.clear_requests()
        await hook.act("profile", "ada@example.com", merge_fields={"COMPANY": "Babbage & Co"})
        contact = await contact_row(runtime, "ada@example.com")
        assert (contact["company"], contact["first_name"]) == ("Babbage & Co", "Ada")
        (change,) = await webhook_changes(runtime)
        assert change["fields"]["after"] == {"company": "Babbage & Co"}
        await assert_no_echo(runtime, sandbox, make_engine)


class TestEmailChange:
    async def test_email_moves_and_the_next_edit_goes_to_the_new_address(
        self,
        hook: Hook,
        crm: Crm,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        await hook.act("change-email", "ada@example.com", new_email="countess@example.com")
        contact = await contact_row(runtime, "countess@example.com")
        assert str(contact["id"]) == ada["id"]
        assert contact["email"] == "countess@example.com"
        assert await count(runtime, "sync_state", "email_key = 'ada@example.com'") == 0
        mirror = await mirror_row(runtime, "countess@example.com")
        assert mirror["remote_id"] == md5("countess@example.com")
        assert mirror["pushed_email"] == "countess@example.com"
        assert mirror["remote_status"] == "subscribed"
        (change,) = await webhook_changes(runtime)
        assert change["fields"]["after"] == {"email": "countess@example.com"}
        await assert_no_echo(runtime, sandbox, make_engine)

        await crm.patch(ada["id"], last_name="King")
        await drain(make_engine)
        members = await sandbox.members()
        assert members["countess@example.com"]["merge_fields"]["LNAME"] == "King"
        assert members["countess@example.com"]["status"] == "subscribed"
        assert "ada@example.com" not in members  # no member re-created at the old address
        paths = {r["path"] for r in await sandbox.requests()}
        assert any(md5("countess@example.com") in p for p in paths)
        assert not any(md5("ada@example.com") in p for p in paths)

    async def test_onto_another_contacts_address_is_a_conflict(
        self, hook: Hook, crm: Crm, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        await crm.create(email="taken@example.com", newsletter_opt_in=False)
        await hook.act("change-email", "ada@example.com", new_email="taken@example.com")
        event = await one(runtime, "SELECT outcome FROM webhook_events")
        assert event["outcome"] == "conflict"
        assert (await contact_row(runtime, "ada@example.com"))["email"] == "ada@example.com"
        assert await webhook_changes(runtime) == []
        assert (await mirror_row(runtime, "ada@example.com"))["remote_id"] == md5("ada@example.com")
