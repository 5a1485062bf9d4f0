"""A chat room in one channel-style consumer: the page over HTTP, the room over a WebSocket.

    cd examples
    gunicorn chat:chat --bind localhost:8080 --worker-class asgiworker.ASGIWorker

Open http://localhost:8080/ in two tabs and talk. The same ``chat(message)`` function answers the
HTTP request for the page (``chat.html``) and every event of every WebSocket on ``/ws``:
'websocket.connect' (join the room), 'websocket.receive' (send the message to everyone in the
room) and 'websocket.disconnect' (the socket leaves the room by itself).

The room is a group on the worker's channel layer (docs/channel-layer.md). With the default
in-memory layer it spans one worker process; for one room across workers and hosts, put the
layer on Redis, nothing else changes:

    gunicorn chat:chat --bind localhost:8080 --worker-class asgiworker.ASGIWorker \\
        --workers 4 -e ASGIWORKER_CHANNEL_LAYER=redis://localhost:6379/0
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

from asgiworker.channels import Group

PAGE = (Path(__file__).resolve().parent / "chat.html").read_bytes()
MAX_NAME = 40
MAX_TEXT = 2000
room = Group("chat")


def chat(message: Dict[str, Any]) -> None:
    kind = message["type"]
    reply_channel = message["reply_channel"]
    if kind == "http.request":
        _serve_page(message)
    elif message["path"] != "/ws":
        if kind == "websocket.connect":
            reply_channel.send({"close": True})  # refused: the client gets a 403
    elif kind == "websocket.connect":
        reply_channel.send({"accept": True})
        reply_channel.send(_say({"system": f"connected to worker {os.getpid()}"}))
        room.add(reply_channel)
        room.send(_say({"system": "someone joined"}))
    elif kind == "websocket.receive":
        said = _parse(message.get("text"))
        if said is not None:
            room.send(_say(said))
    elif kind == "websocket.disconnect":
        room.send(_say({"system": "someone left"}))


def _say(data: Dict[str, str]) -> Dict[str, str]:
    return {"text": json.dumps(data)}


def _parse(text: Any) -> Any:
    """{'name', 'text'} from the page's JSON, trimmed; None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
        name, said = str(data.get("name") or "anonymous"), str(data["text"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not said.strip():
        return None
    return {"name": name[:MAX_NAME], "text": said[:MAX_TEXT]}


def _serve_page(message: Dict[str, Any]) -> None:
    if message["path"] == "/" and message["method"] in ("GET", "HEAD"):
        status, body, kind = 200, PAGE, b"text/html; charset=utf-8"
    else:
        status, body, kind = 404, b"Not found\n", b"text/plain; charset=utf-8"
    message["reply_channel"].send({
        "status": status,
        "headers": [[b"content-type", kind], [b"content-length", str(len(body)).encode()]],
        "content": b"" if message["method"] == "HEAD" else body,
    })
