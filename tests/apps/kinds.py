"""Applications of every kind and shape, for tests/test_app_kinds.py (one Gunicorn each).

Every app answers with JSON naming itself and the protocol it was actually called with, so a test
can tell a correct detection from a lucky one: an app served under the wrong kind cannot answer.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Dict

from asgiworker import adapters
from tests.apps import answer_lifespan


async def _read_body(receive: Callable) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


_lifespan = answer_lifespan


async def _asgi_answer(app: str, served_as: str, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = await _read_body(receive)
    payload = json.dumps({
        "app": app,
        "served_as": served_as,
        "scope_type": scope["type"],
        "asgi": scope.get("asgi"),
        "path": scope["path"],
        "body": body.decode("latin-1"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]})
    await send({"type": "http.response.body", "body": payload})


def _consumer_answer(app: str, message: Dict[str, Any]) -> None:
    payload = json.dumps({
        "app": app,
        "served_as": "consumer",
        "path": message["path"],
        "body": message["body"].decode("latin-1"),
    }).encode()
    message["reply_channel"].send({"status": 200, "headers": [[b"content-type", b"application/json"]],
                                   "content": payload})


# -- ASGI 3 -----------------------------------------------------------------------------------


async def asgi3_function(scope, receive, send):
    await _asgi_answer("asgi3_function", "asgi3", scope, receive, send)


class _Asgi3Object:
    async def __call__(self, scope, receive, send):
        await _asgi_answer("asgi3_instance", "asgi3", scope, receive, send)


asgi3_instance = _Asgi3Object()


async def _four_args(name, scope, receive, send):
    await _asgi_answer(name, "asgi3", scope, receive, send)


asgi3_partial = functools.partial(_four_args, "asgi3_partial")


class Asgi3AwaitableClass:
    """Instantiated with (scope, receive, send); awaiting the instance serves the request."""

    def __init__(self, scope, receive, send):
        self.scope, self.receive, self.send = scope, receive, send

    def __await__(self):
        return _asgi_answer("Asgi3AwaitableClass", "asgi3", self.scope, self.receive, self.send).__await__()


# -- ASGI 2 -----------------------------------------------------------------------------------


class Asgi2Class:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await _asgi_answer("Asgi2Class", "asgi2", self.scope, receive, send)


def asgi2_factory(scope):
    async def instance(receive, send):
        await _asgi_answer("asgi2_factory", "asgi2", scope, receive, send)

    return instance


# -- overrides --------------------------------------------------------------------------------


def handler(x):
    """An ASGI 2 factory whose parameter is not named ``scope``: auto-detected as a consumer
    (it then returns a function instead of replying, so the client gets a 500)."""
    async def instance(receive, send):
        await _asgi_answer("handler", "asgi2", x, receive, send)

    return instance


handler_as_asgi2 = adapters.asgi2(handler)


def flexible(*args):
    """Serves whichever way it is called: undecidable on its own, so it needs an override."""
    if len(args) == 3:
        return _asgi_answer("flexible", "asgi3", *args)
    (first,) = args
    if "reply_channel" in first:
        return _consumer_answer("flexible", first)

    async def instance(receive, send):
        await _asgi_answer("flexible", "asgi2", first, receive, send)

    return instance


flexible_as_consumer = adapters.consumer(flexible)
flexible_as_asgi3 = adapters.asgi3(flexible)


def two_args(a, b):
    """Neither one nor three arguments: the worker must refuse to guess."""
    raise AssertionError("never served")


def hello_consumer(message):
    _consumer_answer("hello_consumer", message)
