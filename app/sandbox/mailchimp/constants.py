"""Fixed identities of the default account and the texts Mailchimp answers with."""

from __future__ import annotations

# The default account survives restarts unchanged: a service that stored these keeps working.
DEFAULT_ACCOUNT_ID = "c6b9991406dcd4ecb8a65d7e7"
DEFAULT_ACCOUNT_NAME = "Sandbox Account"
DEFAULT_DC = "us1"
DEFAULT_API_KEY = "dbf2bbf07e3fd8c41e9d09d2e723d140-us1"
DEFAULT_LIST_ID = "60c1f8d371"
DEFAULT_LIST_NAME = "Sandbox Audience"
DEFAULT_CLIENT_ID = "554676352594"
DEFAULT_CLIENT_SECRET = "7cf7f6d116913d71bcd3f472ae7d6d2ac47938111802266b"
DEFAULT_LOGIN_EMAIL = "owner@sandbox.example.com"

ERROR_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
SCHEMA_PATH = "/schema/3.0/Definitions/ProblemDetailDocument.json"

DEFAULT_FAKE_EMAIL_DOMAINS: tuple[str, ...] = (
    "mailinator.com",
    "yopmail.com",
    "trash-mail.com",
    "guerrillamail.com",
    "10minutemail.com",
    "tempmail.com",
    "sharklasers.com",
    "dispostable.com",
)

WRITE_STATUSES = frozenset({"subscribed", "unsubscribed", "cleaned", "pending", "transactional"})
READ_STATUSES = WRITE_STATUSES | {"archived"}
EMAIL_TYPES = frozenset({"html", "text"})
MERGE_FIELD_TYPES = frozenset(
    {
        "text",
        "number",
        "address",
        "phone",
        "date",
        "url",
        "imageurl",
        "radio",
        "dropdown",
        "birthday",
        "zip",
    }
)
WEBHOOK_EVENTS = ("subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign")
WEBHOOK_SOURCES = ("user", "admin", "api")
MERGE_FIELD_LIMIT = 30
MAX_COUNT = 1000
MAX_BATCH = 500

# Problem details (reference §2.3).
NOT_FOUND = "The requested resource could not be found."
METHOD_NOT_ALLOWED = (
    "The requested method and resource are not compatible. "
    "See the Allow header for this resource's available methods."
)
INVALID_RESOURCE = (
    "The resource submitted could not be validated. "
    "For field-specific details, see the 'errors' array."
)
MERGE_FIELDS_INVALID = "Your merge fields were invalid."
JSON_PARSE = "We encountered an unspecified JSON parsing error."
KEY_MISSING = "Your request did not include an API key."
KEY_INVALID = "Your API key may be invalid, or you've attempted to access the wrong datacenter."
ARCHIVE_REFUSED = (
    "This list member cannot be removed. "
    "Can not archive a contact that is bounced, pending or archived"
)
ANYOF = "Data did not match any of the schemas described in anyOf."
