"""Connections to providers: credentials, OAuth, audiences, status."""
