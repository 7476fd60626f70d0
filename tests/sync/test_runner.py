"""`audience-sync worker`'s process set-up."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import pytest

from app.sync import runner


def test_the_worker_process_tunes_its_collector_before_it_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At the default thresholds a drain's rows and answers reached the old generation and
    # its collections stalled the loop (P5: a quarter of the drain, pauses up to 0.75 s).
    seen: dict[str, Any] = {}

    def run(coro: Any) -> None:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()
        coro.close()

    monkeypatch.setattr(runner, "check_config", lambda settings: None)
    monkeypatch.setattr(runner, "configure_logging", lambda *a: None)
    monkeypatch.setattr(runner.outbox, "configure", lambda *a: None)
    monkeypatch.setattr("uvloop.install", lambda: None)
    monkeypatch.setattr(runner, "asyncio", SimpleNamespace(run=run))
    settings = SimpleNamespace(LOG_FORMAT="json", LOG_LEVEL="INFO", SYNC_COALESCE_SECONDS=0.0)
    before = gc.get_threshold()
    try:
        runner.run_worker_process(settings)  # type: ignore[arg-type]
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    assert seen["threshold"] == runner.WORKER_GC_THRESHOLDS
    assert seen["frozen"] > 0
