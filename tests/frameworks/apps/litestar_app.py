"""A Litestar app exercising what Litestar leans on the server's event loop for.

Sync handlers run in a worker thread (``sync_to_thread=True``) through anyio, ``Stream`` bodies
and background tasks run after the handler returns, and the lifespan hooks run in the lifespan
task: each of these needs the app to be driven inside a real asyncio Task (anyio asks
``asyncio.current_task()``), so each has its own route here.

Which thread ran what is proven against ``LOOP_THREAD``: the id of the thread the ``on_startup``
hook ran in, which is the thread running the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, AsyncIterator, Dict, Iterator, List, Optional

from litestar import (
    Litestar,
    Response,
    WebSocket,
    get,
    post,
    websocket,
    websocket_listener,
)
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.params import Body, Parameter
from litestar.response import Stream

# The thread the event loop runs in, recorded by the startup hook.
LOOP_THREAD: List[Optional[int]] = [None]
# Tokens appended by background tasks, with the thread each ran in; read back by /background-seen.
BACKGROUND_SEEN: List[Dict[str, Any]] = []
SHUTDOWN_MARKER = "litestar-app: on_shutdown hook ran"


def _thread_report() -> Dict[str, Any]:
    """Where the caller runs: whether off the loop thread, and whether inside an asyncio Task."""
    ident = threading.get_ident()
    try:
        in_task = asyncio.current_task() is not None
    except RuntimeError:  # no running loop in this thread
        in_task = None
    return {
        "loop_thread_known": LOOP_THREAD[0] is not None,
        "off_loop": ident != LOOP_THREAD[0],
        "in_task": in_task,
    }


async def on_startup(app: Litestar) -> None:
    """Record the loop's thread and leave a mark in the app state for /lifespan to read."""
    LOOP_THREAD[0] = threading.get_ident()
    app.state.started = True
    app.state.startup_in_task = asyncio.current_task() is not None


async def on_shutdown(app: Litestar) -> None:
    """Say so in the log: the shutdown test reads it after the server stopped."""
    await asyncio.sleep(0)  # a real await: the hook must be driven, not just called
    print(SHUTDOWN_MARKER, flush=True)


@get("/lifespan")
async def lifespan_state(state: State) -> Dict[str, Any]:
    return {"started": state.get("started", False), "startup_in_task": state.get("startup_in_task")}


@get("/sync", sync_to_thread=True)
def sync_handler() -> Dict[str, Any]:
    """A blocking handler: Litestar must hand it to a worker thread (anyio.to_thread)."""
    time.sleep(0.01)
    return _thread_report()


@get("/sync-on-loop", sync_to_thread=False)
def sync_on_loop_handler() -> Dict[str, Any]:
    """A sync handler Litestar is told to call inline: it runs on the loop thread."""
    return _thread_report()


@get("/async")
async def async_handler() -> Dict[str, Any]:
    """Reports twice: before its first await (the app call itself must be in a Task) and after."""
    at_entry = _thread_report()
    await asyncio.sleep(0.01)
    return {"at_entry": at_entry, "after_await": _thread_report()}


@dataclass
class Item:
    name: str
    qty: int
    tags: List[str] = field(default_factory=list)


@post("/items")
async def create_item(data: Annotated[Item, Body()]) -> Dict[str, Any]:
    """A JSON body parsed into a dataclass by Litestar, sent back with a derived field."""
    return {"item": {"name": data.name, "qty": data.qty, "tags": data.tags}, "total_tags": len(data.tags)}


@post("/echo-dict")
async def echo_dict(data: Annotated[Dict[str, Any], Body()]) -> Dict[str, Any]:
    return {"received": data, "keys": sorted(data)}


@get("/stream/sync", sync_to_thread=False)
def stream_sync() -> Stream:
    """A sync generator body: Litestar iterates it in a worker thread, one chunk at a time."""
    def chunks() -> Iterator[bytes]:
        for i in range(5):
            report = _thread_report()
            yield f"sync-{i} off_loop={report['off_loop']}\n".encode()
    return Stream(chunks(), media_type="text/plain")


@get("/stream/async")
async def stream_async() -> Stream:
    """An async generator body with a pause: the first chunk must leave before the pause ends."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first\n"
        await asyncio.sleep(0.6)
        for i in range(3):
            yield f"async-{i}\n".encode()
    return Stream(chunks(), media_type="text/plain")


# Background tasks take this long: the response must reach the client well before they end.
BACKGROUND_DELAY = 0.5


async def _record_async(token: str) -> None:
    await asyncio.sleep(BACKGROUND_DELAY)
    BACKGROUND_SEEN.append({"token": token, **_thread_report()})


def _record_sync(token: str) -> None:
    time.sleep(BACKGROUND_DELAY)
    BACKGROUND_SEEN.append({"token": token, **_thread_report()})


@get("/background/{kind:str}")
async def with_background(kind: Annotated[str, Parameter()], token: Annotated[str, Parameter()]) -> Response:
    """Answers at once; the task runs after the response is sent (sync ones in a thread)."""
    fn = _record_sync if kind == "sync" else _record_async
    seen_now = any(entry["token"] == token for entry in BACKGROUND_SEEN)
    return Response({"queued": token, "seen_at_response_time": seen_now}, background=BackgroundTask(fn, token))


@get("/background-seen")
async def background_seen() -> List[Dict[str, Any]]:
    return BACKGROUND_SEEN


@websocket_listener("/ws/listener")
async def listener_echo(data: str) -> str:
    """Litestar's listener: each text message received is answered by the returned value."""
    return f"echo:{data}"


@websocket("/ws/raw")
async def raw_socket(socket: WebSocket) -> None:
    """A hand-written handler: echoes text and bytes, closes with 4001 on 'bye'."""
    await socket.accept()
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            await socket.send_bytes(message["bytes"][::-1])
            continue
        text = message.get("text") or ""
        if text == "bye":
            await socket.close(code=4001, reason="bye to you")
            return
        await socket.send_text(text.upper())


app = Litestar(
    route_handlers=[
        lifespan_state, sync_handler, sync_on_loop_handler, async_handler, create_item, echo_dict,
        stream_sync, stream_async, with_background, background_seen, listener_echo, raw_socket,
    ],
    on_startup=[on_startup],
    on_shutdown=[on_shutdown],
)
