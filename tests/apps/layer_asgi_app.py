"""A Starlette app on the worker's channel layer (``get_channel_layer()``), for
tests/test_consumer_layer.py: the ASGI side of a layer that consumers use too.

- ``GET /info``: the layer this process has, and whether its loop is the running one;
- ``POST /broadcast`` ``{"group", "text"}``: ``group_send(group, {"text": text})``;
- ``POST /send`` ``{"channel", "message"}``: ``send(channel, message)``;
- WebSocket ``/room?group=G``: an ASGI socket in group G through ``new_channel()``: it gets what
  the group gets (as JSON of the layer message) and sends each text it receives to the group.
"""

from __future__ import annotations

import asyncio
import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgiworker.channels import get_channel_layer


async def info(request: Request) -> JSONResponse:
    layer = get_channel_layer()
    return JSONResponse({"pid": os.getpid(), "backend": layer.backend, "layer_type": type(layer).__name__,
                         "loop_ok": layer.loop is asyncio.get_running_loop(), "prefix": layer.prefix})


async def broadcast(request: Request) -> JSONResponse:
    data = await request.json()
    await get_channel_layer().group_send(data["group"], {"text": data["text"]})
    return JSONResponse({"ok": True, "pid": os.getpid()})


async def send(request: Request) -> JSONResponse:
    data = await request.json()
    await get_channel_layer().send(data["channel"], data["message"])
    return JSONResponse({"ok": True, "pid": os.getpid()})


async def room(websocket: WebSocket) -> None:
    layer = get_channel_layer()
    group = websocket.query_params.get("group", "default")
    await websocket.accept()
    name = await layer.new_channel()
    await layer.group_add(group, name)
    await websocket.send_text(json.dumps({"name": name, "pid": os.getpid()}))

    async def pump() -> None:
        while True:
            await websocket.send_text(json.dumps(await layer.receive(name)))

    pumping = asyncio.ensure_future(pump())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            await layer.group_send(group, {"text": f"asgi {os.getpid()}: {message.get('text')}"})
    finally:
        pumping.cancel()
        await layer.group_discard(group, name)


app = Starlette(routes=[
    Route("/info", info),
    Route("/broadcast", broadcast, methods=["POST"]),
    Route("/send", send, methods=["POST"]),
    WebSocketRoute("/room", room),
])
