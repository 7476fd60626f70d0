"""Audience mappings: a connection's audiences, each with the rule choosing its contacts.

Every change is checked before anything is written: the audience must exist in the
connected account and be mapped once, and the rule must say something (`{"all": true}`, or
kinds and tags). A new mapping, a new audience or a new rule starts a reconcile run of that
mapping: matching members are adopted without a send, the rest is queued at bulk priority,
and a member we pushed that the rule now leaves out is archived (consent untouched).
"""

from __future__ import annotations

import builtins
import uuid
from typing import cast

import httpx
import structlog
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.connections.mapping_repository import MappingRepository
from app.connections.repository import ConnectionRepository
from app.connections.schemas import MappingCreate, MappingList, MappingOut, MappingUpdate
from app.connections.service import (
    RUN_AUDIENCE_CHANGE,
    RUN_INITIAL,
    Reader,
    client_for,
    connection_service,
    mapping_out,
    provider_failure,
)
from app.errors import Conflict, NotFound, Unprocessable
from app.providers.base import Audience, AudienceMissing, InterestGroups, ProviderError
from app.providers.registry import Provider

log = structlog.get_logger(__name__)

RUN_RULE_CHANGE = "rule_change"
INTEREST_CATEGORY = "Preferences"  # where interests created on the operator's request go


def _invalid(field: str, message: str, detail: str) -> Unprocessable:
    return Unprocessable(detail, extra={"errors": [{"field": field, "message": message}]})


class MappingService:
    """List, add, change and remove the audience mappings of an owner's connection."""

    async def list(
        self, session: AsyncSession, *, provider: Provider, owner_id: str
    ) -> MappingList:
        """Every mapping of the connection, the default one first."""
        conn = await self._connection(session, provider, owner_id)
        rows = await MappingRepository(session).list(conn["id"])
        return MappingList(items=[mapping_out(r) for r in rows])

    async def get(
        self, session: AsyncSession, *, provider: Provider, owner_id: str, mapping_id: uuid.UUID
    ) -> MappingOut:
        """One mapping (404 for another owner's or an unknown one)."""
        conn = await self._connection(session, provider, owner_id)
        return await self._out(session, conn["id"], mapping_id)

    async def create(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        reader: Reader,
        owner_id: str,
        body: MappingCreate,
    ) -> MappingOut:
        """Map another audience of the account, with its rule; its first sync is queued."""
        conn = await self._connection(session, provider, owner_id, lock=True)
        repo = MappingRepository(session)
        if await repo.by_audience(conn["id"], body.audience_id) is not None:
            raise self._already_mapped(provider, body.audience_id)
        audience = await self._audience(
            provider, settings, transport, reader, conn, body.audience_id
        )
        interests = await self._interests(
            provider, settings, transport, reader, conn, audience.id, body.interests
        )
        row = await repo.insert(
            conn["id"],
            audience_id=audience.id,
            audience_name=audience.name,
            rule={**body.rule.columns(), "interests": interests},
        )
        if row is None:  # pragma: no cover - the connection lock serialises writers
            raise self._already_mapped(provider, body.audience_id)
        await self._start_run(session, conn, row, RUN_INITIAL)
        log.info("mappings.created", connection=str(conn["id"]), mapping=str(row["id"]))
        return await self._out(session, conn["id"], row["id"])

    async def update(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        reader: Reader,
        owner_id: str,
        mapping_id: uuid.UUID,
        body: MappingUpdate,
    ) -> MappingOut:
        """Replace a mapping's audience and rule; what changed is reconciled."""
        conn = await self._connection(session, provider, owner_id, lock=True)
        repo = MappingRepository(session)
        current = await repo.get(conn["id"], mapping_id)
        if current is None:
            raise NotFound("No such audience mapping.")
        rule = body.rule.columns()
        moved = body.audience_id != current["audience_id"]
        if moved and current["id"] == conn["id"]:
            raise _invalid(
                "audience_id",
                "the default mapping's audience is the connection's",
                f"Choose the connection's own {provider.spec.audience_noun} with"
                f" PUT /api/integrations/{provider.id}/audience.",
            )
        if moved and await repo.by_audience(conn["id"], body.audience_id) is not None:
            raise self._already_mapped(provider, body.audience_id)
        values: dict[str, object] = dict(rule)
        if moved:
            audience = await self._audience(
                provider, settings, transport, reader, conn, body.audience_id
            )
            values |= {"audience_id": audience.id, "audience_name": audience.name}
        same_rule = all(current[k] == v for k, v in rule.items())
        interests = await self._interests(
            provider, settings, transport, reader, conn, body.audience_id, body.interests
        )
        if interests != list(current["interests"] or []):
            # A new interest map is reconciled like a new rule: members whose interests
            # differ are queued, the others adopted.
            values["interests"] = interests
            same_rule = False
        if not moved and same_rule:
            return await self._out(session, conn["id"], mapping_id)
        if moved:
            # A new audience: a new mirror, as when a connection changes its audience.
            await repo.cancel_runs(mapping_id, "the audience changed")
            await repo.drop_rows(conn["id"], mapping_id)
        row = await repo.update(mapping_id, **values, **({"webhook_id": None} if moved else {}))
        await self._start_run(session, conn, row, RUN_AUDIENCE_CHANGE if moved else RUN_RULE_CHANGE)
        log.info("mappings.updated", connection=str(conn["id"]), mapping=str(mapping_id))
        return await self._out(session, conn["id"], mapping_id)

    async def delete(
        self,
        session: AsyncSession,
        *,
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        reader: Reader,
        owner_id: str,
        mapping_id: uuid.UUID,
    ) -> None:
        """Stop syncing an audience: its webhook (best effort), queue and mirror go; its
        members stay at the provider, as after a disconnect."""
        conn = await self._connection(session, provider, owner_id, lock=True)
        repo = MappingRepository(session)
        current = await repo.get(conn["id"], mapping_id)
        if current is None:
            raise NotFound("No such audience mapping.")
        if current["id"] == conn["id"]:
            raise Conflict(
                f"The connection's own {provider.spec.audience_noun} cannot be unmapped;"
                f" change its rule, choose another {provider.spec.audience_noun} or disconnect."
            )
        await connection_service.retire_webhook(
            provider,
            settings,
            transport,
            conn,
            reader,
            audience_id=current["audience_id"],
            webhook_id=current["webhook_id"],
        )
        await repo.delete(mapping_id)
        log.info("mappings.deleted", connection=str(conn["id"]), mapping=str(mapping_id))

    # --- helpers ---------------------------------------------------------------------------

    async def _connection(
        self, session: AsyncSession, provider: Provider, owner_id: str, *, lock: bool = False
    ) -> RowMapping:
        repo = ConnectionRepository(session)
        row = await repo.get(owner_id, provider.id)
        if row is not None and lock:
            row = await repo.lock(row["id"])  # one mapping change at a time per connection
        if row is None:
            raise NotFound(f"{provider.spec.display_name} is not connected.")
        if not row["audience_id"]:
            raise Conflict(
                f"Choose the {provider.spec.display_name} {provider.spec.audience_noun} to"
                " sync to first."
            )
        return row

    async def _out(
        self, session: AsyncSession, connection_id: uuid.UUID, mapping_id: uuid.UUID
    ) -> MappingOut:
        rows = await MappingRepository(session).list(connection_id, mapping_id)
        if not rows:
            raise NotFound("No such audience mapping.")
        return mapping_out(rows[0])

    @staticmethod
    def _already_mapped(provider: Provider, audience_id: str) -> Unprocessable:
        noun = provider.spec.audience_noun
        return _invalid(
            "audience_id",
            "already mapped",
            f"The {noun} {audience_id} already has a mapping; change that one instead.",
        )

    @staticmethod
    async def _audience(
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        reader: Reader,
        conn: RowMapping,
        audience_id: str,
    ) -> Audience:
        """The audience as the provider knows it (422 when the account has none such)."""
        client = client_for(provider, settings, transport, conn, reader)
        try:
            return await client.get_audience(audience_id)
        except AudienceMissing:
            raise _invalid(
                "audience_id",
                "unknown audience",
                f"The {provider.spec.display_name} account has no"
                f" {provider.spec.audience_noun} {audience_id}.",
            ) from None
        except ProviderError as exc:
            raise provider_failure(provider, exc) from None

    @staticmethod
    async def _interests(
        provider: Provider,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        reader: Reader,
        conn: RowMapping,
        audience_id: str,
        wanted: dict[str, str | None],
    ) -> builtins.list[dict[str, str]]:
        """The interest map as stored: every id checked against the audience, missing ones
        (null) created; 422 for an unknown id or a provider without interest groups."""
        if not wanted:
            return []
        client = client_for(provider, settings, transport, conn, reader)
        if not hasattr(client, "list_interests"):
            raise _invalid(
                "interests",
                "not supported",
                f"{provider.spec.display_name} has no interest groups to map preferences to.",
            )
        groups = cast(InterestGroups, client)
        try:
            known = {i.id: i for i in await groups.list_interests(audience_id)}
            out: builtins.list[dict[str, str]] = []
            for name, interest_id in wanted.items():
                if interest_id is None:
                    existing = next((i for i in known.values() if i.name == name), None)
                    made = existing or await groups.create_interest(
                        audience_id, name, category=INTEREST_CATEGORY
                    )
                    out.append({"name": name, "id": made.id, "label": made.name})
                    continue
                found = known.get(interest_id)
                if found is None:
                    raise _invalid(
                        f"interests.{name}",
                        "unknown interest",
                        f"The {provider.spec.audience_noun} {audience_id} has no interest"
                        f" {interest_id}.",
                    )
                out.append({"name": name, "id": found.id, "label": found.name})
        except ProviderError as exc:
            raise provider_failure(provider, exc) from None
        return out

    @staticmethod
    async def _start_run(
        session: AsyncSession, conn: RowMapping, mapping: RowMapping, kind: str
    ) -> None:
        # A rule change is reconciled like a new audience: members that match are adopted,
        # consenting contacts that now match are queued, and those it leaves out are archived.
        repo = ConnectionRepository(session)
        await MappingRepository(session).cancel_runs(mapping["id"], "the mapping changed")
        run = await repo.create_run(
            connection_id=conn["id"],
            owner_id=conn["owner_id"],
            kind=kind,
            dry_run=False,
            audience_id=mapping["audience_id"],
            mapping_id=mapping["id"],
        )
        log.info(
            "mappings.sync_queued",
            mapping=str(mapping["id"]),
            kind=kind,
            run=str(run["id"]) if run else None,
        )


mapping_service = MappingService()

__all__ = ["RUN_RULE_CHANGE", "MappingService", "Reader", "mapping_service"]
