"""HTTP routes of the admin API: admin tokens only (403 for others, 401 without one)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.admin.schemas import ConnectionFailures, RetryResult, SyncStatus
from app.admin.service import admin_service
from app.auth.deps import AdminDep
from app.db import SessionDep
from app.errors import problem_responses

router = APIRouter(prefix="/api/admin", tags=["admin"])


@router.get("/sync-status", response_model=SyncStatus, responses=problem_responses(401, 403))
async def sync_status(_: AdminDep, session: SessionDep) -> SyncStatus:
    """Every connection: status and notice, queue depth, oldest ready age, parked, rejected,
    last sync and last error; totals across connections."""
    return await admin_service.sync_status(session)


@router.get(
    "/connections/{connection_id}/failures",
    response_model=ConnectionFailures,
    responses=problem_responses(401, 403, 404, 422),
)
async def connection_failures(
    connection_id: uuid.UUID,
    _: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ConnectionFailures:
    """The parked rows (oldest first) and the rejected subscribers, with their errors."""
    return await admin_service.failures(session, connection_id=connection_id, limit=limit)


@router.post(
    "/connections/{connection_id}/retry",
    response_model=RetryResult,
    responses=problem_responses(401, 403, 404, 422),
)
async def retry_connection(
    connection_id: uuid.UUID, _: AdminDep, session: SessionDep
) -> RetryResult:
    """Make the connection's parked rows ready again (attempts reset) and wake the workers."""
    return await admin_service.retry_parked(session, connection_id=connection_id)
