"""A Starlette app using its primitives as people deploy them, for test_starlette.py.

What the response cannot carry (that a background task ran) the app keeps in a module-level list a
later request reads: each gunicorn runs one worker, so one process holds it.

A pure ASGI middleware wraps the whole app; the BaseHTTPMiddleware lives on a sub-app mounted at
``/mw``, so that the other routes are tested on their own and a failure in BaseHTTPMiddleware
shows in its own tests only.

Server-sent events (``/sse``) are paced by the client: after each event the generator waits for
an ``/sse/ack`` from the test (on another connection) before it produces the next one. The test
can only read event N+1 if event N reached it while the response was still open, so this proves
incremental delivery without measuring time.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Iterator, List

from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

STATIC = Path(__file__).resolve().parent / "static"
NUMBERS = STATIC / "numbers.txt"
GREETING = "hello from the Starlette lifespan"
SSE_ACK_TIMEOUT = 5.0


def in_worker_thread() -> bool:
    return threading.current_thread() is not threading.main_thread()


def query(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None:
        raise HTTPException(400, f"missing query parameter {name!r}")
    return value


# -- routes -----------------------------------------------------------------------------------------

def sync_route(request: Request) -> JSONResponse:
    # Starlette runs a sync endpoint in anyio's worker threads, never on the event loop's thread.
    return JSONResponse({"endpoint": "sync", "in_worker_thread": in_worker_thread()})


async def async_route(request: Request) -> JSONResponse:
    await asyncio.sleep(0)
    return JSONResponse({"endpoint": "async", "in_worker_thread": in_worker_thread()})


async def lifespan_route(request: Request) -> JSONResponse:
    return JSONResponse({"greeting": request.state.greeting, "lifespan_pid": request.state.lifespan_pid,
                         "pid": os.getpid()})


DONE: List[Dict[str, Any]] = []


def sync_task(token: str) -> None:
    DONE.append({"token": token, "task": "sync", "in_worker_thread": in_worker_thread()})


async def async_task(token: str) -> None:
    await asyncio.sleep(0.001)
    DONE.append({"token": token, "task": "async", "in_worker_thread": in_worker_thread()})


async def background_route(request: Request) -> JSONResponse:
    token = query(request, "token")
    tasks = BackgroundTasks()
    tasks.add_task(sync_task, token)
    tasks.add_task(async_task, token)
    return JSONResponse({"scheduled": token}, background=tasks)


def background_sync_route(request: Request) -> JSONResponse:
    """A sync endpoint whose response carries a single (sync) BackgroundTask."""
    token = query(request, "token")
    return JSONResponse({"scheduled": token}, background=BackgroundTask(sync_task, token))


async def background_done(request: Request) -> JSONResponse:
    return JSONResponse(DONE)


def sync_chunks(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"sync chunk {i} in_worker_thread={in_worker_thread()}\n"


async def async_chunks(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        await asyncio.sleep(0.001)
        yield f"async chunk {i}\n".encode()


async def stream_sync(request: Request) -> StreamingResponse:
    return StreamingResponse(sync_chunks(int(request.query_params.get("n", "5"))), media_type="text/plain")


async def stream_async(request: Request) -> StreamingResponse:
    return StreamingResponse(async_chunks(int(request.query_params.get("n", "5"))), media_type="text/plain")


async def file_route(request: Request) -> FileResponse:
    return FileResponse(NUMBERS, media_type="text/plain")


async def missing_route(request: Request) -> Response:
    raise HTTPException(404, "no such page", headers={"x-why": "missing"})


class TeapotError(Exception):
    pass


async def teapot_route(request: Request) -> Response:
    raise TeapotError(request.query_params.get("what", "coffee"))


async def teapot_handler(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "teapot", "what": str(exc)}, status_code=418)


# -- server-sent events -----------------------------------------------------------------------------

_acks: Dict[str, asyncio.Queue] = {}


def _ack_queue(stream: str) -> asyncio.Queue:
    if stream not in _acks:
        _acks[stream] = asyncio.Queue()
    return _acks[stream]


async def sse_events(stream: str, n: int) -> AsyncIterator[str]:
    acks = _ack_queue(stream)
    try:
        for i in range(n):
            yield f"id: {i}\nevent: tick\ndata: tick {i}\n\n"
            try:
                await asyncio.wait_for(acks.get(), SSE_ACK_TIMEOUT)
            except asyncio.TimeoutError:
                yield "event: timeout\ndata: no ack\n\n"
                return
        yield "event: done\ndata: bye\n\n"
    finally:
        _acks.pop(stream, None)


async def sse_route(request: Request) -> StreamingResponse:
    stream, n = query(request, "stream"), int(request.query_params.get("n", "3"))
    return StreamingResponse(sse_events(stream, n), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


async def sse_ack_route(request: Request) -> JSONResponse:
    stream = query(request, "stream")
    _ack_queue(stream).put_nowait(None)
    return JSONResponse({"acked": stream})


# -- WebSocket --------------------------------------------------------------------------------------

async def websocket_echo(websocket: WebSocket) -> None:
    """Echoes text, bytes and JSON (``{"json": ...}`` comes back as ``{"echo": ...}``); ``bye``
    makes the server close with 4001."""
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await websocket.send_bytes(b"echo: " + message["bytes"])
            elif text == "bye":
                await websocket.close(code=4001, reason="bye")
                return
            elif text.startswith("{"):
                await websocket.send_json({"echo": json.loads(text)["json"]})
            else:
                await websocket.send_text("echo: " + text)
    except WebSocketDisconnect:
        return


# -- middleware -------------------------------------------------------------------------------------

class StampASGI:
    """A pure ASGI middleware: adds ``x-asgi-middleware`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("x-asgi-middleware", "1")
            await send(message)

        await self.app(scope, receive, stamped)


class StampBase(BaseHTTPMiddleware):
    """A BaseHTTPMiddleware: stamps the response, echoing the request's ``x-trace`` header."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-base-middleware"] = "stamped"
        response.headers["x-trace-echo"] = request.headers.get("x-trace", "none")
        return response


async def mw_hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


def mw_sync(request: Request) -> JSONResponse:
    return JSONResponse({"endpoint": "sync", "in_worker_thread": in_worker_thread()})


async def mw_missing(request: Request) -> Response:
    raise HTTPException(404, "not behind here either")


def mw_forbidden(request: Request) -> Response:
    raise HTTPException(403, "not you")


async def mw_stream(request: Request) -> StreamingResponse:
    return StreamingResponse(async_chunks(3), media_type="text/plain")


behind_middleware = Starlette(
    routes=[
        Route("/hello", mw_hello),
        Route("/sync", mw_sync),
        Route("/missing", mw_missing),
        Route("/forbidden", mw_forbidden),
        Route("/stream", mw_stream),
        Route("/bg", background_route),
    ],
    middleware=[Middleware(StampBase)],
)


# -- the app ----------------------------------------------------------------------------------------

@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[Dict[str, Any]]:
    yield {"greeting": GREETING, "lifespan_pid": os.getpid()}


app = Starlette(
    routes=[
        Route("/sync", sync_route),
        Route("/async", async_route),
        Route("/lifespan", lifespan_route),
        Route("/bg", background_route),
        Route("/bg-sync", background_sync_route),
        Route("/bg/done", background_done),
        Route("/stream/sync", stream_sync),
        Route("/stream/async", stream_async),
        Route("/file", file_route),
        Route("/missing", missing_route),
        Route("/teapot", teapot_route),
        Route("/sse", sse_route),
        Route("/sse/ack", sse_ack_route),
        WebSocketRoute("/ws", websocket_echo),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Mount("/mw", behind_middleware),
    ],
    middleware=[Middleware(StampASGI)],
    exception_handlers={TeapotError: teapot_handler},
    lifespan=lifespan,
)
