"""Checks the service makes before it starts serving or working (both `serve` and `worker`)."""

from __future__ import annotations

from app.config import Settings


def field_map_providers() -> frozenset[str]:
    """The provider ids FIELD_MAP may name: every registered one."""
    from app.providers import registry

    return frozenset(registry.ids())


def check_config(settings: Settings) -> None:
    """Refuse to start on a FIELD_MAP a provider cannot use; the message names every entry.

    Settings already checked what holds for every provider (sources, types, shape); this adds
    each provider's own rules (for Mailchimp: merge-tag syntax, reserved tags).
    """
    from app.fieldmap import FieldMapError
    from app.providers import registry

    problems = [
        f"FIELD_MAP: {name!r} is not a provider this service offers"
        for name in sorted(set(settings.FIELD_MAP.providers) - field_map_providers())
    ]
    for provider in registry.all_providers():
        problems += provider.connect.check_mapping(settings)
    if problems:
        raise FieldMapError("; ".join(problems))
