"""The ASGI application: lifespan (database, migrations, worker, sandbox), routers, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import metrics, wiring
from app.auth.tokens import TokenVerifier
from app.config import Settings, get_settings
from app.contacts.routes import router as contacts_router
from app.db import create_engine, make_sessionmaker, migrations_at_head, resolve_database_url
from app.errors import install_error_handlers, problem
from app.logging import RequestIdMiddleware, configure_logging
from app.migrate import upgrade_head
from app.sync import outbox

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """What the lifespan builds and every request and background task shares."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    token_verifier: TokenVerifier
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


async def start_runtime(settings: Settings, *, migrate: bool | None = None) -> Runtime:
    """Open the database (embedded when DATABASE_URL is unset) and migrate when asked."""
    url = await asyncio.to_thread(resolve_database_url, settings)
    if settings.AUTO_MIGRATE if migrate is None else migrate:
        await asyncio.to_thread(upgrade_head, url)
    engine = create_engine(url, pool_size=settings.DB_POOL_SIZE)
    return Runtime(
        settings=settings,
        engine=engine,
        sessionmaker=make_sessionmaker(engine),
        token_verifier=TokenVerifier(settings),
    )


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the service. `runtime` lets tests share one database across app instances."""
    settings = settings or get_settings()
    wiring.check_config(settings)
    configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL)
    outbox.configure(settings.SYNC_COALESCE_SECONDS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        own = runtime is None
        rt = runtime or await start_runtime(settings)
        app.state.runtime = rt
        await wiring.on_startup(app, rt)
        log.info("service.started", mailchimp_mode=settings.MAILCHIMP_MODE)
        try:
            yield {
                "runtime": rt,
                "sessionmaker": rt.sessionmaker,
                "token_verifier": rt.token_verifier,
                "settings": settings,
            }
        finally:
            await wiring.on_shutdown(app, rt)
            if own:
                await rt.engine.dispose()

    app = FastAPI(
        title="Audience Sync",
        version="0.1.0",
        summary="A CRM's contacts, mirrored to email-marketing audiences.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.CORS_ORIGINS,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "If-Match", "X-Request-ID"],
        expose_headers=["ETag", "Location", "Retry-After", "X-Request-ID"],
    )
    app.add_middleware(metrics.HttpMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)

    app.include_router(contacts_router)
    for router in wiring.routers(settings):
        app.include_router(router)
    wiring.mount(app, settings)

    @app.get("/healthz", tags=["ops"], include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> Any:
        """Readiness: the database answers and its schema is at the code's migration head."""
        rt: Runtime = request.state.runtime
        try:
            async with rt.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            at_head = await migrations_at_head(rt.engine)
        except Exception as exc:
            return problem(request, 503, detail=f"database unreachable: {type(exc).__name__}")
        if not at_head:
            return problem(request, 503, detail="database schema is not at the migration head")
        return {"status": "ready", "database": "ok", "migrations": "head"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus exposition."""
        await metrics.refresh_gauges(request.state.runtime)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app
