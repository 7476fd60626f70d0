"""Running a sandbox: alone under uvicorn, or mounted inside the service."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

# The sandboxes `serve` mounts at `/_sandbox/<name>` in sandbox mode; each is a package
# `app.sandbox.<package>` whose `create_app(state_file=...)` returns its ASGI app.
SANDBOXES: dict[str, str] = {
    "mailchimp": "mailchimp",
}


class SandboxFactory(Protocol):
    def __call__(self, *, state_file: Path | None = None) -> Any: ...


def factory(name: str) -> SandboxFactory:
    """The `create_app` of a registered sandbox."""
    module = importlib.import_module(f"app.sandbox.{SANDBOXES[name]}")
    create: SandboxFactory = module.create_app
    return create


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
