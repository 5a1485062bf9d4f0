"""The benchmark applications: plain ASGI 3 callables, the SAME module for every server.

Each workload is its own callable (no routing: the server's cost is what we measure), e.g.

    gunicorn apps:hello -k asgiworker.ASGIWorker        # ours
    gunicorn apps:hello -k uvicorn_worker.UvicornWorker
    gunicorn apps:hello -k asgi
    granian --interface asgi apps:hello

`consumer_hello` is the one exception: a channel-style consumer, served only by our worker.

Every response body is fixed and known here (`expected_body()`), so the runner can check that
every server sends exactly the same bytes before it measures anything. Stdlib only.
"""

import json

HELLO = b"Hello, world!"

_TEXT = b"text/plain"
_OCTETS = b"application/octet-stream"


def _json_1k():
    """A realistic little document, padded so that json.dumps gives exactly 1024 bytes."""
    doc = {
        "id": 12345,
        "name": "benchmark",
        "active": True,
        "ratio": 0.75,
        "tags": ["asgi", "gunicorn", "uvloop", "httptools"],
        "items": [{"n": i, "label": "item-%d" % i, "ok": i % 2 == 0} for i in range(12)],
        "padding": "",
    }
    doc["padding"] = "x" * (1024 - len(json.dumps(doc)))
    assert len(json.dumps(doc)) == 1024
    return doc


JSON_DOC = _json_1k()
CHUNK = (b"0123456789abcdef" * 64)[:1023] + b"\n"  # 1 KiB
STREAM_CHUNKS = 100
MIB = b"".join(bytes([97 + i % 26]) * 1024 for i in range(1024))  # 1 MiB, 'aaa...bbb...'
POST_BODY = b"0123456789abcdef" * 4096  # 64 KiB, what wrk (bench/lua/post64k.lua) sends


async def _lifespan(receive, send):
    """Uvicorn, Gunicorn's asgi worker and Granian speak the lifespan protocol: say yes."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", _TEXT), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": HELLO})


async def json_1k(scope, receive, send):
    if scope["type"] != "http":
        return await _lifespan(receive, send)
    body = json.dumps(JSON_DOC).encode()  # serialised per request, as an app would
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def stream(scope, receive, send):
    """100 x 1 KiB with more_body=True: no Content-Length, so chunked on HTTP/1.1."""
    if scope["type"] != "http":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", _TEXT)]})
    for _ in range(STREAM_CHUNKS):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def big(scope, receive, send):
    """A 1 MiB body in one send."""
    if scope["type"] != "http":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", _OCTETS), (b"content-length", b"%d" % len(MIB))]})
    await send({"type": "http.response.body", "body": MIB})


async def echo(scope, receive, send):
    """Read the whole request body, send it back."""
    if scope["type"] != "http":
        return await _lifespan(receive, send)
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # client gone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", _OCTETS), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def consumer_hello(message):
    """The channel-style hello (examples/hello.py), served by our worker only."""
    message["reply_channel"].send({
        "status": 200,
        "headers": [[b"content-type", _TEXT], [b"content-length", b"13"]],
        "content": HELLO,
    })


async def ws_echo(scope, receive, send):
    """WebSocket echo: accept, then send back every message received (text as text, bytes as
    bytes). Plain HTTP requests (the runner's readiness and answer checks) get the hello."""
    if scope["type"] == "http":
        return await hello(scope, receive, send)
    if scope["type"] != "websocket":
        return await _lifespan(receive, send)
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        else:  # websocket.disconnect
            return


def expected_body(app_name):
    """The exact bytes every server must answer with for this app (for the echo: what we post)."""
    return {
        "hello": HELLO,
        "consumer_hello": HELLO,
        "json_1k": json.dumps(JSON_DOC).encode(),
        "stream": CHUNK * STREAM_CHUNKS,
        "big": MIB,
        "echo": POST_BODY,
        "ws_echo": HELLO,  # its plain HTTP answer; the echo itself is checked by wsclient.py
    }[app_name]
