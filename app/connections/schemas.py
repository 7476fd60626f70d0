"""Request and response shapes of the integrations API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ConnectionStatus = Literal["needs_audience", "active", "paused", "error"]


class ApiKeyConnect(BaseModel):
    """Body of POST /api/integrations/mailchimp/api-key."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    api_key: str = Field(min_length=8, max_length=100, description="<32 hex>-<dc>, e.g. …-us1")
    audience_id: str | None = Field(default=None, min_length=1, max_length=64)


class AudienceRef(BaseModel):
    """An audience by id and name."""

    id: str
    name: str | None


class IntegrationStatus(BaseModel):
    """What the Settings page shows for one provider."""

    provider: str
    connected: bool
    connection_id: uuid.UUID | None = None
    account_name: str | None = None
    audience: AudienceRef | None = None
    status: ConnectionStatus | None = None
    notice: str | None = None
    last_synced_at: datetime | None = None
    pending: int = 0
    failed: int = 0
