"""Bearer-token access for people and tools (admin, analyst). Integration keys belong to intake."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import HTTPException, Request, status

from opsledger.settings import ServiceSettings


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_role(*roles: str) -> Callable[[Request], str]:
    """FastAPI dependency: the caller's bearer token must be one of these roles' tokens
    ("admin" always passes). Returns the role, to record as the actor."""

    def check(request: Request) -> str:
        settings: ServiceSettings = request.app.state.runtime.settings
        token = bearer_token(request)
        if token is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        tokens = {"admin": settings.admin_token, "analyst": settings.analyst_token}
        for role in ("admin", *roles):
            if hmac.compare_digest(token.encode(), tokens[role].encode()):
                return role
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"token does not grant any of: {', '.join(('admin', *roles))}")

    return check
