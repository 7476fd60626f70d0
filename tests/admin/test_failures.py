"""GET /api/admin/connections/{id}/failures: the parked and rejected rows behind the counts."""

from __future__ import annotations

import uuid

import httpx

from app.main import Runtime
from tests.admin.test_routes import Auth, add_queue_row, scenario
from tests.conftest import fetch

__all__ = ["scenario"]  # the fixture, shared with the status tests


async def test_lists_the_rows_behind_the_counts(
    client: httpx.AsyncClient, auth: Auth, scenario: dict[str, uuid.UUID]
) -> None:
    a, b = scenario["a"], scenario["b"]
    response = await client.get(f"/api/admin/connections/{b}/failures", headers=auth(admin=True))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["connection_id"] == str(b)
    assert [(r["email_key"], r["attempts"], r["last_error"]) for r in body["parked"]] == [
        ("p1@example.com", 5, "503 Service")
    ]
    assert [(r["email_key"], r["error_kind"], r["error"]) for r in body["rejected"]] == [
        ("bad1@example.com", "invalid_email", "looks fake or invalid"),
        ("bad2@example.com", "invalid_email", "looks fake or invalid"),
    ]
    # Another connection's rows are its own; parked ones come oldest first.
    other = (
        await client.get(f"/api/admin/connections/{a}/failures", headers=auth(admin=True))
    ).json()
    assert [r["email_key"] for r in other["parked"]] == ["p1@example.com", "p2@example.com"]
    assert [r["email_key"] for r in other["rejected"]] == ["bad@example.com"]


async def test_limit_caps_each_list(
    client: httpx.AsyncClient, auth: Auth, scenario: dict[str, uuid.UUID]
) -> None:
    a = scenario["a"]
    body = (
        await client.get(f"/api/admin/connections/{a}/failures?limit=1", headers=auth(admin=True))
    ).json()
    assert [r["email_key"] for r in body["parked"]] == ["p1@example.com"]
    assert body["limit"] == 1


async def test_rows_still_being_retried_are_not_failures(
    client: httpx.AsyncClient, auth: Auth, scenario: dict[str, uuid.UUID], runtime: Runtime
) -> None:
    # A connection with an audience (queue rows belong to one of its audience mappings).
    c = scenario["d"]
    await add_queue_row(runtime, c, "later@example.com", attempts=2, last_error="timeout")
    rows = await fetch(runtime, "SELECT state FROM sync_queue WHERE connection_id = :c", c=c)
    assert rows == [{"state": "ready"}]
    body = (
        await client.get(f"/api/admin/connections/{c}/failures", headers=auth(admin=True))
    ).json()
    assert body["parked"] == [] and body["rejected"] == []


async def test_unknown_connection_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.get(
        f"/api/admin/connections/{uuid.uuid4()}/failures", headers=auth(admin=True)
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_owners_are_refused(
    client: httpx.AsyncClient, auth: Auth, scenario: dict[str, uuid.UUID]
) -> None:
    path = f"/api/admin/connections/{scenario['a']}/failures"
    assert (await client.get(path, headers=auth("owner-a"))).status_code == 403
    assert (await client.get(path)).status_code == 401
