"""Audience Sync: a CRM's contacts mirrored to email-marketing audiences."""
