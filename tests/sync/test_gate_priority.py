"""The account gate's order for a provider's `first_ops`: a request that finishes work already
sent (Mautic's segment add after a batch) goes ahead of new bulk requests."""

from __future__ import annotations

import asyncio
import time

from app.sync.engine import GateLimiter
from app.sync.limits import request_priority
from app.sync.models import PRIORITY_BULK
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
