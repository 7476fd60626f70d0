"""Mautic: spec, client, mapping and the host rule (DESIGN §14.5). NOT registered: no
ConnectFlow, settings or inbound adapter exist yet, so `GET /api/integrations` does not offer
Mautic and nothing in the core reaches this package (issue 14 items 3-5)."""
