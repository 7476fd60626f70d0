"""Mailchimp sandbox: an in-memory emulator of the Marketing API, OAuth and webhooks.

`create_app()` returns an ASGI app (Starlette); `app.state.sandbox` is its `SandboxState`.
Standalone: `audience-sync sandbox mailchimp --port 8025`; inside the service it is mounted
at `/_sandbox/mailchimp` (every URL it returns is built from the request, `root_path` included).
See README.md beside this file for the paths, the control API and the realism knobs.
"""

from app.sandbox.mailchimp.app import SandboxApp, create_app
from app.sandbox.mailchimp.config import SandboxConfig
from app.sandbox.mailchimp.constants import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_DC,
    DEFAULT_LIST_ID,
)
from app.sandbox.mailchimp.state import DEFAULT_ACCESS_TOKEN, SandboxState

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_DC",
    "DEFAULT_LIST_ID",
    "SandboxApp",
    "SandboxConfig",
    "SandboxState",
    "create_app",
]
