"""Who may talk to the server, decided here and nowhere else: the bearer token on HTTP calls, the
same token on the WebSocket, the Host names a loopback server answers to, and the web pages
(origins) that may use it from a browser. Tokens are compared in constant time, so response
timing does not reveal how much of a guess was right.

Origins: a browser names the page that makes a request in its ``Origin`` header and lets a page
of another site send some requests without asking (a form's POST, a WebSocket, an EventSource).
So every state-changing call and every event stream is refused (403) when it comes from a page
whose origin is neither the server's own nor one allowed with ``--allow-origin``; and a POST must
say ``Content-Type: application/json``, which a cross-site form cannot send. Programs (curl,
the Python client) send no ``Origin`` and are not concerned."""

# no `from __future__ import annotations`: FastAPI reads require_token's annotations

import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from starlette.requests import HTTPConnection
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


def origin_allowed(conn: HTTPConnection, allowed: list[str]) -> bool:
    """A request with no ``Origin`` (not from a page), from the server's own origin (the scheme and
    Host it was reached by), or from an allowed one."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
    own = f"{scheme}://{conn.headers.get('host', '')}"
    return origin.rstrip("/").lower() == own.lower() or origin.rstrip("/") in allowed or "*" in allowed


def refuse_other_origins(conn: HTTPConnection, allowed: list[str]) -> None:
    """403, naming the page and the flag that would allow it, unless ``origin_allowed``."""
    if not origin_allowed(conn, allowed):
        raise HTTPException(403, f"requests from the web page at {conn.headers['origin']!r} are refused "
                                 "(graphflow serve --allow-origin ORIGIN allows one)")


def guard_state_changes(allowed: list[str]) -> Callable[..., None]:
    """The dependency every /api route carries: a page of another origin may not change state or
    read an event stream; a POST must carry JSON."""

    def guard(request: Request) -> None:
        reads_events = request.url.path.endswith("/events")
        if request.method not in ("GET", "HEAD", "OPTIONS") or reads_events:
            refuse_other_origins(request, allowed)
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, "send 'Content-Type: application/json' (with a JSON body, {} if there is nothing to say): "
                                     "a cross-site form cannot, which keeps other web pages from acting on this server")

    return guard


# --- ComfyUI's clients (routes/comfy.py) ---------------------------------------------------------
# They were written for a server with no token and no content-type rule: some send the token as an
# HTTP Basic password (any user name) or in the query string, and post JSON as a form or with no
# Content-Type at all. What still keeps other web pages out is the Origin: a browser names the
# page on every cross-site POST and WebSocket, and such a request is refused as on /api.

def given_token(conn: HTTPConnection) -> str | None:
    """The token a request carries: ``Bearer T``, ``Basic base64(any:T)``, or ``?token=T``."""
    import base64
    import binascii

    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return conn.query_params.get("token")


def comfy_allowed(conn: HTTPConnection, token: str | None, allowed: list[str]) -> None:
    """The check every ComfyUI route makes: 401 (with a challenge ComfyUI's libraries answer with
    Basic) without the token; 403 for a state change or a socket from another site's page."""
    if token is not None and not _matches(given_token(conn), token):
        raise HTTPException(401, "this server needs its token (graphflow serve --token): as 'Authorization: Bearer <token>', "
                                 "as the password of HTTP Basic, or as ?token=", headers={"WWW-Authenticate": 'Basic realm="graphflow"'})
    method = getattr(conn, "method", "GET")  # a WebSocket has none, and is a state change as far as pages go
    if method not in ("GET", "HEAD", "OPTIONS") or conn.scope["type"] == "websocket":
        refuse_other_origins(conn, allowed)
