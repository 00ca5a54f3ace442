"""Live events: one run's as Server-Sent Events (resumable with ``Last-Event-ID``), every run's on
one WebSocket (ComfyUI's shape, for tools written against it)."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, which name local dependencies

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, WebSocket
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from graphflow.server.auth import origin_allowed, socket_allowed
from graphflow.server.finish import finished_event
from graphflow.server.routes import Services
from graphflow.server.store import FINAL


#: an event number as this server writes them: ASCII digits, within what a log can hold
_EVENT_ID = re.compile(r"[0-9]{1,15}")


def _resume_from(last_event_id: Annotated[str | None, Header()] = None) -> int:
    """The first event to send: after ``Last-Event-ID``, checked before the stream starts (a
    dependency), so a bad one is a 400, not a stream cut after its headers."""
    if last_event_id is None:
        return 0
    if not _EVENT_ID.fullmatch(last_event_id):
        raise HTTPException(400, "Last-Event-ID must be the number of an event this server sent (ASCII digits)")
    return int(last_event_id) + 1


def _sse(e: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(raw_data=orjson.dumps(e).decode(), event=e["type"], id=str(e["seq"]))


async def _stored_events(s: Services, run_id: str) -> list[dict[str, Any]] | None:
    """The log of a run the broker no longer holds (ended before this server started, or long
    ago); None while the run has not ended, whose events are still to come."""
    stored = await run_in_threadpool(s.store.events, run_id)
    if stored is None:  # ended with no log kept (left running by a crash, then given up): its end only
        row = await run_in_threadpool(s.store.get, run_id)
        if row is not None and row["status"] in FINAL:
            stored = [{**finished_event(row["status"]), "run_id": run_id, "seq": 0}]
    return stored


def api_routes(s: Services) -> APIRouter:
    api = APIRouter()

    @api.get("/runs/{run_id}/events", response_class=EventSourceResponse,
             summary="Server-Sent Events: what the run did so far, then live, ending with run_finished")
    async def run_events(run: Annotated[dict[str, Any], Depends(s.known_run)], k: Annotated[int, Depends(_resume_from)]):
        run_id = run["id"]
        while True:
            waiter = s.broker.waiter(run_id)  # before reading: an event published in between still wakes it
            batch, done, here = s.broker.read(run_id, k)
            if not here:
                stored = await _stored_events(s, run_id)
                if stored is not None:
                    s.broker.forget_waiter(run_id)
                    for e in stored[k:]:
                        yield _sse(e)
                    return
            for e in batch:
                yield _sse(e)
                k = e["seq"] + 1
            if done:
                s.broker.forget_waiter(run_id)
                return
            try:
                await asyncio.wait_for(waiter.wait(), 5.0)  # the timeout re-checks a run queued before a restart
            except TimeoutError:
                pass

    return api


def open_routes(s: Services) -> APIRouter:
    """Mounted outside the /api token dependency: the socket checks the token itself
    (``auth.socket_allowed``), since a browser can only send it in the query string."""
    router = APIRouter()

    @router.websocket("/api/ws")
    async def socket(ws: WebSocket) -> None:
        """Every run's events as ``{"type": …, "data": {…}}`` messages (ComfyUI's shape). Browsers
        cannot set headers on a WebSocket, so the token may also come as ``?token=``; and they let
        any page open one, so a page of another origin is refused (``auth.origin_allowed``)."""
        if not socket_allowed(ws, s.settings.token) or not origin_allowed(ws, s.settings.cors_origins):
            await ws.close(code=1008)
            return
        await ws.accept()

        async def first() -> list[dict[str, Any]]:
            return [{"type": "status", "data": {"counts": s.store.counts()}}]

        async def messages(e: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"type": e["type"], "data": e}]

        await relay(ws, s, first, messages)

    return router


async def relay(ws: WebSocket, s: Services, first: Callable[[], Awaitable[list[dict[str, Any]]]],
                messages: Callable[[dict[str, Any]], Awaitable[list[dict[str, Any] | bytes]]]) -> None:
    """Send ``first()``, then the messages each broker event makes (a dict as a JSON text frame,
    bytes as a binary frame), until the client goes or falls too far behind (1013). The queue is
    taken before ``first`` runs: no event falls in between."""
    q = s.broker.socket_queue()
    closed = asyncio.ensure_future(until_closed(ws))
    try:
        for m in await first():
            await ws.send_text(orjson.dumps(m).decode())
        while True:
            get = asyncio.ensure_future(q.get())
            await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                break
            e = get.result()
            if e is None:  # fell too far behind
                await ws.close(code=1013)
                break
            for m in await messages(e):
                if isinstance(m, bytes):  # a binary frame (ComfyUI's previews)
                    await ws.send_bytes(m)
                else:
                    await ws.send_text(orjson.dumps(m).decode())
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        pass
    finally:
        s.broker.drop_socket(q)
        closed.cancel()


async def until_closed(ws: WebSocket) -> None:
    """Reads (and ignores) what the client sends, until it goes: only a read notices that it went."""
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
