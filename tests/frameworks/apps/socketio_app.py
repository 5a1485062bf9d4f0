"""A python-socketio ``AsyncServer`` (``async_mode="asgi"``) wrapped in ``socketio.ASGIApp``.

Engine.IO serves both transports from the same ASGI app: long-polling as plain HTTP requests (a
GET held open until there is something to send, POSTs carrying the client's packets) and
WebSocket. Every other path goes to a tiny ASGI app of our own, ``/stats``, through which the
tests see which sessions connected and which the server saw disconnect.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List

import socketio

# Short pings bound how long python-socketio's sync client takes to disconnect over long-polling:
# once the server has the client's Engine.IO CLOSE it answers nothing more, so the client's pending
# long-poll GET (which disconnect() waits for) ends only at the server's poll timeout,
# ping_interval + ping_timeout; and if the client's write loop dropped the CLOSE (it quits as soon as
# the state leaves "connected"), it ends at the next PING.
sio = socketio.AsyncServer(async_mode="asgi", ping_interval=1, ping_timeout=2)

CONNECTED: List[str] = []
DISCONNECTED: List[str] = []
STARTED: List[bool] = []


@sio.event
async def connect(sid: str, environ: Dict[str, Any], auth: Any = None) -> None:
    """Refuse a client whose auth says so: the client must see a connection error."""
    if isinstance(auth, dict) and auth.get("token") == "bad":
        raise socketio.exceptions.ConnectionRefusedError("bad token")
    CONNECTED.append(sid)


@sio.event
async def disconnect(sid: str, *reason: Any) -> None:  # newer versions pass a reason, older do not
    DISCONNECTED.append(sid)


@sio.event
async def echo(sid: str, data: Any) -> Dict[str, Any]:
    """Answered through the ack: the data, and which transport the server sees for this client."""
    await asyncio.sleep(0)
    return {"data": data, "transport": sio.transport(sid)}


@sio.event
async def shout(sid: str, data: str) -> None:
    """Answered by a server-initiated event, not by the ack."""
    await sio.emit("shouted", {"text": data.upper(), "sid": sid}, to=sid)


async def stats_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """Everything that is not /socket.io/: ``/stats`` as JSON, anything else a 404."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/stats":
        stats = {"started": bool(STARTED), "connected": CONNECTED, "disconnected": DISCONNECTED}
        status, body = 200, json.dumps(stats).encode()
    else:
        status, body = 404, b"not found"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def on_startup() -> None:
    """ASGIApp runs this from the lifespan scope (given a hook, it answers lifespan itself)."""
    STARTED.append(True)


app = socketio.ASGIApp(sio, other_asgi_app=stats_app, on_startup=on_startup)
