"""Process environment isolation for tests that read Settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings, get_settings


def isolate_settings_env(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    """Drop every variable Settings reads and work in `workdir` (so no `.env` is found).

    Each variable is recorded before it is dropped, so whatever the code under test writes
    to os.environ (`serve` sets HOST, PORT, DATABASE_URL...) is undone after the test.
    """
    for name in Settings.model_fields:
        monkeypatch.setenv(name, "recorded")  # remembers the original value, or its absence
        monkeypatch.delenv(name)
    monkeypatch.chdir(workdir)
    get_settings.cache_clear()
