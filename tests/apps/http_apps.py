"""ASGI 3 apps for the HTTP/1.1 basics, the Gunicorn basics and the property tests.

``app`` dispatches on the path (``/echo``, ``/info``, ``/stream``...). Apps that must tell the test
something the response cannot carry (the exception ``send()`` raised after the client went away,
that a slow request has started) write a small file under ``$HTTP_APPS_RECORD_DIR``, named by the
``rec`` query parameter.

``reflect_app`` / ``make_reflect_app`` answer every request with a JSON description of what the
app saw (method, path, query, headers, body), framed in the way the request's ``x-resp`` header
asks for; the property tests use it in-process and over a real Gunicorn.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs

RECORD_DIR_ENV = "HTTP_APPS_RECORD_DIR"


def _query(scope: Dict[str, Any]) -> Dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


def _record(name: str, text: str) -> None:
    directory = os.environ.get(RECORD_DIR_ENV)
    if not directory or not name:
        return
    path = Path(directory) / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)  # atomic: the test never sees a half-written record


async def read_body(receive) -> Optional[bytes]:
    """The whole request body, or None if the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send, status: int, body: bytes, headers=None, content_type: bytes = b"text/plain") -> None:
    hdrs = [(b"content-type", content_type)] + list(headers or [])
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = _query(scope)

    if path == "/noread":
        # Answers without ever calling receive(): no "100 Continue" may be sent for it.
        await _respond(send, 200, b"answered without reading")
        return

    if path == "/error":
        raise RuntimeError(q.get("msg", "app failure"))

    if path == "/stream-error":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first part;", "more_body": True})
        raise RuntimeError(q.get("msg", "failure in the middle of a stream"))

    if path == "/block":
        # Blocks the whole event loop: the heartbeat stops.
        time.sleep(float(q.get("seconds", "10")))
        await _respond(send, 200, b"blocked")
        return

    if path == "/slow":
        _record(q.get("rec", ""), "started")
        await asyncio.sleep(float(q.get("seconds", "2")))
        await _respond(send, 200, b"slow done")
        return

    if path == "/forever":
        # Streams until the client goes away (bounded), recording what send() raised then.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        chunk = b"x" * 1024
        try:
            for _ in range(3000):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0.005)
        except BaseException as exc:
            _record(q.get("rec", ""), json.dumps({
                "type": type(exc).__name__,
                "is_oserror": isinstance(exc, OSError),
                "mro": [c.__name__ for c in type(exc).__mro__],
            }))
            raise
        _record(q.get("rec", ""), json.dumps({"type": None}))
        await send({"type": "http.response.body", "body": b""})
        return

    if path == "/slow-echo":
        # Waits before reading the body (for Expect: 100-continue), then echoes it.
        await asyncio.sleep(float(q.get("delay", "1")))

    body = await read_body(receive)
    if body is None:
        return

    if path in ("/echo", "/slow-echo"):
        # No content-length from the app: the server frames the single body message.
        await _respond(send, 200, body, content_type=b"application/octet-stream")
    elif path.startswith("/info"):
        info = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "http_version": scope["http_version"],
            "client": list(scope["client"]) if scope["client"] else None,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            "body": body.decode("latin-1"),
            "pid": os.getpid(),
        }
        await _respond(send, 200, json.dumps(info).encode(), content_type=b"application/json")
    elif path == "/pid":
        await _respond(send, 200, str(os.getpid()).encode())
    elif path == "/stream":
        n = int(q.get("n", "5"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"chunk-%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/cl-stream":
        # The app declares the length itself and streams the body in pieces.
        parts = [b"0123456789", b"abcdefghij", b"KLMNOPQRST"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"Content-Length", b"30")]})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})
    elif path == "/inject":
        kind = q.get("kind", "crlf")
        if kind == "crlf":
            header = (b"x-ok", b"fine\r\nx-injected: yes")
        elif kind == "lf":
            header = (b"x-ok", b"fine\nx-injected: yes")
        elif kind == "cr":
            header = (b"x-ok", b"fine\rx-injected: yes")
        elif kind == "name":
            header = (b"x-injected: yes\r\nx-ok", b"fine")
        else:
            raise ValueError(kind)
        await _respond(send, 200, b"should never be sent", headers=[header])
    else:
        await _respond(send, 200, b"Hello, world!")


# -- the reflecting app of the property tests ----------------------------------------------------


def describe_request(method: str, path: str, query: bytes, headers: List[List[bytes]], body: bytes) -> Dict[str, Any]:
    return {
        "method": method,
        "path": path,
        "query": query.decode("latin-1"),
        "headers": [[bytes(n).decode("latin-1"), bytes(v).decode("latin-1")] for n, v in headers],
        "body": body.decode("latin-1"),
    }


def make_reflect_app(records: Optional[list] = None):
    """An app describing each request back as JSON; ``records`` (if given) collects the descriptions.

    The request header ``x-resp`` chooses the framing of the answer: ``cl`` (the app gives a
    content-length), ``chunked`` (three body messages with more_body, no length),
    ``chunked-empty-end`` (the whole body with more_body, then an empty last message) or ``single``
    (one body message without a length, the server counts it).
    """

    async def reflect(scope, receive, send):
        if scope["type"] != "http":
            return
        headers_at_start = [[bytes(n), bytes(v)] for n, v in scope["headers"]]
        body = await read_body(receive)
        if body is None:
            return
        info = describe_request(scope["method"], scope["path"], scope["query_string"], headers_at_start, body)
        if records is not None:
            records.append(info)
        payload = json.dumps(info, sort_keys=True).encode()
        mode = dict(headers_at_start).get(b"x-resp", b"single")
        if mode == b"cl":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"%d" % len(payload))]})
            await send({"type": "http.response.body", "body": payload})
        elif mode == b"chunked":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            third = len(payload) // 3
            await send({"type": "http.response.body", "body": payload[:third], "more_body": True})
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": payload[third:2 * third], "more_body": True})
            await send({"type": "http.response.body", "body": payload[2 * third:], "more_body": False})
        elif mode == b"chunked-empty-end":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": payload, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": payload})

    return reflect


reflect_app = make_reflect_app()
