"""The app of tests/test_misbehaving_apps.py: it misbehaves on demand, playing a script of ASGI
``send()`` messages (valid or not), exceptions, ``receive()`` calls and early returns.

    POST /bad      the request body is the script, as JSON; the app reads it, then plays it
    GET /good?n=N  200, body ``good N`` with its Content-Length (the well-behaved request that
                   follows a misbehaving one on the same connection)

In-process, ``make_app(script_for)`` takes the script from ``script_for(scope)`` instead, so the
request to /bad can be any method, with any body, and ``receive()`` in the script sees it.

A script is JSON, so that one drawn by Hypothesis can be sent to a real Gunicorn as it is:

    {"swallow": bool, "actions": [action, ...]}
    action: ["send", value] | ["raise", kind] | ["receive"] | ["sleep"] | ["return"]

``swallow``: the app catches what ``send()`` raises and goes on (else it lets it propagate).
``value`` is what ``decode`` makes of it: JSON as it is, except one-key objects, which are tagged
values (bytes and the like, which JSON lacks; see ``decode``). What the app saw (each send
accepted or refused, each receive's result) is appended to the ``trace`` list given.
"""

from __future__ import annotations

import array
import asyncio
import json
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import parse_qs

from tests.apps import answer_lifespan

Script = Dict[str, Any]


class AppError(Exception):
    """The script's own exception (``["raise", "Exception"]``)."""


class AppBaseError(BaseException):
    """Not an Exception: the server must survive it all the same."""


RAISES: Dict[str, Callable[[], BaseException]] = {
    "Exception": lambda: AppError("the script raised"),
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,
    "BaseException": lambda: AppBaseError("the script raised a BaseException"),
}
# How many loop iterations a receive() is given to answer before the app gives up on it (a
# receive() after the whole body waits for the end of the response or a disconnect).
POLL_STEPS = 5


def decode(value: Any) -> Any:
    """The Python value a script's JSON stands for. One-key objects are tagged values:
    ``{"b": text}`` bytes (latin-1), ``{"ba": text}`` bytearray, ``{"mv": text}`` memoryview of
    bytes, ``{"mvi": [ints]}`` memoryview of 4-byte ints (its len() counts items, not bytes),
    ``{"big": [text, n]}`` text repeated n times as bytes, ``{"t": [...]}`` a tuple,
    ``{"d": {...}}`` a dict, ``{"status": n}`` ``HTTPStatus(n)`` (an int subclass), ``{"none": 0}``
    None (a JSON null stands for itself too, but a script leaves a key out to say "missing")."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, arg),) = value.items()
    if tag == "b":
        return arg.encode("latin-1")
    if tag == "ba":
        return bytearray(arg.encode("latin-1"))
    if tag == "mv":
        return memoryview(arg.encode("latin-1"))
    if tag == "mvi":
        return memoryview(array.array("i", arg))
    if tag == "big":
        return arg[0].encode("latin-1") * arg[1]
    if tag == "t":
        return tuple(decode(v) for v in arg)
    if tag == "d":
        return {k: decode(v) for k, v in arg.items()}
    if tag == "status":
        return HTTPStatus(arg)
    if tag == "none":
        return None
    raise ValueError("unknown tag %r" % (tag,))


async def poll(receive: Callable) -> Any:
    """``receive()``, given ``POLL_STEPS`` loop iterations: its message, or "pending"."""
    task = asyncio.ensure_future(receive())
    for _ in range(POLL_STEPS):
        if task.done():
            break
        await asyncio.sleep(0)
    if not task.done():
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return "pending"
    return task.result()


async def play(script: Script, receive: Callable, send: Callable, trace: List[Any]) -> None:
    swallow = script["swallow"]
    for action in script["actions"]:
        kind = action[0]
        if kind == "send":
            message = decode(action[1])
            try:
                await send(message)
            except Exception:
                trace.append("refused")
                if not swallow:
                    raise
            else:
                trace.append("sent")
        elif kind == "raise":
            raise RAISES[action[1]]()
        elif kind == "receive":
            trace.append(await poll(receive))
        elif kind == "sleep":
            await asyncio.sleep(0)
        elif kind == "return":
            return


def good_body(scope: Dict[str, Any]) -> bytes:
    n = parse_qs(scope["query_string"].decode("latin-1")).get("n", ["-"])[0]
    return b"good " + n.encode("latin-1")


async def answer_good(scope: Dict[str, Any], send: Callable) -> None:
    body = good_body(scope)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(chunks)


def make_app(script_for: Optional[Callable[[Dict[str, Any]], Script]] = None,
             trace: Optional[List[Any]] = None) -> Callable:
    """The app; ``script_for(scope)`` gives /bad's script (None: read from the request body)."""
    seen: List[Any] = trace if trace is not None else []

    async def app(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["path"] == "/good":
            await answer_good(scope, send)
            return
        script = script_for(scope) if script_for is not None else json.loads(await read_body(receive))
        await play(script, receive, send, seen)

    return app


app = make_app()
