"""The contacts API over HTTP, with its effects read back from PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.main import Runtime
from tests.conftest import fetch

Auth = Callable[..., dict[str, str]]


async def add_connection(runtime: Runtime, owner: str, *, audience: str | None = "aud1") -> str:
    """A connection row with an audience, so writes queue sync work for it."""
    rows = await fetch(
        runtime,
        """
        INSERT INTO connections (owner_id, provider, auth_kind, credentials, account_key,
                                 api_endpoint, audience_id, webhook_token, status)
        VALUES (:owner, 'mailchimp', 'api_key', 'x', :acct, 'http://sandbox', :aud, :tok,
                CASE WHEN CAST(:aud AS text) IS NULL THEN 'needs_audience' ELSE 'active' END)
        RETURNING id
        """,
        owner=owner,
        acct=f"acct-{owner}",
        aud=audience,
        tok=uuid.uuid4().hex,
    )
    return str(rows[0]["id"])


async def create(client: httpx.AsyncClient, auth: Auth, owner: str = "owner-a", **body: Any) -> Any:
    body.setdefault("email", f"{uuid.uuid4().hex[:8]}@example.com")
    response = await client.post("/api/contacts", json=body, headers=auth(owner))
    assert response.status_code == 201, response.text
    return response


class TestCreate:
    async def test_creates_contact_change_and_queue_row(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        conn_id = await add_connection(runtime, "owner-a")
        response = await client.post(
            "/api/contacts",
            json={
                "email": "  Ada.Lovelace@EXAMPLE.com ",
                "first_name": "Ada",
                "last_name": "Lovelace",
                "tags": [" vip ", "VIP", "", "donor"],
                "newsletter_opt_in": True,
            },
            headers=auth(),
        )
        assert response.status_code == 201
        body = response.json()
        assert body["email"] == "Ada.Lovelace@example.com"
        assert body["tags"] == ["vip", "donor"]
        assert body["version"] == 1
        assert body["newsletter_changed_at"] is not None
        assert response.headers["etag"] == '"1"'
        assert response.headers["location"].endswith(f"/api/contacts/{body['id']}")
        assert body["sync"] == [
            {
                "connection_id": conn_id,
                "provider": "mailchimp",
                "audience_id": "aud1",
                # The connection's default audience mapping has its id.
                "mapping_id": conn_id,
                "audience_name": None,
                "in_audience": True,
                "status": "pending",
                "remote_status": None,
                "last_synced_at": None,
                "error": None,
                "error_kind": None,
            }
        ]
        changes = await fetch(runtime, "SELECT * FROM contact_changes")
        assert [(c["op"], c["source"], c["actor"]) for c in changes] == [
            ("create", "api", "owner-a")
        ]
        assert changes[0]["fields"]["after"]["email"] == "Ada.Lovelace@example.com"
        queue = await fetch(runtime, "SELECT * FROM sync_queue")
        assert [(str(q["connection_id"]), q["email_key"], q["seq"]) for q in queue] == [
            (conn_id, "ada.lovelace@example.com", 1)
        ]

    async def test_duplicate_email_in_other_case_is_409_with_existing_id(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        first = (await create(client, auth, email="grace@example.com")).json()
        response = await client.post(
            "/api/contacts", json={"email": "GRACE@Example.COM"}, headers=auth()
        )
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["existing_id"] == first["id"]
        assert problem["status"] == 409
        assert {"type", "title", "status", "detail", "instance"} <= problem.keys()

    async def test_same_email_for_another_owner_is_fine(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        await create(client, auth, "owner-a", email="shared@example.com")
        await create(client, auth, "owner-b", email="shared@example.com")

    async def test_contact_without_email_queues_nothing(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        response = await client.post(
            "/api/contacts", json={"first_name": "No", "email": None}, headers=auth()
        )
        assert response.status_code == 201
        assert response.json()["sync"][0]["status"] == "not_synced"
        assert await fetch(runtime, "SELECT * FROM sync_queue") == []

    async def test_connection_without_audience_gets_no_queue_row(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a", audience=None)
        await create(client, auth)
        assert await fetch(runtime, "SELECT * FROM sync_queue") == []

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"email": "not-an-email"}, "email"),
            ({"email": "a@b.c", "unknown": 1}, "unknown"),
            ({"email": "x@example.com", "kind": "alien"}, "kind"),
            ({"email": "x@example.com", "tags": "vip"}, "tags"),
            ({"email": "x@example.com", "first_name": "x" * 201}, "first_name"),
            ({"email": "x@example.com", "custom_fields": {"a": {"nested": 1}}}, "custom_fields.a"),
        ],
    )
    async def test_invalid_bodies_are_422_problems(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime, body: Any, field: str
    ) -> None:
        response = await client.post("/api/contacts", json=body, headers=auth())
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        fields = [e["field"] for e in response.json()["errors"]]
        assert any(f.startswith(field) for f in fields), fields
        assert await fetch(runtime, "SELECT * FROM contacts") == []

    async def test_malformed_json_is_422(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await client.post(
            "/api/contacts",
            content=b"{not json",
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"


class TestAuth:
    async def test_missing_token(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/contacts")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"

    @pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
    async def test_malformed_token(self, client: httpx.AsyncClient, token: str) -> None:
        response = await client.get("/api/contacts", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401


class TestRead:
    async def test_get_has_etag_and_sync_lines(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        created = (await create(client, auth)).json()
        response = await client.get(f"/api/contacts/{created['id']}", headers=auth())
        assert response.status_code == 200
        assert response.headers["etag"] == '"1"'
        assert response.json()["id"] == created["id"]

    async def test_unknown_id_is_404(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await client.get(f"/api/contacts/{uuid.uuid4()}", headers=auth())
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"

    async def test_bad_uuid_is_422(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await client.get("/api/contacts/not-a-uuid", headers=auth())
        assert response.status_code == 422

    async def test_list_paginates_with_cursor(self, client: httpx.AsyncClient, auth: Auth) -> None:
        ids = [(await create(client, auth)).json()["id"] for _ in range(5)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/api/contacts", params=params, headers=auth())).json()
            seen += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids

    async def test_list_filters(self, client: httpx.AsyncClient, auth: Auth) -> None:
        await create(client, auth, email="ada@example.com", first_name="Ada", tags=["vip"])
        await create(client, auth, email="bob@example.com", first_name="Bob", kind="lead")
        await create(client, auth, email="cy@example.com", last_name="Adams", kind="client")

        async def emails(**params: Any) -> list[str]:
            page = (await client.get("/api/contacts", params=params, headers=auth())).json()
            return sorted(c["email"] for c in page["items"])

        assert await emails(q="ada") == ["ada@example.com", "cy@example.com"]
        assert await emails(q="BOB@") == ["bob@example.com"]
        assert await emails(tag="vip") == ["ada@example.com"]
        assert await emails(kind="lead") == ["bob@example.com"]
        assert await emails(q="%") == []

    async def test_bad_cursor_is_422(self, client: httpx.AsyncClient, auth: Auth) -> None:
        response = await client.get("/api/contacts", params={"cursor": "zzz"}, headers=auth())
        assert response.status_code == 422


class TestUpdate:
    async def test_patch_bumps_version_and_queues(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        created = (await create(client, auth, first_name="Ada")).json()
        response = await client.patch(
            f"/api/contacts/{created['id']}",
            json={"first_name": "Augusta", "phone": None},
            headers={**auth(), "If-Match": '"1"'},
        )
        assert response.status_code == 200
        assert response.json()["first_name"] == "Augusta"
        assert response.json()["version"] == 2
        assert response.headers["etag"] == '"2"'
        changes = await fetch(runtime, "SELECT op, fields FROM contact_changes ORDER BY id")
        assert changes[-1]["op"] == "update"
        assert changes[-1]["fields"] == {
            "before": {"first_name": "Ada"},
            "after": {"first_name": "Augusta"},
        }
        queue = await fetch(runtime, "SELECT seq FROM sync_queue")
        assert [q["seq"] for q in queue] == [2]

    async def test_patch_without_changes_is_a_no_op(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        created = (await create(client, auth, first_name="Ada")).json()
        response = await client.patch(
            f"/api/contacts/{created['id']}", json={"first_name": "Ada"}, headers=auth()
        )
        assert response.status_code == 200
        assert response.json()["version"] == 1
        assert len(await fetch(runtime, "SELECT * FROM contact_changes")) == 1

    async def test_stale_if_match_is_412_and_changes_nothing(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        created = (await create(client, auth, first_name="Ada")).json()
        await client.patch(
            f"/api/contacts/{created['id']}", json={"first_name": "B"}, headers=auth()
        )
        response = await client.patch(
            f"/api/contacts/{created['id']}",
            json={"first_name": "C"},
            headers={**auth(), "If-Match": '"1"'},
        )
        assert response.status_code == 412
        assert response.json()["current_etag"] == '"2"'
        row = await fetch(runtime, "SELECT first_name FROM contacts")
        assert row == [{"first_name": "B"}]

    async def test_email_change_queues_both_keys(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        created = (await create(client, auth, email="old@example.com")).json()
        await client.patch(
            f"/api/contacts/{created['id']}", json={"email": "new@example.com"}, headers=auth()
        )
        keys = await fetch(runtime, "SELECT email_key FROM sync_queue ORDER BY email_key")
        assert [k["email_key"] for k in keys] == ["new@example.com", "old@example.com"]

    async def test_email_change_to_taken_address_is_409(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        a = (await create(client, auth, email="a@example.com")).json()
        b = (await create(client, auth, email="b@example.com")).json()
        response = await client.patch(
            f"/api/contacts/{b['id']}", json={"email": "A@example.com"}, headers=auth()
        )
        assert response.status_code == 409
        assert response.json()["existing_id"] == a["id"]
        rows = await fetch(runtime, "SELECT email FROM contacts ORDER BY email")
        assert [r["email"] for r in rows] == ["a@example.com", "b@example.com"]

    async def test_new_change_re_arms_a_parked_row(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        created = (await create(client, auth)).json()
        await fetch(
            runtime,
            "UPDATE sync_queue SET state = 'parked', attempts = 5, last_error = 'boom' RETURNING 1",
        )
        await client.patch(f"/api/contacts/{created['id']}", json={"city": "Paris"}, headers=auth())
        rows = await fetch(runtime, "SELECT state, attempts, last_error, seq FROM sync_queue")
        assert rows == [{"state": "ready", "attempts": 0, "last_error": None, "seq": 2}]

    async def test_null_on_required_field_is_422(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        created = (await create(client, auth)).json()
        response = await client.patch(
            f"/api/contacts/{created['id']}", json={"newsletter_opt_in": None}, headers=auth()
        )
        assert response.status_code == 422


class TestDeleteAndForget:
    async def test_delete_removes_and_queues(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        created = (await create(client, auth, email="gone@example.com")).json()
        response = await client.delete(f"/api/contacts/{created['id']}", headers=auth())
        assert response.status_code == 204
        assert await fetch(runtime, "SELECT * FROM contacts") == []
        queue = await fetch(runtime, "SELECT email_key, contact_id, forget FROM sync_queue")
        assert queue == [
            {
                "email_key": "gone@example.com",
                "contact_id": uuid.UUID(created["id"]),
                "forget": False,
            }
        ]
        ops = await fetch(runtime, "SELECT op FROM contact_changes ORDER BY id")
        assert [o["op"] for o in ops] == ["create", "delete"]
        again = await client.delete(f"/api/contacts/{created['id']}", headers=auth())
        assert again.status_code == 404

    async def test_forget_erases_data_and_queues_forget(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        created = (await create(client, auth, email="erase@example.com", first_name="E")).json()
        response = await client.post(f"/api/contacts/{created['id']}/forget", headers=auth())
        assert response.status_code == 200
        assert response.json() == {"id": created["id"], "forgotten": True, "queued_connections": 1}
        assert await fetch(runtime, "SELECT * FROM contacts") == []
        changes = await fetch(runtime, "SELECT op, fields FROM contact_changes ORDER BY id")
        assert [c["op"] for c in changes] == ["create", "forget"]
        assert all(c["fields"] == {} for c in changes)  # no personal data left in the audit
        queue = await fetch(runtime, "SELECT forget FROM sync_queue")
        assert queue == [{"forget": True}]


class TestTenantIsolation:
    async def test_other_owner_gets_404_everywhere(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        created = (await create(client, auth, "owner-a")).json()
        url = f"/api/contacts/{created['id']}"
        other = auth("owner-b")
        assert (await client.get(url, headers=other)).status_code == 404
        assert (await client.patch(url, json={"city": "X"}, headers=other)).status_code == 404
        assert (await client.delete(url, headers=other)).status_code == 404
        assert (await client.post(f"{url}/forget", headers=other)).status_code == 404
        page = (await client.get("/api/contacts", headers=other)).json()
        assert page["items"] == []
        rows = await fetch(runtime, "SELECT city, version FROM contacts")
        assert rows == [{"city": None, "version": 1}]


class TestCompany:
    """`company` is a core field: written, validated, audited, listed, queued."""

    async def test_create_get_patch_and_audit(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await add_connection(runtime, "owner-a")
        created = (await create(client, auth, company="  Analytical Engines Ltd ")).json()
        assert created["company"] == "Analytical Engines Ltd"
        url = f"/api/contacts/{created['id']}"
        assert (await client.get(url, headers=auth())).json()["company"] == (
            "Analytical Engines Ltd"
        )
        response = await client.patch(url, json={"company": "Babbage & Co"}, headers=auth())
        assert response.status_code == 200
        assert response.json()["company"] == "Babbage & Co"
        assert response.json()["version"] == 2
        cleared = await client.patch(url, json={"company": "  "}, headers=auth())
        assert cleared.json()["company"] is None
        changes = await fetch(runtime, "SELECT op, fields FROM contact_changes ORDER BY id")
        assert changes[0]["fields"]["after"]["company"] == "Analytical Engines Ltd"
        assert [c["fields"] for c in changes[1:]] == [
            {"before": {"company": "Analytical Engines Ltd"}, "after": {"company": "Babbage & Co"}},
            {"before": {"company": "Babbage & Co"}, "after": {"company": None}},
        ]
        # Every company change is sync work: the worker decides from the digest what to send.
        queue = await fetch(runtime, "SELECT seq FROM sync_queue")
        assert [q["seq"] for q in queue] == [3]

    @pytest.mark.parametrize("company", ["x" * 201, 42, ["Acme"], "nul\x00"])
    async def test_invalid_company_is_422_and_writes_nothing(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime, company: Any
    ) -> None:
        response = await client.post(
            "/api/contacts", json={"email": "c@example.com", "company": company}, headers=auth()
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert any(e["field"].startswith("company") for e in response.json()["errors"])
        assert await fetch(runtime, "SELECT * FROM contacts") == []

    async def test_list_filters_by_company_and_searches_it(
        self, client: httpx.AsyncClient, auth: Auth
    ) -> None:
        await create(client, auth, email="ada@example.com", company="Analytical Engines")
        await create(client, auth, email="bob@example.com", company="analytical engines")
        await create(client, auth, email="cy@example.com", company="Difference Ltd")
        await create(client, auth, "owner-b", email="dee@example.com", company="Analytical Engines")

        async def emails(**params: Any) -> list[str]:
            page = (await client.get("/api/contacts", params=params, headers=auth())).json()
            return sorted(c["email"] for c in page["items"])

        assert await emails(company="ANALYTICAL ENGINES") == ["ada@example.com", "bob@example.com"]
        assert await emails(company="Analytical") == []  # exact, not a prefix
        assert await emails(q="difference") == ["cy@example.com"]
        response = await client.get("/api/contacts", params={"company": "a\x00"}, headers=auth())
        assert response.status_code == 422
