"""Inbound provider webhooks: receivers, inbox, handlers."""
