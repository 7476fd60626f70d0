"""Ordering: an event older than a later local change leaves the local data as it is; consent
follows the person's latest action, and a later local re-opt-in becomes `pending`.

Webhooks arrive late (Mailchimp retries for 75 minutes), so these tests post deliveries whose
`fired_at` lies in the past, as a late retry would carry it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.main import Runtime
from tests.conftest import fetch
from tests.support.sync import Sandbox, queue_empty
from tests.webhooks.conftest import Crm, Engine, Hook, contact_row, drain, mirror_row


def stamp(ago: timedelta) -> tuple[str, datetime]:
    at = (datetime.now(UTC) - ago).replace(microsecond=0)
    return at.strftime("%Y-%m-%d %H:%M:%S"), at


def delivery(kind: str, fired_at: str, list_id: str, **data: str) -> str:
    fields = {"type": kind, "fired_at": fired_at, "data[list_id]": list_id}
    fields.update({f"data[{k}]" if "[" not in k else f"data{k}": v for k, v in data.items()})
    return str(httpx.QueryParams(fields))


async def age_mirror(runtime: Runtime, key: str, by: timedelta) -> None:
    """Make the mirror's knowledge (and its push) older, as if synced a while ago."""
    await fetch(
        runtime,
        "UPDATE sync_state SET remote_changed_at = remote_changed_at - CAST(:by AS interval)"
        " WHERE email_key = :k",
        by=by,
        k=key,
    )


class TestConsent:
    async def test_late_unsubscribe_before_a_local_reopt_in_becomes_pending(
        self,
        receiver: Hook,
        crm: Crm,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        # Synced an hour ago; 30 minutes ago the person unsubscribed (its webhook is late);
        # then the CRM opted them in again (Ada's consent dates from now).
        await age_mirror(runtime, "ada@example.com", timedelta(hours=1))
        r = await sandbox.act("unsubscribe", "ada@example.com")  # no webhook registered
        assert r.status_code == 200
        fired, at = stamp(timedelta(minutes=30))
        body = delivery(
            "unsubscribe",
            fired,
            sandbox.list_id,
            action="unsub",
            reason="manual",
            email="ada@example.com",
        )
        response = await receiver.post(body)
        assert response.json()["outcome"] == "stale"

        contact = await contact_row(runtime, "ada@example.com")
        assert contact["newsletter_opt_in"] is True  # the later local decision stands
        mirror = await mirror_row(runtime, "ada@example.com")
        assert mirror["remote_status"] == "unsubscribed"  # what Mailchimp holds
        assert mirror["remote_changed_at"] == at
        assert not await queue_empty(runtime)  # the CRM owes Mailchimp the re-opt-in

        await drain(make_engine)
        member = (await sandbox.members())["ada@example.com"]
        assert member["status"] == "pending"  # double opt-in: the only way back

    async def test_event_older_than_what_the_mirror_knows_changes_nothing(
        self,
        receiver: Hook,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        before = await mirror_row(runtime, "ada@example.com")
        fired, _ = stamp(timedelta(hours=2))
        body = delivery(
            "unsubscribe", fired, sandbox.list_id, reason="manual", email="ada@example.com"
        )
        assert (await receiver.post(body)).json()["outcome"] == "stale"
        assert (await contact_row(runtime, "ada@example.com"))["newsletter_opt_in"] is True
        after = await mirror_row(runtime, "ada@example.com")
        assert after["remote_status"] == "subscribed"
        assert after["remote_changed_at"] == before["remote_changed_at"]
        assert await queue_empty(runtime)
        await drain(make_engine)
        assert await sandbox.requests() == []

    async def test_late_signup_after_a_local_opt_out_keeps_it_off(
        self,
        receiver: Hook,
        crm: Crm,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
        make_engine: Engine,
    ) -> None:
        # Ten minutes ago Ada signed up again on a form (its webhook is late); just now the
        # CRM opted her out, and the worker unsubscribed her.
        await crm.patch(ada["id"], newsletter_opt_in=False)
        await drain(make_engine)
        assert (await sandbox.members())["ada@example.com"]["status"] == "unsubscribed"
        await sandbox.clear_requests()
        fired, _ = stamp(timedelta(minutes=10))
        body = delivery("subscribe", fired, sandbox.list_id, email="ada@example.com")
        assert (await receiver.post(body)).json()["outcome"] == "stale"
        assert (await contact_row(runtime, "ada@example.com"))["newsletter_opt_in"] is False
        assert (await mirror_row(runtime, "ada@example.com"))["remote_status"] == "unsubscribed"
        assert await queue_empty(runtime)
        await drain(make_engine)
        assert await sandbox.requests() == []

    async def test_within_the_same_second_the_person_wins(
        self, receiver: Hook, ada: dict[str, Any], runtime: Runtime, sandbox: Sandbox
    ) -> None:
        # Consent changed locally a fraction of a second after the event's stamp: cannot tell
        # which came first, so the unsubscribe (the person's action) applies.
        fired, at = stamp(timedelta(0))
        await fetch(
            runtime,
            "UPDATE contacts SET newsletter_changed_at = :t",
            t=at + timedelta(milliseconds=500),
        )
        body = delivery("unsubscribe", fired, sandbox.list_id, email="ada@example.com")
        assert (await receiver.post(body)).json()["outcome"] == "applied"
        assert (await contact_row(runtime, "ada@example.com"))["newsletter_opt_in"] is False


class TestProfile:
    @pytest.mark.parametrize("service_overrides", [{"INBOUND_PROFILE_UPDATES": True}])
    async def test_fields_written_locally_later_are_kept(
        self,
        receiver: Hook,
        crm: Crm,
        ada: dict[str, Any],
        runtime: Runtime,
        sandbox: Sandbox,
    ) -> None:
        # Ada was created two hours ago; her first name was edited in the CRM just now; an
        # hour ago she edited her profile at Mailchimp (the webhook arrives late).
        await fetch(runtime, "UPDATE contact_changes SET created_at = now() - interval '2 hours'")
        await crm.patch(ada["id"], first_name="Augusta")
        fired, _ = stamp(timedelta(hours=1))
        body = delivery(
            "profile",
            fired,
            sandbox.list_id,
            email="ada@example.com",
            **{"[merges][FNAME]": "Old", "[merges][LNAME]": "Byron"},
        )
        assert (await receiver.post(body)).json()["outcome"] == "applied"
        contact = await contact_row(runtime, "ada@example.com")
        assert contact["first_name"] == "Augusta"  # newer locally: kept
        assert contact["last_name"] == "Byron"  # older locally: the person's edit wins

        # The same event again, later still: it finds nothing newer to take.
        fired_again, _ = stamp(timedelta(hours=3))
        body = delivery(
            "profile",
            fired_again,
            sandbox.list_id,
            email="ada@example.com",
            **{"[merges][LNAME]": "Older"},
        )
        assert (await receiver.post(body)).json()["outcome"] == "stale"
        assert (await contact_row(runtime, "ada@example.com"))["last_name"] == "Byron"
