"""The sandbox's whole in-memory state and the API's rules (what changes, what fires)."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from app.sandbox.activecampaign import constants as c
from app.sandbox.activecampaign import errors
from app.sandbox.activecampaign.config import AcConfig
from app.sandbox.activecampaign.model import (
    Account,
    AcList,
    Batch,
    Contact,
    ContactTag,
    Field,
    FieldOption,
    FieldRel,
    FieldValue,
    Membership,
    Tag,
    Webhook,
)
from app.sandbox.activecampaign.webhooks import WebhookHub
from app.sandbox.kit import Clock, Gate, InFlight, RequestLog, WindowLimiter

SNAPSHOT_VERSION = 1
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")
CONTACT_KEYS = {"email": "email", "firstName": "first_name", "lastName": "last_name"}
CONTACT_KEYS |= {"phone": "phone", "orgname": "orgname"}


def text(value: Any) -> str:
    """An id or scalar as the API stores it: JSON numbers and strings alike."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class AcState:
    """Everything the sandbox holds; `app.state.sandbox` is one of these."""

    def __init__(self, config: AcConfig | None = None) -> None:
        self.initial_config = (config or AcConfig()).copy()
        self.config = self.initial_config.copy()
        self.clock = Clock()
        self.gate = Gate(self.clock, self.config.seed)
        self.requests = RequestLog(self.config.request_log_size)
        self.hub = WebhookHub(self)
        self._reset_data()
        self._apply_runtime_config(outage=True)

    # -- lifecycle ------------------------------------------------------------------------

    def _reset_data(self) -> None:
        self.seq: dict[str, int] = {}
        self.accounts: dict[str, Account] = {}
        self.keys: dict[str, Account] = {}
        self.list_owner: dict[str, Account] = {}
        self.rate = WindowLimiter(self.config.rate_limit_per_second, 1.0, name="rate")
        self.bulk_multi = WindowLimiter(c.BULK_MULTI_PER_MINUTE, 60.0, name="bulk_multi")
        self.bulk_single = WindowLimiter(c.BULK_SINGLE_PER_MINUTE, 60.0, name="bulk_single")
        self.pending_batches: set[tuple[str, str]] = set()
        account = self.create_account(
            account_id=c.DEFAULT_ACCOUNT_ID,
            name=c.DEFAULT_ACCOUNT_NAME,
            api_key=c.DEFAULT_API_KEY,
            user_email=c.DEFAULT_USER_EMAIL,
            with_list=False,
        )
        self.create_list(account, {"name": c.DEFAULT_LIST_NAME}, list_id=c.DEFAULT_LIST_ID)

    def reset(self) -> None:
        """The default account and list, nothing else; the configuration of startup."""
        self.config = self.initial_config.copy()
        self.clock.reset()
        self.gate.in_flight.clear()
        self._reset_data()
        self.requests = RequestLog(self.config.request_log_size)
        self.hub.clear()
        self._apply_runtime_config(outage=True)

    @property
    def in_flight(self) -> InFlight:
        return self.gate.in_flight

    def _apply_runtime_config(self, *, outage: bool) -> None:
        self.gate.reseed(self.config.seed)
        self.hub.reseed(self.config.seed)
        if outage:
            self.gate.start_outage(self.config.outage_seconds)

    def patch_config(self, changes: dict[str, Any]) -> None:
        """PATCH /_control/config; raise ValueError on a bad value."""
        self.config.patch(changes)
        if "seed" in changes:
            self.gate.reseed(self.config.seed)
            self.hub.reseed(self.config.seed)
        if "outage_seconds" in changes:
            self.gate.start_outage(self.config.outage_seconds)
        if "request_log_size" in changes:
            self.requests.resize(self.config.request_log_size)
        if "rate_limit_per_second" in changes:
            self.rate.limit = self.config.rate_limit_per_second

    def config_view(self) -> dict[str, Any]:
        view = self.config.to_dict()
        view["outage_remaining_seconds"] = self.gate.outage_remaining()
        return view

    def next_id(self, kind: str) -> str:
        """Ids are unique across the sandbox (so control paths need no account)."""
        n = self.seq.get(kind, 0) + 1
        self.seq[kind] = n
        return str(n)

    # -- accounts -------------------------------------------------------------------------

    def create_account(
        self,
        *,
        account_id: str | None = None,
        name: str | None = None,
        api_key: str | None = None,
        extra_keys: list[str] | None = None,
        user_email: str | None = None,
        with_list: bool = True,
        list_name: str | None = None,
    ) -> Account:
        account_id = account_id or f"acct{secrets.token_hex(4)}"
        if account_id in self.accounts:
            raise ValueError(f"account {account_id} exists")
        keys = [api_key or secrets.token_hex(32), *(extra_keys or [])]
        for key in keys:
            if not isinstance(key, str) or not key or key in self.keys:
                raise ValueError("api keys must be new non-empty strings")
        account = Account(
            id=account_id,
            name=name or f"Sandbox Account {len(self.accounts) + 1}",
            api_keys=keys,
            user_email=user_email or f"owner+{account_id}@sandbox.example.com",
            created=self.clock.now(),
        )
        self.accounts[account.id] = account
        for key in keys:
            self.keys[key] = account
        if with_list:
            self.create_list(account, {"name": list_name or "Sandbox List"})
        return account

    def authenticate(self, token: str | None) -> Account:
        account = self.keys.get(token) if token else None
        if account is None:
            if self.config.auth_failure_status == 401:
                raise errors.AcError(401, {"message": "Unauthorized"})
            raise errors.forbidden()
        return account

    # -- contacts -------------------------------------------------------------------------

    def email_key(self, email: str) -> str:
        email = email.strip()
        return email.lower() if self.config.email_case_insensitive else email

    def by_email(self, account: Account, email: str) -> Contact | None:
        ident = account.by_email.get(self.email_key(email))
        return account.contacts.get(ident) if ident else None

    def contact(self, account: Account, ident: Any) -> Contact:
        contact = account.contacts.get(text(ident))
        if contact is None:
            raise errors.not_found(c.MODEL_CONTACT, text(ident))
        return contact

    def check_email(self, data: dict[str, Any], *, required: bool) -> str | None:
        email = data.get("email")
        if email is None or (isinstance(email, str) and not email.strip()):
            if not required:
                return None
            raise errors.invalid(
                c.MISSING_EMAIL,
                code="field_missing",
                pointer="/data/attributes/email",
                status=self.config.missing_email_status,
            )
        if not isinstance(email, str) or not EMAIL_RE.match(email.strip()):
            raise errors.invalid(
                c.INVALID_EMAIL, code="email_invalid", pointer="/data/attributes/email"
            )
        return email.strip()

    def new_contact(self, account: Account, email: str) -> Contact:
        now = self.clock.now()
        contact = Contact(
            id=self.next_id("contact"),
            email=email,
            first_name="",
            last_name="",
            phone="",
            cdate=now,
            udate=now,
        )
        account.contacts[contact.id] = contact
        account.by_email[self.email_key(email)] = contact.id
        return contact

    def apply_contact(
        self, account: Account, contact: Contact, data: dict[str, Any], *, creating: bool
    ) -> bool:
        """Absent keys keep, `""` clears (knob `sync_blank_clears`); True if anything changed."""
        changed = False
        for key, attr in CONTACT_KEYS.items():
            if key not in data or (key == "email" and creating):
                continue
            value = text(data[key]).strip() if key == "email" else text(data[key])
            if value == "" and (key == "email" or not self.config.sync_blank_clears):
                continue
            if key == "email":
                if self.email_key(value) != self.email_key(contact.email):
                    other = self.by_email(account, value)
                    if other is not None and other.id != contact.id:
                        raise errors.invalid(
                            c.DUPLICATE_EMAIL,
                            code="duplicate",
                            pointer="/data/attributes/email",
                        )
                    account.by_email.pop(self.email_key(contact.email), None)
                    account.by_email[self.email_key(value)] = contact.id
                elif value == contact.email:
                    continue
            if getattr(contact, attr) != value:
                setattr(contact, attr, value)
                changed = True
        return changed

    def set_values(
        self, account: Account, contact: Contact, items: Any
    ) -> tuple[list[FieldValue], bool]:
        """`fieldValues:[{field, value}]`: an upsert per (contact, field id)."""
        if items is None:
            return [], False
        if not isinstance(items, list):
            raise errors.invalid("fieldValues must be an array", code="invalid")
        out: list[FieldValue] = []
        changed = False
        for item in items:
            if not isinstance(item, dict) or "field" not in item:
                raise errors.missing("field")
            field = account.fields.get(text(item["field"]))
            if field is None:
                continue  # an unknown field id is ignored, as the lenient real API does
            value, did = self.put_value(contact, field, item.get("value"), account)
            out.append(value)
            changed = changed or did
        return out, changed

    def put_value(
        self, contact: Contact, field: Field, raw: Any, account: Account
    ) -> tuple[FieldValue, bool]:
        value = text(raw)
        if self.config.validate_option_values and field.type in c.OPTION_TYPES and value:
            allowed = {account.options[o].value for o in field.options if o in account.options}
            parts = [p for p in value.split("||") if p] if "||" in value else [value]
            bad = [p for p in parts if p not in allowed]
            if bad:
                raise errors.invalid(
                    f"Invalid option value for field {field.id}: {bad[0]}", code="invalid"
                )
        now = self.clock.now()
        existing = contact.values.get(field.id)
        if existing is not None:
            if existing.value == value:
                return existing, False
            existing.value = value
            existing.udate = now
            return existing, True
        fv = FieldValue(self.next_id("fieldValue"), contact.id, field.id, value, now, now)
        contact.values[field.id] = fv
        account.values[fv.id] = fv
        return fv, True

    def touch(self, contact: Contact) -> None:
        contact.udate = self.clock.now()

    def sync_contact(
        self, account: Account, data: dict[str, Any], *, source: str = "api"
    ) -> tuple[Contact, bool, list[FieldValue]]:
        """`contact/sync`: (contact, created, field values written)."""
        email = self.check_email(data, required=True)
        assert email is not None
        contact = self.by_email(account, email)
        created = contact is None
        if contact is None:
            contact = self.new_contact(account, email)
        changed = self.apply_contact(account, contact, data, creating=created)
        values, values_changed = self.set_values(account, contact, data.get("fieldValues"))
        if (changed or values_changed) and not created:
            self.touch(contact)
            self.hub.emit(account, "update", contact, source)
        return contact, created, values

    def create_contact(
        self, account: Account, data: dict[str, Any]
    ) -> tuple[Contact, list[FieldValue]]:
        """Strict create: a duplicate email is a 422."""
        email = self.check_email(data, required=True)
        assert email is not None
        if self.by_email(account, email) is not None:
            raise errors.invalid(
                c.DUPLICATE_EMAIL, code="duplicate", pointer="/data/attributes/email"
            )
        contact = self.new_contact(account, email)
        self.apply_contact(account, contact, data, creating=True)
        values, _ = self.set_values(account, contact, data.get("fieldValues"))
        return contact, values

    def update_contact(
        self, account: Account, contact: Contact, data: dict[str, Any], *, source: str = "api"
    ) -> None:
        if "email" in data:
            self.check_email(data, required=False)
        changed = self.apply_contact(account, contact, data, creating=False)
        _, values_changed = self.set_values(account, contact, data.get("fieldValues"))
        if changed or values_changed:
            self.touch(contact)
            self.hub.emit(account, "update", contact, source)

    def delete_contact(self, account: Account, contact: Contact) -> None:
        account.contacts.pop(contact.id, None)
        if account.by_email.get(self.email_key(contact.email)) == contact.id:
            del account.by_email[self.email_key(contact.email)]
        for m in contact.lists.values():
            account.memberships.pop(m.id, None)
        for v in contact.values.values():
            account.values.pop(v.id, None)
        for ct in contact.tags.values():
            account.contact_tags.pop(ct.id, None)

    # -- lists ----------------------------------------------------------------------------

    def a_list(self, account: Account, ident: Any) -> AcList:
        lst = account.lists.get(text(ident))
        if lst is None:
            raise errors.not_found(c.MODEL_LIST, text(ident))
        return lst

    def create_list(
        self, account: Account, data: dict[str, Any], *, list_id: str | None = None
    ) -> AcList:
        name = text(data.get("name")).strip()
        if not name:
            raise errors.missing("name")
        now = self.clock.now()
        ident = list_id or self.next_id("list")
        if list_id is not None:
            self.seq["list"] = max(self.seq.get("list", 0), int(list_id))
        lst = AcList(
            id=ident,
            name=name,
            stringid=text(data.get("stringid")) or re.sub(r"[^a-z0-9]+", "-", name.lower()),
            sender_url=text(data.get("sender_url")) or "https://sandbox.example.com",
            sender_reminder=text(data.get("sender_reminder")) or "You signed up on our site.",
            cdate=now,
            udate=now,
            extra={k: text(v) for k, v in data.items() if k in ("sender_name", "p_use_tracking")},
        )
        account.lists[lst.id] = lst
        self.list_owner[lst.id] = account
        return lst

    def delete_list(self, account: Account, lst: AcList) -> None:
        del account.lists[lst.id]
        self.list_owner.pop(lst.id, None)
        for contact in list(account.contacts.values()):
            m = contact.lists.pop(lst.id, None)
            if m is None:
                continue
            account.memberships.pop(m.id, None)
            if self.config.delete_list_deletes_contacts and not contact.lists:
                self.delete_contact(account, contact)
        for w in account.webhooks.values():
            if w.listid == lst.id:
                w.listid = "0"

    def subscribers(self, account: Account, list_id: str) -> int:
        return sum(
            1 for m in account.memberships.values() if m.list_id == list_id and m.status == c.ACTIVE
        )

    def set_status(
        self,
        account: Account,
        contact: Contact,
        lst: AcList,
        status: int,
        *,
        source: str = "api",
        sourceid: int = 0,
        reason: str = "",
        form: str | None = None,
        echo_blank: bool = False,
        fire: bool = True,
    ) -> tuple[Membership, bool]:
        """Put `contact` on `lst` with `status`; (membership, created). Status 1 after 2 or 3
        is allowed, silently, as the real API does (reference §3.2): clients must prevent it."""
        now = self.clock.now()
        m = contact.lists.get(lst.id)
        created = m is None
        before = None if m is None else m.status
        if m is None:
            m = Membership(
                id=self.next_id("contactList"),
                list_id=lst.id,
                contact_id=contact.id,
                status=status,
                sdate=now,
                udate=now,
                sourceid=sourceid,
                echo_blank_status=echo_blank,
                form=form,
            )
            contact.lists[lst.id] = m
            account.memberships[m.id] = m
        else:
            m.echo_blank_status = echo_blank
            if status != m.status:
                m.status = status
                m.udate = now
                if status == c.ACTIVE:
                    m.sdate = now
                    if before in (c.UNSUBSCRIBED, c.BOUNCED):
                        m.resubscribed += 1
            if sourceid:
                m.sourceid = sourceid
        if status == c.UNSUBSCRIBED and before != c.UNSUBSCRIBED:
            m.unsubreason = reason
        if before != status:
            self.touch(contact)
            if fire:
                event = {c.ACTIVE: "subscribe", c.UNSUBSCRIBED: "unsubscribe"}.get(status)
                if status == c.BOUNCED:
                    event = "bounce"
                if event is not None:
                    extra: list[tuple[str, str]] = []
                    if event == "unsubscribe":
                        extra = [
                            ("campaign[id]", "0"),
                            ("unsubscribe[reason]", reason),
                            ("form[id]", form or "0"),
                        ]
                    elif event == "subscribe":
                        extra = [("form[id]", form or "0")]
                    elif event == "bounce":
                        extra = [("campaign[id]", "0"), ("bounce[type]", "hard")]
                    self.hub.emit(account, event, contact, source, list_id=lst.id, extra=extra)
        return m, created

    # -- tags -----------------------------------------------------------------------------

    def tag(self, account: Account, ident: Any) -> Tag:
        tag = account.tags.get(text(ident))
        if tag is None:
            raise errors.not_found(c.MODEL_TAG, text(ident))
        return tag

    def tag_by_name(self, account: Account, name: str) -> Tag | None:
        key = name.strip().lower()
        return next((t for t in account.tags.values() if t.tag.lower() == key), None)

    def create_tag(self, account: Account, data: dict[str, Any]) -> Tag:
        name = text(data.get("tag")).strip()
        if not name:
            raise errors.missing("tag")
        if self.tag_by_name(account, name) is not None:
            raise errors.invalid(
                self.config.duplicate_tag_message,
                code="duplicate",
                pointer="/data/attributes/tag",
                status=self.config.duplicate_tag_status,
            )
        tag_type = text(data.get("tagType")) or "contact"
        if tag_type not in ("contact", "template"):
            raise errors.invalid("tagType must be contact or template", code="invalid")
        now = self.clock.now()
        tag = Tag(self.next_id("tag"), name, tag_type, text(data.get("description")), now, now)
        account.tags[tag.id] = tag
        return tag

    def tag_count(self, account: Account, tag_id: str) -> int:
        return sum(1 for ct in account.contact_tags.values() if ct.tag_id == tag_id)

    def add_tag(
        self, account: Account, contact: Contact, tag: Tag, *, source: str = "api"
    ) -> tuple[ContactTag, bool]:
        existing = contact.tags.get(tag.id)
        if existing is not None:
            if self.config.duplicate_contact_tag == "422":
                raise errors.invalid(
                    "The contact already has this tag",
                    code="duplicate",
                    pointer="/data/attributes/tag",
                )
            return existing, False
        ct = ContactTag(self.next_id("contactTag"), contact.id, tag.id, self.clock.now())
        contact.tags[tag.id] = ct
        account.contact_tags[ct.id] = ct
        self.touch(contact)
        self.hub.emit(account, "contact_tag_added", contact, source, extra=[("tag", tag.tag)])
        return ct, True

    def remove_contact_tag(self, account: Account, ct: ContactTag, *, source: str = "api") -> None:
        del account.contact_tags[ct.id]
        contact = account.contacts.get(ct.contact_id)
        tag = account.tags.get(ct.tag_id)
        if contact is not None:
            contact.tags.pop(ct.tag_id, None)
            self.touch(contact)
            name = tag.tag if tag else ""
            self.hub.emit(account, "contact_tag_removed", contact, source, extra=[("tag", name)])

    def delete_tag(self, account: Account, tag: Tag) -> None:
        del account.tags[tag.id]
        for ct in [ct for ct in account.contact_tags.values() if ct.tag_id == tag.id]:
            del account.contact_tags[ct.id]
            contact = account.contacts.get(ct.contact_id)
            if contact is not None:
                contact.tags.pop(tag.id, None)

    # -- fields ---------------------------------------------------------------------------

    def field(self, account: Account, ident: Any) -> Field:
        field = account.fields.get(text(ident))
        if field is None:
            raise errors.not_found(c.MODEL_FIELD, text(ident))
        return field

    def create_field(self, account: Account, data: dict[str, Any]) -> Field:
        title = text(data.get("title")).strip()
        if not title:
            raise errors.missing("title")
        ftype = text(data.get("type")) or "text"
        if ftype not in c.FIELD_TYPES:
            raise errors.invalid(f"Invalid field type {ftype}", code="invalid")
        if any(f.title.lower() == title.lower() for f in account.fields.values()):
            raise errors.invalid(
                c.DUPLICATE_FIELD,
                code="duplicate",
                detail=f"There is already a field named '{title}' -- choose another name",
            )
        if data.get("perstag"):
            perstag = re.sub(r"\s+", "", text(data["perstag"])).upper()
        else:
            perstag = re.sub(r"[^A-Z0-9_]", "", re.sub(r"\s+", "_", title.upper()))
        now = self.clock.now()
        field = Field(
            id=self.next_id("field"),
            title=title,
            type=ftype,
            perstag=perstag,
            descript=text(data.get("descript")),
            defval=text(data.get("defval")),
            visible=text(data.get("visible")) or "1",
            ordernum=text(data.get("ordernum")) or "1",
            isrequired=text(data.get("isrequired")) or "0",
            cdate=now,
            udate=now,
        )
        account.fields[field.id] = field
        return field

    def update_field(self, account: Account, field: Field, data: dict[str, Any]) -> None:
        if "title" in data:
            title = text(data["title"]).strip()
            if any(
                f.title.lower() == title.lower() and f.id != field.id
                for f in account.fields.values()
            ):
                raise errors.invalid(
                    c.DUPLICATE_FIELD,
                    code="duplicate",
                    detail=f"There is already a field named '{title}' -- choose another name",
                )
            field.title = title or field.title
        for key in ("descript", "defval", "visible", "ordernum", "isrequired", "type"):
            if key in data:
                setattr(field, key, text(data[key]))
        if data.get("perstag"):
            field.perstag = re.sub(r"\s+", "", text(data["perstag"])).upper()
        field.udate = self.clock.now()

    def delete_field(self, account: Account, field: Field) -> None:
        del account.fields[field.id]
        for contact in account.contacts.values():
            fv = contact.values.pop(field.id, None)
            if fv is not None:
                account.values.pop(fv.id, None)
        for oid in field.options:
            account.options.pop(oid, None)
        for rid in field.relations:
            account.field_rels.pop(rid, None)

    def add_options(self, account: Account, items: Any) -> list[FieldOption]:
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise errors.AcError(
                422,
                {
                    "errors": "Bulk operation failed. Request must contain an array of "
                    "fieldOption objects."
                },
            )
        out = []
        now = self.clock.now()
        for item in items:
            field = self.field(account, item.get("field"))
            label = text(item.get("label") or item.get("value"))
            option = FieldOption(
                id=self.next_id("fieldOption"),
                field_id=field.id,
                label=label,
                value=text(item.get("value") if item.get("value") is not None else label),
                orderid=text(item.get("orderid")) or "0",
                isdefault=text(item.get("isdefault")) or "0",
                cdate=now,
                udate=now,
            )
            account.options[option.id] = option
            field.options.append(option.id)
            out.append(option)
        return out

    def add_field_rel(self, account: Account, data: dict[str, Any]) -> FieldRel:
        if "field" not in data:
            raise errors.missing("field")
        field = self.field(account, data["field"])
        rel = FieldRel(
            self.next_id("fieldRel"), field.id, text(data.get("relid", "0")), self.clock.now()
        )
        account.field_rels[rel.id] = rel
        field.relations.append(rel.id)
        return rel

    # -- bulk import ----------------------------------------------------------------------

    def queue_import(self, account: Account, contacts: list[dict[str, Any]], body: dict) -> Batch:
        batch = Batch(
            id=str(uuid.uuid4()),
            created=self.clock.now(),
            contacts=contacts,
            callback=body.get("callback") if isinstance(body.get("callback"), dict) else None,
            exclude_automations=bool(body.get("exclude_automations", False)),
        )
        account.batches[batch.id] = batch
        self.pending_batches.add((account.id, batch.id))
        return batch

    def batch_status(self, batch: Batch) -> str:
        age = self.clock.now() - batch.created
        stage = self.config.import_stage_seconds
        if batch.done or age >= 2 * stage:
            return "completed"
        return "waiting" if age < stage else "active"

    def settle(self) -> None:
        """Apply every import whose time has come (imports fire no webhooks)."""
        if not self.pending_batches:
            return
        for account_id, batch_id in list(self.pending_batches):
            account = self.accounts.get(account_id)
            batch = account.batches.get(batch_id) if account else None
            if account is None or batch is None:
                self.pending_batches.discard((account_id, batch_id))
                continue
            if self.batch_status(batch) != "completed":
                continue
            self.pending_batches.discard((account_id, batch_id))
            self._apply_batch(account, batch)
            if batch.callback:
                self.hub.callback(batch)

    def _apply_batch(self, account: Account, batch: Batch) -> None:
        with self.hub.muted():
            for item in batch.contacts:
                email = text(item.get("email")).strip()
                try:
                    self._import_one(account, item)
                except errors.AcError:
                    batch.failure.append(email)
                    continue
                contact = self.by_email(account, email)
                if contact is not None:
                    batch.success.append(contact.id)
        batch.done = True

    def _import_one(self, account: Account, item: dict[str, Any]) -> None:
        email = text(item.get("email")).strip()
        subscribe = [
            text(s.get("listid")) for s in item.get("subscribe") or [] if isinstance(s, dict)
        ]
        unsubscribe = [
            text(s.get("listid")) for s in item.get("unsubscribe") or [] if isinstance(s, dict)
        ]
        existing = self.by_email(account, email)
        for list_id in subscribe:
            if list_id not in account.lists:
                raise errors.not_found(c.MODEL_LIST, list_id)
            m = existing.lists.get(list_id) if existing else None
            if m is not None and m.status == c.UNSUBSCRIBED:
                # "Contacts may not be subscribed to lists which they have previously
                # unsubscribed from": the whole contact is a failure, nothing of it applied.
                raise errors.invalid("previously unsubscribed", code="unsubscribed")
        for fv in item.get("fields") or []:
            if not isinstance(fv, dict) or text(fv.get("id")) not in account.fields:
                raise errors.invalid("unknown field", code="field_invalid")
        data: dict[str, Any] = {"email": email}
        for src, dst in (
            ("first_name", "firstName"),
            ("last_name", "lastName"),
            ("phone", "phone"),
        ):
            if src in item and item[src] is not None:
                data[dst] = item[src]
        data["fieldValues"] = [
            {"field": fv["id"], "value": fv.get("value")} for fv in item.get("fields") or []
        ]
        contact, _, _ = self.sync_contact(account, data)
        if item.get("customer_acct_name"):
            contact.customer_acct_name = text(item["customer_acct_name"])
        tags = item.get("tags") or []
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        for name in tags:
            tag = self.tag_by_name(account, text(name)) or self.create_tag(
                account, {"tag": text(name)}
            )
            self.add_tag(account, contact, tag)
        for list_id in subscribe:
            self.set_status(account, contact, account.lists[list_id], c.ACTIVE, sourceid=0)
        for list_id in unsubscribe:
            if list_id in account.lists:
                self.set_status(account, contact, account.lists[list_id], c.UNSUBSCRIBED)

    # -- webhooks -------------------------------------------------------------------------

    def webhook(self, account: Account, ident: Any) -> Webhook:
        w = account.webhooks.get(text(ident))
        if w is None:
            raise errors.not_found(c.MODEL_WEBHOOK, text(ident))
        return w

    def check_webhook(self, data: dict[str, Any], current: Webhook | None = None) -> dict:
        out: dict[str, Any] = {}
        for key in ("name", "url", "events", "sources"):
            if key not in data:
                if current is None:
                    raise errors.missing(key)
                continue
            out[key] = data[key]
        if "url" in out and not re.match(r"^https?://", text(out["url"])):
            raise errors.invalid("The url must be a valid http(s) URL", code="invalid")
        for key, allowed in (("events", c.WEBHOOK_EVENTS), ("sources", c.WEBHOOK_SOURCES)):
            if key in out:
                values = out[key]
                if not isinstance(values, list) or not values:
                    raise errors.invalid(f"{key} must be a non-empty array", code="invalid")
                bad = [v for v in values if v not in allowed]
                if bad:
                    raise errors.invalid(f"Invalid {key[:-1]}: {bad[0]}", code="invalid")
        if "listid" in data:
            out["listid"] = text(data["listid"]) or "0"
        return out

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every account as plain data (the configuration is not part of it)."""
        return {
            "version": SNAPSHOT_VERSION,
            "seq": dict(self.seq),
            "accounts": [asdict(a) for a in self.accounts.values()],
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError("unknown snapshot version")
        self.seq = {str(k): int(v) for k, v in snap["seq"].items()}
        self.accounts.clear()
        self.keys.clear()
        self.list_owner.clear()
        self.pending_batches.clear()
        for data in snap["accounts"]:
            account = Account(
                id=data["id"],
                name=data["name"],
                api_keys=list(data["api_keys"]),
                user_email=data["user_email"],
                created=data["created"],
            )
            for raw in data["contacts"].values():
                contact = Contact(
                    **{k: v for k, v in raw.items() if k not in ("lists", "values", "tags")}
                )
                contact.lists = {k: Membership(**v) for k, v in raw["lists"].items()}
                contact.values = {k: FieldValue(**v) for k, v in raw["values"].items()}
                contact.tags = {k: ContactTag(**v) for k, v in raw["tags"].items()}
                account.contacts[contact.id] = contact
                account.by_email[self.email_key(contact.email)] = contact.id
                account.memberships.update({m.id: m for m in contact.lists.values()})
                account.values.update({v.id: v for v in contact.values.values()})
                account.contact_tags.update({t.id: t for t in contact.tags.values()})
            account.lists = {k: AcList(**v) for k, v in data["lists"].items()}
            account.fields = {k: Field(**v) for k, v in data["fields"].items()}
            account.options = {k: FieldOption(**v) for k, v in data["options"].items()}
            account.field_rels = {k: FieldRel(**v) for k, v in data["field_rels"].items()}
            account.tags = {k: Tag(**v) for k, v in data["tags"].items()}
            account.webhooks = {k: Webhook(**v) for k, v in data["webhooks"].items()}
            account.batches = {k: Batch(**v) for k, v in data["batches"].items()}
            self.accounts[account.id] = account
            for key in account.api_keys:
                self.keys[key] = account
            for list_id in account.lists:
                self.list_owner[list_id] = account
            self.pending_batches |= {
                (account.id, b.id) for b in account.batches.values() if not b.done
            }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(path)

    def load(self, path: Path) -> bool:
        if not path.exists():
            return False
        self.restore(orjson.loads(path.read_bytes()))
        return True
