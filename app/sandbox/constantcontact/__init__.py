"""Constant Contact sandbox: the V3 API, its Okta-style authorization server, people's actions.

`create_app()` returns an ASGI app (Starlette); `app.state.sandbox` is its `SandboxState`.
Standalone: `audience-sync sandbox constantcontact --port 8027`; inside the service it is
mounted at `/_sandbox/constantcontact`. README.md beside this file lists the paths, the
control API and every knob.
"""

from app.sandbox.constantcontact.app import SandboxApp, create_app
from app.sandbox.constantcontact.config import SandboxConfig
from app.sandbox.constantcontact.constants import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_LIST_ID,
    LONG_LIVED_CLIENT_ID,
    LONG_LIVED_CLIENT_SECRET,
    PKCE_CLIENT_ID,
    ROTATING_CLIENT_ID,
    ROTATING_CLIENT_SECRET,
)
from app.sandbox.constantcontact.state import SandboxState

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_LIST_ID",
    "LONG_LIVED_CLIENT_ID",
    "LONG_LIVED_CLIENT_SECRET",
    "PKCE_CLIENT_ID",
    "ROTATING_CLIENT_ID",
    "ROTATING_CLIENT_SECRET",
    "SandboxApp",
    "SandboxConfig",
    "SandboxState",
    "create_app",
]
