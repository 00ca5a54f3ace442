"""Who may talk to the server, decided here and nowhere else: the bearer token on HTTP calls, the
same token on the WebSocket, and the Host names a loopback server answers to. Tokens are compared
in constant time, so response timing does not reveal how much of a guess was right."""

# no `from __future__ import annotations`: FastAPI reads require_token's annotations

import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer


def _matches(given: str | None, token: str) -> bool:
    return bool(given) and secrets.compare_digest(given.encode(), token.encode())


def token_dependency(token: str | None) -> Callable[..., None]:
    """The dependency every /api route carries: 401, with a challenge, without the right token.
    HTTPBearer (not a plain header) so the OpenAPI document tells clients how to authenticate."""
    bearer = HTTPBearer(auto_error=False)

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if token is not None and not (credentials is not None and _matches(credentials.credentials, token)):
            raise HTTPException(401, "this server needs 'Authorization: Bearer <token>' (graphflow serve --token)",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token


def socket_allowed(ws: WebSocket, token: str | None) -> bool:
    """Browsers cannot set headers on a WebSocket, so the token may also come as ``?token=``."""
    header = ws.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ws.query_params.get("token")
    return token is None or _matches(given, token)


def check_hosts(app: FastAPI, allowed_hosts: list[str] | None) -> None:
    """Answer only requests whose Host header is one of ``allowed_hosts``: a DNS-rebinding page
    reaches a loopback server under a name of its own, which this refuses (400)."""
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
