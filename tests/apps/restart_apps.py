"""Apps for tests/test_clean_close.py and bench/resets.py, bench/ws_flood.py: what a connection sees
around a worker's restart, an idle timeout or a close, and a WebSocket app slow to accept.

Plain ASGI 3 with no import from the rest of the suite, so that the benchmarks can serve it from
this directory (``--pythonpath tests/apps``, app ``restart_apps:app``) with any worker class and
against another checkout of the package.

HTTP: every path answers a 13-byte hello with a Content-Length after reading the whole body, except
``/noread``, answered at once without reading any of it (the unread body is what a server must
drain before it closes), and ``/block?seconds=S``, which blocks the worker's event loop for S
seconds before it answers (a busy worker: what arrives meanwhile waits unread in the kernel, and
the worker's timers and signals come due together). ``GET /report?token=T`` returns what the WebSocket app recorded under T.

WebSocket: ``/slow?delay=S`` accepts after S seconds, then echoes every message until the
client leaves; ``/never?token=T`` never accepts, and records under T what its ``receive()``
returned once the server gave up on the handshake.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable, Dict
from urllib.parse import parse_qs

HELLO = b"Hello, world!"
REPORTS: Dict[str, Dict[str, Any]] = {}
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _query(scope: Dict[str, Any], name: str, default: str = "") -> str:
    return str(parse_qs(scope["query_string"].decode("latin-1")).get(name, [default])[-1])


async def _answer(send: Send, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _http(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/noread":
        await _answer(send, HELLO)
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body"):
            break
    if path == "/block":
        time.sleep(float(_query(scope, "seconds", "0")))  # on purpose: the whole worker stalls
        await _answer(send, HELLO)
    elif path == "/report":
        await _answer(send, json.dumps(REPORTS.get(_query(scope, "token"), {})).encode(), b"application/json")
    else:
        await _answer(send, HELLO)


async def _websocket(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/never":
        started = time.monotonic()
        message = await receive()  # nothing comes before the accept but the end of the handshake
        REPORTS[_query(scope, "token")] = {"message": message, "after": time.monotonic() - started}
        return
    await asyncio.sleep(float(_query(scope, "delay", "0")))
    try:
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await send({"type": "websocket.send", "bytes": data} if data is not None
                       else {"type": "websocket.send", "text": message.get("text")})
    except OSError:  # the client, or the server's handshake timeout, ended it while we slept
        return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "http":
        await _http(scope, receive, send)
    elif kind == "websocket":
        await _websocket(scope, receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)
