"""Process environment isolation for tests that read Settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings, get_settings


def isolate_settings_env(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    """Drop every variable Settings reads and work in `workdir` (so no `.env` is found)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(workdir)
    get_settings.cache_clear()
