"""Constant Contact V3: OAuth with PKCE and rotating refresh tokens, one quota for every tenant."""
