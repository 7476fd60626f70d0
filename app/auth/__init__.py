"""Bearer-token authentication: JWT verification, the current owner, admin."""
