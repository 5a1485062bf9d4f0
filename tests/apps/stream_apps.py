"""Streaming apps for the write-coalescing tests (tests/test_write_coalescing.py).

    /burst?n=100&size=1024      n parts sent back to back, never letting the loop run
    /ticks?n=3&delay=0.4        a part, then a pause, n times (as server-sent events do)
    /mutate                     a bytearray sent, then overwritten before the loop runs
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl


def part(i: int, size: int) -> bytes:
    """Part i of a burst: its index, then filler, so that a lost or reordered part shows."""
    label = b"<%d>" % i
    return label + b"." * max(0, size - len(label))


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = dict(parse_qsl(scope["query_string"].decode()))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    if scope["path"] == "/burst":
        size = int(q.get("size", "1024"))
        for i in range(int(q.get("n", "100"))):
            await send({"type": "http.response.body", "body": part(i, size), "more_body": True})
    elif scope["path"] == "/ticks":
        for i in range(int(q.get("n", "3"))):
            await send({"type": "http.response.body", "body": b"tick-%d;" % i, "more_body": True})
            await asyncio.sleep(float(q.get("delay", "0.4")))
    elif scope["path"] == "/mutate":
        buffer = bytearray(b"original;")
        await send({"type": "http.response.body", "body": buffer, "more_body": True})
        buffer[:] = b"CHANGED!;"
        await send({"type": "http.response.body", "body": memoryview(buffer), "more_body": True})
    await send({"type": "http.response.body", "body": b"end"})
