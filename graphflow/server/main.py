"""Serving the app: uvicorn on a socket bound here, so port 0 works and the first line on stdout is
the real address (tests and scripts read it). It receives its settings, registry, limits and the
worker process's recipe built (graphflow/cli/serve.py builds them from the command line, through
``graphflow.options``)."""

from __future__ import annotations

import ipaddress
import socket
import sys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings, recipe, registry, limits, host: str, port: int, log_level: str = "warning") -> int:
    """Bind ``host:port``, print the real address, and serve ``create_app(settings, recipe,
    registry, limits)`` until stopped; the exit code (2: the address cannot be listened on, the
    output folder is another server's, the database cannot be written)."""
    import uvicorn

    from graphflow.options import EXIT_INVALID, EXIT_OK
    from graphflow.server.app import create_app
    from graphflow.server.owner import FolderTaken
    from graphflow.server.store import StoreUnusable

    out = settings.out
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # before the address is printed: a client that reads it may connect at once
    except OSError as e:
        print(f"graphflow serve: error: cannot listen on {host}:{port}: {e.strerror}", file=sys.stderr)
        return EXIT_INVALID
    host, port = sock.getsockname()[:2]
    try:
        app = create_app(settings, recipe, registry, limits)
    except (FolderTaken, StoreUnusable) as e:
        sock.close()
        print(f"graphflow serve: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug", timeout_graceful_shutdown=5)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"graphflow serve: {url}  (queue and history: {settings.db}, files: {out / 'runs'})", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK
