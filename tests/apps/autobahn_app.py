"""The echo server the Autobahn Testsuite's fuzzing client talks to (tests/test_autobahn.py,
scripts/autobahn.sh).

Every case opens one WebSocket, sends messages and expects each back unchanged, text as text and
binary as binary; so the app accepts whatever path and echoes until the client leaves. All the
protocol checks the cases make (framing, UTF-8, close codes, compression) are the worker's: the
app must add nothing of its own.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict

from tests.apps import answer_lifespan

Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


async def app(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] == "http":
        # The readiness probe (OPTIONS *) and curious browsers: a plain answer.
        while (await receive()).get("more_body"):
            pass
        body = b"autobahn echo server\n"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
