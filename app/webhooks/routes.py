"""Inbound webhooks — a placeholder until the receiver lands (DESIGN §7).

Only what registering a webhook needs: Mailchimp validates the URL with a GET that must answer
200. The receiver (POST, token lookup, inbox) replaces this module.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


@router.get("/mailchimp/{token}", response_class=PlainTextResponse, include_in_schema=False)
async def mailchimp_validate(token: str) -> str:
    """Mailchimp's URL validation (a GET with no body)."""
    return "ok"
