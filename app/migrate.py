"""Programmatic Alembic: upgrade to head and read the head revision."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at this project's migrations (and `url` when given)."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["configure_logger"] = False
    if url:
        cfg.attributes["url"] = url
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade_head(url: str | None = None) -> None:
    """`alembic upgrade head` (blocking: call it from a thread inside an event loop)."""
    command.upgrade(alembic_config(url), "head")
