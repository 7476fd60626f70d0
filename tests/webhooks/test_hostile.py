"""Hostile deliveries: a body that is not a form, a `fired_at` far in the future."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.main import Runtime
from tests.webhooks.conftest import Hook, count, one

PROBLEM = "application/problem+json"


def unsubscribe(email: str, fired_at: str) -> str:
    fields = {
        "type": "unsubscribe",
        "fired_at": fired_at,
        "data[action]": "unsub",
        "data[reason]": "manual",
        "data[email]": email,
    }
    return str(httpx.QueryParams(fields))


async def test_a_text_plain_body_is_415_and_stores_nothing(
    hook: Hook, ada: dict[str, Any], runtime: Runtime
) -> None:
    body = unsubscribe("ada@example.com", "2026-01-01 00:00:00")
    r = await hook.post(body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert await count(runtime, "webhook_events") == 0
    row = await one(runtime, "SELECT newsletter_opt_in FROM contacts")
    assert row["newsletter_opt_in"] is True


async def test_a_fired_at_far_in_the_future_is_clamped_to_its_arrival(
    hook: Hook, ada: dict[str, Any], runtime: Runtime
) -> None:
    """Stamped 2999, it would win every later ordering decision; it counts as 'now'."""
    before = datetime.now(UTC)
    r = await hook.post(unsubscribe("ada@example.com", "2999-01-01 00:00:00"))
    assert r.status_code == 200, r.text
    event = await one(runtime, "SELECT fired_at FROM webhook_events")
    assert before - timedelta(seconds=5) <= event["fired_at"] <= datetime.now(UTC)
    contact = await one(
        runtime, "SELECT newsletter_opt_in, newsletter_unsubscribed_at FROM contacts"
    )
    assert contact["newsletter_opt_in"] is False
    assert contact["newsletter_unsubscribed_at"].year < 2999
    # A redelivery of the same body is still recognised as one.
    again = await hook.post(unsubscribe("ada@example.com", "2999-01-01 00:00:00"))
    assert again.status_code == 200
    assert await count(runtime, "webhook_events") == 1
