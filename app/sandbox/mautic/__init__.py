"""Mautic sandbox: an in-memory emulator of Mautic 5's REST API, OAuth2 and webhooks.

`create_app()` returns an ASGI app (Starlette); `app.state.sandbox` is its `MauticState`.
Standalone: `audience-sync sandbox mautic --port 8026`; inside the service it is mounted at
`/_sandbox/mautic`. See README.md beside this file for the paths, the control API and knobs.
"""

from app.sandbox.mautic.app import MauticSandbox, create_app
from app.sandbox.mautic.config import MauticConfig
from app.sandbox.mautic.constants import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    USER_CLIENT_ID,
    USER_CLIENT_SECRET,
)
from app.sandbox.mautic.state import MauticState

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USERNAME",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "USER_CLIENT_ID",
    "USER_CLIENT_SECRET",
    "MauticConfig",
    "MauticSandbox",
    "MauticState",
    "create_app",
]
