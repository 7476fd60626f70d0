"""Fixed identities of a fresh sandbox, so a developer's configuration survives a reset."""

from __future__ import annotations

# An admin-created API client (client_credentials allowed), ids in FOSOAuthServerBundle's
# "<db id>_<base36 random>" format (reference §0.3).
DEFAULT_CLIENT_ID = "1_3bcbxd9e24g0gk4swg0kwgcwg4o8k8g4g888kwc44gcc0gwwk4"
DEFAULT_CLIENT_SECRET = "4ok2x70rlfokc8g0wws8c8kwcokw80k44sg48goc0ok4w48kwz"
# A client created by a non-admin user: authorization_code + refresh_token only.
USER_CLIENT_ID = "2_5w8zrdasdafr4tregd454cw0c0kswcgs0oks40s4w0w8sokcs8"
USER_CLIENT_SECRET = "1d9hnbr1a8o0gc40ggk44g8wo0ww80gw08skg4cgo04sckso0c"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8000/api/integrations/mautic/callback"

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "mautic"

VERSION_HEADER = "Mautic-Version"

# The demo data of a sandbox mounted by the service (`demo_data`): segment 1 is the demo
# owner's audience, campaign 1 the one qualified leads are enrolled in (README, `make run`).
DEMO_SEGMENT_ID = 1
DEMO_SEGMENT_NAME = "Audience Sync"
DEMO_CAMPAIGN_ID = 1
DEMO_CAMPAIGN_NAME = "Qualified leads"
