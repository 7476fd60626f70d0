"""HTTP routes of the integrations API (the SPA's Settings page)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.auth.deps import OwnerDep
from app.connections.schemas import ApiKeyConnect, IntegrationStatus
from app.connections.service import connection_service
from app.db import SessionDep
from app.errors import problem_responses

router = APIRouter(prefix="/api/integrations", tags=["integrations"])


@router.get("/mailchimp", response_model=IntegrationStatus, responses=problem_responses(401))
async def mailchimp_status(owner_id: OwnerDep, session: SessionDep) -> IntegrationStatus:
    """Connected?, account, audience, status, the one notice, last sync, pending, failed."""
    return await connection_service.status(session, owner_id=owner_id)


@router.post(
    "/mailchimp/api-key",
    response_model=IntegrationStatus,
    responses=problem_responses(401, 422, 502, 503),
)
async def connect_api_key(
    body: ApiKeyConnect, owner_id: OwnerDep, session: SessionDep, request: Request
) -> IntegrationStatus:
    """Connect with an API key; the only audience is chosen, or the one named."""
    await connection_service.connect_api_key(
        session,
        settings=request.state.settings,
        transport=request.state.runtime.extras["transport"],
        owner_id=owner_id,
        api_key=body.api_key,
        audience_id=body.audience_id,
    )
    return await connection_service.status(session, owner_id=owner_id)
