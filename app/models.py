"""Every table, imported in one place for Alembic and for callers that need several."""

from app.connections.models import AudienceMapping, Connection
from app.contacts.models import Contact, ContactChange
from app.db import Base
from app.sync.models import ProviderSlot, SyncQueue, SyncRun, SyncState, SyncTombstone
from app.webhooks.models import WebhookEvent

__all__ = [
    "AudienceMapping",
    "Base",
    "Connection",
    "Contact",
    "ContactChange",
    "ProviderSlot",
    "SyncQueue",
    "SyncRun",
    "SyncState",
    "SyncTombstone",
    "WebhookEvent",
]
