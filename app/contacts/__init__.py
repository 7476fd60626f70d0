"""Contacts: the CRM's people, their API, and the write path into the outbox."""
