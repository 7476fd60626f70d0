"""FastAPI dependencies: the current principal, owner, and admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.tokens import Principal, TokenVerifier
from app.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="A JWT whose `sub` is the owner.")


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The verified caller, or 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("A bearer token is required.")
    verifier: TokenVerifier = request.state.token_verifier
    return await verifier.verify(credentials.credentials)


async def current_owner(principal: Annotated[Principal, Depends(current_principal)]) -> str:
    """The owner id that scopes every query of the request."""
    return principal.owner_id


async def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """The caller, when it is an admin; 403 otherwise."""
    if not principal.is_admin:
        raise Forbidden("This endpoint is for administrators.")
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]
OwnerDep = Annotated[str, Depends(current_owner)]
AdminDep = Annotated[Principal, Depends(require_admin)]
