"""A Quart app: sync views (Quart runs them in the loop's executor), async views, streamed bodies,
request JSON, a WebSocket echo and the serving hooks (run by the ASGI lifespan).

Which thread ran what is proven against ``LOOP_THREAD``, recorded by ``before_serving`` (which
runs in the lifespan task, on the loop's thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional

from quart import Quart, request, stream_with_context, websocket

app = Quart(__name__)

LOOP_THREAD: List[Optional[int]] = [None]
SHUTDOWN_MARKER = "quart-app: after_serving hook ran"


def _thread_report() -> Dict[str, Any]:
    """Where the caller runs: whether off the loop thread, and whether inside an asyncio Task."""
    try:
        in_task = asyncio.current_task() is not None
    except RuntimeError:  # no running loop in this thread
        in_task = None
    return {
        "loop_thread_known": LOOP_THREAD[0] is not None,
        "off_loop": threading.get_ident() != LOOP_THREAD[0],
        "in_task": in_task,
    }


@app.before_serving
async def startup() -> None:
    LOOP_THREAD[0] = threading.get_ident()
    app.config["STARTED"] = True


@app.after_serving
async def shutdown() -> None:
    await asyncio.sleep(0)
    print(SHUTDOWN_MARKER, flush=True)


@app.route("/lifespan")
async def lifespan_state() -> Dict[str, Any]:
    return {"started": app.config.get("STARTED", False)}


@app.route("/sync")
def sync_view() -> Dict[str, Any]:
    """A plain function view: Quart wraps it with run_sync, i.e. the loop's default executor."""
    time.sleep(0.01)
    return {"report": _thread_report(), "arg": request.args.get("arg")}


@app.route("/async")
async def async_view() -> Dict[str, Any]:
    """Reports before its first await (the app call itself must be in a Task) and after."""
    at_entry = _thread_report()
    await asyncio.sleep(0.01)
    return {"at_entry": at_entry, "after_await": _thread_report()}


@app.route("/stream")
async def stream_view():
    """An async generator body, with a pause: the first chunk must leave before the pause ends.
    ``stream_with_context`` keeps the request readable inside the generator."""
    @stream_with_context
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first\n"
        await asyncio.sleep(0.6)
        for i in range(3):
            yield f"{request.args.get('tag', '')}-{i}\n".encode()
    return chunks(), 200, {"Content-Type": "text/plain"}


@app.route("/stream/sync")
def sync_stream_view():
    """A sync view returning a sync generator: Quart steps it in the executor, chunk by chunk."""
    def chunks() -> Iterator[bytes]:
        for i in range(4):
            yield f"sync-{i} off_loop={_thread_report()['off_loop']}\n".encode()
    return chunks(), 200, {"Content-Type": "text/plain"}


@app.route("/echo", methods=["POST"])
async def echo_json() -> Dict[str, Any]:
    data = await request.get_json()
    return {"received": data, "content_type": request.mimetype}


@app.websocket("/ws")
async def ws_echo() -> None:
    """Echoes text upper-cased and bytes reversed, until the client goes away."""
    while True:
        message = await websocket.receive()
        if isinstance(message, bytes):
            await websocket.send(message[::-1])
        else:
            await websocket.send(message.upper())


@app.websocket("/ws/path/<name>")
async def ws_greeting(name: str) -> None:
    """Accepts, greets with the path parameter and a query argument, then closes normally."""
    await websocket.accept()
    await websocket.send(f"hello {name} {websocket.args.get('q', '')}")
