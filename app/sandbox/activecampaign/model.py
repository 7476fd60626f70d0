"""The records an ActiveCampaign account holds (ids are strings, as on the wire)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Membership:
    """A contact's place on a list (a `contactList`)."""

    id: str
    list_id: str
    contact_id: str
    status: int
    sdate: float
    udate: float
    sourceid: int = 0
    unsubreason: str = ""
    form: str | None = None
    resubscribed: int = 0  # times the API set 1 after 2 or 3 (the silent re-subscribe)
    echo_blank_status: bool = False  # created without `status`: the answer shows ""


@dataclass(slots=True)
class FieldValue:
    id: str
    contact_id: str
    field_id: str
    value: str
    cdate: float
    udate: float


@dataclass(slots=True)
class ContactTag:
    id: str
    contact_id: str
    tag_id: str
    cdate: float


@dataclass(slots=True)
class Contact:
    id: str
    email: str
    first_name: str
    last_name: str
    phone: str
    cdate: float
    udate: float
    orgname: str = ""
    customer_acct_name: str = ""
    ip: str = "0"
    bounced_hard: str = "0"
    bounced_soft: str = "0"
    bounced_date: float | None = None
    lists: dict[str, Membership] = field(default_factory=dict)  # list id -> membership
    values: dict[str, FieldValue] = field(default_factory=dict)  # field id -> value
    tags: dict[str, ContactTag] = field(default_factory=dict)  # tag id -> association


@dataclass(slots=True)
class Field:
    id: str
    title: str
    type: str
    perstag: str
    descript: str
    defval: str
    visible: str
    ordernum: str
    isrequired: str
    cdate: float
    udate: float
    options: list[str] = field(default_factory=list)  # option ids
    relations: list[str] = field(default_factory=list)  # fieldRel ids


@dataclass(slots=True)
class FieldOption:
    id: str
    field_id: str
    label: str
    value: str
    orderid: str
    isdefault: str
    cdate: float
    udate: float


@dataclass(slots=True)
class FieldRel:
    id: str
    field_id: str
    relid: str
    cdate: float


@dataclass(slots=True)
class AcList:
    id: str
    name: str
    stringid: str
    sender_url: str
    sender_reminder: str
    cdate: float
    udate: float
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Tag:
    id: str
    tag: str
    tag_type: str
    description: str
    cdate: float
    udate: float


@dataclass(slots=True)
class Webhook:
    id: str
    name: str
    url: str
    events: list[str]
    sources: list[str]
    listid: str
    cdate: float
    active: bool = True


@dataclass(slots=True)
class Batch:
    """One `import/bulk_import` request, applied when it completes."""

    id: str
    created: float
    contacts: list[dict[str, Any]]
    callback: dict[str, Any] | None
    exclude_automations: bool
    done: bool = False
    success: list[str] = field(default_factory=list)
    failure: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Account:
    """An ActiveCampaign account: its keys, user, and everything it holds."""

    id: str
    name: str
    api_keys: list[str]
    user_email: str
    created: float
    contacts: dict[str, Contact] = field(default_factory=dict)
    by_email: dict[str, str] = field(default_factory=dict)  # email key -> contact id
    lists: dict[str, AcList] = field(default_factory=dict)
    memberships: dict[str, Membership] = field(default_factory=dict)
    fields: dict[str, Field] = field(default_factory=dict)
    options: dict[str, FieldOption] = field(default_factory=dict)
    field_rels: dict[str, FieldRel] = field(default_factory=dict)
    values: dict[str, FieldValue] = field(default_factory=dict)
    tags: dict[str, Tag] = field(default_factory=dict)
    contact_tags: dict[str, ContactTag] = field(default_factory=dict)
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    batches: dict[str, Batch] = field(default_factory=dict)
