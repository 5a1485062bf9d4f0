"""The application of bench/soak.py: one ASGI 3 callable, routed on the path. Stdlib only.

    GET  /                     13-byte hello (Content-Length)
    GET  /stream?n=N&size=S    N chunks of S bytes, chunk i all ``chunk_byte(i)``; chunked, or
                               with a Content-Length when ``&length=1``
    POST /upload               reads the whole body; answers "SIZE SHA256HEX"
    WS   /ws                   echoes every text and binary message until the client closes
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict
from urllib.parse import parse_qs

HELLO = b"Hello, world!"


def chunk_byte(i: int) -> bytes:
    """The byte that fills chunk ``i`` of a /stream answer (the client checks every byte)."""
    return bytes([97 + i % 26])


async def _lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _websocket_echo(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:  # websocket.disconnect
            return


async def _respond(send: Callable[..., Any], body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _stream(query: Dict[str, Any], send: Callable[..., Any]) -> None:
    n = int(query.get("n", ["16"])[0])
    size = int(query.get("size", ["1024"])[0])
    headers = [(b"content-type", b"application/octet-stream")]
    if query.get("length"):
        headers.append((b"content-length", b"%d" % (n * size)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(n):
        # send() waits for a slow reader's socket to drain: that is what the slow readers load.
        await send({"type": "http.response.body", "body": chunk_byte(i) * size, "more_body": i < n - 1})
    if n == 0:
        await send({"type": "http.response.body", "body": b""})


async def app(scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] == "websocket":
        return await _websocket_echo(receive, send)
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        size += len(body)
        digest.update(body)
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/stream":
        await _stream(parse_qs(scope["query_string"].decode("latin-1")), send)
    elif path == "/upload":
        await _respond(send, b"%d %s" % (size, digest.hexdigest().encode()))
    else:
        await _respond(send, HELLO)
