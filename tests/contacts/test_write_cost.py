"""A write's statements read the rows they touch by key, whatever the owner's connections hold.

P6 (3 December): with four connections, the write statement's lookups of the mirror and the
queue bound only the connection (and the email key as a filter), so every write walked every
mirror and queue row of each connection: ~3,000 buffers per write with 2,000 contacts synced,
growing with every contact. The planner chose that with no statistics on the tables, the state
of a server with autovacuum off or behind (this CI's, P6's), which the tests recreate.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app.main import Runtime
from tests.conftest import fetch
from tests.contacts.test_atomicity import add_connection
from tests.support.plans import buffers, capturing, explained

Auth = Callable[..., dict[str, str]]
PROVIDERS = ("mailchimp", "constantcontact", "activecampaign", "mautic")
ROWS = 1_500  # mirror rows and queue rows per connection; ~12 index pages each


async def fill(runtime: Runtime) -> None:
    """Four connections, each with ROWS mirror rows and ROWS queued rows (some deleted, as a
    draining worker leaves them until vacuum), and no statistics."""
    for provider in PROVIDERS:
        await add_connection(runtime, provider=provider)
    await fetch(
        runtime,
        """
        INSERT INTO sync_state (connection_id, mapping_id, email_key, remote_id,
                                remote_status, last_synced_at)
        SELECT m.connection_id, m.id, 'm' || g || '@example.com', g::text, 'subscribed', now()
        FROM audience_mappings m, generate_series(1, :n) g
        """,
        n=ROWS,
    )
    await fetch(
        runtime,
        """
        INSERT INTO sync_queue (connection_id, mapping_id, email_key)
        SELECT m.connection_id, m.id, 'q' || g || '@example.com'
        FROM audience_mappings m, generate_series(1, :n) g
        """,
        n=ROWS,
    )
    await fetch(runtime, "DELETE FROM sync_queue WHERE email_key < 'q5'")
    # Statistics an earlier test's ANALYZE left would describe other rows.
    await fetch(
        runtime,
        """
        DELETE FROM pg_statistic
        WHERE starelid IN ('sync_state'::regclass, 'sync_queue'::regclass)
        """,
    )


class TestWriteCost:
    async def test_a_create_reads_few_pages_with_four_full_connections(
        self, client: httpx.AsyncClient, auth: Auth, runtime: Runtime
    ) -> None:
        await fill(runtime)
        with capturing(
            runtime, lambda sql: "contact_changes" in sql and "sync_queue" in sql
        ) as captured:
            response = await client.post(
                "/api/contacts",
                json={"email": "m7@example.com", "newsletter_opt_in": True},
                headers=auth(),
            )
        assert response.status_code == 201, response.text
        # The contact's key has a mirror row at every connection (synced before), as a
        # re-created contact would: the lookups find rows, not only miss.
        assert len(response.json()["sync"]) == 4
        assert [s["status"] for s in response.json()["sync"]] == ["pending"] * 4

        ((statement, parameters),) = captured
        plan = await explained(runtime, statement, parameters)
        # Without the full-key lookups: ~3,000 (every mirror row of each connection, twice).
        assert buffers(plan["Plan"]) < 300, buffers(plan["Plan"])
