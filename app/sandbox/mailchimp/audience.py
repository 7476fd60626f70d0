"""An audience (list) and its members: the status rules of reference §2.2, merge fields, tags.

Every write goes through one `Audience` method; they raise `ApiError` exactly as Mailchimp
answers, keep `last_changed`, and hand webhook events to the sink.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from hashlib import md5
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from app.sandbox.mailchimp import clock, errors
from app.sandbox.mailchimp import constants as c
from app.sandbox.mailchimp.errors import ApiError

if TYPE_CHECKING:
    from app.sandbox.mailchimp.config import SandboxConfig

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
ADDRESS_REQUIRED = ("addr1", "city", "state", "zip")
ADDRESS_KEYS = ("addr1", "addr2", "city", "state", "zip", "country")
NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
STATUS_CHOICES = "subscribed, unsubscribed, cleaned, pending, transactional"
STRING_KEYS = frozenset(
    ("email_address", "language", "ip_signup", "ip_opt", "timestamp_signup", "timestamp_opt")
)
SCALAR_KEYS = frozenset(
    (
        "email_type",
        "language",
        "ip_signup",
        "ip_opt",
        "timestamp_signup",
        "timestamp_opt",
        "vip",
        "location",
    )
)
TEXT_TYPES = frozenset(("text", "url", "imageurl", "radio", "dropdown", "date", "birthday", "zip"))


def subscriber_hash(email: str) -> str:
    """MD5 of the lowercased, trimmed email."""
    return hashlib.md5(email.strip().lower().encode()).hexdigest()


def type_name(value: Any) -> str:
    """The JSON-schema name of a value's type, as Mailchimp's messages spell it."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_MASK40 = (1 << 40) - 1
_MASK128 = (1 << 128) - 1
_UID_MUL = 0x9E3779B97F  # odd: multiplying by it is a bijection modulo 2**40
_UID_SALT = 0x5A17C0FFEE
_CID_MUL = 0x2545F4914F6CDD1D_9E3779B97F4A7C15  # odd, modulo 2**128
_CID_SALT = 0x0123456789ABCDEF_FEDCBA9876543210
_CID_INV = pow(_CID_MUL, -1, 1 << 128)


class IdSource:
    """Ids, deterministic so that a reset gives the same ids again.

    A member's `unique_email_id`, `web_id` and `contact_id` are bijections of one sequence
    number: unique without a lookup table, random-looking, and a contact_id leads back to its
    member without an index.
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.used: set[str] = set()
        self.seq = 0

    @staticmethod
    def uid_of(seq: int) -> str:
        return format(((seq * _UID_MUL) & _MASK40) ^ _UID_SALT, "010x")

    @staticmethod
    def seq_of_contact(contact_id: str) -> int | None:
        try:
            value = int(contact_id, 16)
        except ValueError:
            return None
        return ((value - _CID_SALT) * _CID_INV) & _MASK128

    def member_ids(self) -> tuple[str, int, str]:
        """(unique_email_id, web_id, contact_id) of a new member."""
        self.seq += 1
        seq = self.seq
        contact = format((seq * _CID_MUL + _CID_SALT) & _MASK128, "032x")
        return self.uid_of(seq), 100_000_001 + seq, contact

    def hex(self, length: int) -> str:
        """A fresh id of `length` hex digits, never handed out before."""
        spec = f"0{length}x"
        while True:
            value = format(self.rng.getrandbits(4 * length), spec)
            if value not in self.used:
                self.used.add(value)
                return value


EMPTY: Mapping[str, Any] = MappingProxyType({})


def _own_tags(member: Member) -> tuple[dict[str, str], dict[str, str]]:
    """The member's tag maps, made its own (copy-on-write of EMPTY)."""
    if type(member.tags) is not dict:
        member.tags = {}
    if type(member.inactive_tags) is not dict:
        member.inactive_tags = {}
    return member.tags, member.inactive_tags


@dataclass(slots=True)
class Member:
    """One contact of an audience."""

    uid: str  # unique_email_id: stable across email changes
    web_id: int
    contact_id: str
    email: str
    hash: str
    status: str
    email_type: str = "html"
    merge: dict[str, Any] = field(default_factory=dict)
    language: str = ""
    vip: bool = False
    # location and the tag maps start as the shared read-only EMPTY (most members never get
    # any); writers replace it with a dict of their own before mutating (see `_own_tags`)
    location: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    ip_signup: str = ""
    timestamp_signup: str = ""
    ip_opt: str = ""
    timestamp_opt: str = ""
    last_changed: float = 0.0
    tags: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # active: name -> date_added
    inactive_tags: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # name -> date removed
    status_before_archive: str | None = None
    source: str = "API - Generic"
    unsubscribe_reason: str = ""
    # interest id -> chosen (EMPTY until a write sets one; ids of the audience only)
    interests: Mapping[str, bool] = field(default_factory=lambda: EMPTY)


@dataclass(slots=True)
class InterestCategory:
    """A group title of an audience ("Preferences"), whose interests people choose."""

    id: str
    title: str
    type: str = "checkboxes"
    display_order: int = 0


@dataclass(slots=True)
class Interest:
    """One interest (group name) of a category."""

    id: str
    category_id: str
    name: str
    display_order: int = 0


@dataclass(slots=True)
class MergeField:
    """A merge field definition of an audience."""

    merge_id: int
    tag: str
    name: str
    type: str
    required: bool = False
    default_value: str = ""
    public: bool = True
    display_order: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    help_text: str = ""


@dataclass(slots=True)
class Webhook:
    """A registered webhook of an audience."""

    id: str
    url: str
    events: dict[str, bool]
    sources: dict[str, bool]


DEFAULT_MERGE_FIELDS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("FNAME", "First Name", "text", {"size": 25}),
    ("LNAME", "Last Name", "text", {"size": 25}),
    ("ADDRESS", "Address", "address", {"default_country": 164}),
    ("PHONE", "Phone Number", "phone", {"phone_format": "none"}),
    ("BIRTHDAY", "Birthday", "birthday", {"date_format": "MM/DD"}),
)

STATUS_EVENT_EXTRA: dict[str, dict[str, str]] = {
    "subscribe": {},
    "unsubscribe": {"action": "unsub", "reason": "manual"},
    "cleaned": {"reason": "hard"},
}

# (audience, event type, member, source, extra fields) -> None
EventSink = Callable[["Audience", str, Member, str, dict[str, str]], None]


@dataclass
class BatchResult:
    """What `POST /lists/{id}` answers, before rendering."""

    new: list[Member] = field(default_factory=list)
    updated: list[Member] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


class Audience:
    """A Mailchimp list with its members, merge fields, tags and webhooks."""

    def __init__(
        self,
        list_id: str,
        account_id: str,
        name: str,
        *,
        web_id: int,
        created: float,
        ids: IdSource,
        config_ref: Callable[[], SandboxConfig],
        sink: EventSink | None = None,
        default_fields: bool = True,
    ) -> None:
        self.id = list_id
        self.account_id = account_id
        self.name = name
        self.web_id = web_id
        self.created = created
        self.ids = ids
        self._config = config_ref
        self.sink = sink
        self.members: dict[str, Member] = {}  # by uid, in creation order
        self.by_hash: dict[str, Member] = {}
        self.forgotten: dict[str, float] = {}  # subscriber hash -> when
        self.merge_fields: dict[str, MergeField] = {}
        self.merge_tags: tuple[str, ...] = ()
        self.required_tags: tuple[str, ...] = ()
        self.next_merge_id = 1
        self.tag_ids: dict[str, int] = {}
        self.next_tag_id = 1000 + (web_id % 1000) * 100
        self.webhooks: dict[str, Webhook] = {}
        self.interest_categories: dict[str, InterestCategory] = {}
        self.interests: dict[str, Interest] = {}  # by id, in creation order
        self.version = 0
        self._query_cache: tuple[tuple[Any, ...], list[Member]] | None = None
        if default_fields:
            for tag, fname, ftype, options in DEFAULT_MERGE_FIELDS:
                self.add_merge_field(tag=tag, name=fname, type=ftype, options=dict(options))

    # -- lookups --------------------------------------------------------------------------

    def lookup(self, key: str, *, allow_email: bool = True) -> Member | None:
        """A member by subscriber hash, or (where Mailchimp allows) by email or contact_id."""
        member = self.by_hash.get(key.lower())
        if member is not None:
            return member
        if allow_email:
            if "@" in key:
                return self.by_hash.get(subscriber_hash(key))
            seq = self.ids.seq_of_contact(key) if len(key) == 32 else None
            if seq is not None and 0 < seq <= self.ids.seq:
                member = self.members.get(self.ids.uid_of(seq))
                if member is not None and member.contact_id == key:
                    return member
        return None

    def path_hash(self, key: str) -> str:
        return subscriber_hash(key) if "@" in key else key.lower()

    def get_member(self, key: str) -> Member:
        member = self.lookup(key)
        if member is None:
            raise errors.not_found()
        return member

    # -- merge fields ---------------------------------------------------------------------

    def add_merge_field(
        self,
        *,
        name: str,
        type: str,
        tag: str | None = None,
        required: bool = False,
        default_value: str = "",
        public: bool = True,
        display_order: int | None = None,
        options: dict[str, Any] | None = None,
        help_text: str = "",
    ) -> MergeField:
        merge_id = self.next_merge_id
        tag = (tag or f"MMERGE{merge_id}").upper()
        mf = MergeField(
            merge_id=merge_id,
            tag=tag,
            name=name,
            type=type,
            required=required,
            default_value=default_value,
            public=public,
            display_order=display_order if display_order is not None else merge_id + 1,
            options=options or {},
            help_text=help_text,
        )
        self.next_merge_id += 1
        self.merge_fields[tag] = mf
        self.merge_fields_changed()
        return mf

    def merge_fields_changed(self) -> None:
        """Recompute what the hot path caches about the merge fields."""
        self.merge_tags = tuple(self.merge_fields)
        self.required_tags = tuple(t for t, mf in self.merge_fields.items() if mf.required)

    def merge_field_by_id(self, merge_id: str) -> MergeField:
        for mf in self.merge_fields.values():
            if str(mf.merge_id) == merge_id:
                return mf
        raise errors.not_found()

    def delete_merge_field(self, mf: MergeField) -> None:
        del self.merge_fields[mf.tag]
        self.merge_fields_changed()
        for member in self.members.values():
            member.merge.pop(mf.tag, None)
        self.version += 1

    def rename_merge_tag(self, mf: MergeField, new_tag: str) -> None:
        fields = {}
        for tag, item in self.merge_fields.items():
            fields[new_tag if tag == mf.tag else tag] = item
        for member in self.members.values():
            if mf.tag in member.merge:
                member.merge[new_tag] = member.merge.pop(mf.tag)
        mf.tag = new_tag
        self.merge_fields = fields
        self.merge_fields_changed()

    # -- validation -----------------------------------------------------------------------

    def _check_email(self, raw: Any) -> tuple[str, str]:
        """(email as given but trimmed, subscriber hash); raise for syntax, fake or failing."""
        if type(raw) is not str:
            raise errors.bad_email()
        email = raw.strip()
        if not EMAIL_RE.match(email):
            raise errors.bad_email()
        lowered = email.lower()
        domain = lowered[lowered.rindex("@") + 1 :]
        if domain.endswith(".invalid") or domain in self._config().fake_domain_set:
            raise errors.fake_email(email)
        return email, md5(lowered.encode()).hexdigest()

    def _check_fail_list(self, email: str) -> None:
        fail_emails = self._config().fail_emails
        if not fail_emails:
            return
        kind = fail_emails.get(email.lower())
        if kind is None:
            return
        if kind == "fake":
            raise errors.fake_email(email)
        if kind == "compliance":
            raise errors.compliance(email)
        if kind == "throttled":
            raise errors.invalid(
                f"{email} has signed up to a lot of lists very recently; "
                "we're not allowing more signups for now"
            )
        tag = self.merge_tags[0] if self.merge_tags else "FNAME"
        raise errors.merge_fields([{"field": tag, "message": "Please enter a value"}])

    @staticmethod
    def _schema_errors(body: Any, *, tags: bool, nullable: bool) -> list[dict[str, str]]:
        """JSON-schema checks of a member body, in one pass over the keys it has."""
        if type(body) is not dict:
            found = type_name(body)
            return [{"field": "", "message": f"Schema describes object, {found} found instead"}]
        errs: list[dict[str, str]] = []
        for key, value in body.items():
            if value is None and nullable:
                continue
            if key in STRING_KEYS:
                if type(value) is not str:
                    found = type_name(value)
                    errs.append(
                        {"field": key, "message": f"Schema describes string, {found} found instead"}
                    )
                elif key[0] == "t" and value.strip():
                    try:
                        clock.parse(value)
                    except ValueError:
                        errs.append({"field": key, "message": c.ANYOF})
            elif key == "status" or key == "status_if_new":
                if value not in c.WRITE_STATUSES:
                    errs.append(
                        {
                            "field": key,
                            "message": f"Value must be one of: {STATUS_CHOICES} (not {value!r})",
                        }
                    )
            elif key == "merge_fields":
                if type(value) is not dict:
                    found = type_name(value)
                    errs.append(
                        {"field": key, "message": f"Schema describes object, {found} found instead"}
                    )
                    continue
                for tag, item in value.items():
                    if item is None or isinstance(item, bool | list):
                        errs.append({"field": f"merge_fields.{tag}", "message": c.ANYOF})
            elif key == "interests" or key == "location":
                if type(value) is not dict:
                    found = type_name(value)
                    errs.append(
                        {"field": key, "message": f"Schema describes object, {found} found instead"}
                    )
            elif key == "email_type":
                if value not in c.EMAIL_TYPES:
                    errs.append({"field": key, "message": "Value must be one of: html, text"})
            elif key == "vip":
                if type(value) is not bool:
                    message = f"Schema describes boolean, {type_name(value)} found instead"
                    errs.append({"field": key, "message": message})
            elif key == "tags" and tags:
                if type(value) is not list:
                    found = type_name(value)
                    errs.append(
                        {"field": key, "message": f"Schema describes array, {found} found instead"}
                    )
                    continue
                for i, item in enumerate(value):
                    if type(item) is not str:
                        found = type_name(item)
                        errs.append(
                            {
                                "field": f"tags.{i}",
                                "message": f"Schema describes string, {found} found instead",
                            }
                        )
        return errs

    def _merge_values(
        self,
        given: dict[str, Any] | None,
        current: dict[str, Any],
        *,
        skip_validation: bool,
    ) -> dict[str, Any]:
        """The member's merge values after applying `given`; raise on invalid merge fields."""
        result = dict(current)
        field_errors: list[dict[str, str]] = []
        fields = self.merge_fields
        for raw_tag, value in (given or {}).items():
            mf = fields.get(raw_tag) or fields.get(str(raw_tag).upper())
            if mf is None:
                continue  # unknown merge tags are ignored
            tag = mf.tag
            if type(value) is str:
                if value == "":
                    result.pop(tag, None)
                    continue
                if mf.type in TEXT_TYPES:  # the common case, no further checks
                    result[tag] = value
                    continue
            if mf.type == "address":
                if isinstance(value, dict):
                    if not all(str(value.get(k) or "").strip() for k in ADDRESS_REQUIRED):
                        if not any(str(value.get(k) or "").strip() for k in ADDRESS_KEYS):
                            result.pop(tag, None)
                            continue
                        field_errors.append(
                            {"field": tag, "message": "Please enter a complete address"}
                        )
                        continue
                    address = {k: str(value.get(k) or "") for k in ADDRESS_KEYS}
                    address["country"] = address["country"] or "US"
                    result[tag] = address
                elif isinstance(value, str):
                    result[tag] = value
                else:
                    field_errors.append(
                        {"field": tag, "message": "Please enter a complete address"}
                    )
            elif isinstance(value, dict):
                field_errors.append({"field": tag, "message": "Please enter a value"})
            elif mf.type == "number":
                if isinstance(value, int | float):
                    result[tag] = value
                elif NUMBER_RE.match(value.strip()):
                    number = float(value)
                    result[tag] = int(number) if number.is_integer() else number
                else:
                    field_errors.append({"field": tag, "message": "Please enter a number"})
            else:
                if isinstance(value, int | float):
                    value = str(value)
                if (
                    mf.type == "phone"
                    and mf.options.get("phone_format") == "US"
                    and not re.match(r"^\(?\d{3}\)?[-. ]?\d{3}[-. ]?\d{4}$", value)
                ):
                    field_errors.append(
                        {"field": tag, "message": "Please enter a valid US phone number"}
                    )
                    continue
                result[tag] = value
        if not skip_validation:
            for tag in self.required_tags:
                if result.get(tag, "") == "" and not any(e["field"] == tag for e in field_errors):
                    field_errors.append({"field": tag, "message": "Please enter a value"})
        if field_errors:
            raise errors.merge_fields(field_errors)
        return result

    # -- interest groups -------------------------------------------------------------------

    def add_interest_category(self, title: str, type_: str = "checkboxes") -> InterestCategory:
        """A new interest category (title unique in the audience, as Mailchimp insists)."""
        title = (title or "").strip()
        if not title:
            raise errors.schema([{"field": "title", "message": "This value should not be blank."}])
        if any(cat.title == title for cat in self.interest_categories.values()):
            raise errors.invalid(f'Cannot add "{title}" because it already exists on the list.')
        cat = InterestCategory(
            id=self.ids.hex(10),
            title=title,
            type=type_,
            display_order=len(self.interest_categories),
        )
        self.interest_categories[cat.id] = cat
        return cat

    def add_interest(self, category_id: str, name: str) -> Interest:
        """A new interest of a category."""
        if category_id not in self.interest_categories:
            raise errors.not_found()
        name = (name or "").strip()
        if not name:
            raise errors.schema([{"field": "name", "message": "This value should not be blank."}])
        if any(i.category_id == category_id and i.name == name for i in self.interests.values()):
            raise errors.invalid(f'Cannot add "{name}" because it already exists on the list.')
        order = sum(1 for i in self.interests.values() if i.category_id == category_id)
        interest = Interest(
            id=self.ids.hex(10), category_id=category_id, name=name, display_order=order
        )
        self.interests[interest.id] = interest
        return interest

    def chosen_interests(self, member: Member) -> list[Interest]:
        """The interests the member has chosen, in the audience's order."""
        return [i for i in self.interests.values() if member.interests.get(i.id)]

    def _check_interests(self, body: dict[str, Any]) -> None:
        interests = body.get("interests")
        if interests:
            for interest_id, value in interests.items():
                if interest_id not in self.interests or not isinstance(value, bool):
                    raise errors.invalid(f"Invalid interest ID: '{interest_id}'.")

    @staticmethod
    def _apply_interests(member: Member, body: dict[str, Any]) -> bool:
        """Set the interests a write names (only those); True when one changed."""
        interests = body.get("interests")
        if not interests:
            return False
        changed = any(member.interests.get(k, False) != v for k, v in interests.items())
        if changed:
            member.interests = {**member.interests, **interests}
        return changed

    @staticmethod
    def _timestamp(value: Any) -> str | None:
        if value is None:
            return None
        if not str(value).strip():
            return ""
        return clock.iso(clock.parse(str(value)))

    # -- status rules (reference §2.2) ----------------------------------------------------

    @staticmethod
    def _check_transition(member: Member, new_status: str) -> None:
        current = member.status
        if new_status == current:
            return
        previous = member.status_before_archive if current == "archived" else current
        if new_status == previous:
            return
        if (new_status == "subscribed" and previous in ("unsubscribed", "cleaned")) or (
            new_status == "pending" and previous == "cleaned"
        ):
            raise errors.compliance(member.email)

    # -- writes ---------------------------------------------------------------------------

    def _touch(self, member: Member, now: float) -> None:
        member.last_changed = now
        self.version += 1

    def _register_tag(self, name: str) -> int:
        tag_id = self.tag_ids.get(name)
        if tag_id is None:
            tag_id = self.next_tag_id
            self.next_tag_id += 1
            self.tag_ids[name] = tag_id
        return tag_id

    def _create(
        self,
        email: str,
        key: str,
        status: str,
        body: dict[str, Any],
        *,
        skip_merge_validation: bool,
        now: float,
    ) -> Member:
        merges = self._merge_values(
            body.get("merge_fields"), {}, skip_validation=skip_merge_validation
        )
        self._check_interests(body)
        uid, web_id, contact_id = self.ids.member_ids()
        member = Member(
            uid=uid,
            web_id=web_id,
            contact_id=contact_id,
            email=email,
            hash=key,
            status=status,
            merge=merges,
        )
        self._apply_scalars(member, body)
        self._apply_interests(member, body)
        if status == "subscribed" and not member.timestamp_opt:
            member.timestamp_opt = clock.iso(now)
        tags = body.get("tags") or []
        if tags:
            stamp = clock.iso(now)
            active, _ = _own_tags(member)
            for name in tags:
                name = name.strip()
                if name:
                    self._register_tag(name)
                    active[name] = stamp
        member.last_changed = now
        self.members[member.uid] = member
        self.by_hash[key] = member
        self.version += 1
        return member

    @staticmethod
    def _apply_scalars(member: Member, body: dict[str, Any]) -> bool:
        """Copy the plain fields of a write; True when something changed."""
        if SCALAR_KEYS.isdisjoint(body):
            return False
        changed = False
        email_type = body.get("email_type")
        if email_type and email_type != member.email_type:
            member.email_type = email_type
            changed = True
        for key in ("language", "ip_signup", "ip_opt"):
            value = body.get(key)
            if value is not None and value != getattr(member, key):
                setattr(member, key, value)
                changed = True
        for key in ("timestamp_signup", "timestamp_opt"):
            value = Audience._timestamp(body.get(key))
            if value is not None and value != getattr(member, key):
                setattr(member, key, value)
                changed = True
        vip = body.get("vip")
        if vip is not None and vip != member.vip:
            member.vip = vip
            changed = True
        location = body.get("location")
        if location and location != member.location:
            member.location = dict(location)
            changed = True
        return changed

    def _set_status(self, member: Member, status: str, now: float) -> str | None:
        """Apply a status already checked by `_check_transition`; the webhook event, if any."""
        previous = member.status
        if status == previous:
            return None
        member.status = status
        member.status_before_archive = None
        if status == "subscribed":
            member.timestamp_opt = clock.iso(now)
            return "subscribe"
        if status == "unsubscribed":
            return "unsubscribe"
        if status == "cleaned":
            return "cleaned"
        return None

    def _update(
        self,
        member: Member,
        body: dict[str, Any],
        *,
        status: str | None,
        skip_merge_validation: bool,
        now: float,
        source: str,
        new_email: tuple[str, str] | None = None,
        replace_tags: list[str] | None = None,
    ) -> None:
        if status is not None:
            self._check_transition(member, status)
        merges = self._merge_values(
            body.get("merge_fields"), member.merge, skip_validation=skip_merge_validation
        )
        self._check_interests(body)
        # all checks passed: apply
        events: list[tuple[str, dict[str, str]]] = []
        changed = False
        if new_email is not None and new_email[1] != member.hash:
            old_email = member.email
            del self.by_hash[member.hash]
            member.email, member.hash = new_email
            self.by_hash[member.hash] = member
            events.append(("upemail", {"old_email": old_email}))
            changed = True
        elif new_email is not None and new_email[0] != member.email:
            member.email = new_email[0]  # same address, other case
            changed = True
        profile = merges != member.merge
        if profile:
            member.merge = merges
        if self._apply_scalars(member, body):
            profile = True
        if self._apply_interests(member, body):
            profile = True
        if status is not None:
            event = self._set_status(member, status, now)
            if event is not None:
                events.append((event, STATUS_EVENT_EXTRA[event]))
                changed = True
        if profile:
            changed = True
            if not any(e[0] == "subscribe" for e in events):
                events.append(("profile", {}))
        if replace_tags is not None and self._replace_tags(member, replace_tags, now):
            changed = True
        if changed:
            self._touch(member, now)
        for event, extra in events:
            self._fire(event, member, source, extra)

    def _replace_tags(self, member: Member, names: list[str], now: float) -> bool:
        wanted = {n.strip() for n in names if n.strip()}
        updates = [{"name": n, "status": "active"} for n in wanted if n not in member.tags]
        updates += [{"name": n, "status": "inactive"} for n in member.tags if n not in wanted]
        return self._apply_tags(member, updates, now)

    def _apply_tags(self, member: Member, updates: list[dict[str, Any]], now: float) -> bool:
        stamp = clock.iso(now)
        changed = False
        active, inactive = _own_tags(member)
        for item in updates:
            name = item["name"].strip()
            if not name:
                continue
            if item["status"] == "active":
                if name not in active:
                    self._register_tag(name)
                    active[name] = stamp
                    inactive.pop(name, None)
                    changed = True
            elif name in active:
                del active[name]
                inactive[name] = stamp
                changed = True
        return changed

    def _fire(self, event: str, member: Member, source: str, extra: dict[str, str]) -> None:
        if self.webhooks and self.sink is not None:
            self.sink(self, event, member, source, extra)

    def _ensure_not_forgotten(self, email: str, key: str) -> None:
        if key in self.forgotten:
            raise errors.forgotten(email)

    def put_member(
        self,
        path_key: str,
        body: Any,
        *,
        skip_merge_validation: bool = False,
        source: str = "api",
        now: float | None = None,
    ) -> tuple[Member, bool]:
        """PUT /members/{hash}: add or update. Returns (member, created)."""
        now = clock.now() if now is None else now
        errs = self._schema_errors(body, tags=True, nullable=False)
        if errs:
            raise errors.schema(errs)
        target = self.lookup(path_key)
        raw_email = body.get("email_address")
        if target is None:
            if raw_email is None:
                if self.path_hash(path_key) in self.forgotten:
                    raise errors.not_found()
                raise errors.schema(
                    [{"field": "", "message": "Required fields were not provided: email_address"}]
                )
            email, key = self._check_email(raw_email)
            other = self.by_hash.get(key)
            if other is not None:
                raise errors.member_exists(other.email)
            self._ensure_not_forgotten(email, key)
            self._check_fail_list(email)
            status = body.get("status_if_new") or body.get("status")
            if status is None:
                raise errors.schema(
                    [{"field": "", "message": "Required fields were not provided: status_if_new"}]
                )
            member = self._create(
                email, key, status, body, skip_merge_validation=skip_merge_validation, now=now
            )
            if status == "subscribed":
                self._fire("subscribe", member, source, {})
            return member, True
        new_email = None
        if raw_email is not None:
            email, key = self._check_email(raw_email)
            if key != target.hash:
                other = self.by_hash.get(key)
                if other is not None:
                    raise errors.member_exists(other.email)
                self._ensure_not_forgotten(email, key)
            new_email = (email, key)
        self._check_fail_list(target.email if new_email is None else new_email[0])
        self._update(
            target,
            body,
            status=body.get("status"),
            skip_merge_validation=skip_merge_validation,
            now=now,
            source=source,
            new_email=new_email,
        )
        return target, False

    def post_member(
        self,
        body: Any,
        *,
        skip_merge_validation: bool = False,
        source: str = "api",
        now: float | None = None,
    ) -> Member:
        """POST /members: add a new member (400 Member Exists if present in any state)."""
        now = clock.now() if now is None else now
        errs = self._schema_errors(body, tags=True, nullable=False)
        if errs:
            raise errors.schema(errs)
        missing = [k for k in ("email_address", "status") if k not in body]
        if missing:
            raise errors.schema(
                [
                    {
                        "field": "",
                        "message": f"Required fields were not provided: {', '.join(missing)}",
                    }
                ]
            )
        email, key = self._check_email(body["email_address"])
        if key in self.by_hash:
            raise errors.member_exists(email)
        self._ensure_not_forgotten(email, key)
        self._check_fail_list(email)
        member = self._create(
            email, key, body["status"], body, skip_merge_validation=skip_merge_validation, now=now
        )
        if member.status == "subscribed":
            self._fire("subscribe", member, source, {})
        return member

    def patch_member(
        self,
        path_key: str,
        body: Any,
        *,
        skip_merge_validation: bool = False,
        source: str = "api",
        now: float | None = None,
    ) -> Member:
        """PATCH /members/{hash}: update an existing member (404 otherwise). No tags."""
        now = clock.now() if now is None else now
        errs = self._schema_errors(body, tags=False, nullable=False)
        if errs:
            raise errors.schema(errs)
        target = self.get_member(path_key)
        new_email = None
        if body.get("email_address") is not None:
            email, key = self._check_email(body["email_address"])
            if key != target.hash:
                other = self.by_hash.get(key)
                if other is not None:
                    raise errors.member_exists(other.email)
                self._ensure_not_forgotten(email, key)
            new_email = (email, key)
        self._check_fail_list(target.email if new_email is None else new_email[0])
        self._update(
            target,
            body,
            status=body.get("status"),
            skip_merge_validation=skip_merge_validation,
            now=now,
            source=source,
            new_email=new_email,
        )
        return target

    def archive(self, path_key: str, *, source: str = "api", now: float | None = None) -> None:
        """DELETE /members/{hash}: archive; 405 for cleaned, pending or archived members."""
        now = clock.now() if now is None else now
        member = self.get_member(path_key)
        if member.status in ("cleaned", "pending", "archived"):
            raise ApiError(
                405, "Method Not Allowed", c.ARCHIVE_REFUSED, headers={"allow": "GET, PUT"}
            )
        member.status_before_archive = member.status
        member.status = "archived"
        self._touch(member, now)
        self._fire("unsubscribe", member, source, {"action": "delete", "reason": "manual"})

    def delete_permanent(
        self, path_key: str, *, source: str = "api", now: float | None = None
    ) -> None:
        """POST …/actions/delete-permanent: forget the member (hash only; no email)."""
        now = clock.now() if now is None else now
        member = self.lookup(path_key, allow_email=False)
        if member is None:
            raise errors.not_found()
        self._fire("unsubscribe", member, source, {"action": "delete", "reason": "manual"})
        del self.members[member.uid]
        del self.by_hash[member.hash]
        self.forgotten[member.hash] = now
        self.version += 1

    def post_tags(self, path_key: str, body: Any, *, now: float | None = None) -> None:
        """POST …/members/{hash}/tags: activate or deactivate tags (204)."""
        now = clock.now() if now is None else now
        member = self.lookup(path_key, allow_email=False)
        if member is None:
            raise errors.not_found()
        if not isinstance(body, dict) or "tags" not in body:
            raise errors.schema(
                [{"field": "", "message": "Required fields were not provided: tags"}]
            )
        tags = body["tags"]
        errs: list[dict[str, str]] = []
        if not isinstance(tags, list):
            errs.append(
                {
                    "field": "tags",
                    "message": f"Schema describes array, {type_name(tags)} found instead",
                }
            )
        else:
            for i, item in enumerate(tags):
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    errs.append(
                        {"field": f"tags.{i}", "message": "Required fields were not provided: name"}
                    )
                elif item.get("status") not in ("active", "inactive"):
                    errs.append(
                        {
                            "field": f"tags.{i}.status",
                            "message": "Value must be one of: active, inactive",
                        }
                    )
        if "is_syncing" in body and not isinstance(body["is_syncing"], bool):
            errs.append({"field": "is_syncing", "message": "Schema describes boolean"})
        if errs:
            raise errors.schema(errs)
        if self._apply_tags(member, tags, now):
            self._touch(member, now)

    def batch(
        self,
        body: Any,
        *,
        skip_merge_validation: bool = False,
        skip_duplicate_check: bool = False,
        source: str = "api",
        now: float | None = None,
    ) -> BatchResult:
        """POST /lists/{id}: batch subscribe or unsubscribe, ≤ 500 members."""
        now = clock.now() if now is None else now
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            if isinstance(body, dict) and "members" in body:
                found = type_name(body["members"])
                raise errors.schema(
                    [
                        {
                            "field": "members",
                            "message": f"Schema describes array, {found} found instead",
                        }
                    ]
                )
            raise errors.schema(
                [{"field": "", "message": "Required fields were not provided: members"}]
            )
        items = body["members"]
        if len(items) > c.MAX_BATCH:
            raise errors.invalid(
                f"You can only add up to {c.MAX_BATCH} members per request; "
                f"{len(items)} were sent.",
                [{"field": "members", "message": f"Array has more than {c.MAX_BATCH} items"}],
            )
        update_existing = bool(body.get("update_existing"))
        sync_tags = bool(body.get("sync_tags"))
        result = BatchResult()
        seen: set[str] = set()
        for item in items:
            raw = item.get("email_address") if isinstance(item, dict) else None
            shown = raw if isinstance(raw, str) else ""
            try:
                member, created = self._batch_one(
                    item,
                    seen,
                    update_existing=update_existing,
                    sync_tags=sync_tags,
                    skip_merge_validation=skip_merge_validation,
                    skip_duplicate_check=skip_duplicate_check,
                    source=source,
                    now=now,
                )
            except _Skip:
                continue
            except _ContactExists as exc:
                result.errors.append(
                    {
                        "email_address": exc.email,
                        "error": f"{exc.email} is already a list member, do you want to update? "
                        "please provide update_existing:true in the request body",
                        "error_code": "ERROR_CONTACT_EXISTS",
                        "field": "",
                        "field_message": "",
                    }
                )
                continue
            except ApiError as exc:
                first = (exc.errors or [{}])[0]
                result.errors.append(
                    {
                        "email_address": shown,
                        "error": exc.detail,
                        "error_code": "ERROR_GENERIC",
                        "field": first.get("field", ""),
                        "field_message": first.get("message", ""),
                    }
                )
                continue
            (result.new if created else result.updated).append(member)
        return result

    def _batch_one(
        self,
        item: Any,
        seen: set[str],
        *,
        update_existing: bool,
        sync_tags: bool,
        skip_merge_validation: bool,
        skip_duplicate_check: bool,
        source: str,
        now: float,
    ) -> tuple[Member, bool]:
        errs = self._schema_errors(item, tags=True, nullable=True)
        if errs:
            raise errors.schema(errs)
        email, key = self._check_email(item.get("email_address"))
        if key in seen:
            if skip_duplicate_check:
                raise _Skip
            raise errors.invalid(f"{email} is a duplicate in this request.")
        seen.add(key)
        status = item.get("status")
        status_if_new = item.get("status_if_new")
        member = self.by_hash.get(key)
        if member is None:
            self._ensure_not_forgotten(email, key)
            self._check_fail_list(email)
            new_status = status_if_new or status
            if new_status is None:
                raise errors.schema(
                    [{"field": "", "message": "Required fields were not provided: status"}]
                )
            member = self._create(
                email, key, new_status, item, skip_merge_validation=skip_merge_validation, now=now
            )
            if new_status == "subscribed":
                self._fire("subscribe", member, source, {})
            return member, True
        if not update_existing:
            raise _ContactExists(member.email)
        self._check_fail_list(email)
        tags = item.get("tags")
        self._update(
            member,
            item,
            status=status,
            skip_merge_validation=skip_merge_validation,
            now=now,
            source=source,
            new_email=(email, key),
            replace_tags=tags if sync_tags and isinstance(tags, list) else None,
        )
        return member, False

    # -- people's actions (control API) ---------------------------------------------------

    def person_action(
        self,
        action: str,
        email: str,
        *,
        new_email: str | None = None,
        merge_fields: dict[str, Any] | None = None,
        interests: list[str] | None = None,
        source: str = "user",
        now: float | None = None,
    ) -> Member:
        """What a person does in Mailchimp (a link, a bounce, a form); fires as `source`.

        `interests`: the interest names the person ticks on the form (signup, profile); every
        other interest of the audience is then unticked, as the hosted form does.
        """
        now = clock.now() if now is None else now
        chosen: dict[str, bool] | None = None
        if interests is not None:
            by_name = {i.name: i.id for i in self.interests.values()}
            unknown = [n for n in interests if n not in by_name]
            if unknown:
                raise errors.invalid(f"Unknown interest: '{unknown[0]}'.")
            picked = {by_name[n] for n in interests}
            chosen = {i: i in picked for i in self.interests}
        if merge_fields is not None:
            errs = self._schema_errors({"merge_fields": merge_fields}, tags=False, nullable=False)
            if errs:
                raise errors.schema(errs)
        key = subscriber_hash(email)
        member = self.by_hash.get(key)
        if action == "signup":
            if member is None:
                self.forgotten.pop(key, None)  # a person may always re-subscribe themselves
                email, key = self._check_email(email)
                member = self._create(
                    email,
                    key,
                    "subscribed",
                    {"merge_fields": merge_fields or {}},
                    skip_merge_validation=True,
                    now=now,
                )
                member.source = "Hosted Signup Form"
                self._fire("subscribe", member, source, {})
                return member
            self._update(
                member,
                {"merge_fields": merge_fields or {}},
                status=None,
                skip_merge_validation=True,
                now=now,
                source=source,
            )
            if member.status != "subscribed":
                member.status = "subscribed"
                member.status_before_archive = None
                member.timestamp_opt = clock.iso(now)
                self._touch(member, now)
                self._fire("subscribe", member, source, {})
            return member
        if member is None:
            raise errors.not_found()
        if action == "unsubscribe":
            member.status = "unsubscribed"
            member.unsubscribe_reason = "manual"
            self._touch(member, now)
            self._fire("unsubscribe", member, source, {"action": "unsub", "reason": "manual"})
        elif action in ("clean", "abuse"):
            reason = "hard" if action == "clean" else "abuse"
            member.status = "cleaned"
            member.unsubscribe_reason = reason
            self._touch(member, now)
            self._fire("cleaned", member, source, {"reason": reason})
        elif action == "change-email":
            if not new_email:
                raise errors.invalid("new_email is required")
            checked = self._check_email(new_email)
            if checked[1] != member.hash and checked[1] in self.by_hash:
                raise errors.member_exists(checked[0])
            self._update(
                member,
                {},
                status=None,
                skip_merge_validation=True,
                now=now,
                source=source,
                new_email=checked,
            )
        elif action == "profile":
            self._update(
                member,
                {"merge_fields": merge_fields or {}, **({"interests": chosen} if chosen else {})},
                status=None,
                skip_merge_validation=True,
                now=now,
                source=source,
            )
        else:
            raise errors.not_found()
        return member

    # -- reads ----------------------------------------------------------------------------

    def query(self, key: tuple[Any, ...], build: Callable[[], list[Member]]) -> list[Member]:
        """The filtered, sorted members of a collection query, cached until the next write."""
        full_key = (self.version, *key)
        cached = self._query_cache
        if cached is not None and cached[0] == full_key:
            return cached[1]
        result = build()
        self._query_cache = (full_key, result)
        return result

    def stats(self) -> dict[str, Any]:
        counts = dict.fromkeys(c.READ_STATUSES, 0)
        last_sub = ""
        last_unsub = ""
        for m in self.members.values():
            counts[m.status] += 1
            if m.status == "subscribed" and m.timestamp_opt > last_sub:
                last_sub = m.timestamp_opt
            if m.status == "unsubscribed":
                changed = clock.iso(m.last_changed)
                if changed > last_unsub:
                    last_unsub = changed
        return {
            "member_count": counts["subscribed"],
            "total_contacts": len(self.members),
            "unsubscribe_count": counts["unsubscribed"],
            "cleaned_count": counts["cleaned"],
            "member_count_since_send": counts["subscribed"],
            "unsubscribe_count_since_send": counts["unsubscribed"],
            "cleaned_count_since_send": counts["cleaned"],
            "campaign_count": 0,
            "campaign_last_sent": "",
            "merge_field_count": len(self.merge_fields),
            "avg_sub_rate": 0,
            "avg_unsub_rate": 0,
            "target_sub_rate": 0,
            "open_rate": 0,
            "click_rate": 0,
            "last_sub_date": last_sub,
            "last_unsub_date": last_unsub,
        }


class _ContactExists(Exception):
    def __init__(self, email: str) -> None:
        super().__init__(email)
        self.email = email


class _Skip(Exception):
    """A repeat of an earlier member of the same batch, skipped (`skip_duplicate_check`)."""
