"""The app behind nginx and HAProxy (tests/test_nginx.py, tests/test_haproxy.py).

    /echo                   JSON: what the app was told (client, scheme, http_version, headers...)
    .../upload              reads the body as it comes; JSON: its sha256, length, how it was framed
    .../events?gap=S&accel=1 server-sent events: one, a pause of S seconds, another (with
                            `X-Accel-Buffering: no` when accel=1)
    /ws                     WebSocket echo (text and binary)
    anything else           `hello`
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, Dict
from urllib.parse import parse_qsl


def _headers(scope: Dict[str, Any]) -> Dict[str, str]:
    # A proxy header a test looks for is sent once; joined, a duplicate would still show.
    seen: Dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1")
        seen[key] = seen[key] + ", " + value.decode("latin-1") if key in seen else value.decode("latin-1")
    return seen


async def _json(send, payload: Dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _websocket(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            return


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await _websocket(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = dict(parse_qsl(scope["query_string"].decode()))
    if path == "/echo":
        await _json(send, {
            "client": list(scope["client"]) if scope.get("client") else None,
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "headers": _headers(scope),
        })
    elif path.endswith("/upload"):
        digest = hashlib.sha256()
        length = reads = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            reads += 1
            if not message.get("more_body"):
                break
        headers = _headers(scope)
        await _json(send, {
            "sha256": digest.hexdigest(), "length": length, "reads": reads,
            "http_version": scope["http_version"],
            "transfer_encoding": headers.get("transfer-encoding"),
            "content_length": headers.get("content-length"),
        })
    elif path.endswith("/events"):
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if query.get("accel") == "1":
            headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        await asyncio.sleep(float(query.get("gap", "1")))
        await send({"type": "http.response.body", "body": b"data: second\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
