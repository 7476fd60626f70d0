"""Running a sandbox: alone under uvicorn, or mounted inside the service."""

from __future__ import annotations

import gc
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


# A sandbox's state only grows (contacts, members) while each request makes and drops tens of
# thousands of objects: at Python's default thresholds the young collections promote those
# into the old generation, whose collections then re-scan the whole state every few batches
# (the Mautic sandbox in a 50,000-contact drain: 5–16 ms of its 14–24 ms a batch). Rarer
# young collections let a request's objects die by reference count before any scan.
GC_THRESHOLDS = (100_000, 50, 100)


def quiet_gc() -> None:
    """Tune a sandbox process's collector for its growing state: what exists at start-up
    (modules, the app) is frozen out of the scans, and young collections come rarer."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
