"""A plain ASGI 3 app that reports what the asyncio contract gives it (tests/test_asyncio_contract.py)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import sys

import sniffio

SEEN: "contextvars.ContextVar[str]" = contextvars.ContextVar("seen", default="unset")


async def _timeout_works() -> str:
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
        else:
            await asyncio.wait_for(asyncio.sleep(1), 0.01)
    except (TimeoutError, asyncio.TimeoutError):
        return "timed out"
    return "not timed out"


async def _background(stop: asyncio.Event) -> None:
    await stop.wait()


async def _lifespan(receive, send) -> None:
    stop = asyncio.Event()
    task = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # Started by the lifespan, as anyio task groups and pollers are: it must live until
            # the lifespan shutdown, whatever the requests do at the worker's stop.
            task = asyncio.get_running_loop().create_task(_background(stop))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            stop.set()
            if task is not None:
                await task  # a CancelledError here would mean the worker cancelled it early
            print("lifespan background task stopped by the shutdown", file=sys.stderr, flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/contract":
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = None
        report = {
            "task": asyncio.current_task() is not None,
            "sniffio": library,
            "context": SEEN.get(),
            "timeout": await _timeout_works(),
        }
        SEEN.set("set by an earlier request")
        await _respond(send, json.dumps(report).encode(), b"application/json")
    elif path == "/wait-disconnect":
        while (await receive()).get("more_body"):
            pass
        event = await receive()  # the client shuts down its side: the disconnect, at once
        await _respond(send, b"saw " + event["type"].encode())
    else:
        await _respond(send, path.encode())
