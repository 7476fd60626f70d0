"""The per-account cap across worker processes: slot leases in PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest

from app.main import Runtime
from app.sync.slots import (
    BURST_MIN,
    RESTORE_AFTER,
    SLOT_RETRY,
    SlotManager,
    SlotsUnavailable,
    is_dead_local,
    worker_identity,
)
from tests.conftest import fetch


async def hold(manager: SlotManager, n: int, release: asyncio.Event) -> list[asyncio.Task[None]]:
    gate = manager.gate("acct")

    async def one() -> None:
        async with gate.slot(margin=0.0):
            await release.wait()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0.05)
    return tasks


async def test_two_workers_never_exceed_the_cap(runtime: Runtime) -> None:
    a = SlotManager(runtime.engine, me="host:1:1", cap=4, ttl=30, idle_release=0.0)
    b = SlotManager(runtime.engine, me="host:2:2", cap=4, ttl=30, idle_release=0.0)
    release = asyncio.Event()
    a_tasks = await hold(a, 6, release)
    b_tasks = await hold(b, 6, release)
    await a.tick()
    await b.tick()
    await asyncio.sleep(0.05)
    assert a.gate("acct").held == 4
    assert b.gate("acct").held == 0
    assert a.gate("acct").in_flight == 4  # the other two wait for a slot
    rows = await fetch(
        runtime,
        "SELECT holder, count(*) AS n FROM provider_slots WHERE holder IS NOT NULL GROUP BY holder",
    )
    assert rows == [{"holder": "host:1:1", "n": 4}]
    release.set()
    await asyncio.gather(*a_tasks)
    await a.tick()  # idle: A gives its slots back
    await b.tick()  # B's waiters get them
    assert b.gate("acct").held == 4
    await asyncio.gather(*b_tasks)
    await a.release_all()
    await b.release_all()


async def test_a_dead_local_holders_slots_are_taken_at_once(runtime: Runtime) -> None:
    host = socket.gethostname()
    dead = f"{host}:999999:12345"  # no such pid on this host
    assert is_dead_local(dead)
    assert not is_dead_local(worker_identity())
    assert not is_dead_local("other-host:1:1")
    await fetch(
        runtime,
        "INSERT INTO provider_slots (account_key, slot, holder, lease_until)"
        " SELECT 'acct', g, :h, now() + interval '1 hour' FROM generate_series(0, 3) g",
        h=dead,
    )
    m = SlotManager(runtime.engine, me=worker_identity(), cap=4, ttl=30)
    release = asyncio.Event()
    tasks = await hold(m, 2, release)
    await m.tick()
    # As many of the dead holder's slots as the two requests need, without waiting for its
    # hour-long lease.
    assert m.gate("acct").held == 2
    assert m.gate("acct").in_flight == 2
    rows = await fetch(
        runtime,
        "SELECT holder, count(*) AS n FROM provider_slots GROUP BY holder ORDER BY holder",
    )
    assert {r["holder"]: r["n"] for r in rows} == {dead: 2, worker_identity(): 2}
    release.set()
    await asyncio.gather(*tasks)
    await m.release_all()


async def test_a_worker_leases_only_the_slots_its_requests_need(runtime: Runtime) -> None:
    # Worker A has one request for the account; worker B then gets one: both go at once. (A
    # used to lease every free slot and keep them until it had been idle a while, so B's
    # request waited for that, or starved and gave its rows back.)
    a = SlotManager(runtime.engine, me="host:1:1", cap=10, ttl=30, idle_release=60.0)
    b = SlotManager(runtime.engine, me="host:2:2", cap=10, ttl=30, idle_release=60.0)
    release = asyncio.Event()
    a_tasks = await hold(a, 1, release)
    await a.tick()
    assert (a.gate("acct").held, a.gate("acct").in_flight) == (1, 1)
    b_tasks = await hold(b, 1, release)
    await b.tick()
    assert (b.gate("acct").held, b.gate("acct").in_flight) == (1, 1)
    # More requests of A: it leases more, up to the cap less what B holds.
    more = await hold(a, 12, release)
    await a.tick()
    assert a.gate("acct").held == 9 and a.gate("acct").in_flight == 9
    rows = await fetch(
        runtime,
        "SELECT holder, count(*) AS n FROM provider_slots WHERE holder IS NOT NULL"
        " GROUP BY holder ORDER BY holder",
    )
    assert rows == [{"holder": "host:1:1", "n": 9}, {"holder": "host:2:2", "n": 1}]
    release.set()
    await asyncio.gather(*a_tasks, *b_tasks, *more)
    await a.release_all()
    await b.release_all()


async def test_starved_waiter_gives_up(runtime: Runtime) -> None:
    m = SlotManager(runtime.engine, me="host:3:3", cap=2, ttl=30)
    gate = m.gate("acct")
    with pytest.raises(SlotsUnavailable):
        async with gate.slot(margin=0.0, starve_after=0.2):
            pass


async def test_throttle_cuts_concurrency_and_cools_down(runtime: Runtime) -> None:
    m = SlotManager(runtime.engine, me="host:4:4", cap=8, ttl=30)
    gate = m.gate("acct")
    base = gate.cooldown_base

    def cooled_down() -> None:  # as if the cool-down's time had passed
        gate.cooldown_until = 0.0

    # Lone 429s among successes cost the account nothing: no pause, no cut.
    for _ in range(3):
        for _ in range(4):
            gate.succeeded()
        assert gate.throttled(retry_after=None) == 0.0
    assert (gate.limit, gate.cooldown_until) == (8, 0.0)
    assert not gate.in_burst()
    gate._answers.clear()  # a second later: the successes are out of the window
    gate._throttles = 0
    # A burst (BURST_MIN throttles, at least as many as successes) is the account over its
    # limit: the third in a row starts the cool-down.
    for _ in range(BURST_MIN - 1):
        assert gate.throttled(retry_after=None) == 0.0
    assert gate.throttled(retry_after=None) == pytest.approx(base, abs=0.01)
    assert gate.in_burst()
    assert gate.limit == 6  # a quarter off, not half: one burst is not a reason to crawl
    assert gate.allowed(gate.cooldown_until - 0.1, margin=0) == 0
    # More 429s of the same burst (sent before the cool-down began) change nothing.
    assert gate.throttled(retry_after=None) <= base
    assert gate.limit == 6
    cooled_down()
    assert gate.throttled(retry_after=None) == pytest.approx(2 * base, abs=0.01)  # again: doubles
    assert gate.limit == 5
    for _ in range(RESTORE_AFTER):
        gate.succeeded()
    assert gate.limit == 6  # concurrency comes back step by step
    cooled_down()
    assert gate.throttled(retry_after=7.0) == pytest.approx(7.0, abs=0.01)  # Retry-After wins
    cooled_down()
    gate.succeeded()
    assert gate.throttled(retry_after=None) == pytest.approx(base, abs=0.01)  # reset by a success
    for _ in range(20):
        cooled_down()
        gate.throttled(retry_after=None)
    assert gate.limit == 1
    assert gate.cooldown_step == 30.0  # the escalation is capped


async def test_live_requests_go_before_bulk(runtime: Runtime) -> None:
    m = SlotManager(runtime.engine, me="host:5:5", cap=1, ttl=30)
    gate = m.gate("acct")
    order: list[str] = []
    first_done = asyncio.Event()

    async def use(name: str, live: bool, hold: asyncio.Event | None = None) -> None:
        async with gate.slot(margin=0.0, live=live):
            order.append(name)
            if hold is not None:
                await hold.wait()

    holder = asyncio.create_task(use("first", True, first_done))
    await asyncio.sleep(0.01)
    await m.tick()  # one slot leased; "first" holds it
    await asyncio.sleep(0.01)
    bulk = [asyncio.create_task(use(f"bulk{i}", False)) for i in range(3)]
    await asyncio.sleep(0.01)
    live = asyncio.create_task(use("live", True))
    await asyncio.sleep(0.01)
    first_done.set()
    await asyncio.gather(holder, live, *bulk)
    assert order[:2] == ["first", "live"]
    assert sorted(order[2:]) == ["bulk0", "bulk1", "bulk2"]
    # Every waiter handed a slot left its line: none is counted as waiting any more.
    assert gate.waiters == 0
    assert gate.in_flight == 0
    await m.release_all()


async def test_a_waiter_that_gives_up_leaves_its_line(runtime: Runtime) -> None:
    m = SlotManager(runtime.engine, me="host:6:6", cap=1, ttl=30)
    gate = m.gate("acct")
    release = asyncio.Event()

    async def use() -> None:
        async with gate.slot(margin=0.0):
            await release.wait()

    holder = asyncio.create_task(use())
    await asyncio.sleep(0.01)
    await m.tick()
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(use())
    await asyncio.sleep(0.01)
    assert gate.waiters == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.waiters == 0
    release.set()
    await holder
    assert gate.in_flight == 0
    await m.release_all()


async def test_an_account_can_have_its_own_cap(runtime: Runtime) -> None:
    # A provider's declared concurrency (e.g. 2) holds for its accounts beside the default.
    m = SlotManager(runtime.engine, me="host:9:9", cap=8, ttl=30, idle_release=0.0)
    release = asyncio.Event()
    small = m.gate("small", cap=2)
    assert m.gate("small", cap=5) is small  # the first declaration stays

    async def one() -> None:
        async with small.slot(margin=0.0):
            await release.wait()

    tasks = [asyncio.create_task(one()) for _ in range(4)]
    await asyncio.sleep(0.05)
    await m.tick()
    await asyncio.sleep(0.05)
    assert (small.held, small.in_flight) == (2, 2)
    rows = await fetch(
        runtime, "SELECT count(*) AS n FROM provider_slots WHERE account_key = 'small'"
    )
    assert rows == [{"n": 2}]
    release.set()
    await asyncio.gather(*tasks)


async def test_a_request_that_wants_a_slot_during_a_tick_starts_the_next_one(
    runtime: Runtime,
) -> None:
    # The loop's own interval is an hour here: only a wake-up serves the request. It asks
    # while a tick runs, after that tick read the demand: that tick leases nothing for it.
    manager = SlotManager(runtime.engine, me="host:1:1", cap=2, ttl=3600, tick_every=3600)
    gate = manager.gate("acct")
    served = asyncio.Event()
    ticks = 0
    real_tick = manager.tick

    async def one() -> None:
        async with gate.slot(margin=0.0):
            served.set()

    async def tick() -> None:
        nonlocal ticks
        ticks += 1
        await real_tick()
        if ticks == 1:
            asked.append(asyncio.create_task(one()))
            await asyncio.sleep(0.05)  # it queues and wakes the loop, mid-tick
            assert not served.is_set()

    asked: list[asyncio.Task[None]] = []
    manager.tick = tick  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.create_task(manager.run(stop))
    try:
        await asyncio.wait_for(served.wait(), timeout=30)
        assert ticks == 2  # served by the tick its wake-up started
        await asyncio.gather(*asked)
    finally:
        stop.set()
        manager.wake.set()
        await loop


async def test_the_slot_loop_ticks_only_when_something_is_due(runtime: Runtime) -> None:
    # The loop used to run a transaction every second whatever the gates did (B1 at 100 ms:
    # one a second through the whole drain). Now: a lease for a waiting request at once, the
    # renewal every quarter of the ttl, an idle gate's release after idle_release, and
    # nothing at all while no slot is held.
    m = SlotManager(runtime.engine, me="host:7:7", cap=4, ttl=40, idle_release=0.3)
    ticks = []
    tick = m.tick

    async def counted() -> None:
        ticks.append(m.gate("acct").held)
        await tick()

    m.tick = counted  # type: ignore[method-assign]
    stop, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.create_task(m.run(stop))
    await asyncio.sleep(0.05)
    assert ticks == [0]  # the first pass; no gate, so nothing due after it
    assert m.next_tick(time.monotonic()) == math.inf
    tasks = await hold(m, 2, release)
    assert m.gate("acct").in_flight == 2
    start = len(ticks)
    await asyncio.sleep(1.5)  # busy, leases fresh: no tick (the old loop: one a second)
    assert len(ticks) == start
    assert m.next_tick(time.monotonic()) == pytest.approx(m.gate("acct").deadline - 30.0)
    release.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.6)  # idle: released after idle_release, then nothing more to do
    assert m.gate("acct").held == 0
    rows = await fetch(runtime, "SELECT count(*) AS n FROM provider_slots WHERE holder IS NOT NULL")
    assert rows == [{"n": 0}]
    assert m.next_tick(time.monotonic()) == math.inf
    stop.set()
    m.wake.set()
    await loop


async def test_a_gate_short_of_slots_retries_every_second(runtime: Runtime) -> None:
    # Another worker holds the account's slots: the loop tries again every SLOT_RETRY, as
    # the one-second loop did, so slots the other one frees are taken soon.
    other = SlotManager(runtime.engine, me="host:5:5", cap=2, ttl=30, idle_release=60.0)
    release = asyncio.Event()
    held = await hold(other, 2, release)
    await other.tick()
    m = SlotManager(runtime.engine, me="host:6:6", cap=2, ttl=30, idle_release=60.0)
    waiting = await hold(m, 1, release)
    await m.tick()
    gate = m.gate("acct")
    assert (gate.held, gate.demand) == (0, 1)
    now = time.monotonic()
    assert m.next_tick(now) == pytest.approx(now + SLOT_RETRY)
    release.set()
    await asyncio.gather(*held)
    await other.release_all()
    stop = asyncio.Event()
    loop = asyncio.create_task(m.run(stop))
    await asyncio.gather(*waiting)
    stop.set()
    m.wake.set()
    await loop
