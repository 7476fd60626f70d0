"""The engine under declared limits: a daily quota keeps its live reserve, nothing is lost."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from app.main import Runtime
from app.sync import engine as engine_module
from app.sync.engine import SyncEngine
from app.sync.limits import DailyQuota, LimitSpec, Rate, Scope, next_utc_midnight
from app.sync.models import PRIORITY_BULK, PRIORITY_LIVE
from tests.conftest import fetch
from tests.support.sync import Sandbox
from tests.sync.conftest import OWNER


async def _queue(runtime: Runtime, connection_id: Any, n: int, priority: int) -> None:
    await fetch(
        runtime,
        """
        INSERT INTO contacts (owner_id, email, email_key, first_name, last_name,
                              newsletter_opt_in, newsletter_changed_at)
        SELECT :owner, 'q' || g || '@example.com', 'q' || g || '@example.com', 'F', 'L',
               true, now()
        FROM generate_series(1, :n) AS g
        """,
        owner=OWNER,
        n=n,
    )
    await fetch(
        runtime,
        """
        INSERT INTO sync_queue (connection_id, mapping_id, email_key, contact_id, priority)
        SELECT :conn, :conn, email_key, id, :prio FROM contacts WHERE owner_id = :owner
        ON CONFLICT DO NOTHING
        """,
        conn=connection_id,
        owner=OWNER,
        prio=priority,
    )


async def test_bulk_spends_only_its_share_of_the_daily_quota_and_live_work_the_rest(
    runtime: Runtime,
    sandbox: Sandbox,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
) -> None:
    await _queue(runtime, connection["id"], 20, PRIORITY_BULK)
    engine = make_engine(SYNC_BATCH_THRESHOLD=100000)
    # A provider declaring 10 requests a day, half of them for bulk work, at 5/s.
    engine.options.limits = LimitSpec(
        concurrency=10,
        rates=(Rate(5),),
        daily_quota=DailyQuota(10, bulk_share=0.5),
    )
    try:
        await engine.run_until_idle(limit_seconds=60)
    finally:
        await engine.aclose()
    assert len(await sandbox.members()) == 5
    # The other 15 wait for the next UTC day, unburnt, still owed (nothing lost).
    rows = await fetch(
        runtime, "SELECT state, attempts, available_at FROM sync_queue ORDER BY email_key"
    )
    assert len(rows) == 15
    assert {(r["state"], r["attempts"]) for r in rows} == {("ready", 0)}
    assert min(r["available_at"] for r in rows) >= next_utc_midnight()
    # A live change still goes now: the reserve is for it.
    await fetch(
        runtime,
        """
        UPDATE sync_queue SET priority = :live, available_at = now()
        WHERE email_key = (SELECT min(email_key) FROM sync_queue)
        """,
        live=PRIORITY_LIVE,
    )
    again = make_engine(SYNC_BATCH_THRESHOLD=100000)
    again.options.limits = engine.options.limits
    try:
        await again.run_until_idle(limit_seconds=60)
    finally:
        await again.aclose()
    assert len(await sandbox.members()) == 6
    # The quota is the application's (every tenant's), the rate the account's.
    used = await fetch(runtime, "SELECT key, quota_used FROM limit_buckets ORDER BY key")
    assert used == [
        {"key": f"mailchimp:account:{connection['account_key']}", "quota_used": 0},
        {"key": "mailchimp:application:app", "quota_used": 6},
    ]


async def test_a_providers_quota_exceeded_pauses_the_application_until_midnight(
    runtime: Runtime, connection: dict[str, Any], make_engine: Callable[..., SyncEngine]
) -> None:
    from app.connections.notices import notice_for_provider
    from app.providers.base import QuotaExhausted
    from app.sync.limits import LimitPaused, quota_notice

    engine = make_engine()
    engine.options.limits = LimitSpec(rates=(Rate(4),), daily_quota=DailyQuota(10_000))
    try:
        ctx = await engine.connection_context(connection["id"])
        assert ctx is not None and ctx.binding is not None
        paused = await engine._quota_spent(ctx, QuotaExhausted("Limit Exceeded", status=429))
    finally:
        await engine.aclose()
    assert isinstance(paused, LimitPaused) and paused.until == next_utc_midnight()
    notice = quota_notice(ctx.provider.spec.display_name)
    assert str(paused) == notice
    rows = await fetch(runtime, "SELECT key, paused_until, pause_reason FROM limit_buckets")
    assert rows == [
        {"key": "mailchimp:application:app", "paused_until": paused.until, "pause_reason": notice}
    ]
    # The connection is paused with the quota's notice and probed again at midnight.
    (row,) = await fetch(
        runtime,
        "SELECT status, status_reason, next_probe_at FROM connections WHERE id = :id",
        id=connection["id"],
    )
    assert row == {
        "status": "paused",
        "status_reason": "daily_quota",
        "next_probe_at": paused.until,
    }
    assert notice_for_provider(row["status"], row["status_reason"], "mailchimp") == notice
    assert ctx.halted == "paused"


async def test_mailchimp_max_concurrency_caps_only_mailchimp(
    make_engine: Callable[..., SyncEngine],
) -> None:
    from dataclasses import replace

    from app.providers import registry
    from app.providers.base import Limits

    engine = make_engine(MAILCHIMP_MAX_CONCURRENCY=3)
    try:
        mailchimp = registry.get("mailchimp")
        assert engine._limit_spec(mailchimp).concurrency == 3
        # Another provider declares its own cap in its spec; Mailchimp's setting is not its.
        other = replace(
            mailchimp,
            spec=replace(mailchimp.spec, id="other", limits=Limits(concurrency_per_account=6)),
            configured_limits=None,
        )
        assert engine._limit_spec(other).concurrency == 6
    finally:
        await engine.aclose()


async def _claim_until_full(engine: SyncEngine) -> int:
    """Claim like the worker's loop until the engine takes no more; the rows it holds."""
    while await engine._fill():
        pass
    return sum(engine._outstanding.values())


async def _let_go_all(engine: SyncEngine) -> None:
    engine.stop()
    for task in list(engine._groups):
        task.cancel()
    for task in list(engine._groups):
        with contextlib.suppress(BaseException):
            await task
    await engine.aclose()


async def test_a_backlog_under_an_application_window_is_planned_only_a_few_batches_ahead(
    runtime: Runtime,
    connection: dict[str, Any],
    make_engine: Callable[..., SyncEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The groups wait at the account's gate (no slot loop runs here), never starving, so
    # nothing is sent and what the engine claims is what it would plan ahead.
    monkeypatch.setattr(engine_module, "STARVE_SECONDS", 3600.0)
    await _queue(runtime, connection["id"], 300, PRIORITY_BULK)
    # 4 requests in any second for the application (Constant Contact's shape): at most 4 are
    # ever in flight, so two batches per window slot are planned, not two per account slot.
    windowed = make_engine(SYNC_CLAIM_SIZE=5, SYNC_BATCH_THRESHOLD=100000)
    windowed.options.limits = LimitSpec(rates=(Rate(4, scope=Scope.application),))
    try:
        assert await _claim_until_full(windowed) == 2 * 4 * 5
    finally:
        await _let_go_all(windowed)
    await fetch(runtime, "UPDATE sync_queue SET leased_by = NULL, lease_until = NULL")
    # A rate of the account alone: its 10 slots decide, as before.
    per_account = make_engine(SYNC_CLAIM_SIZE=5, SYNC_BATCH_THRESHOLD=100000)
    per_account.options.limits = LimitSpec(rates=(Rate(4),))
    try:
        assert await _claim_until_full(per_account) == 2 * 10 * 5
    finally:
        await _let_go_all(per_account)


async def test_a_rate_limited_providers_gate_keeps_a_slot_for_live_requests(
    connection: dict[str, Any], make_engine: Callable[..., SyncEngine]
) -> None:
    # Limited by rate alone (ActiveCampaign's 5/s), the account's cap is ours: one slot is
    # kept from bulk work. A declared concurrency is the provider's own, all of it usable.
    for limits, reserve in (
        (LimitSpec(rates=(Rate(5),)), 1),
        (LimitSpec(concurrency=10, rates=(Rate(5),)), 0),
        (LimitSpec(concurrency=10), 0),
    ):
        engine = make_engine()
        engine.options.limits = limits
        try:
            ctx = await engine.connection_context(connection["id"])
            assert ctx is not None
            assert engine.slots.gates[ctx.account_key].live_reserve == reserve
        finally:
            await engine.aclose()
