"""The `audience-sync` command: serve, worker, migrate, sandbox, import, token."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from app.config import Environment, get_settings

cli = typer.Typer(
    help="Audience Sync: a CRM's contacts mirrored to email-marketing audiences.",
    no_args_is_help=True,
    add_completion=False,
)
sandbox_cli = typer.Typer(help="Local emulators of providers.", no_args_is_help=True)
cli.add_typer(sandbox_cli, name="sandbox")

DEMO_OWNER = "demo"


def _banner(url: str, token: str, owner: str) -> str:
    return f"""
  Audience Sync is up: open the console at {url}/
    (in a browser on this machine it offers the demo owner's token; or paste the one below)

    API docs     {url}/docs
    Demo owner   {owner}
    Bearer token {token}

  Try it:
    export TOKEN={token}
    curl -s -X POST {url}/api/contacts -H "Authorization: Bearer $TOKEN" \\
         -H 'Content-Type: application/json' \\
         -d '{{"email": "ada@example.com", "first_name": "Ada", "newsletter_opt_in": true}}'
"""


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (PORT).")] = None,
    worker: Annotated[
        bool | None, typer.Option("--worker/--no-worker", help="Run the worker in-process.")
    ] = None,
) -> None:
    """Serve the API (and, by default, the worker and the Mailchimp sandbox)."""
    import uvicorn

    from app.auth.tokens import issue_token
    from app.main import create_app

    if host:
        os.environ["HOST"] = host
    if port:
        os.environ["PORT"] = str(port)
    if worker is not None:
        os.environ["WORKER_IN_PROCESS"] = "true" if worker else "false"
    get_settings.cache_clear()
    settings = get_settings()
    app = create_app(settings)
    owner = settings.MAILCHIMP_OWNER or DEMO_OWNER
    # Only development prints a ready-made token: elsewhere it would sit in the logs.
    if (
        settings.ENVIRONMENT is Environment.development
        and settings.AUTH_JWT_SECRET.get_secret_value()
    ):
        token = issue_token(settings, owner)
        app.state.banner = _banner(f"http://{settings.HOST}:{settings.PORT}", token, owner)
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )


@cli.command()
def migrate() -> None:
    """Apply database migrations (`alembic upgrade head`)."""
    from app.db import resolve_database_url
    from app.logging import configure_logging
    from app.migrate import upgrade_head

    settings = get_settings()
    configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL)
    upgrade_head(resolve_database_url(settings))
    typer.echo("database at head")


@cli.command()
def token(
    owner: Annotated[str, typer.Option("--owner", help="The owner id (JWT sub).")],
    admin: Annotated[bool, typer.Option("--admin", help="Add role=admin.")] = False,
    ttl_days: Annotated[int, typer.Option(help="Days until it expires.")] = 30,
) -> None:
    """Print a signed development JWT for OWNER."""
    from app.auth.tokens import issue_token

    typer.echo(issue_token(get_settings(), owner, admin=admin, ttl_seconds=ttl_days * 86400))


@cli.command()
def worker() -> None:
    """Run the sync worker alone (several may run; they coordinate through Postgres)."""
    from app.sync.runner import run_worker_process

    run_worker_process(get_settings())


@cli.command(name="import")
def import_csv(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    owner: Annotated[str, typer.Option("--owner", help="The owner id the contacts belong to.")],
) -> None:
    """Import contacts from a CSV file, with a progress bar."""
    from app.contacts.importer import run_cli_import

    run_cli_import(get_settings(), file, owner)


@sandbox_cli.command("mailchimp")
def sandbox_mailchimp(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8025,
    latency_ms: Annotated[float | None, typer.Option(help="Base latency L0 per request.")] = None,
    latency_per_member_ms: Annotated[
        float | None, typer.Option(help="Extra latency c per member in a request.")
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Requests in flight per account before 429.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault injection.")] = None,
    fault_429: Annotated[float, typer.Option(help="Rate of injected 429s (0-1).")] = 0.0,
    fault_403: Annotated[float, typer.Option(help="Rate of injected body-less 403s.")] = 0.0,
    fault_503: Annotated[float, typer.Option(help="Rate of injected 503s.")] = 0.0,
    fault_timeout: Annotated[float, typer.Option(help="Rate of injected timeouts.")] = 0.0,
    timeout_seconds: Annotated[
        float | None, typer.Option(help="How long an injected timeout holds a request.")
    ] = None,
    state_file: Annotated[
        Path | None, typer.Option(help="JSON snapshot: loaded at start, saved at exit.")
    ] = None,
) -> None:
    """Serve the Mailchimp sandbox alone."""
    from app.sandbox.mailchimp.cli import serve_sandbox

    serve_sandbox(
        host=host,
        port=port,
        latency_ms=latency_ms,
        latency_per_member_ms=latency_per_member_ms,
        max_in_flight=max_in_flight,
        seed=seed,
        fault_rates={
            "429": fault_429,
            "403": fault_403,
            "503": fault_503,
            "timeout": fault_timeout,
        },
        timeout_seconds=timeout_seconds,
        state_file=state_file,
    )


@sandbox_cli.command("mautic")
def sandbox_mautic(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8026,
    basic_auth: Annotated[
        bool, typer.Option(help="Enable HTTP Basic auth (Mautic's api_enable_basic_auth).")
    ] = False,
    queue_mode: Annotated[
        bool, typer.Option(help="Queue webhooks (command_process) instead of sending at once.")
    ] = False,
    token_lifetime: Annotated[
        float | None, typer.Option(help="Access-token lifetime in seconds (default 3600).")
    ] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Base latency per request.")] = None,
    latency_per_item_ms: Annotated[
        float | None, typer.Option(help="Extra latency per item of a batch.")
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Requests served at once before 503.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault injection.")] = None,
    fault_429: Annotated[float, typer.Option(help="Rate of injected 429s (0-1).")] = 0.0,
    fault_500: Annotated[float, typer.Option(help="Rate of injected 500s.")] = 0.0,
    fault_503: Annotated[float, typer.Option(help="Rate of injected 503s.")] = 0.0,
    fault_timeout: Annotated[float, typer.Option(help="Rate of injected timeouts.")] = 0.0,
) -> None:
    """Serve the Mautic sandbox alone."""
    from app.sandbox.mautic.cli import serve_sandbox

    serve_sandbox(
        host=host,
        port=port,
        basic_auth=basic_auth,
        queue_mode=queue_mode,
        token_lifetime=token_lifetime,
        knobs={
            "latency_ms": latency_ms,
            "latency_per_item_ms": latency_per_item_ms,
            "max_in_flight": max_in_flight,
            "seed": seed,
            "fault_rates": {
                k: v
                for k, v in {
                    "429": fault_429,
                    "500": fault_500,
                    "503": fault_503,
                    "timeout": fault_timeout,
                }.items()
                if v
            }
            or None,
        },
    )


@sandbox_cli.command("constantcontact")
def sandbox_constantcontact(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8027,
    latency_ms: Annotated[float | None, typer.Option(help="Base latency per request.")] = None,
    rate_per_second: Annotated[
        float | None, typer.Option(help="Requests a second per application before 429.")
    ] = None,
    daily_quota: Annotated[
        int | None, typer.Option(help="Requests a UTC day per application before 429.")
    ] = None,
    access_token_ttl_seconds: Annotated[
        float | None, typer.Option(help="Lifetime of an access token.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault injection.")] = None,
    state_file: Annotated[
        Path | None, typer.Option(help="JSON snapshot: loaded at start, saved at exit.")
    ] = None,
) -> None:
    """Serve the Constant Contact sandbox alone."""
    from app.sandbox.constantcontact.cli import serve_sandbox

    serve_sandbox(
        host=host,
        port=port,
        state_file=state_file,
        changes={
            "latency_ms": latency_ms,
            "rate_per_second": rate_per_second,
            "daily_quota": daily_quota,
            "access_token_ttl_seconds": access_token_ttl_seconds,
            "seed": seed,
        },
    )


@sandbox_cli.command("activecampaign")
def sandbox_activecampaign(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8028,
    latency_ms: Annotated[float | None, typer.Option(help="Base latency per request.")] = None,
    rate_limit_per_second: Annotated[
        int | None, typer.Option(help="Requests a second per account before 429 (default 5).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault injection.")] = None,
    fault_429: Annotated[float, typer.Option(help="Rate of injected 429s (0-1).")] = 0.0,
    fault_403: Annotated[float, typer.Option(help="Rate of injected 403s.")] = 0.0,
    fault_503: Annotated[float, typer.Option(help="Rate of injected 503s.")] = 0.0,
    fault_timeout: Annotated[float, typer.Option(help="Rate of injected timeouts.")] = 0.0,
) -> None:
    """Serve the ActiveCampaign sandbox alone."""
    from app.sandbox.activecampaign.cli import serve_sandbox

    serve_sandbox(
        host=host,
        port=port,
        latency_ms=latency_ms,
        rate_limit_per_second=rate_limit_per_second,
        seed=seed,
        fault_rates={
            "429": fault_429,
            "403": fault_403,
            "503": fault_503,
            "timeout": fault_timeout,
        },
    )


def main() -> None:
    """Console-script entry point; a configuration the service cannot run with exits 2."""
    from pydantic import ValidationError

    from app.fieldmap import FieldMapError

    try:
        cli()
    except (ValidationError, FieldMapError) as exc:
        typer.echo(
            f"audience-sync: refusing to start, the configuration is invalid:\n{exc}", err=True
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
