"""Our side: one channel-style consumer (``app``) on asgiworker's channel layer.

WebSocket ``/ws/<room>/``: the room protocol of tests/apps/interop/__init__.py (join with
``group_add`` of the reply channel's name, hello with that name, ``chat.message`` events to the
socket as ``{'text': ...}``, client text to the group or, as JSON ``{"to", "text"}``, to one
channel as a ``chat.message``).

HTTP:

- ``/plain``: ``ok``, without touching the layer;
- ``/pid``: this worker's pid;
- ``/block?s=0.5``: blocks this worker's event loop for ``s`` seconds (``time.sleep``), so that
  the other worker accepts the connections made meanwhile (tests spread sockets over workers);
- ``/call?op=...``: one layer call, reported as JSON ``{"ok", "error", "text", "elapsed",
  "pid"}`` (``error`` the exception's class name, ``elapsed`` seconds). A call that has not
  finished after ``limit`` seconds (default 10) is reported as ``error: "Hang"``. Ops and their
  query parameters: ``send`` (channel, text, kind: ``chat.message``; ``none`` for a bare
  reply), ``group_send`` (group, text), ``group_add`` / ``group_discard`` (group, channel),
  ``receive`` (channel, wait: seconds, default 2; ``error: "Nothing"`` if nothing came),
  ``new_channel``, ``flush``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Dict
from urllib.parse import parse_qs


async def app(message: Dict[str, Any]) -> None:
    kind = message["type"]
    if kind == "http.request":
        await _http(message)
    elif kind.startswith("websocket."):
        await _websocket(message)
    elif kind == "chat.message":
        message["reply_channel"].send({"text": message["text"]})


def _room(message: Dict[str, Any]) -> str:
    return message["path"].strip("/").split("/")[-1] or "room"


async def _websocket(message: Dict[str, Any]) -> None:
    kind = message["type"]
    reply_channel = message["reply_channel"]
    layer = message["channel_layer"]
    if kind == "websocket.connect":
        reply_channel.send({"accept": True})
        await layer.group_add(_room(message), reply_channel.name)
        reply_channel.send({"text": json.dumps({"hello": reply_channel.name, "pid": os.getpid()})})
    elif kind == "websocket.receive":
        text = message.get("text")
        try:
            command = json.loads(text)
        except (TypeError, ValueError):
            command = None
        if isinstance(command, dict) and "to" in command:
            await layer.send(command["to"], {"type": "chat.message", "text": command["text"]})
        else:
            await layer.group_send(_room(message), {"type": "chat.message", "text": text})
    # websocket.disconnect: the socket leaves its groups by itself


async def _http(message: Dict[str, Any]) -> None:
    path = message["path"]
    if path == "/plain":
        _reply(message, 200, b"ok", b"text/plain")
    elif path == "/pid":
        _reply(message, 200, json.dumps({"pid": os.getpid()}).encode())
    elif path == "/block":
        seconds = float(parse_qs(message["query_string"].decode()).get("s", ["0.5"])[-1])
        time.sleep(min(seconds, 2.0))  # on purpose: nothing else runs in this worker meanwhile
        _reply(message, 200, json.dumps({"pid": os.getpid()}).encode())
    elif path == "/call":
        query = {k: v[-1] for k, v in parse_qs(message["query_string"].decode()).items()}
        _reply(message, 200, json.dumps(await _call(message["channel_layer"], query)).encode())
    else:
        _reply(message, 404, b"not found", b"text/plain")


async def _call(layer: Any, q: Dict[str, str]) -> Dict[str, Any]:
    op = q.get("op", "")
    text = q.get("text", "")
    event: Dict[str, Any] = {"text": text} if q.get("kind") == "none" else {"type": "chat.message", "text": text}
    calls = {
        "send": lambda: layer.send(q["channel"], event),
        "group_send": lambda: layer.group_send(q["group"], {"type": "chat.message", "text": text}),
        "group_add": lambda: layer.group_add(q["group"], q["channel"]),
        "group_discard": lambda: layer.group_discard(q["group"], q["channel"]),
        "receive": lambda: asyncio.wait_for(layer.receive(q["channel"]), float(q.get("wait", 2))),
        "new_channel": lambda: layer.new_channel(),
        "flush": lambda: layer.flush(),
    }
    out: Dict[str, Any] = {"ok": False, "error": None, "text": None, "pid": os.getpid()}
    start = time.monotonic()
    try:
        result = await asyncio.wait_for(calls[op](), float(q.get("limit", 10)))
    except asyncio.TimeoutError as exc:
        # ours, or receive's own wait: told apart by how long it took
        waited = time.monotonic() - start
        out["error"] = "Hang" if waited >= float(q.get("limit", 10)) - 0.05 else "Nothing"
        out["text"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which judges it
        out["error"] = type(exc).__name__
        out["text"] = str(exc)
    else:
        out["ok"] = True
        out["result"] = result
    out["elapsed"] = time.monotonic() - start
    return out


def _reply(message: Dict[str, Any], status: int, body: bytes, kind: bytes = b"application/json") -> None:
    message["reply_channel"].send({
        "status": status,
        "headers": [[b"content-type", kind], [b"content-length", str(len(body)).encode()]],
        "content": body,
    })
