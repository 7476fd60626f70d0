"""Inbound webhook receivers (DESIGN §7). Thin: token → body → service.

Not in the OpenAPI schema: the callers are providers, not API clients, and the bodies are
form-encoded provider payloads (docs/webhooks.md describes them).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.db import SessionDep
from app.errors import NotFound, UnsupportedMediaType
from app.webhooks.service import MAILCHIMP, BadWebhook, refused, webhook_service

MAX_BODY_BYTES = 64 * 1024
# Mailchimp posts its deliveries form-encoded, always; anything else is not one of them.
FORM = "application/x-www-form-urlencoded"

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], include_in_schema=False)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused (400) beyond `limit` bytes by its header or as it streams."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            refused("bad_request")
            raise BadWebhook("Content-Length is not a number.")
        if int(declared) > limit:
            refused("bad_request")
            raise BadWebhook(f"The body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked, or a Content-Length that lied
            refused("bad_request")
            raise BadWebhook(f"The body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/mailchimp/{token}")
async def mailchimp_validate(token: str, session: SessionDep) -> dict[str, Any]:
    """Mailchimp checks a webhook URL with a GET before it registers it: 200 for our URLs."""
    await webhook_service.connection_for(session, provider=MAILCHIMP, token=token)
    return {"status": "ok"}


@router.post("/mailchimp/{token}")
async def mailchimp_receive(token: str, request: Request, session: SessionDep) -> dict[str, Any]:
    """A Mailchimp delivery: stored once, applied in the same transaction, answered 200."""
    connection = await webhook_service.connection_for(session, provider=MAILCHIMP, token=token)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM:
        refused("unsupported_media_type")
        raise UnsupportedMediaType(f"A Mailchimp delivery is {FORM}, not {media_type or 'empty'}.")
    body = await read_body(request)
    received = await webhook_service.receive_mailchimp(
        session, connection=connection, body=body, settings=request.state.settings
    )
    return {"status": "received", "outcome": received.outcome.value}


@router.api_route("/{provider}/{token}", methods=["GET", "POST"])
async def other_provider(provider: str, token: str) -> None:
    """Only Mailchimp has a receiver so far."""
    raise NotFound("No webhook is registered at this address.")
