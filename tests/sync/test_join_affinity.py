"""Live rows of a provider that joins waiting creates (`joins_creates`) are dealt over the
workers holding request slots: each connection's live rows go to one worker, the connections spread
over all of them, and none is left without a taker."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from app.main import Runtime
from app.sync.engine import Halt, SyncEngine
from app.sync.limits import PRIORITY_LIVE, request_priority
from app.sync.queue import QueueRepository
from app.sync.slots import SlotsUnavailable
from tests.conftest import fetch


async def joining_connections(runtime: Runtime, connection: dict[str, Any], n: int) -> list[Any]:
    """`n` Constant Contact connections (copies of `connection` under other owners)."""
    out = []
    for i in range(n):
        (row,) = await fetch(
            runtime,
            """
            INSERT INTO connections
            SELECT (jsonb_populate_record(NULL::connections, to_jsonb(c) || jsonb_build_object(
                'id', gen_random_uuid(), 'owner_id', gen_random_uuid(),
                'provider', 'constantcontact', 'account_key', CAST(:account AS text),
                'webhook_token', gen_random_uuid()::text))).*
            FROM connections c WHERE c.id = :c
            RETURNING id
            """,
            c=connection["id"],
            account=f"cc-account-{i}",
        )
        out.append(row["id"])
    return out


async def hold_a_lease(runtime: Runtime, connection_id: Any, worker: str) -> None:
    """A request slot leased by `worker` (it is busy: it has requests waiting or in flight)."""
    await fetch(
        runtime,
        "INSERT INTO provider_slots (account_key, slot, holder, lease_until)"
        " VALUES (:a, 0, :w, now() + interval '1 minute')",
        a=f"busy-account-{worker}",
        w=worker,
    )


async def claim_live(runtime: Runtime, worker: str, skip: list[uuid.UUID]) -> list[Any]:
    async with runtime.engine.begin() as conn:
        return await QueueRepository(conn).claim(
            me=worker, limit=100, lease_seconds=60, skip_accounts=[], max_priority=0, skip_live=skip
        )


async def queue_live_rows(runtime: Runtime, connection_ids: list[Any], prefix: str) -> None:
    """One due live row for each connection (its mapping id is its own, as the fixtures')."""
    for conn_id in connection_ids:
        await fetch(
            runtime,
            "INSERT INTO sync_queue (connection_id, mapping_id, email_key, priority)"
            " VALUES (:c, :c, :k, 0)",
            c=conn_id,
            k=f"{prefix}-{conn_id}@example.com",
        )


async def claimed_by_fill(engine: SyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """The connections of the groups one claim (`_fill`) took, their groups not run: run, a
    group could send or give back its row before its lease was read (a CI run saw it gone)."""
    claimed: list[uuid.UUID] = []

    async def held(chain: list[Any]) -> None:
        claimed.extend(ctx.id for ctx, _, _ in chain)

    monkeypatch.setattr(engine, "_chain", held)
    assert await engine._fill()
    for task in list(engine._groups):
        with contextlib.suppress(BaseException):
            await task
    return claimed


async def test_each_joining_connections_live_rows_go_to_one_worker_and_all_are_taken(
    runtime: Runtime,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
) -> None:
    ids = await joining_connections(runtime, connection, 4)
    a, b = make_engine(), make_engine()
    a.me, b.me = "worker-a", "worker-b"
    await hold_a_lease(runtime, connection["id"], "worker-a")
    await hold_a_lease(runtime, connection["id"], "worker-b")
    for c in ids:
        for i in range(3):
            await fetch(
                runtime,
                "INSERT INTO sync_queue (connection_id, mapping_id, email_key, priority)"
                " VALUES (:c, :c, :k, 0)",
                c=c,
                k=f"live-{i}-{c}@example.com",
            )
    # Mailchimp's own live row (a provider that does not join) is anyone's.
    await fetch(
        runtime,
        "INSERT INTO sync_queue (connection_id, mapping_id, email_key, priority)"
        " VALUES (:c, :c, 'mc@example.com', 0)",
        c=connection["id"],
    )
    skip_a, skip_b = await a._live_elsewhere(), await b._live_elsewhere()
    assert set(skip_a).isdisjoint(skip_b)
    assert set(skip_a) | set(skip_b) == set(ids)
    assert len(skip_a) == len(skip_b) == 2  # dealt out in turn: two each
    got_b = await claim_live(runtime, "worker-b", skip_b)
    got_a = await claim_live(runtime, "worker-a", skip_a)
    by_a = {r.connection_id for r in got_a if r.connection_id in ids}
    by_b = {r.connection_id for r in got_b if r.connection_id in ids}
    assert by_a == set(ids) - set(skip_a) and by_b == set(ids) - set(skip_b)
    assert len(got_a) + len(got_b) == 4 * 3 + 1  # every live row has a taker
    assert "mc@example.com" in {r.email_key for r in got_b}  # b claimed first: it took it


async def test_a_worker_holding_no_lease_takes_its_own_share_and_nothing_stays_unclaimed(
    runtime: Runtime,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
) -> None:
    ids = await joining_connections(runtime, connection, 3)
    idle = make_engine()
    idle.me = "worker-idle"
    # Nobody holds leases: the one worker asking deals every connection to itself.
    assert await idle._live_elsewhere() == []
    await hold_a_lease(runtime, connection["id"], "worker-busy")
    idle._elsewhere_at = float("-inf")  # its view is re-read (cached for a second)
    skip = await idle._live_elsewhere()
    # Dealt over the busy worker and itself: some for each, so none waits for nobody.
    assert 0 < len(skip) < len(ids)


async def test_a_joining_accounts_held_live_rows_do_not_hold_its_next_ones_back(
    runtime: Runtime,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Live rows of a joining provider stay held until their import's outcome is read; the
    # "swamped" rule (a batch's worth in hand: leave the rest queued) must not stop its next
    # live rows, which the client joins itself. Another provider's account keeps the rule.
    (cc_id,) = await joining_connections(runtime, connection, 1)
    engine = make_engine()
    threshold = engine.options.batch_threshold
    await queue_live_rows(runtime, [cc_id, connection["id"]], "next")
    engine._outstanding_live[connection["account_key"]] = threshold
    engine._outstanding_live["cc-account-0"] = threshold
    engine._joining_accounts["cc-account-0"].add(cc_id)
    assert await claimed_by_fill(engine, monkeypatch) == [cc_id]


async def test_a_dealt_joining_accounts_live_rows_are_claimed_again_at_once_after_a_starved_wait(
    runtime: Runtime,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A live request that waited too long for its account's slot gives its rows back and the
    # worker skips the account for a while, so that another worker takes them. A joining
    # account's live rows dealt to this worker have no other taker: it must claim them again
    # at once. Another provider's starved account stays skipped.
    (cc_id,) = await joining_connections(runtime, connection, 1)
    engine = make_engine()
    assert await engine._live_elsewhere() == []  # the only worker: everything is dealt to it
    contexts = await engine._contexts([cc_id, connection["id"]])
    engine._joining_accounts["cc-account-0"].add(cc_id)
    engine._row_lease_deadline = time.monotonic() + 600

    async def starved() -> None:
        raise SlotsUnavailable("another worker holds every slot")

    token = request_priority.set(PRIORITY_LIVE)
    try:
        for ctx in contexts.values():
            with pytest.raises(Halt):
                await engine._call(ctx, starved)
    finally:
        request_priority.reset(token)
    await queue_live_rows(runtime, [cc_id, connection["id"]], "again")
    assert await claimed_by_fill(engine, monkeypatch) == [cc_id]
