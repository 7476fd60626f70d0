"""Inbound webhook receivers (DESIGN §7). Thin: token → body → service.

Not in the OpenAPI schema: the callers are providers, not API clients, and the bodies are
form-encoded provider payloads (docs/webhooks.md describes them).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.db import SessionDep
from app.errors import UnsupportedMediaType
from app.webhooks.service import BadWebhook, provider_for, refused, webhook_service

MAX_BODY_BYTES = 64 * 1024

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


@router.get("/{provider}/{token}")
async def validate(provider: str, token: str, session: SessionDep) -> dict[str, Any]:
    """Providers check a webhook URL with a GET before they register it: 200 for our URLs."""
    found = provider_for(provider)
    await webhook_service.connection_for(session, provider=found.id, token=token)
    return {"status": "ok"}


@router.post("/{provider}/{token}")
async def receive(
    provider: str, token: str, request: Request, session: SessionDep
) -> dict[str, Any]:
    """A delivery: verified, stored once, applied in the same transaction, answered 200."""
    found = provider_for(provider)
    connection = await webhook_service.connection_for(session, provider=found.id, token=token)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    expected = found.inbound.media_type
    if media_type != expected:
        refused("unsupported_media_type", found.id)
        raise UnsupportedMediaType(
            f"A {found.spec.display_name} delivery is {expected}, not {media_type or 'empty'}."
        )
    # A provider may post larger deliveries (Mautic: up to 10 full contacts in one POST).
    body = await read_body(request, getattr(found.inbound, "max_body", MAX_BODY_BYTES))
    received = await webhook_service.receive(
        session,
        provider=found,
        connection=connection,
        body=body,
        headers=request.headers,
        settings=request.state.settings,
    )
    return {"status": "received", "outcome": received.outcome.value}
