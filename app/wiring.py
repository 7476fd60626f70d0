"""Where the domains plug into the service: routers, mounts, background tasks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, FastAPI

from app.config import Settings

if TYPE_CHECKING:
    from app.main import Runtime

log = structlog.get_logger(__name__)


def routers(settings: Settings) -> list[APIRouter]:
    """Routers beyond contacts and ops."""
    return []


def mount(app: FastAPI, settings: Settings) -> None:
    """Sub-applications (the Mailchimp sandbox in sandbox mode)."""


async def on_startup(app: FastAPI, rt: Runtime) -> None:
    """Start background work (the in-process worker)."""
    banner = getattr(app.state, "banner", None)
    if banner:
        print(banner, flush=True)  # noqa: T201 - the newcomer's first screen, not a log line


async def on_shutdown(app: FastAPI, rt: Runtime) -> None:
    """Stop background work, letting in-flight sends finish."""
    for task in rt.tasks:
        task.cancel()
    results: list[Any] = await asyncio.gather(*rt.tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            log.warning("service.task_failed_on_shutdown", error=repr(result))
