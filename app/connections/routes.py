"""HTTP routes of the integrations API (the SPA's Settings page)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Body,
    Depends,
    Path,
    Query,
    Request,
    Response,
    status,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from app.auth.deps import OwnerDep
from app.auth.tokens import TokenVerifier
from app.connections.oauth import OAuthFailure
from app.connections.pages import callback_answer, json_answer, wants_json
from app.connections.schemas import (
    ApiKeyConnect,
    AudienceChoice,
    AudienceOut,
    AudienceRef,
    ConnectStart,
    IntegrationList,
    IntegrationStatus,
    OAuthOutcome,
    RunAccepted,
    SyncRunOut,
)
from app.connections.service import connection_service
from app.db import SessionDep
from app.errors import NotFound, Unprocessable, problem_responses
from app.providers import registry
from app.providers.registry import Provider

router = APIRouter(prefix="/api/integrations", tags=["integrations"])
_optional_bearer = HTTPBearer(auto_error=False)


def _provider(
    provider: Annotated[
        str,
        Path(
            max_length=64,
            description="A registered provider id (GET /api/integrations lists them).",
            examples=list(registry.ids()),
        ),
    ],
) -> Provider:
    found = registry.find(provider)
    if found is None:
        raise NotFound(f"No provider {provider[:64]!r} is offered here.")
    return found


ProviderDep = Annotated[Provider, Depends(_provider)]


def _deps(request: Request) -> dict[str, Any]:
    return {
        "settings": request.state.settings,
        "transport": request.state.runtime.extras["transport"],
    }


def _after_commit_register_webhook(
    request: Request, background: BackgroundTasks, connection_id: uuid.UUID
) -> None:
    # Runs once the response is sent, after the request's commit: the provider's validating
    # GET of the webhook URL must find the committed connection.
    background.add_task(
        connection_service.register_webhook,
        maker=request.state.sessionmaker,
        connection_id=connection_id,
        **_deps(request),
    )


def _credentials_schema() -> dict[str, Any]:
    """The credentials body: one schema per provider that takes credentials (oneOf)."""
    variants = []
    for provider in registry.all_providers():
        model = provider.connect.credentials_model
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schema.pop("$defs", None)
            schema["description"] = f"{provider.spec.display_name}: {schema.get('description', '')}"
            variants.append(schema)
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": variants}}},
    }


@router.get("", response_model=IntegrationList, responses=problem_responses(401))
async def list_integrations(owner_id: OwnerDep, session: SessionDep) -> IntegrationList:
    """Every provider this deployment offers, connected or not, and how each connects."""
    return IntegrationList(items=await connection_service.integrations(session, owner_id=owner_id))


@router.get("/{provider}", response_model=IntegrationStatus, responses=problem_responses(401, 404))
async def integration_status(
    provider: ProviderDep, owner_id: OwnerDep, session: SessionDep
) -> IntegrationStatus:
    """Connected?, account, audience, status, the one notice, last sync, pending, failed."""
    return await connection_service.status(session, provider=provider, owner_id=owner_id)


@router.post(
    "/{provider}/connect",
    response_model=ConnectStart,
    responses=problem_responses(401, 404, 503),
)
async def connect(
    provider: ProviderDep, owner_id: OwnerDep, session: SessionDep, request: Request
) -> ConnectStart:
    """Start OAuth: the URL the popup opens (its `state` works once, for 10 minutes)."""
    return await connection_service.start_oauth(
        session, provider=provider, settings=request.state.settings, owner_id=owner_id
    )


@router.get(
    "/{provider}/callback",
    response_model=OAuthOutcome,
    responses={
        200: {"content": {"text/html": {}}, "description": "A page that tells the opener"},
        303: {"description": "Back to APP_SETTINGS_URL when it is set"},
        **problem_responses(400, 403, 404, 422, 502, 503),
    },
)
async def oauth_callback(
    provider: ProviderDep,
    request: Request,
    session: SessionDep,
    background: BackgroundTasks,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_optional_bearer)],
    state: Annotated[str | None, Query(max_length=4096)] = None,
    code: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The provider's redirect target. The popup carries no bearer token: the owner is the one
    the signed `state` names. An API caller that sends one must be that owner."""
    settings = request.state.settings
    pid, name = provider.id, provider.spec.display_name
    caller = None
    if credentials is not None:
        verifier: TokenVerifier = request.state.token_verifier
        caller = (await verifier.verify(credentials.credentials)).owner_id
    try:
        done = await connection_service.complete_oauth(
            session,
            provider=provider,
            reader=request.state.sessionmaker,
            state=state,
            code=code,
            error=error,
            caller=caller,
            **_deps(request),
        )
    except OAuthFailure as exc:
        await session.rollback()  # nothing of a failed attempt is kept
        if wants_json(request):
            raise
        outcome = OAuthOutcome(
            type=f"audience-sync:{provider.id}", ok=False, error=exc.code, detail=exc.detail
        )
        return callback_answer(
            request, settings, outcome, provider=pid, name=name, status_code=exc.status_code
        )
    row = done.connection
    if done.audience_changed:
        _after_commit_register_webhook(request, background, row["id"])
    outcome = OAuthOutcome(
        type=f"audience-sync:{provider.id}",
        ok=True,
        status=row["status"],
        account_name=row["account_name"],
        audience=AudienceRef(id=row["audience_id"], name=row["audience_name"])
        if row["audience_id"]
        else None,
        audiences=done.audiences,
    )
    if wants_json(request):
        return json_answer(outcome)
    return callback_answer(request, settings, outcome, provider=pid, name=name)


async def _connect_with(
    provider: Provider,
    raw: Any,
    owner_id: str,
    session: Any,
    request: Request,
    background: BackgroundTasks,
) -> IntegrationStatus:
    model = provider.connect.credentials_model
    if model is None:
        raise NotFound(f"{provider.spec.display_name} connects with OAuth, not credentials.")
    try:
        body = model.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors()
        ]
        raise Unprocessable("The credentials are not valid.", extra={"errors": errors}) from None
    row = await connection_service.connect_credentials(
        session, provider=provider, owner_id=owner_id, body=body, **_deps(request)
    )
    if row["audience_id"]:
        _after_commit_register_webhook(request, background, row["id"])
    return await connection_service.status(session, provider=provider, owner_id=owner_id)


@router.post(
    "/{provider}/credentials",
    response_model=IntegrationStatus,
    responses=problem_responses(401, 404, 422, 502, 503),
    openapi_extra={"requestBody": _credentials_schema()},
)
async def connect_credentials(
    provider: ProviderDep,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
    background: BackgroundTasks,
    raw: Annotated[Any, Body(include_in_schema=False)] = None,
) -> IntegrationStatus:
    """Connect with what the provider takes (checked against it before anything is stored):
    Mailchimp `{api_key}`; the only audience is chosen, or the one named by `audience_id`."""
    return await _connect_with(provider, raw, owner_id, session, request, background)


@router.post(
    "/mailchimp/api-key",
    response_model=IntegrationStatus,
    responses=problem_responses(401, 422, 502, 503),
)
async def connect_api_key(
    body: ApiKeyConnect,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
    background: BackgroundTasks,
) -> IntegrationStatus:
    """Alias of POST /api/integrations/mailchimp/credentials (kept for existing callers)."""
    provider = registry.get("mailchimp")
    return await _connect_with(provider, body.model_dump(), owner_id, session, request, background)


@router.get(
    "/{provider}/audiences",
    response_model=list[AudienceOut],
    responses=problem_responses(401, 404, 409, 502, 503),
)
async def list_audiences(
    provider: ProviderDep, owner_id: OwnerDep, request: Request
) -> list[AudienceOut]:
    """The connected account's audiences, lists or segments (id, name, member count)."""
    audiences = await connection_service.audiences(
        provider=provider, reader=request.state.sessionmaker, owner_id=owner_id, **_deps(request)
    )
    return [AudienceOut(id=a.id, name=a.name, member_count=a.member_count) for a in audiences]


@router.put(
    "/{provider}/audience",
    response_model=IntegrationStatus,
    responses=problem_responses(401, 404, 409, 422, 502, 503),
)
async def choose_audience(
    provider: ProviderDep,
    body: AudienceChoice,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
    background: BackgroundTasks,
) -> IntegrationStatus:
    """Sync to this audience from now on: a new mirror and a full sync (a reconcile run)."""
    row, changed = await connection_service.choose_audience(
        session,
        provider=provider,
        reader=request.state.sessionmaker,
        owner_id=owner_id,
        audience_id=body.audience_id,
        **_deps(request),
    )
    if changed:
        _after_commit_register_webhook(request, background, row["id"])
    return await connection_service.status(session, provider=provider, owner_id=owner_id)


@router.post(
    "/{provider}/sync",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunAccepted,
    responses=problem_responses(401, 404, 409, 429),
)
async def sync_now(
    provider: ProviderDep,
    owner_id: OwnerDep,
    session: SessionDep,
    request: Request,
    dry_run: Annotated[bool, Query(description="Count only; change nothing.")] = False,
) -> RunAccepted:
    """Sync Now: a full reconcile run (at most once an hour; 429 with Retry-After)."""
    return await connection_service.sync_now(
        session,
        provider=provider,
        settings=request.state.settings,
        owner_id=owner_id,
        dry_run=dry_run,
    )


@router.get(
    "/{provider}/sync/{run_id}",
    response_model=SyncRunOut,
    responses=problem_responses(401, 404, 422),
)
async def sync_run(
    provider: ProviderDep, run_id: uuid.UUID, owner_id: OwnerDep, session: SessionDep
) -> SyncRunOut:
    """A run's state, counts and progress."""
    return await connection_service.run_status(
        session, provider=provider, owner_id=owner_id, run_id=run_id
    )


@router.delete(
    "/{provider}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 404),
)
async def disconnect(
    provider: ProviderDep, owner_id: OwnerDep, session: SessionDep, request: Request
) -> None:
    """Disconnect: our webhook and the credentials go; the people stay at the provider."""
    await connection_service.disconnect(
        session,
        provider=provider,
        reader=request.state.sessionmaker,
        owner_id=owner_id,
        **_deps(request),
    )
