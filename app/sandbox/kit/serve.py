"""Running a sandbox: alone under uvicorn, or mounted inside the service."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# The sandboxes `serve` mounts at `/_sandbox/<name>` in sandbox mode; each is a package
# `app.sandbox.<package>` whose `create_app()` returns its ASGI app (taking `state_file=` if
# it keeps a snapshot across restarts).
SANDBOXES: dict[str, str] = {
    "mailchimp": "mailchimp",
    "mautic": "mautic",
    "constantcontact": "constantcontact",
    "activecampaign": "activecampaign",
}


def build(name: str, *, state_file: Path | None = None) -> Any:
    """A registered sandbox's app; `state_file` is passed when its `create_app` takes one."""
    module = importlib.import_module(f"app.sandbox.{SANDBOXES[name]}")
    create: Callable[..., Any] = module.create_app
    if "state_file" in inspect.signature(create).parameters:
        return create(state_file=state_file)
    return create()


def on_unmount(app: Any, close: Callable[[], Awaitable[None]]) -> None:
    """Register what must run when the service stops (a mounted app's lifespan never runs)."""
    app.state.on_unmount = close


async def unmount(app: Any) -> None:
    """Run the sandbox's registered close (background deliveries, state snapshot)."""
    close = getattr(app.state, "on_unmount", None)
    if close is not None:
        await close()


def run(app: Any, *, host: str, port: int, banner: str, log_level: str = "warning") -> None:
    """Serve `app` alone under uvicorn until interrupted, after printing `banner`."""
    import uvicorn

    print(banner, flush=True)  # noqa: T201 - the developer's first screen
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
