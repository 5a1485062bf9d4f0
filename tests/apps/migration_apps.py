"""The app and the uvicorn-worker subclass of tests/test_migration.py: one ASGI 3 app served by
our worker, by uvicorn-worker and by Gunicorn's own ``-k asgi``, so that each claim of
docs/migrating-from-uvicorn-worker.md and docs/migrating-from-gunicorn-asgi.md is checked on both
sides of the move.

HTTP: ``/scope`` answers the scope's ``root_path``, ``path``, ``client``, ``scheme``, its header
names and what the lifespan startup put in ``state`` (JSON); ``/body`` the length of the body it read; any other path
``ok``. WebSocket: accept, then echo every message (text as text, bytes as bytes).

``MigrationUvicornWorker`` is what a uvicorn-worker user writes to set uvicorn's own settings
(uvicorn-worker has no other way): a subclass with ``CONFIG_KWARGS``. The guide maps each of these
to its ``ASGIWORKER_*`` variable or Gunicorn setting, and the test runs both.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict

from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]  # ships no type information

Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The uvicorn settings of the comparison; the test starts our worker with the equivalents.
UVICORN_SETTINGS: Dict[str, Any] = {
    "ws_max_size": 1000,
    "ws_ping_interval": 1.0,
    "root_path": "/api",
    "limit_concurrency": 10,
}


class MigrationUvicornWorker(UvicornWorker):  # type: ignore[misc]  # (an untyped base)
    """uvicorn-worker with uvicorn settings it does not take from Gunicorn."""

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, **UVICORN_SETTINGS}


async def app(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
    elif scope["type"] == "websocket":
        await _echo(receive, send)
    else:
        await _http(scope, receive, send)


async def _lifespan(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if "state" in scope:
                scope["state"]["started"] = "yes"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _http(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/scope"):
        body = json.dumps({
            "root_path": scope.get("root_path", ""),
            "path": scope["path"],
            "client": list(scope["client"]) if scope.get("client") else None,
            "scheme": scope["scheme"],
            "state": dict(scope.get("state") or {}),
            "header_names": [bytes(name).decode("latin-1") for name, _ in scope["headers"]],
        }).encode()
    elif scope["path"].endswith("/body"):
        body = b"%d" % size
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _echo(receive: Receive, send: Send) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
