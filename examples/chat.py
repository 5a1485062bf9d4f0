"""A chat room in one channel-style consumer: the page over HTTP, the room over a WebSocket.

    cd examples
    gunicorn chat:chat --bind localhost:8080 --worker-class asgiworker.ASGIWorker

Open http://localhost:8080/ in two tabs and talk. The same ``chat(message)`` function answers the
HTTP request for the page (``chat.html``) and every event of every WebSocket on ``/ws``:
'websocket.connect' (join the room), 'websocket.receive' (broadcast the message to everyone in
the room) and 'websocket.disconnect' (leave it). Broadcasting is just calling ``send()`` on each
member's reply channel: it is thread-safe and never blocks, the worker delivers the replies.

The room lives in this process: with ``--workers N`` > 1 each worker has a room of its own (use a
pub/sub service such as Redis between workers for one room across them).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Dict, Set

PAGE = (Path(__file__).resolve().parent / "chat.html").read_bytes()
MAX_NAME = 40
MAX_TEXT = 2000

_room: Set[Any] = set()  # the reply channels of the open sockets
_room_lock = threading.Lock()


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
        with _room_lock:
            _room.add(reply_channel)
            online = len(_room)
        _broadcast({"system": f"someone joined ({online} online)"})
    elif kind == "websocket.receive":
        said = _parse(message.get("text"))
        if said is not None:
            _broadcast(said)
    elif kind == "websocket.disconnect":
        with _room_lock:
            _room.discard(reply_channel)
            online = len(_room)
        _broadcast({"system": f"someone left ({online} online)"})


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


def _broadcast(data: Dict[str, str]) -> None:
    text = json.dumps(data)
    with _room_lock:
        members = list(_room)
    for member in members:
        try:
            member.send({"text": text})
        except OSError:  # that socket has just closed
            with _room_lock:
                _room.discard(member)


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
