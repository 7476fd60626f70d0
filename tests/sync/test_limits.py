"""Shared rates, quotas and fairness (DESIGN §14.3), in PostgreSQL across processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.config import Settings
from app.main import Runtime
from app.sync import limits as limits_module
from app.sync.limits import (
    ConnectionLimits,
    DailyQuota,
    Limiter,
    LimitPaused,
    LimitSpec,
    Rate,
    Scope,
    bind,
    bulk_reach,
    grant,
    next_utc_midnight,
    quota_notice,
    request_priority,
)
from app.sync.models import PRIORITY_BULK, PRIORITY_LIVE
from tests.conftest import fetch
from tests.support.servers import run_server
from tests.support.sync import wait_for

CC_LIKE = LimitSpec(
    rates=(Rate(4, scope=Scope.application),), daily_quota=DailyQuota(10_000, bulk_share=0.8)
)
AC_LIKE = LimitSpec(
    rates=(
        Rate(5),
        Rate(100, per_seconds=60, endpoint="bulk_import"),
        Rate(20, per_seconds=60, endpoint="bulk_import_one"),
    )
)


def test_bind_names_one_bucket_per_scope_and_endpoint() -> None:
    ac = bind(AC_LIKE, provider="ac", account="acct1", application="app", tenant="t1")
    assert [b.key for b in ac.buckets(None)] == ["ac:account:acct1"]
    bulk = ac.buckets("bulk_import")
    assert [b.key for b in bulk] == ["ac:account:acct1", "ac:account:acct1:bulk_import"]
    assert bulk[1].interval == pytest.approx(0.6 / 0.9)  # 100/min with 10 % headroom
    assert [b.key for b in ac.buckets("unknown")] == ["ac:account:acct1"]
    cc = bind(CC_LIKE, provider="cc", account="acct1", application="client-x", tenant="t1")
    (only,) = cc.buckets(None)
    # Rate and quota of one scope are one bucket, shared by every tenant of the application.
    assert (only.key, only.quota, only.bulk_share) == ("cc:application:client-x", 10_000, 0.8)
    assert only.interval == pytest.approx(0.25 / 0.9)
    assert cc.quota_keys == ("cc:application:client-x",)
    assert not LimitSpec(concurrency=10).metered
    with pytest.raises(ValueError):
        Rate(0)
    with pytest.raises(ValueError):
        DailyQuota(100, bulk_share=1.5)


def test_a_flat_limits_declaration_becomes_a_spec() -> None:
    # The shape of a provider spec's `Limits` (concurrency, rates, quota, endpoint rates).
    flat = SimpleNamespace(
        concurrency_per_account=None,
        rate_per_account=5.0,
        rate_per_application=None,
        daily_quota_per_application=None,
        bulk_quota_share=1.0,
        endpoint_rates=(SimpleNamespace(op="bulk_import", requests=100, per_seconds=60.0),),
    )
    assert LimitSpec.from_limits(flat) == LimitSpec(
        rates=(Rate(5), Rate(100, per_seconds=60, endpoint="bulk_import"))
    )
    cc = SimpleNamespace(
        concurrency_per_account=None,
        rate_per_account=None,
        rate_per_application=4.0,
        daily_quota_per_application=10_000,
        bulk_quota_share=0.8,
        endpoint_rates=(),
    )
    assert LimitSpec.from_limits(cc) == CC_LIKE
    half = SimpleNamespace(**(vars(cc) | {"rate_per_application": 0.5, "bulk_quota_share": 1.0}))
    (rate,) = LimitSpec.from_limits(half).rates
    assert rate.interval == 2.0
    assert LimitSpec.from_limits(CC_LIKE) is CC_LIKE


def test_quota_resets_at_midnight_utc_and_says_so() -> None:
    assert next_utc_midnight(datetime(2026, 12, 1, 23, 59, tzinfo=UTC)) == datetime(
        2026, 12, 2, tzinfo=UTC
    )
    assert (
        quota_notice("Constant Contact")
        == "Constant Contact's daily limit is reached; sync resumes at midnight UTC"
    )


class Order(list[str]):
    """The order in which requests got their tokens; `reached(n)` waits for n of them."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def append(self, tenant: str) -> None:
        super().append(tenant)
        self._grew.set()

    async def reached(self, n: int) -> None:
        while len(self) < n:
            self._grew.clear()
            await self._grew.wait()


async def _take_all(limiter: Limiter, binding: Any, n: int, *, live: bool = True) -> list[float]:
    request_priority.set(PRIORITY_LIVE if live else PRIORITY_BULK)
    times: list[float] = []

    async def one() -> None:
        async with limiter.request(binding):
            times.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(times)


async def test_two_limiters_share_one_bucket_and_ask_a_few_tokens_at_a_time(
    runtime: Runtime,
) -> None:
    spec = LimitSpec(rates=(Rate(20, scope=Scope.application),))
    a = Limiter(runtime.engine, me="w1")
    b = Limiter(runtime.engine, me="w2")
    ba = bind(spec, provider="p", account="x", application="app", tenant="t1")
    bb = bind(spec, provider="p", account="y", application="app", tenant="t1")
    times = sorted(sum(await asyncio.gather(_take_all(a, ba, 20), _take_all(b, bb, 20)), []))
    assert len(times) == 40
    # Far fewer database grants than requests: tokens come a few at a time.
    assert a.grants + b.grants <= 40 // 2
    rows = await fetch(runtime, "SELECT key, next_at FROM limit_buckets")
    assert [r["key"] for r in rows] == ["p:application:app"]
    # Never faster than the rate (20/s less 10 % headroom) for both together: 40 requests
    # span at least 39 intervals (less the few ms a grant's answer takes to arrive).
    assert times[-1] - times[0] >= 39 / 18 - 0.1


async def test_daily_quota_keeps_a_reserve_for_live_work(runtime: Runtime) -> None:
    spec = LimitSpec(daily_quota=DailyQuota(10, bulk_share=0.8))
    limiter = Limiter(runtime.engine, me="w1")
    binding = bind(spec, provider="cc", account="a", application="app", tenant="t1")
    await _take_all(limiter, binding, 8, live=False)
    request_priority.set(PRIORITY_BULK)
    with pytest.raises(LimitPaused) as bulk_stop:
        await limiter.take(binding)
    assert bulk_stop.value.until == next_utc_midnight()
    # Live work still has the 20 % kept back, then nothing.
    other = Limiter(runtime.engine, me="w2")
    await _take_all(other, binding, 2, live=True)
    request_priority.set(PRIORITY_LIVE)
    with pytest.raises(LimitPaused):
        await other.take(binding)
    rows = await fetch(runtime, "SELECT quota_day, quota_used FROM limit_buckets")
    assert rows == [{"quota_day": datetime.now(UTC).date(), "quota_used": 10}]
    # A new UTC day starts the count afresh.
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    await fetch(runtime, "UPDATE limit_buckets SET quota_day = :d", d=yesterday)
    fresh = Limiter(runtime.engine, me="w3")
    await _take_all(fresh, binding, 3, live=False)
    rows = await fetch(runtime, "SELECT quota_day, quota_used FROM limit_buckets")
    assert rows == [{"quota_day": datetime.now(UTC).date(), "quota_used": 3}]


async def test_quota_exceeded_pauses_the_whole_application_scope(runtime: Runtime) -> None:
    limiter = Limiter(runtime.engine, me="w1")
    one = bind(CC_LIKE, provider="cc", account="a1", application="app", tenant="t1")
    other = bind(CC_LIKE, provider="cc", account="a2", application="app", tenant="t2")
    async with limiter.request(one):
        pass
    midnight = next_utc_midnight()
    await limiter.pause(one, until=midnight, reason=quota_notice("Constant Contact"))
    # Another tenant of the same application, in another process, is paused as well.
    elsewhere = Limiter(runtime.engine, me="w2", pause_recheck=0.0)
    with pytest.raises(LimitPaused) as stopped:
        await elsewhere.take(other)
    assert stopped.value.until == midnight
    assert str(stopped.value) == quota_notice("Constant Contact")
    assert 0 < (stopped.value.retry_after or 0) <= 86_400
    with pytest.raises(LimitPaused):
        await limiter.take(one)  # this process knows without asking the database again
    await fetch(runtime, "UPDATE limit_buckets SET paused_until = now() - interval '1 second'")
    async with elsewhere.request(other):  # the pause over, requests go again
        pass
    rows = await fetch(runtime, "SELECT quota_used FROM limit_buckets")
    assert rows == [{"quota_used": 2}]


async def test_a_bulk_backlog_does_not_hold_back_another_tenants_live_change(
    runtime: Runtime,
) -> None:
    # One application scope at 50/s shared by two tenants in two processes: tenant A drains a
    # backlog (its lanes always want tokens), tenant B sends one live change meanwhile.
    spec = LimitSpec(rates=(Rate(50, scope=Scope.application),))
    a = Limiter(runtime.engine, me="proc-a", max_chunk=4)
    b = Limiter(runtime.engine, me="proc-b", max_chunk=4)
    ba = bind(spec, provider="p", account="acct-a", application="app", tenant="A")
    bb = bind(spec, provider="p", account="acct-b", application="app", tenant="B")
    order = Order()
    stop = asyncio.Event()

    async def backlog_lane() -> None:
        request_priority.set(PRIORITY_BULK)
        while not stop.is_set():
            async with a.request(ba):
                order.append("A")

    lanes = [asyncio.create_task(backlog_lane()) for _ in range(16)]
    await order.reached(30)
    request_priority.set(PRIORITY_LIVE)
    asked_at = len(order)
    async with b.request(bb):
        order.append("B")
    granted_at = len(order) - 1
    await order.reached(granted_at + 20)
    stop.set()
    for lane in lanes:
        lane.cancel()
    await asyncio.gather(*lanes, return_exceptions=True)
    # Only the tokens A already held (one grant of at most 4) may go before B's change.
    assert granted_at - asked_at <= 2 * 4, order
    assert order.count("B") == 1


async def test_round_robin_between_tenants_of_one_priority(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = LimitSpec(rates=(Rate(60, scope=Scope.application),))
    # The tokens in the order the database granted them, by tenant: the turns are decided
    # there. (Counting the requests sent instead measured this loop too: under CPU load a
    # lane woke more than half a spacing late and dropped its token as too late to spend,
    # which made the counts depend on the machine's load, not on the turns.)
    order = Order()

    async def granting(*args: Any, **kw: Any) -> Any:
        result = await grant(*args, **kw)
        for _ in result.times:
            order.append(kw["tenant"])
        return result

    monkeypatch.setattr(limits_module, "grant", granting)
    stop = asyncio.Event()
    tasks = []
    for tenant in ("A", "B", "C"):
        limiter = Limiter(runtime.engine, me=f"proc-{tenant}", max_chunk=3)
        binding = bind(spec, provider="p", account=tenant, application="app", tenant=tenant)
        # A has far more lanes (a bigger backlog); it still gets no more than its turn.
        lanes = 12 if tenant == "A" else 2

        async def lane(limiter: Limiter = limiter, binding: Any = binding) -> None:
            request_priority.set(PRIORITY_BULK)
            while not stop.is_set():
                async with limiter.request(binding):
                    pass

        tasks += [asyncio.create_task(lane()) for _ in range(lanes)]
    await order.reached(90)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    window = order[15:90]  # past the start, when every tenant has asked once
    counts = {t: window.count(t) for t in "ABC"}
    assert min(counts.values()) >= 15, (counts, window)
    assert max(counts.values()) <= 35, (counts, window)
    # Between two turns of a small tenant, the big one gets at most its own turn (a grant of
    # at most 3), twice when a small tenant's ask arrives late.
    for light in "BC":
        turns = [i for i, t in enumerate(window) if t == light]
        for i, j in zip(turns, turns[1:], strict=False):
            assert window[i:j].count("A") <= 2 * 3, window


async def test_a_window_slot_comes_back_only_a_period_after_its_answer(runtime: Runtime) -> None:
    # 2 requests in any second for the application. Process A's two requests are out and not
    # answered (A starved, or the provider slow to answer): however long that takes, process B
    # gets no token, since a request sent now could land in the same second as A's two.
    spec = LimitSpec(rates=(Rate(2, scope=Scope.application),))
    a = Limiter(runtime.engine, me="proc-a")
    b = Limiter(runtime.engine, me="proc-b")
    ba = bind(spec, provider="p", account="acct-a", application="app", tenant="A")
    bb = bind(spec, provider="p", account="acct-b", application="app", tenant="B")
    async with contextlib.AsyncExitStack() as out:
        for _ in range(2):
            await out.enter_async_context(a.request(ba))
        b_sent: list[float] = []

        async def b_request() -> None:
            async with b.request(bb):
                b_sent.append(time.time())

        waiting = asyncio.create_task(b_request())
        await asyncio.sleep(1.5)  # far past the rate's spacing of 0.55 s
        assert not waiting.done()
        rows = await fetch(runtime, "SELECT slot, ticket FROM limit_window ORDER BY slot")
        assert [r["slot"] for r in rows] == [0, 1]
        assert all(str(r["ticket"]).startswith("proc-a/") for r in rows)
    answered = time.time()  # both of A's requests answered now
    await waiting
    # B's request goes a full period after A's answers, not merely after the tokens' times.
    assert b_sent[0] >= answered + 1.0 - 0.005
    await a.release()
    await b.release()
    rows = await fetch(runtime, "SELECT ticket FROM limit_window WHERE ticket IS NOT NULL")
    assert rows == []


def _report(out_err: tuple[bytes, bytes]) -> dict[str, Any]:
    """A worker's JSON line; its stderr in the failure when it printed none."""
    out, err = out_err
    assert out.strip(), err.decode(errors="replace")[-3000:]
    return dict(json.loads(out.decode().strip()))


def _hit_app(log: list[tuple[float, str]], limit: int) -> Starlette:
    """An endpoint limited to `limit` requests in any sliding second; 429 beyond.

    A request's time is when it arrived here, as at a provider: whatever delays it between the
    limiter and this server (a starved worker, the network, this loop) counts against it.
    """

    async def hit(request: Request) -> JSONResponse:
        now = time.time()
        recent = sum(1 for t, _ in log if now - 1.0 < t <= now)
        log.append((now, request.query_params.get("by", "")))
        if recent >= limit:
            return JSONResponse({"message": "Too Many Requests"}, status_code=429)
        return JSONResponse({})

    async def warm(request: Request) -> JSONResponse:
        return JSONResponse({})

    return Starlette(routes=[Route("/hit", hit), Route("/warm", warm)])


async def test_two_worker_processes_never_exceed_the_rate_in_any_second(
    settings: Settings,
) -> None:
    # Judged at the server's arrival times. worker-2 is made late between its tokens and its
    # sends (lanes waiting up to 0.5 s, the whole process blocked 0.5 s now and then), as a
    # starved process on a loaded machine is: its late requests must not land together with
    # worker-1's punctual ones.
    rate, each = 10, 30
    log: list[tuple[float, str]] = []
    async with run_server(_hit_app(log, rate), lifespan="off") as url:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.limits_worker",
                str(settings.DATABASE_URL),
                url,
                str(each),
                str(rate),
                name,
                late,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for name, late in (("worker-1", "0"), ("worker-2", "0.5"))
        ]
        outs = [_report(await p.communicate()) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    statuses = [s for out in outs for s in out["statuses"]]
    assert {by for _, by in log} == {"worker-1", "worker-2"}
    times = sorted(t for t, _ in log)
    busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
    assert busiest <= rate, [(round(t - log[0][0], 3), by) for t, by in log]
    assert sorted(set(statuses)) == [200] and len(statuses) == 2 * each
    # Tokens came a few at a time, not one database round trip per request.
    assert sum(out["grants"] for out in outs) < 2 * each


async def test_two_worker_processes_stay_under_the_activecampaign_sandboxs_rate(
    settings: Settings,
) -> None:
    # The ActiveCampaign sandbox counts every request of an account in a sliding second and
    # answers 429 beyond 5; its request log decides.
    from app.sandbox.activecampaign import DEFAULT_API_KEY
    from app.sandbox.activecampaign import create_app as create_ac_sandbox

    rate, each = 5, 12
    async with (
        run_server(create_ac_sandbox()) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as control,
    ):
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.limits_worker",
                str(settings.DATABASE_URL),
                url,
                str(each),
                str(rate),
                name,
                "0",
                "/api/3/users/me",
                DEFAULT_API_KEY,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for name in ("worker-1", "worker-2")
        ]
        outs = [_report(await p.communicate()) for p in procs]
        log = [
            r
            for r in (await control.get("/_control/requests")).json()["requests"]
            if r["path"].startswith("/api/3/")
        ]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(log) == 2 * each
    assert {r["status"] for r in log} == {200}, log
    times = sorted(r["start"] for r in log)
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= rate
    assert [s for out in outs for s in out["statuses"]] == [200] * (2 * each)


async def test_a_request_labelled_with_an_endpoint_also_draws_from_its_rate(
    runtime: Runtime,
) -> None:
    limiter = Limiter(runtime.engine, me="w1")
    binding = bind(AC_LIKE, provider="ac", account="a1", application="app", tenant="t1")
    limits = ConnectionLimits(limiter, binding)
    async with limits.slot("bulk_import"):
        pass
    async with limits.slot("contact_sync"):  # no rate of its own: the account's only
        pass
    rows = await fetch(runtime, "SELECT key FROM limit_buckets ORDER BY key")
    assert [r["key"] for r in rows] == ["ac:account:a1", "ac:account:a1:bulk_import"]
    # The account bucket gave both requests a token, the endpoint bucket only the import.
    claims = await fetch(runtime, "SELECT key, served_at FROM limit_claims ORDER BY key")
    assert [r["key"] for r in claims] == ["ac:account:a1", "ac:account:a1:bulk_import"]
    assert claims[0]["served_at"] > claims[1]["served_at"]


async def _slots_of(runtime: Runtime, prefix: str) -> list[int]:
    rows = await fetch(
        runtime,
        "SELECT slot FROM limit_window WHERE ticket LIKE :p ORDER BY slot",
        p=f"{prefix}/%",
    )
    return [r["slot"] for r in rows]


async def test_bulk_work_leaves_a_window_slot_for_live_work_asked_for_lately(
    runtime: Runtime,
) -> None:
    # 4 requests in any second for the application. Tenant B made a live change a moment ago;
    # tenant A's backlog then holds every slot it may: three of the four, never the last, so
    # B's next live change finds a slot ready instead of waiting for bulk requests' periods.
    spec = LimitSpec(rates=(Rate(4, scope=Scope.application),))
    a = Limiter(runtime.engine, me="proc-a", live_recent=60.0)
    b = Limiter(runtime.engine, me="proc-b", live_recent=60.0)
    ba = bind(spec, provider="p", account="acct-a", application="app", tenant="A")
    bb = bind(spec, provider="p", account="acct-b", application="app", tenant="B")
    request_priority.set(PRIORITY_LIVE)
    async with b.request(bb):
        pass
    request_priority.set(PRIORITY_BULK)
    async with contextlib.AsyncExitStack() as out:
        for _ in range(3):
            await out.enter_async_context(a.request(ba))
        assert sorted(await _slots_of(runtime, "proc-a")) == [0, 1, 2]

        async def bulk_request() -> None:
            request_priority.set(PRIORITY_BULK)
            async with a.request(ba):
                pass

        fourth = asyncio.create_task(bulk_request())
        await asyncio.sleep(1.5)  # past the live request's period: its slot is free again
        assert not fourth.done()  # the free slot is the reserved one
        assert 3 not in await _slots_of(runtime, "proc-a")
        request_priority.set(PRIORITY_LIVE)
        async with b.request(bb):
            assert await _slots_of(runtime, "proc-b") == [3]
        assert not fourth.done()
        fourth.cancel()
        await asyncio.gather(fourth, return_exceptions=True)
    await a.release()
    await b.release()


async def test_no_live_work_lately_lets_bulk_work_take_every_window_slot(
    runtime: Runtime,
) -> None:
    spec = LimitSpec(rates=(Rate(4, scope=Scope.application),))
    a = Limiter(runtime.engine, me="proc-a", live_recent=60.0)
    ba = bind(spec, provider="p", account="acct-a", application="app", tenant="A")
    request_priority.set(PRIORITY_BULK)
    async with contextlib.AsyncExitStack() as out:
        for _ in range(4):
            await out.enter_async_context(a.request(ba))
        assert sorted(await _slots_of(runtime, "proc-a")) == [0, 1, 2, 3]
    await a.release()


async def test_with_live_work_waiting_no_bulk_claim_gets_a_window_slot(
    runtime: Runtime,
) -> None:
    # Every slot is out (A's bulk requests, C's live one) and B's live change waits, as does
    # A's next bulk request. The first slot to come back goes to B, not to A's backlog.
    spec = LimitSpec(rates=(Rate(4, scope=Scope.application),))
    a = Limiter(runtime.engine, me="proc-a", live_recent=60.0)
    b = Limiter(runtime.engine, me="proc-b", live_recent=60.0)
    c = Limiter(runtime.engine, me="proc-c", live_recent=60.0)
    ba = bind(spec, provider="p", account="acct-a", application="app", tenant="A")
    bb = bind(spec, provider="p", account="acct-b", application="app", tenant="B")
    bc = bind(spec, provider="p", account="acct-c", application="app", tenant="C")
    order: list[str] = []

    async def request(limiter: Limiter, binding: Any, name: str, prio: int) -> None:
        request_priority.set(prio)
        async with limiter.request(binding):
            order.append(name)

    request_priority.set(PRIORITY_BULK)
    a_out = [contextlib.AsyncExitStack() for _ in range(3)]
    for stack in a_out:  # no live work yet: bulk work may take any slot
        await stack.enter_async_context(a.request(ba))
    async with contextlib.AsyncExitStack() as c_out:
        request_priority.set(PRIORITY_LIVE)
        await c_out.enter_async_context(c.request(bc))
        assert await _slots_of(runtime, "proc-c") == [3]
        bulk = asyncio.create_task(request(a, ba, "A", PRIORITY_BULK))
        await asyncio.sleep(0.3)  # A's backlog asks first
        live = asyncio.create_task(request(b, bb, "B", PRIORITY_LIVE))
        await asyncio.sleep(0.3)
        assert not live.done() and not bulk.done()
        await a_out[0].aclose()  # one bulk request answered: its slot comes back a period on
        await live
        assert order == ["B"]
        assert not bulk.done()  # the other slots are still out
        for stack in a_out[1:]:
            await stack.aclose()
        await bulk
    assert order == ["B", "A"]
    for limiter in (a, b, c):
        await limiter.release()


async def test_bulk_work_books_only_about_one_token_ahead_of_now(runtime: Runtime) -> None:
    # The account's 5/s (0.222 s a token with headroom). A grant's horizon of 2 s would let
    # bulk work book 9 tokens; a live request arriving next would wait behind all of them.
    binding = bind(AC_LIKE, provider="ac", account="a1", application="app", tenant="t1")
    buckets = binding.buckets(None)
    spacing = buckets[0].interval
    reach = bulk_reach(buckets)
    assert reach == pytest.approx(spacing + 0.05)  # one token, and the asker's lead
    ask = {"tenant": "t1", "me": "w1", "wanted": 8, "horizon": 2.0, "fresh": 1.0}
    first = await grant(runtime.engine, buckets, priority=PRIORITY_BULK, **ask)
    assert len(first.times) == 2  # now and one spacing later: no further than the reach
    assert first.times[-1] - first.now <= reach + 1e-6
    # Asked again at once: nothing more, and when it may come back (its next token's time
    # less the reach).
    again = await grant(runtime.engine, buckets, priority=PRIORITY_BULK, **ask)
    assert again.times == [] and not again.ahead
    assert again.not_before == pytest.approx(first.times[-1] + spacing - reach, abs=1e-3)
    # A live request goes right after the bulk tokens already booked, not a horizon later.
    live = await grant(runtime.engine, buckets, priority=PRIORITY_LIVE, **ask | {"me": "w2"})
    assert live.times[0] == pytest.approx(first.times[-1] + spacing, abs=1e-3)
    # Live work itself still books its horizon: its tokens are spent by waiting requests.
    assert len(live.times) == 8


async def test_a_bulk_import_waits_unbooked_while_its_endpoint_rate_is_booked_ahead(
    runtime: Runtime,
) -> None:
    # 100 imports a minute (0.667 s apart) inside the account's 5/s. An import booked at the
    # endpoint's next time would move the account's next free time past it, leaving the
    # account idle in between and every live request behind it.
    binding = bind(AC_LIKE, provider="ac", account="a1", application="app", tenant="t1")
    imports = binding.buckets("bulk_import")
    ask = {"tenant": "t1", "me": "w1", "wanted": 8, "horizon": 0.5, "fresh": 1.0}
    first = await grant(runtime.engine, imports, priority=PRIORITY_BULK, **ask)
    assert len(first.times) == 1
    account_next = await _next_at(runtime, "ac:account:a1")
    second = await grant(runtime.engine, imports, priority=PRIORITY_BULK, **ask)
    assert second.times == [] and second.not_before is not None
    assert second.not_before > second.now  # comes back as the endpoint's time nears
    assert await _next_at(runtime, "ac:account:a1") == account_next  # the account untouched
    # Other requests of the account take that time meanwhile.
    other = await grant(runtime.engine, binding.buckets(None), priority=PRIORITY_BULK, **ask)
    assert other.times and other.times[0] == pytest.approx(account_next.timestamp(), abs=1e-3)


async def _next_at(runtime: Runtime, key: str) -> datetime:
    (row,) = await fetch(runtime, "SELECT next_at FROM limit_buckets WHERE key = :k", k=key)
    return row["next_at"]  # type: ignore[no-any-return]


async def test_behind_a_backlog_of_two_processes_the_bucket_is_never_booked_far_ahead(
    runtime: Runtime,
) -> None:
    # Two processes drain a backlog at 20/s (lanes always waiting for tokens). However their
    # grants interleave, the bucket's next free time stays within one bulk reach and one
    # spacing of now, so a live request asking at any moment is due that soon.
    spec = LimitSpec(rates=(Rate(20),))
    binding = bind(spec, provider="p", account="acct", application="app", tenant="A")
    (bucket,) = binding.buckets(None)
    reach = bulk_reach((bucket,))
    assert reach is not None
    limiters = [Limiter(runtime.engine, me=f"proc-{i}") for i in range(2)]
    order = Order()
    stop = asyncio.Event()

    async def backlog_lane(limiter: Limiter) -> None:
        request_priority.set(PRIORITY_BULK)
        while not stop.is_set():
            async with limiter.request(binding):
                order.append("bulk")

    lanes = [asyncio.create_task(backlog_lane(lim)) for lim in limiters for _ in range(8)]
    ahead: list[float] = []
    try:
        await order.reached(5)
        while len(order) < 60:
            (row,) = await fetch(
                runtime,
                "SELECT extract(epoch FROM next_at - clock_timestamp()) AS ahead"
                " FROM limit_buckets WHERE key = :k",
                k=bucket.key,
            )
            ahead.append(float(row["ahead"]))
            await asyncio.sleep(0.01)
        live = await grant(
            runtime.engine,
            (bucket,),
            tenant="A",
            priority=PRIORITY_LIVE,
            me="proc-live",
            wanted=1,
            horizon=0.5,
            fresh=1.0,
        )
    finally:
        stop.set()
        for lane in lanes:
            lane.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
    assert len(ahead) >= 10
    assert max(ahead) <= reach + bucket.interval + 1e-3, ahead
    assert live.times[0] - live.now <= reach + bucket.interval + 1e-3


async def test_a_live_request_takes_the_token_a_bulk_request_of_its_process_waits_for(
    runtime: Runtime,
) -> None:
    # A backlog's lanes each hold a token not due yet (one booked ahead). A live request of
    # the same process takes the earliest of them instead of booking after them all; the
    # bulk request it came from asks again, so every request still goes and no token is
    # spent twice or lost.
    binding = bind(AC_LIKE, provider="ac", account="a1", application="app", tenant="t1")
    limiter = Limiter(runtime.engine, me="w1")
    order = Order()
    each = 4

    async def backlog_lane() -> None:
        request_priority.set(PRIORITY_BULK)
        for _ in range(each):
            async with limiter.request(binding):
                order.append("bulk")

    lanes = [asyncio.create_task(backlog_lane()) for _ in range(4)]
    await order.reached(2)

    async def booked() -> bool:  # a bulk request holds a token not due yet
        return bool(limiter._sleeping.get(("ac:account:a1",)))

    await wait_for(booked, within=30, every=0.005)
    request_priority.set(PRIORITY_LIVE)
    async with limiter.request(binding):
        order.append("live")
    await asyncio.gather(*lanes)
    assert order.count("bulk") == 4 * each and order.count("live") == 1
    # The live request never asked the database: it spent a bulk token already granted.
    claims = await fetch(runtime, "SELECT DISTINCT priority FROM limit_claims")
    assert claims == [{"priority": PRIORITY_BULK}]
    assert limiter._sleeping.get(("ac:account:a1",)) == []
