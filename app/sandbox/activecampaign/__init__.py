"""ActiveCampaign sandbox: an in-memory emulator of the v3 API's contact-sync subset and its
webhooks (reference/activecampaign-api.md is its specification; §11 its checklist).

`create_app()` returns an ASGI app (Starlette); `app.state.sandbox` is its `AcState`.
Standalone: `audience-sync sandbox activecampaign --port 8028`; inside the service it is
mounted at `/_sandbox/activecampaign`. README.md beside this file lists paths and knobs.
"""

from app.sandbox.activecampaign.app import ActiveCampaignSandbox, create_app
from app.sandbox.activecampaign.config import AcConfig
from app.sandbox.activecampaign.constants import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    DEFAULT_LIST_ID,
)
from app.sandbox.activecampaign.state import AcState

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_LIST_ID",
    "AcConfig",
    "AcState",
    "ActiveCampaignSandbox",
    "create_app",
]
