"""The kit's DailyQuota: per scope, per UTC day of the (movable) clock."""

from __future__ import annotations

import pytest

from app.sandbox.kit import Clock, DailyQuota, Refusal

MIDNIGHT = 1_796_169_600.0  # 2026-12-02T00:00:00Z


def test_spent_quota_refuses_until_midnight_utc() -> None:
    clock = Clock(offset=MIDNIGHT - 10 - Clock().now())
    quota = DailyQuota(2)
    for _ in range(2):
        quota.check("app", clock.now())
        quota.spend("app", clock.now())
    quota.check("other", clock.now())  # scopes are separate
    with pytest.raises(Refusal) as refused:
        quota.check("app", clock.now())
    assert refused.value.kind == "quota" and refused.value.limit == 2
    assert 0 < (refused.value.retry_after or 0) <= 10.5
    assert quota.usage(clock.now()) == {"app": 2}
    clock.advance(11)
    quota.check("app", clock.now())  # a new UTC day
    assert quota.usage(clock.now()) == {}
