"""What the lifespan builds and every request and background task shares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.tokens import TokenVerifier
from app.config import Settings
from app.db import create_engine, make_sessionmaker, resolve_database_url
from app.migrate import upgrade_head


@dataclass
class Runtime:
    """What the lifespan builds and every request and background task shares."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    token_verifier: TokenVerifier
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


async def start_runtime(
    settings: Settings, *, migrate: bool | None = None, pre_ping: bool = True
) -> Runtime:
    """Open the database (embedded when DATABASE_URL is unset) and migrate when asked
    (`pre_ping`: see app.db.create_engine)."""
    url = await asyncio.to_thread(resolve_database_url, settings)
    if settings.AUTO_MIGRATE if migrate is None else migrate:
        await asyncio.to_thread(upgrade_head, url)
    engine = create_engine(url, pool_size=settings.DB_POOL_SIZE, pre_ping=pre_ping)
    return Runtime(
        settings=settings,
        engine=engine,
        sessionmaker=make_sessionmaker(engine),
        token_verifier=TokenVerifier(settings),
    )
