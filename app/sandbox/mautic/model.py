"""The Mautic instance in memory: contacts, fields, DNC, tags, segments, campaigns, hooks.

Every write goes through `Instance`; it validates the whole request before changing anything
(so an error never half-writes) and reports the webhook events a real instance would fire.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.sandbox.mautic import errors
from app.sandbox.mautic import fields as F
from app.sandbox.mautic.config import MauticConfig

UNSUBSCRIBED, BOUNCED, MANUAL = 1, 2, 3
IDENTITY_FIELDS = ("firstname", "lastname", "company", "email")
SOCIAL_IDENTITY = ("facebook", "foursquare", "instagram", "linkedin", "skype", "twitter")

Emit = Callable[[str, dict[str, Any]], None]


def dnc_verb(reason: int) -> str:
    """`ChannelSubscriptionChange::getDncReasonVerb`."""
    return {0: "contactable", BOUNCED: "bounced", MANUAL: "manual"}.get(reason, "unsubscribed")


def parse_date(text: Any) -> float | None:
    """`Y-m-d H:i:s` (UTC) or ISO 8601; None when unparsable."""
    if not isinstance(text, str) or not text.strip():
        return None
    raw = text.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def slug(name: str) -> str:
    """Segment aliases: lower-case alphanumerics joined by `-`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "segment"


@dataclass
class User:
    id: int
    username: str
    password: str
    first_name: str
    last_name: str
    is_admin: bool = True

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"


@dataclass
class Dnc:
    id: int
    channel: str
    reason: int
    comments: str
    channel_id: int | None
    date_added: float


@dataclass
class Contact:
    id: int
    date_added: float
    values: dict[str, Any] = field(default_factory=dict)
    date_modified: float | None = None
    date_identified: float | None = None
    created_by: User | None = None
    modified_by: User | None = None
    last_active: float | None = None
    owner_id: int | None = None
    stage_id: int | None = None
    tags: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    dnc: dict[str, Dnc] = field(default_factory=dict)

    @property
    def points(self) -> int:
        return F.php_int(self.values.get("points") or 0)

    @property
    def email(self) -> str | None:
        value = self.values.get("email")
        return value if isinstance(value, str) and value else None

    def anonymous(self) -> bool:
        """`Lead::isAnonymous`: no name, company, email or social identity."""
        return not any(self.values.get(a) for a in (*IDENTITY_FIELDS, *SOCIAL_IDENTITY))


@dataclass
class Tag:
    id: int
    tag: str
    description: str | None = None


@dataclass
class Membership:
    date_added: float
    manually_added: bool = True
    manually_removed: bool = False


@dataclass
class Segment:
    id: int
    name: str
    alias: str
    public_name: str
    description: str | None
    is_published: bool
    is_global: bool
    is_preference_center: bool
    filters: list[Any]
    date_added: float
    created_by: User | None
    date_modified: float | None = None
    modified_by: User | None = None
    members: dict[int, Membership] = field(default_factory=dict)


@dataclass
class Campaign:
    id: int
    name: str
    description: str | None
    is_published: bool
    allow_restart: bool
    date_added: float
    created_by: User | None
    date_modified: float | None = None
    members: dict[int, Membership] = field(default_factory=dict)
    removed: dict[int, Membership] = field(default_factory=dict)


@dataclass
class Company:
    """A company; a contact's `company` field links it (`IdentifyCompanyHelper`)."""

    id: int
    name: str
    date_added: float
    created_by: User | None = None
    members: dict[int, Membership] = field(default_factory=dict)


@dataclass
class Stage:
    id: int
    name: str
    weight: int = 0
    description: str | None = None


@dataclass
class Hook:
    id: int
    name: str
    url: str
    secret: str
    triggers: list[str]
    description: str | None
    events_orderby_dir: str | None
    is_published: bool
    date_added: float
    date_modified: float | None
    created_by: User | None
    modified_by: User | None = None
    # Delivery bookkeeping: attempt log (status codes), unhealthy-until (7.x mode).
    attempts: list[int] = field(default_factory=list)
    unhealthy_until: float = 0.0
    stop_reason: str | None = None


@dataclass
class QueueRow:
    id: int
    hook_id: int
    trigger: str
    payload: dict[str, Any]
    date_added: float
    retries: int = 0
    not_before: float = 0.0


@dataclass
class SaveResult:
    contact: Contact
    created: bool
    changed: bool


class Instance:
    """One Mautic instance's data and the rules of its contact model."""

    def __init__(self, config: MauticConfig, now: Callable[[], float], emit: Emit) -> None:
        self.config = config
        self.now = now
        self.emit = emit
        self._ids: dict[str, int] = {}
        t = now()
        self.users: dict[int, User] = {}
        self.fields: dict[str, F.Field] = {f.alias: f for f in F.core_fields(t)}
        self._ids["field"] = len(self.fields)
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, set[int]] = {}
        self.tags: dict[str, Tag] = {}
        self.segments: dict[int, Segment] = {}
        self.campaigns: dict[int, Campaign] = {}
        self.companies: dict[int, Company] = {}
        self.stages: dict[int, Stage] = {1: Stage(1, "Lead", 10), 2: Stage(2, "Qualified", 50)}
        self.hooks: dict[int, Hook] = {}
        self.queue: dict[int, QueueRow] = {}
        self._count_cache: dict[str, tuple[float, int]] = {}
        # Bumped on every field change; the renderer caches the field layout per version.
        self.fields_version = 0
        self.layout_cache: tuple[int, list[Any]] | None = None

    def next_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    # -- lookups ----------------------------------------------------------------------------

    def contact(self, contact_id: Any) -> Contact:
        try:
            found = self.contacts.get(int(contact_id))
        except (TypeError, ValueError):
            found = None
        if found is None:
            raise errors.not_found()
        return found

    def _key(self, email: str) -> str:
        return email.lower() if self.config.email_match_case_insensitive else email

    def _index(self, contact: Contact, old_email: str | None) -> None:
        if old_email == contact.email:
            return
        if old_email is not None:
            ids = self.by_email.get(self._key(old_email))
            if ids is not None:
                ids.discard(contact.id)
        if contact.email is not None:
            self.by_email.setdefault(self._key(contact.email), set()).add(contact.id)

    def with_email(self, email: str) -> list[Contact]:
        """Contacts whose email equals `email` (SQL `=`, collation per the knob)."""
        ids = self.by_email.get(self._key(email), set())
        return [self.contacts[i] for i in ids if i in self.contacts]

    def unique_fields(self) -> list[F.Field]:
        return [f for f in self.fields.values() if f.is_unique and f.is_published]

    def find_duplicate(self, params: dict[str, Any]) -> Contact | None:
        """`checkForDuplicateContact`: match on unique-identifier fields, newest first."""
        wanted: dict[str, str] = {}
        for f in self.unique_fields():
            value = params.get(f.alias)
            if F.is_blank(value) or isinstance(value, list | dict):
                continue
            text = str(value)
            wanted[f.alias] = F.sanitize_email(text) if f.type == "email" else text.strip()
        if not wanted:
            return None
        ci = self.config.email_match_case_insensitive

        def same(a: Any, b: str) -> bool:
            if a is None:
                return False
            return str(a).lower() == b.lower() if ci else str(a) == b

        if set(wanted) == {"email"}:
            candidates: Iterable[Contact] = self.with_email(wanted["email"])
        else:
            candidates = self.contacts.values()
        matches = []
        for contact in candidates:
            hits = [same(contact.values.get(alias), v) for alias, v in wanted.items()]
            ok = all(hits) if self.config.unique_identifiers_operator == "AND" else any(hits)
            if ok:
                matches.append(contact)
        if not matches:
            return None
        return max(matches, key=lambda c: (c.date_added, c.id))

    # -- users and tags ---------------------------------------------------------------------

    def add_user(self, username: str, password: str, first: str, last: str) -> User:
        user = User(self.next_id("user"), username, password, first, last)
        self.users[user.id] = user
        return user

    def tag(self, name: str) -> Tag:
        """The tag named `name` (case-insensitive, as MySQL compares), created if missing."""
        existing = self.tags.get(name.lower())
        if existing is None:
            existing = Tag(self.next_id("tag"), name)
            self.tags[name.lower()] = existing
        return existing

    # -- the contact model ------------------------------------------------------------------

    def _stage_id(self, value: Any) -> int | None:
        if F.is_blank(value):
            return None
        for stage in self.stages.values():
            if str(value) == str(stage.id) or str(value).lower() == stage.name.lower():
                return stage.id
        return None

    def _prepare(
        self, contact: Contact | None, params: dict[str, Any], *, put: bool
    ) -> dict[str, Any]:
        """Validate a create/edit payload; return the planned changes (nothing written)."""
        overwrite = params.get("overwriteWithBlank", put)
        overwrite = overwrite in (True, 1, "1", "true")
        values: dict[str, Any] = {}
        problems: dict[str, list[str]] = {}
        for alias, raw in params.items():
            f = self.fields.get(alias)
            if f is None or not f.is_published or alias in ("id",):
                continue  # unknown aliases are ignored (allow_extra_fields)
            # Numeric values that cast to integer 0 are dropped on POST/PATCH (setFieldValues).
            if not put and F.php_numeric(raw) and F.php_int(raw) == 0:
                continue
            if F.is_blank(raw) and not overwrite:
                continue
            value, problem = F.clean(f, raw)
            if problem is not None:
                problems.setdefault(alias, []).append(problem)
            else:
                values[alias] = value
        if put and contact is not None:
            for alias in self.fields:
                if alias not in values and alias not in params:
                    values[alias] = None  # PUT: clearMissing
        plan: dict[str, Any] = {"values": values}
        if "owner" in params:
            owner = params["owner"]
            if F.is_blank(owner):
                plan["owner"] = None
            elif str(owner).isdigit() and int(owner) in self.users:
                plan["owner"] = int(owner)
            else:
                problems.setdefault("owner", []).append("This value is not valid.")
        if "stage" in params:
            plan["stage"] = self._stage_id(params["stage"])
        if "tags" in params:
            tags = params["tags"]
            if isinstance(tags, str):
                tags = tags.split(",")
            elif isinstance(tags, dict):
                tags = list(tags.values())
            plan["tags"] = [str(t).strip() for t in tags if str(t).strip()]
        if not F.is_blank(params.get("ipAddress")):
            plan["ip"] = str(params["ipAddress"])
        if "lastActive" in params:
            plan["last_active"] = parse_date(params["lastActive"])
        dnc = params.get("doNotContact")
        if isinstance(dnc, dict):
            dnc = list(dnc.values())
        if isinstance(dnc, list):
            items = []
            for item in dnc:
                if not isinstance(item, dict):
                    continue
                reason = item.get("reason", MANUAL)
                reason = F.php_int(reason) if F.php_numeric(reason) else MANUAL
                channel_id = item.get("channelId")
                items.append(
                    (
                        str(item.get("channel") or "email"),
                        reason,
                        str(item.get("comments") or ""),
                        F.php_int(channel_id) if F.php_numeric(channel_id) else None,
                    )
                )
            plan["dnc"] = items
        if problems:
            raise errors.validation(problems)
        return plan

    def _apply(self, contact: Contact, plan: dict[str, Any], actor: User | None) -> bool:
        """Write a prepared plan; fire the events; True when anything changed."""
        now = self.now()
        old_email = contact.email
        old_points = contact.points
        was_anonymous = contact.anonymous()
        changed = False
        for alias, value in plan["values"].items():
            if contact.values.get(alias) != value:
                contact.values[alias] = value
                changed = True
        if "owner" in plan and contact.owner_id != plan["owner"]:
            contact.owner_id = plan["owner"]
            changed = True
        if "stage" in plan and plan["stage"] is not None and contact.stage_id != plan["stage"]:
            contact.stage_id = plan["stage"]
            changed = True
        for name in plan.get("tags", []):
            if name.startswith("-"):
                target = name[1:].strip().lower()
                kept = [t for t in contact.tags if t.lower() != target]
                if len(kept) != len(contact.tags):
                    contact.tags = kept
                    changed = True
            elif name.lower() not in (t.lower() for t in contact.tags):
                contact.tags.append(self.tag(name).tag)
                changed = True
        if "ip" in plan and plan["ip"] not in contact.ips:
            contact.ips.append(plan["ip"])
            changed = True
        if plan.get("last_active") is not None and contact.last_active != plan["last_active"]:
            contact.last_active = plan["last_active"]
            changed = True
        dnc_events = []
        for channel, reason, comments, channel_id in plan.get("dnc", []):
            if reason == 0:
                event = self._dnc_remove(contact, channel)
            else:
                event = self._dnc_add(contact, channel, reason, comments, channel_id)
            if event is not None:
                dnc_events.append(event)
                changed = True
        self._index(contact, old_email)
        company = plan["values"].get("company")
        linked = self._link_company(contact, company, actor) if company else None
        identified_now = False
        if contact.date_identified is None and not contact.anonymous():
            contact.date_identified = now
            identified_now = True
        if changed and contact.id in self.contacts and not plan.get("_created"):
            contact.date_modified = now
            contact.modified_by = actor
        if contact.anonymous() and was_anonymous:
            return changed  # anonymous contacts fire no lead_post_save_* webhook
        if identified_now:
            self.emit("mautic.lead_post_save_new", {"contact": contact})
        elif changed:
            self.emit("mautic.lead_post_save_update", {"contact": contact})
        for channel, old, new in dnc_events:
            self.emit(
                "mautic.lead_channel_subscription_changed",
                {"contact": contact, "channel": channel, "old_status": old, "new_status": new},
            )
        if linked is not None:
            self.emit(
                "mautic.lead_company_change",
                {"added": True, "contact": contact, "company": linked},
            )
        if (
            not plan.get("_created")
            and contact.points != old_points
            and (old_points > 0 or contact.points > 0)
        ):
            self.emit(
                "mautic.lead_points_change",
                {
                    "contact": contact,
                    "points": {"old_points": old_points, "new_points": contact.points},
                },
            )
        return changed

    def save_plan(self, contact: Contact, plan: dict[str, Any], actor: User | None) -> bool:
        """Write an already-valid change (points adjustments) through the contact model."""
        return self._apply(contact, plan, actor)

    def company_named(self, name: str, actor: User | None) -> Company:
        """The company called `name` (case-insensitive), created if missing."""
        for company in self.companies.values():
            if company.name.lower() == name.lower():
                return company
        company = Company(self.next_id("company"), name, self.now(), actor)
        self.companies[company.id] = company
        return company

    def _link_company(self, contact: Contact, name: Any, actor: User | None) -> Company | None:
        """The `company` field links its company; the new link, or None if it existed."""
        company = self.company_named(str(name), actor)
        if contact.id in company.members:
            return None
        company.members[contact.id] = Membership(self.now())
        return company

    def company_member(self, company: Company, contact: Contact, *, add: bool) -> None:
        """`/companies/{id}/contact/{cid}/add|remove`: fires `mautic.lead_company_change`."""
        if add == (contact.id in company.members):
            return
        if add:
            company.members[contact.id] = Membership(self.now())
            contact.values["company"] = company.name
        else:
            del company.members[contact.id]
        self.emit(
            "mautic.lead_company_change", {"added": add, "contact": contact, "company": company}
        )

    def _new_contact(self, actor: User | None) -> Contact:
        contact = Contact(id=self.next_id("contact"), date_added=self.now(), created_by=actor)
        self.contacts[contact.id] = contact
        return contact

    def create(self, params: dict[str, Any], actor: User | None) -> SaveResult:
        """`POST /contacts/new`: update the newest contact matching a unique field, or create."""
        existing = self.find_duplicate(params)
        plan = self._prepare(existing, params, put=False)
        if existing is not None:
            changed = self._apply(existing, plan, actor)
            return SaveResult(existing, False, changed)
        contact = self._new_contact(actor)
        plan["_created"] = True
        self._apply(contact, plan, actor)
        return SaveResult(contact, True, True)

    def edit(
        self, contact_id: Any, params: dict[str, Any], actor: User | None, *, put: bool
    ) -> SaveResult:
        """PATCH (404 when missing) or PUT (creates with a new id when missing, no dedupe)."""
        try:
            contact = self.contact(contact_id)
        except errors.ApiError:
            if not put:
                raise
            plan = self._prepare(None, params, put=True)
            created = self._new_contact(actor)
            plan["_created"] = True
            self._apply(created, plan, actor)
            return SaveResult(created, True, True)
        plan = self._prepare(contact, params, put=put)
        # The edit re-runs the duplicate check: another contact with the new email is merged
        # into this one and deleted (LeadApiController::preSaveEntity + ContactMerger).
        other = self.find_duplicate(params)
        if other is not None and other.id != contact.id:
            self.merge(contact, other, actor)
        changed = self._apply(contact, plan, actor)
        return SaveResult(contact, False, changed)

    def merge(self, winner: Contact, loser: Contact, actor: User | None) -> None:
        """`ContactMerger::merge`: fill the winner's blanks, add points, move memberships."""
        for alias, value in loser.values.items():
            if F.is_blank(winner.values.get(alias)) and not F.is_blank(value):
                winner.values[alias] = value
        winner.values["points"] = winner.points + loser.points
        for name in loser.tags:
            if name.lower() not in (t.lower() for t in winner.tags):
                winner.tags.append(name)
        for ip in loser.ips:
            if ip not in winner.ips:
                winner.ips.append(ip)
        for channel, record in loser.dnc.items():
            winner.dnc.setdefault(channel, record)
        if winner.owner_id is None:
            winner.owner_id = loser.owner_id
        groups: list[Segment | Campaign | Company] = [
            *self.segments.values(),
            *self.campaigns.values(),
            *self.companies.values(),
        ]
        for group in groups:
            membership = group.members.pop(loser.id, None)
            if membership is not None:
                group.members.setdefault(winner.id, membership)
        self.delete(loser.id, actor)

    def delete(self, contact_id: Any, actor: User | None) -> Contact:
        contact = self.contact(contact_id)
        del self.contacts[contact.id]
        if contact.email is not None:
            ids = self.by_email.get(self._key(contact.email))
            if ids is not None:
                ids.discard(contact.id)
        groups: list[Segment | Campaign | Company] = [
            *self.segments.values(),
            *self.campaigns.values(),
            *self.companies.values(),
        ]
        for group in groups:
            group.members.pop(contact.id, None)
        self.emit("mautic.lead_post_delete", {"id": contact.id, "contact": contact})
        return contact

    # -- do not contact ---------------------------------------------------------------------

    def _dnc_add(
        self, contact: Contact, channel: str, reason: int, comments: str, channel_id: int | None
    ) -> tuple[str, str, str] | None:
        """`addDncForContact`: never overrides the person's own unsubscribe (reason 1)."""
        record = contact.dnc.get(channel)
        if record is None:
            contact.dnc[channel] = Dnc(
                self.next_id("dnc"), channel, reason, comments, channel_id, self.now()
            )
            return (channel, "contactable", dnc_verb(reason))
        if record.reason == reason or record.reason == UNSUBSCRIBED:
            return None
        old = record.reason
        record.reason, record.comments, record.channel_id = reason, comments, channel_id
        record.date_added = self.now()
        return (channel, dnc_verb(old), dnc_verb(reason))

    def _dnc_remove(self, contact: Contact, channel: str) -> tuple[str, str, str] | None:
        """Removal clears any reason, the person's own unsubscribe and bounces included."""
        record = contact.dnc.pop(channel, None)
        if record is None:
            return None
        return (channel, dnc_verb(record.reason), "contactable")

    def dnc(
        self,
        contact: Contact,
        channel: str,
        *,
        add: bool,
        reason: int = MANUAL,
        comments: str = "",
        channel_id: int | None = None,
        actor: User | None = None,
    ) -> bool:
        """Add or remove a DNC record through the contact model; True when a record changed."""
        plan: dict[str, Any] = {
            "values": {},
            "dnc": [(channel, reason if add else 0, comments, channel_id)],
        }
        had = channel in contact.dnc
        changed = self._apply(contact, plan, actor)
        return changed if add else had

    # -- segments ---------------------------------------------------------------------------

    def segment(self, segment_id: Any) -> Segment:
        try:
            found = self.segments.get(int(segment_id))
        except (TypeError, ValueError):
            found = None
        if found is None:
            raise errors.not_found()
        return found

    def unique_alias(self, wanted: str, ignore: int | None = None) -> str:
        taken = {s.alias for s in self.segments.values() if s.id != ignore}
        alias, n = wanted, 1
        while alias in taken:
            n += 1
            alias = f"{wanted}{n}"
        return alias

    def save_segment(
        self, segment: Segment | None, params: dict[str, Any], actor: User | None, *, put: bool
    ) -> Segment:
        name = params.get("name", segment.name if segment and not put else None)
        if F.is_blank(name):
            raise errors.validation({"name": ["A name is required."]})
        name = str(name)
        now = self.now()

        def flag(key: str, default: bool) -> bool:
            value = params.get(key, default)
            return value in (True, 1, "1", "true")

        if segment is None:
            segment = Segment(
                id=self.next_id("segment"),
                name=name,
                alias=self.unique_alias(slug(str(params.get("alias") or name))),
                public_name=str(params.get("publicName") or name),
                description=params.get("description"),
                is_published=flag("isPublished", True),
                is_global=flag("isGlobal", True),
                is_preference_center=flag("isPreferenceCenter", False),
                filters=list(params.get("filters") or []),
                date_added=now,
                created_by=actor,
            )
            self.segments[segment.id] = segment
            return segment
        segment.name = name
        if "alias" in params:
            segment.alias = self.unique_alias(slug(str(params["alias"] or name)), segment.id)
        if "publicName" in params or put:
            segment.public_name = str(params.get("publicName") or name)
        if "description" in params or put:
            segment.description = params.get("description")
        segment.is_published = flag("isPublished", segment.is_published)
        segment.is_global = flag("isGlobal", segment.is_global)
        segment.is_preference_center = flag("isPreferenceCenter", segment.is_preference_center)
        if "filters" in params or put:
            segment.filters = list(params.get("filters") or [])
        segment.date_modified, segment.modified_by = now, actor
        return segment

    def segment_member(self, segment: Segment, contact: Contact, *, add: bool) -> bool:
        """Manual add/remove; fires `mautic.lead_list_change` when membership changed."""
        if add:
            if contact.id in segment.members:
                return False
            segment.members[contact.id] = Membership(self.now())
        else:
            if segment.members.pop(contact.id, None) is None:
                return False
        self.emit(
            "mautic.lead_list_change",
            {"contact": contact, "segment": segment, "action": "added" if add else "removed"},
        )
        return True

    # -- campaigns --------------------------------------------------------------------------

    def campaign(self, campaign_id: Any) -> Campaign:
        try:
            found = self.campaigns.get(int(campaign_id))
        except (TypeError, ValueError):
            found = None
        if found is None:
            raise errors.not_found()
        return found

    def create_campaign(
        self,
        name: str,
        *,
        description: str | None = None,
        is_published: bool = True,
        allow_restart: bool = False,
        actor: User | None = None,
    ) -> Campaign:
        campaign = Campaign(
            id=self.next_id("campaign"),
            name=name,
            description=description,
            is_published=is_published,
            allow_restart=allow_restart,
            date_added=self.now(),
            created_by=actor,
        )
        self.campaigns[campaign.id] = campaign
        return campaign

    def campaign_member(self, campaign: Campaign, contact: Contact, *, add: bool) -> None:
        """`MembershipManager`: a removed contact comes back only if the campaign allows it."""
        if add:
            if contact.id in campaign.members:
                return
            previous = campaign.removed.get(contact.id)
            if previous is not None and not campaign.allow_restart:
                return  # ContactCannotBeAddedToCampaignException, swallowed: still success
            campaign.removed.pop(contact.id, None)
            campaign.members[contact.id] = Membership(self.now())
        else:
            membership = campaign.members.pop(contact.id, None)
            if membership is not None:
                membership.manually_removed = True
                membership.manually_added = False
                campaign.removed[contact.id] = membership

    # -- fields -----------------------------------------------------------------------------

    def field_by_id(self, field_id: Any) -> F.Field:
        for f in self.fields.values():
            if str(f.id) == str(field_id):
                return f
        raise errors.not_found()

    def save_field(self, f: F.Field | None, params: dict[str, Any]) -> F.Field:
        self.fields_version += 1
        label = params.get("label", f.label if f else None)
        if F.is_blank(label):
            raise errors.validation({"label": ["A label is required."]})
        type_ = str(params.get("type", f.type if f else "text"))
        if type_ not in F.TYPES:
            raise errors.validation({"type": ["This value is not valid."]})
        group = str(params.get("group") or (f.group if f else "core"))
        if group not in F.GROUPS:
            raise errors.validation({"group": ["This value is not valid."]})

        def flag(key: str, default: bool) -> bool:
            return params.get(key, default) in (True, 1, "1", "true")

        props = params.get("properties", f.properties if f else {})
        if not isinstance(props, dict | list):
            raise errors.validation({"properties": ["This value is not valid."]})
        if f is None:
            alias = re.sub(
                r"[^a-z0-9_]", "", str(params.get("alias") or label).lower().replace(" ", "_")
            )
            alias = alias[:25] or "field"
            base, n = alias, 1
            while alias in self.fields:
                n += 1
                alias = f"{base}{n}"
            f = F.Field(
                id=self.next_id("field"),
                label=str(label),
                alias=alias,
                type=type_,
                group=group,
                order=len(self.fields) + 1,
                is_unique=flag("isUniqueIdentifier", False),
                is_required=flag("isRequired", False),
                is_published=flag("isPublished", True),
                default_value=params.get("defaultValue"),
                properties=props,
                date_added=self.now(),
            )
            self.fields[f.alias] = f
            return f
        f.label, f.group, f.properties = str(label), group, props
        if not f.is_fixed:
            f.type = type_
        f.is_unique = flag("isUniqueIdentifier", f.is_unique)
        f.is_required = flag("isRequired", f.is_required)
        f.is_published = flag("isPublished", f.is_published)
        if "defaultValue" in params:
            f.default_value = params["defaultValue"]
        return f

    def delete_field(self, f: F.Field) -> None:
        if f.is_fixed:
            raise errors.forbidden()
        self.fields_version += 1
        del self.fields[f.alias]
        for contact in self.contacts.values():
            contact.values.pop(f.alias, None)

    # -- count cache ------------------------------------------------------------------------

    def cached_total(self, key: str, compute: Callable[[], int]) -> int:
        """`contact_api_count_cache_ttl`: the list `total` is cached a few seconds per query."""
        ttl = self.config.contact_api_count_cache_ttl
        now = self.now()
        hit = self._count_cache.get(key)
        if ttl > 0 and hit is not None and hit[0] > now:
            return hit[1]
        total = compute()
        if ttl > 0:
            self._count_cache[key] = (now + ttl, total)
        return total
