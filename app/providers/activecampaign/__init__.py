"""ActiveCampaign (API v3): the provider package (DESIGN §14.5, reference activecampaign-api.md)."""
