"""The app slowhttptest attacks in tests/test_slow_clients.py.

    GET  /ping              b"pong": what the well-behaved client asks for during the attack
    POST /upload            reads the whole body, answers its length (the slow-body target)
    GET  /big?mib=8         a streamed body of that many MiB in 64 KiB parts (the slow-read target:
                            far more than the socket buffers hold, so the worker's writes stall)
"""

from __future__ import annotations

from urllib.parse import parse_qsl

PART = b"x" * 65536
TEXT = [(b"content-type", b"text/plain")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/upload":
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the worker gave up on the body (the body timeout): nobody to answer
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"%d" % size})
    elif path == "/big":
        mib = int(dict(parse_qsl(scope["query_string"].decode())).get("mib", "8"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*TEXT, (b"content-length", b"%d" % (mib * 16 * len(PART)))]})
        try:
            for _ in range(mib * 16 - 1):
                await send({"type": "http.response.body", "body": PART, "more_body": True})
            await send({"type": "http.response.body", "body": PART})
        except OSError:
            return  # the worker cut a client that would not read (the send timeout): stop writing
    else:
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"pong"})
