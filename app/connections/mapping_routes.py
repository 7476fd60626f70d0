"""HTTP routes of audience mappings: several audiences per connection, each with a rule."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from app.auth.deps import OwnerDep
from app.connections.mappings import mapping_service
from app.connections.routes import ProviderDep
from app.connections.schemas import (
    MappingCreate,
    MappingList,
    MappingOut,
    MappingUpdate,
    RunAccepted,
)
from app.connections.service import connection_service
from app.db import SessionDep
from app.errors import problem_responses

router = APIRouter(prefix="/api/integrations", tags=["integrations"])
_PATH = "/{provider}/audiences/mappings"


def _deps(request: Request) -> dict[str, Any]:
    return {
        "settings": request.state.settings,
        "transport": request.state.runtime.extras["transport"],
        "reader": request.state.sessionmaker,
    }


@router.get(_PATH, response_model=MappingList, responses=problem_responses(401, 404, 409))
async def list_mappings(
    provider: ProviderDep, owner_id: OwnerDep, session: SessionDep
) -> MappingList:
    """Every audience the connection syncs, with its rule and counts (the default one first)."""
    return await mapping_service.list(session, provider=provider, owner_id=owner_id)


@router.post(
    _PATH,
    status_code=status.HTTP_201_CREATED,
    response_model=MappingOut,
    responses=problem_responses(401, 404, 409, 422, 502, 503),
)
async def create_mapping(
    provider: ProviderDep,
    body: MappingCreate,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
) -> MappingOut:
    """Map another audience with a rule (all, by kind, by tags any of / all of); its first
    sync is queued. An unknown audience, one already mapped or an empty rule: 422."""
    return await mapping_service.create(
        session,
        provider=provider,
        owner_id=owner_id,
        body=body,
        **_deps(request),
    )


@router.get(
    _PATH + "/{mapping_id}",
    response_model=MappingOut,
    responses=problem_responses(401, 404, 409, 422),
)
async def get_mapping(
    provider: ProviderDep, mapping_id: uuid.UUID, owner_id: OwnerDep, session: SessionDep
) -> MappingOut:
    """One mapping with its rule and counts."""
    return await mapping_service.get(
        session, provider=provider, owner_id=owner_id, mapping_id=mapping_id
    )


@router.put(
    _PATH + "/{mapping_id}",
    response_model=MappingOut,
    responses=problem_responses(401, 404, 409, 422, 502, 503),
)
async def update_mapping(
    provider: ProviderDep,
    mapping_id: uuid.UUID,
    body: MappingUpdate,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
) -> MappingOut:
    """Replace a mapping's audience and rule; contacts that now match join, those that no
    longer match leave that audience (archived, consent untouched)."""
    return await mapping_service.update(
        session,
        provider=provider,
        owner_id=owner_id,
        mapping_id=mapping_id,
        body=body,
        **_deps(request),
    )


@router.delete(
    _PATH + "/{mapping_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404, 409, 422),
)
async def delete_mapping(
    provider: ProviderDep,
    mapping_id: uuid.UUID,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
) -> None:
    """Stop syncing an audience (its members stay at the provider); the default one stays."""
    await mapping_service.delete(
        session,
        provider=provider,
        owner_id=owner_id,
        mapping_id=mapping_id,
        **_deps(request),
    )


@router.post(
    _PATH + "/{mapping_id}/sync",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=problem_responses(401, 404, 409, 422, 429),
)
async def sync_mapping(
    provider: ProviderDep,
    mapping_id: uuid.UUID,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
    dry_run: Annotated[bool, Query(description="Count only; change nothing.")] = False,
) -> RunAccepted:
    """Sync Now for one mapping: a full reconcile of its audience (at most once an hour)."""
    return await connection_service.sync_now(
        session,
        provider=provider,
        settings=request.state.settings,
        owner_id=owner_id,
        dry_run=dry_run,
        mapping_id=mapping_id,
    )
