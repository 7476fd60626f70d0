"""Where the domains plug into the service: routers, mounts, background tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, FastAPI

from app.config import MAILCHIMP_SANDBOX_PREFIX, Settings

if TYPE_CHECKING:
    from app.runtime import Runtime
    from app.sync.engine import SyncEngine

log = structlog.get_logger(__name__)

# Every sandbox of app.sandbox.kit.SANDBOXES is mounted at /_sandbox/<name>.
SANDBOX_PREFIX = MAILCHIMP_SANDBOX_PREFIX
MAUTIC_SANDBOX_PREFIX = "/_sandbox/mautic"
CONSTANTCONTACT_SANDBOX_PREFIX = "/_sandbox/constantcontact"


from app.startup import check_config, field_map_providers  # noqa: E402  (re-exported)

__all__ = ["SANDBOX_PREFIX", "check_config", "field_map_providers"]


def routers(settings: Settings) -> list[APIRouter]:
    """Routers beyond contacts and ops."""
    from app.admin.routes import router as admin_router
    from app.connections.mapping_routes import router as mappings_router
    from app.connections.routes import router as connections_router
    from app.console.routes import router as console_router
    from app.webhooks.routes import router as webhooks_router

    return [mappings_router, connections_router, webhooks_router, admin_router, console_router]


def mount(app: FastAPI, settings: Settings) -> None:
    """Sub-applications: the console's files; the provider sandboxes in sandbox mode."""
    from app.console.routes import mount as mount_console

    mount_console(app)
    from app.providers import registry

    if not any(p.connect.sandbox(settings) for p in registry.all_providers()):
        return
    from app.sandbox.kit import SANDBOXES, build

    mounted: dict[str, Any] = {}
    for name in SANDBOXES:
        sandbox = build(name, state_file=settings.DATA_DIR / f"sandbox-{name}.json")
        mounted[name] = sandbox
        app.mount(f"/_sandbox/{name}", sandbox)
    app.state.sandbox_apps = mounted
    app.state.sandbox_app = mounted.get("mailchimp")
    app.state.mautic_sandbox_app = mounted.get("mautic")
    app.state.constantcontact_sandbox_app = mounted.get("constantcontact")


def periodic_jobs(rt: Runtime) -> list[tuple[float, Callable[[SyncEngine], Awaitable[None]]]]:
    """Jobs every worker runs on a schedule (reconcile runs, scheduled pulls)."""
    from app.sync.runner import periodic_jobs as sync_jobs

    return sync_jobs(rt)


async def on_startup(app: FastAPI, rt: Runtime) -> None:
    """Shared HTTP transport, configured connection, in-process worker; print the banner."""
    from app.connections.service import ensure_configured_connection, reregister_webhooks
    from app.db import session_scope
    from app.providers.transport import build_transport
    from app.sync.outbox import CommitNotifier
    from app.sync.runner import start_in_process

    rt.extras.setdefault("transport", build_transport())
    # The API's own provider calls (connect, Settings) count against the shared limits.
    from app.connections import limits as client_limits
    from app.sync.limits import ProcessLimits
    from app.sync.slots import worker_identity

    limits = ProcessLimits(rt.engine, rt.settings, me=f"{worker_identity()}:api")
    rt.extras["limits"] = limits
    client_limits.install(limits)
    async with session_scope(rt.sessionmaker) as session:
        moved = await ensure_configured_connection(rt.settings, session)
    if moved:
        # Their webhooks still name the old address; the sandboxes answer once we listen.
        rt.extras["sandbox_webhooks"] = asyncio.create_task(
            reregister_webhooks(rt.sessionmaker, rt.settings, rt.extras["transport"], moved),
            name="sandbox-webhooks",
        )
    # The NOTIFY of the service's writes, sent after their commits (app.sync.outbox).
    notifier = CommitNotifier(rt.engine.url.render_as_string(hide_password=False))
    notifier.start()
    rt.extras["notifier"] = notifier
    if rt.settings.WORKER_IN_PROCESS:
        await start_in_process(rt)
    banner = getattr(app.state, "banner", None)
    if banner:
        print(banner, flush=True)  # noqa: T201 - the newcomer's first screen, not a log line


async def on_shutdown(app: FastAPI, rt: Runtime) -> None:
    """Stop the worker (in-flight sends finish), then close the HTTP transport."""
    webhooks = rt.extras.pop("sandbox_webhooks", None)
    if webhooks is not None:
        webhooks.cancel()
        await asyncio.gather(webhooks, return_exceptions=True)
    engine = rt.extras.pop("engine", None)
    if engine is not None:
        engine.stop()
    results: list[Any] = await asyncio.gather(*rt.tasks, return_exceptions=True)
    rt.tasks.clear()
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            log.warning("service.task_failed_on_shutdown", error=repr(result))
    notifier = rt.extras.pop("notifier", None)
    if notifier is not None:
        await notifier.aclose()
    limits = rt.extras.pop("limits", None)
    if limits is not None:
        from app.connections import limits as client_limits

        client_limits.uninstall(limits)
        await limits.release()
    transport = rt.extras.pop("transport", None)
    if transport is not None:
        await transport.aclose()
    mautic = getattr(app.state, "mautic_sandbox_app", None)
    if mautic is not None:
        await mautic.sandbox.hub.aclose()
    from app.sandbox.kit import unmount

    # A mounted app's own lifespan never runs: close its background work, keep its data.
    for sandbox in getattr(app.state, "sandbox_apps", {}).values():
        await unmount(sandbox)
