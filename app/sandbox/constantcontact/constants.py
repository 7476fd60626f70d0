"""Fixed identities of a fresh sandbox (constant across restarts and resets)."""

from __future__ import annotations

ISSUER_PATH_ID = "aus1lm3ry9mF7x2Ja0h8"
DEFAULT_ISSUER = f"https://identity.constantcontact.com/oauth2/{ISSUER_PATH_ID}"
DEFAULT_AUDIENCE = "https://api.cc.email/v3"

DEFAULT_ACCOUNT_ID = "p07e1l8cdif9dl"  # encoded_account_id
DEFAULT_LOGIN_EMAIL = "owner@sandbox.example"
DEFAULT_UID = "00u1sandbox0owner0x7"  # the Okta user id in the `uid` claim
DEFAULT_PLATFORM_USER_ID = "5b0e5a7c-1f0e-11ef-8a4b-fa163e56c9b0"
DEFAULT_LIST_ID = "07936f78-662a-11eb-af0a-fa163e56c9b0"
DEFAULT_LIST_NAME = "General Interest"

# One application per mode (reference §9.6): confidential rotating, confidential long-lived,
# public PKCE. The API key is the client_id.
ROTATING_CLIENT_ID = "1c8ef7b2-3f1a-4b7e-9a52-6d1f0c4e2a01"
ROTATING_CLIENT_SECRET = "rotating-secret-Q3v8mK2pX9tL"
LONG_LIVED_CLIENT_ID = "2d9f08c3-402b-4c8f-8b63-7e201d5f3b02"
LONG_LIVED_CLIENT_SECRET = "longlived-secret-W7n4bJ6rZ1yH"
PKCE_CLIENT_ID = "3ea019d4-513c-4d90-9c74-8f312e604c03"
DEVICE_CLIENT_ID = "4fb12ae5-624d-4ea1-8d85-90423f715d04"

SCOPES = ("account_read", "account_update", "contact_data", "campaign_data", "offline_access")
OIDC_SCOPES = ("openid", "profile", "email")

PERMISSIONS = (
    "explicit",
    "implicit",
    "not_set",
    "pending_confirmation",
    "temp_hold",
    "unsubscribed",
)
SOURCES = ("Contact", "Account")
INCLUDES = (
    "custom_fields",
    "list_memberships",
    "phone_numbers",
    "street_addresses",
    "taggings",
    "notes",
)
STATUS_FILTERS = (
    "all",
    "active",
    "deleted",
    "not_set",
    "pending_confirmation",
    "temp_hold",
    "unsubscribed",
)
ROLES = ("account_owner", "account_manager", "campaign_creator")
# `GET /account/user/privileges` per role (SPEC `getUserPrivileges` example ids).
PRIVILEGES: dict[str, list[dict[str, object]]] = {
    "account_owner": [
        {"privilege_id": 1, "privilege_name": "account:read"},
        {"privilege_id": 2, "privilege_name": "account:update"},
        {"privilege_id": 10, "privilege_name": "contacts:read"},
        {"privilege_id": 11, "privilege_name": "contacts:write"},
        {"privilege_id": 30, "privilege_name": "campaign:create"},
    ],
    "account_manager": [
        {"privilege_id": 1, "privilege_name": "account:read"},
        {"privilege_id": 10, "privilege_name": "contacts:read"},
        {"privilege_id": 11, "privilege_name": "contacts:write"},
        {"privilege_id": 30, "privilege_name": "campaign:create"},
    ],
    "campaign_creator": [
        {"privilege_id": 1, "privilege_name": "account:read"},
        {"privilege_id": 30, "privilege_name": "campaign:create"},
    ],
}
