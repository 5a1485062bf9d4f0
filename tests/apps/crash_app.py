"""The app of tests/test_crash.py: every answer names the worker that gave it.

    GET /?id=ID          -> 200 "ID PID", header x-pid: PID
    GET /slow?id=ID&ms=N -> the same after N milliseconds (so a worker has requests in flight)

The body repeats the request's id so that a client can tell its own answer from any other.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Dict
from urllib.parse import parse_qs


async def app(scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":  # lifespan: nothing to set up
        return
    while (await receive()).get("more_body"):
        pass
    query = parse_qs(scope["query_string"].decode("latin-1"))
    if scope["path"] == "/slow":
        await asyncio.sleep(int(query.get("ms", ["100"])[0]) / 1000)
    # os.getpid() per request: the module may have been imported in the master (--preload).
    pid = str(os.getpid()).encode()
    body = query.get("id", ["-"])[0].encode() + b" " + pid
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)),
                            (b"x-pid", pid)]})
    await send({"type": "http.response.body", "body": body})
