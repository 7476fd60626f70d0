"""Connecting a Mautic instance: the credentials body, the host rule, the client factory.

The `ConnectFlow` (settings, single-tenant configuration, registration of the webhook) is not
written yet; these are the parts it will use (issue 14 item 3).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from app.providers.base import ClientConfig, ProviderClient
from app.providers.mautic.client import MauticClient

Resolver = Callable[[str], Iterable[str]]


class MauticCredentials(BaseModel):
    """`POST /api/integrations/mautic/credentials`: the instance and an OAuth2 client created
    by an administrator (only those may use client_credentials)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, title="MauticCredentials")

    base_url: str = Field(min_length=8, max_length=300, description="https://mautic.example.com")
    client_id: str = Field(min_length=3, max_length=200)
    client_secret: SecretStr = Field(min_length=3, max_length=200)
    audience_id: str | None = Field(default=None, min_length=1, max_length=32)


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"{host} does not resolve") from exc
    return [str(info[4][0]) for info in infos]


def instance_url(
    url: str, *, allow_private: bool = False, resolve: Resolver | None = _resolve
) -> str:
    """The instance's root URL by the host rule (DESIGN §8): https, a host name (no IP
    literal, no credentials, query or fragment), every address it resolves to public unless
    `allow_private` (MAUTIC_ALLOW_PRIVATE_HOSTS); ValueError naming the problem otherwise.
    A trailing `/api` is dropped: people paste either."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https":
        raise ValueError("The Mautic URL must start with https://.")
    host = parts.hostname or ""
    if not host or parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("The Mautic URL must be https://<host>[/path], nothing else.")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValueError("The Mautic URL must name a host, not an IP address.")
    if not allow_private and resolve is not None:
        for address in resolve(host):
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global:
                raise ValueError(f"{host} resolves to a private or loopback address.")
    port = f":{parts.port}" if parts.port else ""
    path = parts.path.rstrip("/").removesuffix("/api")
    return f"https://{host.lower()}{port}{path}"


def client_factory(config: ClientConfig) -> ProviderClient:
    """A client for a stored connection; outside the sandbox only at a URL the host rule
    accepts (checked without resolving: the resolution was checked at connect)."""
    base = config.api_endpoint
    if not config.sandbox:
        base = instance_url(base, allow_private=True, resolve=None)
    return MauticClient(
        config.transport,
        base_url=base,
        client_id=str(config.credentials.get("client_id") or ""),
        client_secret=str(config.credentials.get("client_secret") or ""),
        timeout=config.timeout,
        limiter=config.limiter,
    )
