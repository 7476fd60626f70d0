"""Mautic: spec, client and mapping (DESIGN §14.5). Not registered yet: no connect flow or
inbound adapter exists, so `GET /api/integrations` does not offer it (issue 14 items 3-5)."""
