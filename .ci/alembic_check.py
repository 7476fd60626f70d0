"""`alembic upgrade head` then `alembic check` on a scratch database (server or embedded)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import asyncpg
from alembic import command
from sqlalchemy.engine import make_url

from app.db import start_embedded_postgres, stop_embedded_postgres, to_libpq_url
from app.migrate import alembic_config


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    name = f"audience_sync_alembic_check_{uuid.uuid4().hex[:8]}"
    server = os.environ.get("TEST_DATABASE_URL")
    tmp = None
    if server:
        admin = to_libpq_url(server)
    else:
        tmp = tempfile.mkdtemp(prefix="as-alembic-")
        os.chmod(tmp, 0o755)
        admin = to_libpq_url(start_embedded_postgres(Path(tmp), database="postgres"))
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    url = make_url(admin).set(database=name, drivername="postgresql+asyncpg")
    try:
        cfg = alembic_config(url.render_as_string(hide_password=False))
        command.upgrade(cfg, "head")
        command.check(cfg)
        print("alembic check: models and migrations agree")  # noqa: T201
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if tmp:
            stop_embedded_postgres(Path(tmp))
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
