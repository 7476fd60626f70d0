"""The receiver: URL validation, refusals that store nothing, the inbox, idempotency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.main import Runtime
from tests.conftest import fetch
from tests.support.sync import Sandbox
from tests.webhooks.conftest import Crm, Engine, Hook, count, drain, one

PROBLEM = "application/problem+json"


def unsubscribe_body(email: str, fired_at: str = "2030-01-01 00:00:00", **extra: str) -> str:
    fields = {
        "type": "unsubscribe",
        "fired_at": fired_at,
        "data[action]": "unsub",
        "data[reason]": "manual",
        "data[email]": email,
        "data[list_id]": extra.pop("list_id", ""),
        **extra,
    }
    return str(httpx.QueryParams(fields))


async def nothing_stored(runtime: Runtime) -> None:
    assert await count(runtime, "webhook_events") == 0
    assert await count(runtime, "contact_changes", "source = 'webhook:mailchimp'") == 0


@pytest.fixture
async def ada(crm: Crm) -> dict[str, Any]:
    """A consenting contact, not yet pushed (overrides the pushed one of conftest)."""
    return await crm.create(email="ada@example.com", first_name="Ada")


class TestValidation:
    async def test_our_url_answers_get(self, hook: Hook) -> None:
        # The sandbox validated this URL with a GET when the fixture registered it; again:
        agent = {"User-Agent": "MailChimp.com WebHook Validator"}
        r = await hook.http.get(hook.path, headers=agent)
        assert r.status_code == 200

    async def test_unknown_token_is_404_on_get(self, hook: Hook) -> None:
        r = await hook.http.get("/api/webhooks/mailchimp/not-a-token")
        assert r.status_code == 404
        assert r.headers["content-type"].startswith(PROBLEM)

    async def test_registration_of_an_unknown_token_fails(
        self, hook: Hook, sandbox: Sandbox, service: str
    ) -> None:
        r = await sandbox.api(
            "POST",
            f"/lists/{sandbox.list_id}/webhooks",
            json={"url": f"{service}/api/webhooks/mailchimp/guessed", "events": {}, "sources": {}},
        )
        assert r.status_code == 400


class TestRefused:
    async def test_wrong_token(self, hook: Hook, ada: dict[str, Any], runtime: Runtime) -> None:
        token = hook.path.rsplit("/", 1)[1]
        for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), token[:10], "x" * 43):
            r = await hook.post(
                unsubscribe_body("ada@example.com"), path=f"/api/webhooks/mailchimp/{wrong}"
            )
            assert r.status_code == 404, r.text
            assert r.headers["content-type"].startswith(PROBLEM)
        await nothing_stored(runtime)
        row = await one(runtime, "SELECT newsletter_opt_in FROM contacts")
        assert row["newsletter_opt_in"] is True

    async def test_other_providers_have_no_receiver(self, hook: Hook) -> None:
        token = hook.path.rsplit("/", 1)[1]
        for method in ("GET", "POST"):
            r = await hook.http.request(method, f"/api/webhooks/mautic/{token}")
            assert r.status_code == 404
            assert r.headers["content-type"].startswith(PROBLEM)

    async def test_oversized_by_content_length(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        body = unsubscribe_body("ada@example.com", **{"data[merges][NOTE]": "x" * 70_000})
        r = await hook.post(body)
        assert r.status_code == 400
        assert r.headers["content-type"].startswith(PROBLEM)
        await nothing_stored(runtime)

    async def test_oversized_while_streaming(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        body = unsubscribe_body("ada@example.com", **{"data[merges][NOTE]": "x" * 70_000})

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
            data = body.encode()
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        r = await hook.http.post(
            hook.path,
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 400
        await nothing_stored(runtime)
        row = await one(runtime, "SELECT newsletter_opt_in FROM contacts")
        assert row["newsletter_opt_in"] is True

    @pytest.mark.parametrize(
        "body",
        [
            b"\xff\xfe not a form",
            b"type=unsubscribe&data[email=ada%40example.com&fired_at=2030-01-01+00:00:00",
            b"fired_at=2030-01-01+00:00:00&data[email]=ada%40example.com",  # no type
            b"type=unsubscribe&fired_at=soon&data[email]=ada%40example.com",
            b'{"type": "unsubscribe"}',
        ],
    )
    async def test_malformed(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime, body: bytes
    ) -> None:
        r = await hook.post(body)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith(PROBLEM)
        await nothing_stored(runtime)
        row = await one(runtime, "SELECT newsletter_opt_in FROM contacts")
        assert row["newsletter_opt_in"] is True


class TestInbox:
    async def test_the_same_delivery_twice_has_one_effect(
        self, hook: Hook, crm: Crm, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        delivery = await hook.act("signup", "grace@example.com", merge_fields={"FNAME": "Grace"})
        again = await hook.post(delivery["body"])  # Mailchimp retries a delivery verbatim
        assert again.status_code == 200
        assert again.json()["outcome"] == "duplicate"
        assert await count(runtime, "webhook_events") == 1
        assert await count(runtime, "contacts", "email_key = 'grace@example.com'") == 1
        assert await count(runtime, "contact_changes", "source = 'webhook:mailchimp'") == 1

    async def test_a_different_event_for_the_same_person_is_not_a_duplicate(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        first = await hook.post(unsubscribe_body("ada@example.com", "2030-01-01 00:00:00"))
        second = await hook.post(unsubscribe_body("ada@example.com", "2030-01-01 00:00:01"))
        assert first.json()["outcome"] == "applied"
        assert second.json()["outcome"] == "unchanged"
        assert await count(runtime, "webhook_events") == 2

    async def test_campaign_is_stored_and_ignored(self, hook: Hook, runtime: Runtime) -> None:
        body = (
            "type=campaign&fired_at=2030-01-01+00%3A00%3A00&data[id]=5aa2102003"
            "&data[subject]=Hello&data[status]=sent&data[reason]=&data[list_id]=x"
        )
        r = await hook.post(body)
        assert r.status_code == 200
        assert r.json()["outcome"] == "ignored"
        event = await one(runtime, "SELECT * FROM webhook_events")
        assert event["event_type"] == "campaign"
        assert event["outcome"] == "ignored"
        assert event["processed_at"] is not None
        assert event["payload"]["data"]["subject"] == "Hello"

    async def test_event_row_records_what_happened(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime, make_engine: Engine
    ) -> None:
        await drain(make_engine)  # Ada is a member now
        delivery = await hook.act("unsubscribe", "ada@example.com")
        event = await one(runtime, "SELECT * FROM webhook_events")
        assert event["provider"] == "mailchimp"
        assert event["event_type"] == "unsubscribe"
        assert event["outcome"] == "applied"
        assert event["processed_at"] is not None
        assert event["payload"]["data"]["email"] == "ada@example.com"
        assert event["fired_at"].strftime("%Y-%m-%d %H:%M:%S") in delivery["body"].replace(
            "+", " "
        ).replace("%3A", ":")
        change = await one(
            runtime, "SELECT * FROM contact_changes WHERE source = 'webhook:mailchimp'"
        )
        assert change["actor"] == f"webhook_event:{event['id']}"

    async def test_other_audience_is_ignored(
        self, hook: Hook, ada: dict[str, Any], runtime: Runtime
    ) -> None:
        r = await hook.post(unsubscribe_body("ada@example.com", list_id="0000000000"))
        assert r.json()["outcome"] == "ignored"
        rows = await fetch(runtime, "SELECT newsletter_opt_in FROM contacts")
        assert rows[0]["newsletter_opt_in"] is True
