"""Fixed names, defaults and verbatim texts of the ActiveCampaign API (reference §1-§8)."""

from __future__ import annotations

DEFAULT_ACCOUNT_ID = "sandbox"
DEFAULT_ACCOUNT_NAME = "Sandbox Account"
DEFAULT_API_KEY = "ac0sandbox0key0" + "0" * 49  # 64 characters, like a real key
DEFAULT_LIST_ID = "1"
DEFAULT_LIST_NAME = "Sandbox List"
DEFAULT_USER_EMAIL = "owner@sandbox.example.com"
DEFAULT_TIMEZONE = "America/Chicago"

API_PREFIX = "/api/3"

# Contact <-> list statuses (reference §3.3).
UNCONFIRMED, ACTIVE, UNSUBSCRIBED, BOUNCED = 0, 1, 2, 3

CONTACT_LINKS = (
    "bounceLogs",
    "contactAutomations",
    "contactData",
    "contactGoals",
    "contactLists",
    "contactLogs",
    "contactTags",
    "contactDeals",
    "deals",
    "fieldValues",
    "geoIps",
    "notes",
    "organization",
    "plusAppend",
    "trackingLogs",
    "scoreValues",
    "accountContacts",
    "automationEntryCounts",
)
CONTACT_LIST_LINKS = (
    "automation",
    "list",
    "contact",
    "form",
    "autosyncLog",
    "campaign",
    "unsubscribeAutomation",
    "message",
)

FIELD_TYPES = (
    "dropdown",
    "hidden",
    "checkbox",
    "date",
    "text",
    "datetime",
    "textarea",
    "NULL",
    "listbox",
    "radio",
    "number",
    "currency",
    "multiselect",
)
OPTION_TYPES = frozenset({"dropdown", "checkbox", "listbox", "radio", "multiselect"})

WEBHOOK_EVENTS = (
    "bounce",
    "click",
    "contact_tag_added",
    "contact_tag_removed",
    "deal_add",
    "deal_note_add",
    "deal_pipeline_add",
    "deal_stage_add",
    "deal_task_add",
    "deal_task_complete",
    "deal_tasktype_add",
    "deal_update",
    "forward",
    "list_add",
    "open",
    "reply",
    "sent",
    "share",
    "sms_reply",
    "sms_sent",
    "sms_unsub",
    "subscribe",
    "subscriber_note",
    "unsubscribe",
    "update",
)
WEBHOOK_SOURCES = ("public", "admin", "api", "system")
# Events on which a webhook's `listid` has no effect (reference §8.1).
LIST_AGNOSTIC_EVENTS = frozenset({"contact_tag_added", "contact_tag_removed", "subscriber_note"})

# Internal model names of the "No Result found for <Model> with id <id>" texts (§6a).
MODEL_CONTACT = "Subscriber"
MODEL_LIST = "_List"
MODEL_TAG = "Tag"
MODEL_CONTACT_TAG = "SubscriberTag"
MODEL_FIELD = "Field"
MODEL_FIELD_VALUE = "FieldValue"
MODEL_FIELD_OPTION = "FieldOption"
MODEL_WEBHOOK = "Webhook"
MODEL_CONTACT_LIST = "SubscriberList"

HTML_404 = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
HTML_5XX = (
    b"<html>\r\n<head><title>{status} Server Error</title></head>\r\n<body>\r\n"
    b"<center><h1>{status} Server Error</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

DUPLICATE_EMAIL = "Email address already exists in the system"
INVALID_EMAIL = "Contact Email Address is not valid."
MISSING_EMAIL = "Contact Email Address is required."
DUPLICATE_FIELD = "There is already a field with this title"
DUPLICATE_TAG = "A tag with this name already exists."
BULK_RATE = (
    "Up to {limit} imports may be requested per minute.Please batch contacts into larger "
    "requests, or retry this request in a minute."
)
BULK_INVALID = (
    "JSON payload did not pass validation. Please fix failure Reasons and retry. "
    "The import was not queued for processing."
)
BULK_MAX_CONTACTS = 250
BULK_MAX_BYTES = 400_000
BULK_MULTI_PER_MINUTE = 100
BULK_SINGLE_PER_MINUTE = 20
