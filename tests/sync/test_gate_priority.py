"""The account gate's order for a provider's `first_ops`: a request that finishes work already
sent (Mautic's segment add after a batch) goes ahead of new bulk requests."""

from __future__ import annotations

import asyncio
import time

from app.sync.engine import GateLimiter
from app.sync.limits import request_priority
from app.sync.models import PRIORITY_BULK, PRIORITY_LIVE
from app.sync.slots import AccountGate


async def test_a_first_op_of_a_bulk_group_goes_before_the_bulk_requests_queued_ahead() -> None:
    gate = AccountGate(key="a", cap=1, held=1, deadline=time.monotonic() + 600)
    limiter = GateLimiter(gate, margin=0.0, first=frozenset({"segment_add"}))
    request_priority.set(PRIORITY_BULK)
    order: list[str] = []
    release = asyncio.Event()

    async def request(op: str) -> None:
        async with limiter.slot(op):
            order.append(op)
            if op == "held":
                await release.wait()

    holder = asyncio.create_task(request("held"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(request(op)) for op in ("batch", "batch", "segment_add")]
    await asyncio.sleep(0.01)  # all three queued behind the held slot
    assert order == ["held"] and gate.waiters == 3
    release.set()
    await asyncio.gather(holder, *waiting)
    assert order == ["held", "segment_add", "batch", "batch"]


async def test_without_first_ops_bulk_requests_keep_their_queue_order() -> None:
    gate = AccountGate(key="a", cap=1, held=1, deadline=time.monotonic() + 600)
    limiter = GateLimiter(gate, margin=0.0)
    request_priority.set(PRIORITY_BULK)
    order: list[str] = []
    release = asyncio.Event()

    async def request(op: str) -> None:
        async with limiter.slot(op):
            order.append(op)
            if op == "held":
                await release.wait()

    holder = asyncio.create_task(request("held"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(request(op)) for op in ("batch", "segment_add")]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(holder, *waiting)
    assert order == ["held", "batch", "segment_add"]


async def test_bulk_requests_leave_the_live_reserve_free_but_never_stall() -> None:
    gate = AccountGate(key="a", cap=3, held=3, deadline=time.monotonic() + 600, live_reserve=1)
    limiter = GateLimiter(gate, margin=0.0)
    release = asyncio.Event()
    order: list[str] = []

    async def request(name: str, priority: int) -> None:
        request_priority.set(priority)
        async with limiter.slot():
            order.append(name)
            await release.wait()

    bulk = [asyncio.create_task(request(f"bulk{i}", PRIORITY_BULK)) for i in range(4)]
    await asyncio.sleep(0.01)
    # Two of the three slots are bulk work's; the third waits for a live request.
    assert order == ["bulk0", "bulk1"] and gate.in_flight == 2 and gate.waiters == 2
    live = asyncio.create_task(request("live", PRIORITY_LIVE))
    await asyncio.sleep(0.01)
    assert order[-1] == "live" and gate.in_flight == 3
    release.set()
    await asyncio.gather(*bulk, live)
    assert sorted(order) == ["bulk0", "bulk1", "bulk2", "bulk3", "live"]
    # Cut to one request after a throttle, bulk work still gets it (nothing else would
    # give the concurrency back).
    gate.limit = 1
    assert gate.allowed_bulk(time.monotonic(), 0.0) == 1
    gate.limit = 3
    assert gate.allowed_bulk(time.monotonic(), 0.0) == 2
