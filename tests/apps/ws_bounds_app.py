"""WebSocket apps slow to answer the handshake (tests/test_websocket_bounds.py).

``/late?delay=S``: accepts after S seconds, then echoes text and counts bytes until the client
leaves. ``/never?report=PATH``: never answers the handshake; once its receive() returns, writes
what it returned and what send() then raised to PATH as JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Dict
from urllib.parse import parse_qs


def _query(scope: Dict[str, Any]) -> Dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def late(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await asyncio.sleep(float(_query(scope).get("delay", "1")))
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})


async def never(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    assert (await receive())["type"] == "websocket.connect"
    message = await receive()  # blocks until the server gives up on us
    report: Dict[str, Any] = {"message": message}
    try:
        await send({"type": "websocket.accept"})
    except Exception as exc:  # noqa: BLE001 - what it raises is the point
        report["send_error"] = type(exc).__name__
    with open(_query(scope)["report"], "w") as f:
        json.dump(report, f)


async def app(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] == "websocket":
        await (never if scope["path"] == "/never" else late)(scope, receive, send)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
