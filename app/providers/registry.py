"""Every provider this service knows, by id: its spec, client factory, mapping, inbound and
connect flow (DESIGN §14). The only module outside `app/providers/<id>/` that imports them.

Adding a provider adds its package, its sandbox, one builder below and its name in the last line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import import_module
from typing import TYPE_CHECKING, Any

from app import metrics
from app.providers.base import (
    ClientFactory,
    ConnectFlow,
    InboundAdapter,
    Limits,
    ProviderSpec,
    SandboxSeed,
    tombstone_key,
)

if TYPE_CHECKING:
    from app.config import Settings
    from app.providers.mapping import MappingConfig


class UnknownProvider(KeyError):
    """No provider is registered under this id."""


@dataclass(frozen=True, slots=True)
class Provider:
    """One registry line.

    - `spec`: what the core may know (connect kinds, limits, capabilities, status map);
    - `client`: builds a `ProviderClient` for a stored connection;
    - `mapping`: builds the deployment's `MappingConfig` from Settings (the field map);
    - `inbound`: parses and verifies webhooks, keeps ours registered;
    - `connect`: credentials and OAuth;
    - `person_id`: the provider's person id derivable from an email key (Mailchimp's
      subscriber hash), or None when only the provider can say (its API returns it);
    - `sandbox_seed`: the emulator's default account (development), read lazily;
    - `sandbox_app`: the dotted path of the emulator's `create_app` (mounted by `serve` in
      sandbox mode at `/_sandbox/<id>`), or None;
    - `configured_limits`: the spec's limits as the deployment's Settings narrow them (a
      provider's own `<ID>_MAX_CONCURRENCY`), or None when the spec's hold as declared.
    """

    spec: ProviderSpec
    client: ClientFactory
    mapping: Callable[[Settings], MappingConfig]
    inbound: InboundAdapter
    connect: ConnectFlow
    person_id: Callable[[str], str | None] = lambda _key: None
    sandbox_seed: Callable[[], SandboxSeed | None] = lambda: None
    sandbox_app: str | None = None
    configured_limits: Callable[[Settings], Limits] | None = None

    def limits(self, settings: Settings) -> Limits:
        """The limits the engine enforces for this provider under `settings`."""
        if self.configured_limits is None:
            return self.spec.limits
        return self.configured_limits(settings)

    @property
    def id(self) -> str:
        """The provider id (`connections.provider`, URL segment)."""
        return self.spec.id


_PROVIDERS: dict[str, Provider] = {}


def _register(provider: Provider) -> None:
    _PROVIDERS[provider.id] = provider
    metrics.track_provider(provider.id)  # its label sets exist at zero before any event


def get(provider_id: str) -> Provider:
    """The provider registered as `provider_id`; UnknownProvider otherwise."""
    try:
        return _PROVIDERS[provider_id]
    except KeyError:
        raise UnknownProvider(provider_id) from None


def find(provider_id: str) -> Provider | None:
    """The provider registered as `provider_id`, or None."""
    return _PROVIDERS.get(provider_id)


def all_providers() -> list[Provider]:
    """Every registered provider, in registration order (the Settings page's order)."""
    return list(_PROVIDERS.values())


def ids() -> tuple[str, ...]:
    """Every registered provider id."""
    return tuple(_PROVIDERS)


__all__ = ["Provider", "UnknownProvider", "all_providers", "find", "get", "ids", "tombstone_key"]


# --- the providers -------------------------------------------------------------------------


def _sandbox_seed(
    sandbox: str, build: Callable[[Any], SandboxSeed]
) -> Callable[[], SandboxSeed | None]:
    """The emulator's default account, built lazily from `app.sandbox.<sandbox>.constants`."""

    def seed() -> SandboxSeed | None:
        try:
            constants = import_module(f"app.sandbox.{sandbox}.constants")
        except ImportError:  # pragma: no cover - the sandbox ships with the service
            return None
        return build(constants)

    return seed


def _mailchimp() -> Provider:
    from app.providers.mailchimp import connect, inbound, mapping, spec
    from app.providers.mailchimp.client import subscriber_hash

    seed = _sandbox_seed(
        "mailchimp",
        lambda c: SandboxSeed(
            credentials={"api_key": c.DEFAULT_API_KEY},
            audience_id=c.DEFAULT_LIST_ID,
            audience_name=c.DEFAULT_LIST_NAME,
            account_name=c.DEFAULT_ACCOUNT_NAME,
            oauth_client=(c.DEFAULT_CLIENT_ID, c.DEFAULT_CLIENT_SECRET),
        ),
    )

    return Provider(
        spec=spec.SPEC,
        client=connect.client_factory,
        mapping=mapping.from_settings,
        inbound=inbound.MailchimpInbound(),
        connect=connect.MailchimpConnect(sandbox_seed=seed),
        person_id=subscriber_hash,
        sandbox_seed=seed,
        sandbox_app="app.sandbox.mailchimp:create_app",
        configured_limits=spec.configured_limits,
    )


def _mautic() -> Provider:
    from app.providers.mautic import connect, inbound, mapping, spec

    seed = _sandbox_seed(
        "mautic",
        lambda c: SandboxSeed(
            credentials={
                "client_id": c.DEFAULT_CLIENT_ID,
                "client_secret": c.DEFAULT_CLIENT_SECRET,
            },
            audience_id=str(c.DEMO_SEGMENT_ID),
            audience_name=c.DEMO_SEGMENT_NAME,
            account_name="Mautic sandbox",
        ),
    )

    return Provider(
        spec=spec.SPEC,
        client=connect.client_factory,
        mapping=mapping.from_settings,
        inbound=inbound.MauticInbound(),
        connect=connect.MauticConnect(sandbox_seed=seed),
        configured_limits=lambda settings: replace(
            spec.SPEC.limits, concurrency_per_account=settings.MAUTIC_MAX_CONCURRENCY
        ),
        sandbox_seed=seed,
        sandbox_app="app.sandbox.mautic:create_app",
    )


def _constantcontact() -> Provider:
    from app.providers.constantcontact import connect, inbound, mapping, spec

    seed = _sandbox_seed(
        "constantcontact",
        lambda c: SandboxSeed(
            credentials={"account_id": c.DEFAULT_ACCOUNT_ID},
            audience_id=c.DEFAULT_LIST_ID,
            audience_name=c.DEFAULT_LIST_NAME,
            account_name="Sandbox Org",
            oauth_client=(c.ROTATING_CLIENT_ID, c.ROTATING_CLIENT_SECRET),
        ),
    )

    return Provider(
        spec=spec.SPEC,
        client=connect.client_factory,
        mapping=mapping.from_settings,
        inbound=inbound.ConstantContactInbound(),
        connect=connect.ConstantContactConnect(sandbox_seed=seed),
        sandbox_seed=seed,
        sandbox_app="app.sandbox.constantcontact:create_app",
        configured_limits=spec.configured_limits,
    )


def _activecampaign() -> Provider:
    from app.providers.activecampaign import connect, inbound, mapping, spec

    seed = _sandbox_seed(
        "activecampaign",
        lambda c: SandboxSeed(
            credentials={"api_key": c.DEFAULT_API_KEY},
            audience_id=c.DEFAULT_LIST_ID,
            audience_name=c.DEFAULT_LIST_NAME,
            account_name=c.DEFAULT_ACCOUNT_NAME,
        ),
    )

    return Provider(
        spec=spec.SPEC,
        client=connect.client_factory,
        mapping=mapping.from_settings,
        inbound=inbound.ActiveCampaignInbound(),
        connect=connect.ActiveCampaignConnect(),
        sandbox_seed=seed,
        sandbox_app="app.sandbox.activecampaign:create_app",
    )


# Registration order is the Settings page's order.
for _build in (_mailchimp, _constantcontact, _activecampaign, _mautic):
    _register(_build())
