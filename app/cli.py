"""The `audience-sync` command: serve, worker, migrate, sandbox, import, token."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from app.config import Environment, get_settings

cli = typer.Typer(
    help="Audience Sync: a CRM's contacts mirrored to email-marketing audiences.",
    no_args_is_help=True,
    add_completion=False,
)

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
    if settings.WORKER_IN_PROCESS:
        from app.sync.runner import tune_gc

        # The worker drains in this process: the collector as `audience-sync worker` sets it,
        # or full collections over a drain's heap stop the loop with every slot idle.
        tune_gc()
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


@dataclass(frozen=True, slots=True)
class _SandboxFlags:
    """The flags one sandbox of `app.sandbox.kit.SANDBOXES` takes, and how its
    `app.sandbox.<package>.cli.serve_sandbox` takes them: as keywords (`flat`), or gathered
    in one dict keyword (`group`: Mautic's `knobs`, Constant Contact's `changes`)."""

    flat: frozenset[str]
    grouped: frozenset[str] = frozenset()
    group: str | None = None
    faults: tuple[str, ...] = ()  # the --fault-<kind> flags, sent as `fault_rates`


_FLAGS = {
    "mailchimp": _SandboxFlags(
        flat=frozenset(
            {
                "latency_ms",
                "latency_per_member_ms",
                "max_in_flight",
                "seed",
                "fault_rates",
                "timeout_seconds",
                "state_file",
            }
        ),
        faults=("429", "403", "503", "timeout"),
    ),
    "mautic": _SandboxFlags(
        flat=frozenset({"basic_auth", "queue_mode", "token_lifetime"}),
        grouped=frozenset(
            {"latency_ms", "latency_per_item_ms", "max_in_flight", "seed", "fault_rates"}
        ),
        group="knobs",
        faults=("429", "500", "503", "timeout"),
    ),
    "constantcontact": _SandboxFlags(
        flat=frozenset({"state_file"}),
        grouped=frozenset(
            {"latency_ms", "rate_per_second", "daily_quota", "access_token_ttl_seconds", "seed"}
        ),
        group="changes",
    ),
    "activecampaign": _SandboxFlags(
        flat=frozenset({"latency_ms", "rate_limit_per_second", "seed", "fault_rates"}),
        faults=("429", "403", "503", "timeout"),
    ),
}


_FAULT_KINDS = ("429", "403", "500", "503", "timeout")


def _sandbox_kwargs(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The keywords of `name`'s serve_sandbox from the flags given (None, False or 0: not
    given); a flag that sandbox does not take is a usage error naming it."""
    spec = _FLAGS.get(name, _SandboxFlags(flat=frozenset()))  # host and port only
    faults = {kind: given.pop(f"fault_{kind}") for kind in _FAULT_KINDS}
    values = {k: v for k, v in given.items() if v is not None and v is not False}
    wrong = [f"--{k.replace('_', '-')}" for k in values if k not in spec.flat | spec.grouped]
    wrong += [f"--fault-{k}" for k, rate in faults.items() if rate and k not in spec.faults]
    if wrong:
        raise typer.BadParameter(f"the {name} sandbox does not take {', '.join(wrong)}")
    if any(faults.values()):
        values["fault_rates"] = {k: v for k, v in faults.items() if v}
    out = {k: v for k, v in values.items() if k in spec.flat}
    if spec.group is not None:
        out[spec.group] = {k: v for k, v in values.items() if k in spec.grouped}
    return out


@cli.command("sandbox")
def sandbox(
    name: Annotated[str, typer.Argument(help="mailchimp, mautic, constantcontact, …")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port to bind (mailchimp 8025, mautic 8026, …).")
    ] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Base latency per request.")] = None,
    latency_per_member_ms: Annotated[
        float | None, typer.Option(help="mailchimp: extra latency per member in a request.")
    ] = None,
    latency_per_item_ms: Annotated[
        float | None, typer.Option(help="mautic: extra latency per item of a batch.")
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="mailchimp, mautic: requests in flight before 429/503.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the fault injection.")] = None,
    fault_429: Annotated[float, typer.Option(help="Rate of injected 429s (0-1).")] = 0.0,
    fault_403: Annotated[
        float, typer.Option(help="mailchimp, activecampaign: rate of injected 403s.")
    ] = 0.0,
    fault_500: Annotated[float, typer.Option(help="mautic: rate of injected 500s.")] = 0.0,
    fault_503: Annotated[float, typer.Option(help="Rate of injected 503s.")] = 0.0,
    fault_timeout: Annotated[float, typer.Option(help="Rate of injected timeouts.")] = 0.0,
    timeout_seconds: Annotated[
        float | None, typer.Option(help="mailchimp: how long an injected timeout holds.")
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(help="mailchimp, constantcontact: JSON snapshot, loaded and saved."),
    ] = None,
    basic_auth: Annotated[
        bool, typer.Option(help="mautic: HTTP Basic auth (api_enable_basic_auth).")
    ] = False,
    queue_mode: Annotated[
        bool, typer.Option(help="mautic: queue webhooks (command_process), not send at once.")
    ] = False,
    token_lifetime: Annotated[
        float | None, typer.Option(help="mautic: access-token lifetime in seconds (3600).")
    ] = None,
    rate_per_second: Annotated[
        float | None, typer.Option(help="constantcontact: requests a second before 429.")
    ] = None,
    daily_quota: Annotated[
        int | None, typer.Option(help="constantcontact: requests a UTC day before 429.")
    ] = None,
    access_token_ttl_seconds: Annotated[
        float | None, typer.Option(help="constantcontact: lifetime of an access token.")
    ] = None,
    rate_limit_per_second: Annotated[
        int | None, typer.Option(help="activecampaign: requests a second before 429 (5).")
    ] = None,
) -> None:
    """Serve one provider's sandbox alone (a sandbox of app.sandbox.kit.SANDBOXES)."""
    flags = {k: v for k, v in locals().items() if k not in ("name", "host", "port")}
    import importlib
    import inspect

    from app.sandbox.kit.serve import SANDBOXES

    if name not in SANDBOXES:
        raise typer.BadParameter(f"{name!r} is not a sandbox: " + ", ".join(SANDBOXES))
    kwargs = _sandbox_kwargs(name, flags)
    serve_sandbox = importlib.import_module(f"app.sandbox.{SANDBOXES[name]}.cli").serve_sandbox
    if port is None:  # the sandbox's own default port
        port = inspect.signature(serve_sandbox).parameters["port"].default
    serve_sandbox(host=host, port=port, **kwargs)


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
