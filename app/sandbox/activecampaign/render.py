"""The JSON shapes of the API (reference §1-§8): strings for ids and most scalars."""

from __future__ import annotations

import hashlib
from typing import Any

from app.sandbox.activecampaign import clocktext as t
from app.sandbox.activecampaign import constants as c
from app.sandbox.activecampaign.model import (
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


class Renderer:
    """Renders records for one request: `api` is `<base>/api/3`, `tz` the account's zone."""

    def __init__(self, api: str, tz: str) -> None:
        self.api = api
        self.tz = tz

    def when(self, ts: float | None) -> str | None:
        return None if ts is None else t.local(ts, self.tz)

    def _links(self, kind: str, ident: str, names: tuple[str, ...]) -> dict[str, str]:
        return {n: f"{self.api}/{kind}/{ident}/{n}" for n in names}

    # -- contacts -------------------------------------------------------------------------

    def contact_links(self, contact: Contact) -> dict[str, str]:
        links = self._links("contacts", contact.id, c.CONTACT_LINKS)
        links["contactAutomations"] += "?limit=1000&orders%5Blastdate%5D=DESC"
        return links

    def contact_full(self, contact: Contact, *, listing: bool = False) -> dict[str, Any]:
        """The full record (§1.1, with the 2025 keys); `listing` adds the list's extras."""
        local, _, domain = contact.email.partition("@")
        out: dict[str, Any] = {
            "cdate": self.when(contact.cdate),
            "email": contact.email,
            "phone": contact.phone,
            "firstName": contact.first_name,
            "lastName": contact.last_name,
            "orgid": "0",
            "orgname": contact.orgname,
            "segmentio_id": "",
            "bounced_hard": contact.bounced_hard,
            "bounced_soft": contact.bounced_soft,
            "bounced_date": None
            if contact.bounced_date is None
            else t.local_plain(contact.bounced_date, self.tz)[:10],
            "ip": contact.ip,
            "ua": "",
            "hash": _hash(contact),
            "socialdata_lastcheck": None,
            "email_local": local,
            "email_domain": domain,
            "sentcnt": "0",
            "rating_tstamp": None,
            "gravatar": "0",
            "deleted": "0",
            "anonymized": "0",
            "adate": None,
            "udate": self.when(contact.udate),
            "edate": None,
            "deleted_at": None,
            "created_utc_timestamp": t.utc_plain(contact.cdate),
            "updated_utc_timestamp": t.utc_plain(contact.udate),
            "created_timestamp": t.local_plain(contact.cdate, self.tz),
            "updated_timestamp": t.local_plain(contact.udate, self.tz),
            "created_by": "0",
            "updated_by": "0",
            "mpp_tracking": "0",
            "last_click_date": None,
            "last_open_date": None,
            "last_mpp_open_date": None,
            "best_send_hour": "0",
        }
        if listing:
            out["scoreValues"] = []
            out["accountContacts"] = []
        out["links"] = self.contact_links(contact)
        out["id"] = contact.id
        out["organization"] = None
        return out

    def contact_short(self, contact: Contact) -> dict[str, Any]:
        """The record of `POST /contacts` (§1.3, 2021 form)."""
        return {
            "email": contact.email,
            "phone": contact.phone,
            "firstName": contact.first_name,
            "lastName": contact.last_name,
            "email_empty": False,
            "cdate": self.when(contact.cdate),
            "udate": self.when(contact.udate),
            "orgid": "",
            "orgname": contact.orgname,
            "links": self.contact_links(contact),
            "hash": _hash(contact),
            "accountContacts": [],
            "id": contact.id,
            "organization": "",
        }

    # -- lists ----------------------------------------------------------------------------

    def membership(self, m: Membership, contact: Contact) -> dict[str, Any]:
        return {
            "contact": m.contact_id,
            "list": m.list_id,
            "form": m.form,
            "seriesid": "0",
            "sdate": self.when(m.sdate),
            "udate": self.when(m.udate),
            "status": "" if m.echo_blank_status else str(m.status),
            "responder": "1",
            "sync": "0",
            "unsubreason": m.unsubreason,
            "campaign": None,
            "message": None,
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "ip4Sub": "0",
            "sourceid": str(m.sourceid),
            "autosyncLog": None,
            "ip4_last": "0",
            "ip4Unsub": "0",
            "unsubscribeAutomation": None,
            "links": self._links("contactLists", m.id, c.CONTACT_LIST_LINKS),
            "id": m.id,
            "automation": None,
        }

    def a_list(self, lst: AcList, subscribers: int) -> dict[str, Any]:
        return {
            "stringid": lst.stringid,
            "userid": "1",
            "name": lst.name,
            "cdate": self.when(lst.cdate),
            "udate": self.when(lst.udate),
            "p_use_tracking": lst.extra.get("p_use_tracking", "1"),
            "p_use_analytics_read": "0",
            "p_use_analytics_link": "0",
            "p_use_twitter": "0",
            "p_use_facebook": "0",
            "p_embed_image": "1",
            "p_use_captcha": "1",
            "send_last_broadcast": "0",
            "private": "0",
            "analytics_domains": None,
            "analytics_source": "",
            "analytics_ua": "",
            "twitter_token": "",
            "twitter_token_secret": "",
            "facebook_session": None,
            "carboncopy": None,
            "subscription_notify": None,
            "unsubscription_notify": None,
            "require_name": "0",
            "get_unsubscribe_reason": "0",
            "to_name": "Subscriber",
            "optinoptout": "1",
            "sender_name": lst.extra.get("sender_name", ""),
            "sender_addr1": "",
            "sender_addr2": "",
            "sender_city": "",
            "sender_state": "",
            "sender_zip": "",
            "sender_country": "",
            "sender_phone": "",
            "sender_url": lst.sender_url,
            "sender_reminder": lst.sender_reminder,
            "fulladdress": "",
            "optinmessageid": "0",
            "optoutconf": "0",
            "deletestamp": None,
            "subscriber_count": subscribers,
            "links": self._links("lists", lst.id, ("contactGoalLists", "user", "addressLists")),
            "id": lst.id,
            "user": "1",
        }

    # -- fields ---------------------------------------------------------------------------

    def field(self, f: Field, *, full: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "title": f.title,
            "descript": f.descript,
            "type": f.type,
            "isrequired": f.isrequired,
            "perstag": f.perstag,
            "defval": f.defval,
        }
        if full:
            out.update(show_in_list="0", rows="0", cols="0")
        out["visible"] = f.visible
        if full:
            out["service"] = ""
        out["ordernum"] = f.ordernum
        out["cdate"] = self.when(f.cdate)
        out["udate"] = self.when(f.udate)
        if full:
            out.update(
                created_timestamp=t.local_plain(f.cdate, self.tz),
                updated_timestamp=t.local_plain(f.udate, self.tz),
                created_by=None,
                updated_by=None,
                options=list(f.options),
                relations=list(f.relations),
            )
        out["links"] = self._links("fields", f.id, ("options", "relations"))
        out["id"] = f.id
        return out

    def option(self, o: FieldOption) -> dict[str, Any]:
        return {
            "field": o.field_id,
            "orderid": o.orderid,
            "value": o.value,
            "label": o.label,
            "isdefault": o.isdefault,
            "cdate": self.when(o.cdate),
            "udate": self.when(o.udate),
            "links": {"field": f"{self.api}/fieldOptions/{o.id}/field"},
            "id": o.id,
        }

    def field_rel(self, r: FieldRel) -> dict[str, Any]:
        return {
            "relid": r.relid,
            "field": r.field_id,
            "cdate": self.when(r.cdate),
            "links": [],
            "id": r.id,
        }

    def field_value(self, v: FieldValue) -> dict[str, Any]:
        return {
            "contact": v.contact_id,
            "field": v.field_id,
            "value": v.value,
            "cdate": self.when(v.cdate),
            "udate": self.when(v.udate),
            "created_by": None,
            "updated_by": None,
            "links": self._links("fieldValues", v.id, ("owner", "field")),
            "id": v.id,
            "owner": v.contact_id,
        }

    # -- tags -----------------------------------------------------------------------------

    def tag(self, tag: Tag, subscribers: int) -> dict[str, Any]:
        return {
            "tagType": tag.tag_type,
            "tag": tag.tag,
            "description": tag.description,
            "subscriber_count": str(subscribers),
            "cdate": self.when(tag.cdate),
            "created_timestamp": t.local_plain(tag.cdate, self.tz),
            "updated_timestamp": t.local_plain(tag.udate, self.tz),
            "created_by": None,
            "updated_by": None,
            "links": self._links("tags", tag.id, ("contactGoalTags",)),
            "id": tag.id,
        }

    def contact_tag(self, ct: ContactTag) -> dict[str, Any]:
        return {
            "contact": ct.contact_id,
            "tag": ct.tag_id,
            "cdate": self.when(ct.cdate),
            "created_timestamp": t.local_plain(ct.cdate, self.tz),
            "updated_timestamp": t.local_plain(ct.cdate, self.tz),
            "created_by": None,
            "updated_by": None,
            "links": self._links("contactTags", ct.id, ("tag", "contact")),
            "id": ct.id,
        }

    # -- webhooks and imports -------------------------------------------------------------

    def webhook(self, w: Webhook) -> dict[str, Any]:
        return {
            "cdate": self.when(w.cdate),
            "listid": w.listid,
            "name": w.name,
            "url": w.url,
            "events": list(w.events),
            "sources": list(w.sources),
            "links": [],
            "id": w.id,
        }


def _hash(contact: Contact) -> str:
    # Stable per contact and unchanged by an email change (N8N-SNAP).
    return hashlib.md5(f"ac-sandbox:{contact.id}".encode()).hexdigest()


def batch_info(batch: Batch, status: str) -> dict[str, Any]:
    if status != "completed":
        return {"status": status, "success": [], "failure": []}
    return {"status": "completed", "success": list(batch.success), "failure": list(batch.failure)}
