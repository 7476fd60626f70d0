"""The admin API over HTTP: numbers checked against rows written straight into PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta as td
from typing import Any

import httpx
import pytest

from app.connections.notices import PAUSED_NOTICE
from app.main import Runtime
from tests.conftest import fetch

Auth = Callable[..., dict[str, str]]


async def add_connection(
    runtime: Runtime,
    owner: str,
    *,
    status: str = "active",
    audience: str | None = "aud1",
    **columns: Any,
) -> uuid.UUID:
    """A connection row, inserted directly (connect flows are not this suite's subject)."""
    extra = "".join(f", {k}" for k in columns)
    values = "".join(f", :{k}" for k in columns)
    rows = await fetch(
        runtime,
        f"""
        INSERT INTO connections (owner_id, provider, auth_kind, credentials, account_key,
                                 api_endpoint, audience_id, audience_name, webhook_token,
                                 status{extra})
        VALUES (:owner, 'mailchimp', 'api_key', 'x', :acct, 'http://sandbox', :aud,
                :aud_name, :tok, :status{values})
        RETURNING id
        """,
        owner=owner,
        acct=f"acct-{owner}",
        aud=audience,
        aud_name=f"{audience} list" if audience else None,
        tok=uuid.uuid4().hex,
        status=status,
        **columns,
    )
    return rows[0]["id"]  # type: ignore[no-any-return]


async def add_queue_row(
    runtime: Runtime,
    connection_id: uuid.UUID,
    key: str,
    *,
    state: str = "ready",
    lease: td | None = None,
    age: td = td(0),
    attempts: int = 0,
    last_error: str | None = None,
) -> None:
    """A sync_queue row leased until now() + `lease`, enqueued `age` ago."""
    await fetch(
        runtime,
        """
        INSERT INTO sync_queue (connection_id, mapping_id, email_key, state, attempts, last_error,
                                lease_until, leased_by, enqueued_at, available_at)
        VALUES (:conn, :conn, :key, :state, :attempts, :err,
                now() + CAST(:lease AS interval),
                CASE WHEN CAST(:lease AS interval) IS NULL THEN NULL ELSE 'worker-1' END,
                now() - CAST(:age AS interval), now() + interval '10 minutes')
        """,
        conn=connection_id,
        key=key,
        state=state,
        attempts=attempts,
        err=last_error,
        lease=lease,
        age=age,
    )


async def add_mirror_row(
    runtime: Runtime, connection_id: uuid.UUID, key: str, *, rejected: bool = False
) -> None:
    await fetch(
        runtime,
        """
        INSERT INTO sync_state (connection_id, mapping_id, email_key, remote_status, error_kind,
                                error, last_synced_at)
        VALUES (:conn, :conn, :key,
                CASE WHEN :rejected THEN 'rejected' ELSE 'subscribed' END,
                CASE WHEN :rejected THEN 'invalid_email' END,
                CASE WHEN :rejected THEN 'looks fake or invalid' END,
                now())
        """,
        conn=connection_id,
        key=key,
        rejected=rejected,
    )


@pytest.fixture
async def scenario(runtime: Runtime) -> dict[str, uuid.UUID]:
    """Two owners with work in every state, one paused, one errored, one without audience."""
    a = await add_connection(
        runtime,
        "owner-a",
        account_name="Acme",
        last_error="503 from us1.api.mailchimp.com",
    )
    await fetch(
        runtime,
        "UPDATE connections SET last_synced_at = now() - interval '2 minutes',"
        " last_error_at = now() - interval '5 minutes' WHERE id = :id",
        id=a,
    )
    await add_queue_row(runtime, a, "r1@example.com", age=td(hours=1))
    await add_queue_row(runtime, a, "r2@example.com", age=td(seconds=10))
    # A live lease is in flight; an expired lease is ready again for any worker.
    await add_queue_row(runtime, a, "l1@example.com", lease=td(minutes=5), age=td(hours=2))
    await add_queue_row(runtime, a, "x1@example.com", lease=td(minutes=-1), age=td(seconds=30))
    await add_queue_row(runtime, a, "p1@example.com", state="parked", attempts=5, age=td(days=3))
    await add_queue_row(runtime, a, "p2@example.com", state="parked", attempts=5)
    await add_mirror_row(runtime, a, "s1@example.com")
    await add_mirror_row(runtime, a, "bad@example.com", rejected=True)

    b = await add_connection(
        runtime, "owner-b", status="paused", status_reason="repeated 503s from Mailchimp"
    )
    await add_queue_row(runtime, b, "r1@example.com", age=td(minutes=20))
    await add_queue_row(
        runtime, b, "p1@example.com", state="parked", attempts=5, last_error="503 Service"
    )
    await add_mirror_row(runtime, b, "bad1@example.com", rejected=True)
    await add_mirror_row(runtime, b, "bad2@example.com", rejected=True)

    c = await add_connection(runtime, "owner-c", status="needs_audience", audience=None)
    d = await add_connection(
        runtime, "owner-d", status="error", status_reason="Mailchimp revoked the access token"
    )
    return {"a": a, "b": b, "c": c, "d": d}


class TestSyncStatus:
    async def test_numbers_match_the_database(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        scenario: dict[str, uuid.UUID],
    ) -> None:
        response = await client.get("/api/admin/sync-status", headers=auth("ops", admin=True))
        assert response.status_code == 200, response.text
        body = response.json()
        by_id = {c["connection_id"]: c for c in body["connections"]}
        assert [c["owner_id"] for c in body["connections"]] == [
            "owner-a",
            "owner-b",
            "owner-c",
            "owner-d",
        ]

        a = by_id[str(scenario["a"])]
        assert a["queue"] == {"ready": 3, "leased": 1, "parked": 2, "total": 6}
        assert a["parked"] == 2
        assert a["rejected"] == 1
        assert a["status"] == "active"
        assert a["notice"] is None
        assert a["audience"] == {"id": "aud1", "name": "aud1 list"}
        assert a["account_name"] == "Acme"
        assert a["last_error"] == "503 from us1.api.mailchimp.com"
        assert a["last_error_at"] is not None
        assert a["last_synced_at"] is not None
        # The oldest not-yet-sent row is the leased one, enqueued two hours ago; the parked
        # row from three days ago is not waiting to be sent, so it does not count.
        assert 7190 <= a["oldest_ready_age_seconds"] <= 7200 + 300

        b = by_id[str(scenario["b"])]
        assert b["queue"] == {"ready": 1, "leased": 0, "parked": 1, "total": 2}
        assert b["rejected"] == 2
        assert b["notice"] == PAUSED_NOTICE
        assert b["status_reason"] == "repeated 503s from Mailchimp"
        assert 1190 <= b["oldest_ready_age_seconds"] <= 1200 + 300

        c = by_id[str(scenario["c"])]
        assert c["audience"] is None
        assert c["queue"]["total"] == 0
        assert c["oldest_ready_age_seconds"] is None
        assert c["notice"] is not None

        d = by_id[str(scenario["d"])]
        assert d["notice"] == "Reconnect Mailchimp: Mailchimp revoked the access token"

        totals = body["totals"]
        assert totals["connections"] == 4
        assert totals["by_status"] == {"active": 1, "paused": 1, "needs_audience": 1, "error": 1}
        assert totals["queue"] == {"ready": 4, "leased": 1, "parked": 3, "total": 8}
        assert totals["parked"] == 3
        assert totals["rejected"] == 3
        assert totals["oldest_ready_age_seconds"] == a["oldest_ready_age_seconds"]
        assert totals["last_synced_at"] == a["last_synced_at"]

        # The same figures, counted independently in the database.
        (db,) = await fetch(
            runtime,
            """
            SELECT count(*) AS total,
                   count(*) FILTER (WHERE state = 'parked') AS parked,
                   count(*) FILTER (WHERE state = 'ready' AND lease_until > now()) AS leased,
                   (SELECT count(*) FROM sync_state WHERE error_kind IS NOT NULL) AS rejected
            FROM sync_queue
            """,
        )
        assert totals["queue"]["total"] == db["total"]
        assert totals["parked"] == db["parked"]
        assert totals["queue"]["leased"] == db["leased"]
        assert totals["rejected"] == db["rejected"]

    async def test_empty_database(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await client.get("/api/admin/sync-status", headers=auth("ops", admin=True))
        assert response.status_code == 200
        body = response.json()
        assert body["connections"] == []
        assert body["totals"]["connections"] == 0
        assert body["totals"]["queue"]["total"] == 0
        assert body["totals"]["oldest_ready_age_seconds"] is None

    async def test_non_admin_is_403(
        self, client: httpx.AsyncClient, auth: Auth, scenario: dict[str, uuid.UUID]
    ) -> None:
        response = await client.get("/api/admin/sync-status", headers=auth("owner-a"))
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"

    async def test_no_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/admin/sync-status")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


class TestRetry:
    async def test_parked_rows_become_ready(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        scenario: dict[str, uuid.UUID],
    ) -> None:
        a = scenario["a"]
        response = await client.post(
            f"/api/admin/connections/{a}/retry", headers=auth("ops", admin=True)
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "connection_id": str(a),
            "requeued": 2,
            "status": "active",
            "notice": None,
        }
        rows = await fetch(
            runtime,
            "SELECT email_key, state, attempts, available_at <= now() AS due, lease_until"
            " FROM sync_queue WHERE connection_id = :id AND email_key LIKE 'p%' ORDER BY 1",
            id=a,
        )
        assert [(r["email_key"], r["state"], r["attempts"], r["due"]) for r in rows] == [
            ("p1@example.com", "ready", 0, True),
            ("p2@example.com", "ready", 0, True),
        ]
        # Other connections' parked rows are untouched.
        other = await fetch(
            runtime,
            "SELECT state, attempts, last_error FROM sync_queue WHERE connection_id = :id"
            " AND email_key = 'p1@example.com'",
            id=scenario["b"],
        )
        assert other == [{"state": "parked", "attempts": 5, "last_error": "503 Service"}]
        status = (
            await client.get("/api/admin/sync-status", headers=auth("ops", admin=True))
        ).json()
        assert status["totals"]["parked"] == 1

    async def test_keeps_last_error_and_reports_paused_connection(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        scenario: dict[str, uuid.UUID],
    ) -> None:
        b = scenario["b"]
        response = await client.post(
            f"/api/admin/connections/{b}/retry", headers=auth("ops", admin=True)
        )
        assert response.json()["requeued"] == 1
        assert response.json()["status"] == "paused"
        assert response.json()["notice"] == PAUSED_NOTICE
        rows = await fetch(
            runtime,
            "SELECT state, last_error FROM sync_queue WHERE connection_id = :id"
            " AND email_key = 'p1@example.com'",
            id=b,
        )
        assert rows == [{"state": "ready", "last_error": "503 Service"}]

    async def test_notifies_workers(
        self, client: httpx.AsyncClient, auth: Auth, settings: Any, runtime: Runtime
    ) -> None:
        import asyncio

        import asyncpg

        from app.db import to_libpq_url

        conn_id = await add_connection(runtime, "owner-a")
        await add_queue_row(runtime, conn_id, "p@example.com", state="parked")
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = await asyncpg.connect(to_libpq_url(str(settings.DATABASE_URL)))
        try:
            await listener.add_listener("sync_queue", lambda *args: heard.put_nowait(args[2]))
            response = await client.post(
                f"/api/admin/connections/{conn_id}/retry", headers=auth("ops", admin=True)
            )
            assert response.json()["requeued"] == 1
            assert await asyncio.wait_for(heard.get(), timeout=5) == "sync_queue"
        finally:
            await listener.close()

    async def test_nothing_parked_is_zero(
        self, client: httpx.AsyncClient, auth: Auth, scenario: dict[str, uuid.UUID]
    ) -> None:
        response = await client.post(
            f"/api/admin/connections/{scenario['c']}/retry", headers=auth("ops", admin=True)
        )
        assert response.status_code == 200
        assert response.json()["requeued"] == 0

    async def test_unknown_connection_is_404(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await client.post(
            f"/api/admin/connections/{uuid.uuid4()}/retry", headers=auth("ops", admin=True)
        )
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"

    async def test_non_admin_is_403_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        auth: Auth,
        runtime: Runtime,
        scenario: dict[str, uuid.UUID],
    ) -> None:
        response = await client.post(
            f"/api/admin/connections/{scenario['a']}/retry", headers=auth("owner-a")
        )
        assert response.status_code == 403
        parked = await fetch(runtime, "SELECT count(*) AS n FROM sync_queue WHERE state='parked'")
        assert parked == [{"n": 3}]

    async def test_no_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.post(f"/api/admin/connections/{uuid.uuid4()}/retry")
        assert response.status_code == 401
