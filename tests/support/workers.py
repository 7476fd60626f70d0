"""`audience-sync worker` processes sharing the test's database, for the crash and rate tests."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app.config import Settings

# What the test process may have in its environment that a worker must not inherit: the
# Settings below are the test's own, the rest comes from `extra`.
_NOT_INHERITED = (
    "MAILCHIMP_",
    "ACTIVECAMPAIGN_",
    "MAUTIC_",
    "CONSTANTCONTACT_",
    "SYNC_",
    "DATABASE_URL",
    "ENCRYPTION",
    "AUTH_",
)


def worker_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """Environment of a worker on `settings`' database, keys and Mailchimp sandbox; `extra` wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    env.update(
        {
            "ENVIRONMENT": "test",
            "DATABASE_URL": str(settings.DATABASE_URL),
            "AUTH_JWT_SECRET": settings.AUTH_JWT_SECRET.get_secret_value(),
            "ENCRYPTION_KEYS": ",".join(k.get_secret_value() for k in settings.ENCRYPTION_KEYS),
            "MAILCHIMP_MODE": "sandbox",
            "MAILCHIMP_SANDBOX_URL": str(settings.MAILCHIMP_SANDBOX_URL),
            "MAILCHIMP_TIMEOUT_SECONDS": str(settings.MAILCHIMP_TIMEOUT_SECONDS),
            "AUTO_MIGRATE": "false",
            "LOG_LEVEL": "WARNING",
            "DATA_DIR": tempfile.mkdtemp(prefix="as-worker-"),
            "SYNC_POLL_INTERVAL_SECONDS": "0.2",
            "SYNC_BACKOFF_BASE_SECONDS": "0.05",
            "SYNC_BACKOFF_MAX_SECONDS": "0.5",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@asynccontextmanager
async def worker(
    env: dict[str, str], *, stderr: int = asyncio.subprocess.DEVNULL
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A running worker process; killed (SIGKILL) on exit if it is still alive."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
