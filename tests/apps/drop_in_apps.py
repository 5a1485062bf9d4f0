"""Apps for the drop-in Gunicorn worker tests: lifespan, signals, reloads, settings, TLS, proxies.

Apps that must tell the test something a response cannot carry (lifespan startup and shutdown,
the order of events during a graceful stop, every request the zero-loss load sent) append one line
per event to the file named by ``$DROPIN_RECORD_FILE``: ``<time> <pid> <event...>``. Lines are
written with a single ``write`` on an ``O_APPEND`` descriptor, so lines from several worker
processes never interleave.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Dict, List, Tuple
from urllib.parse import parse_qs

from gunicorn.glogging import Logger

RECORD_ENV = "DROPIN_RECORD_FILE"
LOGGER_RECORD_ENV = "DROPIN_LOGGER_FILE"
SHUTDOWN_DELAY_ENV = "DROPIN_SHUTDOWN_DELAY"
STARTUP_DELAY_ENV = "DROPIN_STARTUP_DELAY"


# -- recording ----------------------------------------------------------------------------------

def record(event: str, env: str = RECORD_ENV) -> None:
    path = os.environ.get(env)
    if not path:
        return
    line = ("%.6f %d %s\n" % (time.time(), os.getpid(), event)).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(path: Any) -> List[Tuple[float, int, str]]:
    """The recorded events: (time, pid, event text), in the order they were written."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        t, pid, event = line.split(" ", 2)
        events.append((float(t), int(pid), event))
    return events


def names(events) -> "list[str]":
    """The event names of read_events()' (time, pid, name) records."""
    return [e[2] for e in events]


# -- HTTP helpers -------------------------------------------------------------------------------

def _query(scope: Dict[str, Any]) -> Dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def _respond(send: Any, status: int, body: bytes, headers: Any = (),
                   content_type: bytes = b"text/plain") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Any, payload: Any) -> None:
    await _respond(send, 200, json.dumps(payload).encode(), content_type=b"application/json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _stream(receive: Any, send: Any, tag: str, watch: bool) -> None:
    """Sends a chunk every 0.1 s until the connection goes away; records how it learnt that.

    ``watch``: a second task waits on ``receive()`` for ``http.disconnect`` (what Starlette's
    StreamingResponse before ASGI 2.4 and sse-starlette do); else only ``send()`` raising tells."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    gone = asyncio.Event()

    async def watcher() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                record("stream-disconnect %s" % tag)
                gone.set()
                return

    watching = asyncio.ensure_future(watcher()) if watch else None
    try:
        n = 0
        while not gone.is_set():
            try:
                await send({"type": "http.response.body", "body": b"tick %d\n" % n, "more_body": True})
            except OSError as exc:
                record("stream-send-error %s %s" % (tag, type(exc).__name__))
                return
            if n == 0:
                record("stream-start %s" % tag)
            n += 1
            try:
                await asyncio.wait_for(gone.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
    except asyncio.CancelledError:
        record("stream-cancelled %s" % tag)  # cancelled without being told the connection was cut
        raise
    finally:
        if watching is not None:
            watching.cancel()


async def http_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """The request side shared by the apps below; dispatches on the path."""
    path = scope["path"]
    q = _query(scope)

    if path == "/pid":
        await _read_body(receive)
        await _respond(send, 200, str(os.getpid()).encode())

    elif path == "/count":
        # The zero-loss load: every request that reaches the app is recorded, with its attempt.
        await _read_body(receive)
        record("count %s %s %s" % (q.get("c", "-"), q.get("n", "-"), q.get("a", "0")))
        await _respond(send, 200, ("%s %s" % (q.get("c", "-"), q.get("n", "-"))).encode(),
                       headers=[(b"x-pid", str(os.getpid()).encode())])

    elif path == "/slow":
        tag = q.get("tag", "-")
        record("slow-start %s" % tag)
        await asyncio.sleep(float(q.get("seconds", "1")))
        record("slow-end %s" % tag)
        await _respond(send, 200, ("slow done %s" % tag).encode())

    elif path == "/block":
        time.sleep(float(q.get("seconds", "10")))  # blocks the whole loop: no heartbeat
        await _respond(send, 200, b"blocked")

    elif path in ("/stream", "/watch"):
        await _stream(receive, send, q.get("tag", "-"), watch=path == "/watch")

    elif path == "/state":
        state = scope.get("state")
        if state is None:
            await _json(send, {"has_state": False})
            return
        snapshot = {"has_state": True, "keys": sorted(state), "greeting": state.get("greeting"),
                    "startup_pid": state.get("startup_pid"), "shared": list(state.get("shared", [])),
                    "pid": os.getpid()}
        if q.get("mutate"):
            state["greeting"] = "changed by a request"
            state["leaked"] = True
            state.setdefault("shared", []).append(q["mutate"])
        await _json(send, snapshot)

    elif path.startswith("/info"):
        body = await _read_body(receive)
        info = {k: _jsonable(scope.get(k)) for k in
                ("type", "http_version", "method", "scheme", "path", "raw_path", "query_string",
                 "root_path", "client", "server")}
        info["headers"] = _jsonable(scope["headers"])
        info["extensions"] = _jsonable(scope.get("extensions"))
        info["body_length"] = len(body)
        info["pid"] = os.getpid()
        await _json(send, info)

    elif path.startswith("/log"):
        # Known status, body size and response header for the access log atoms.
        await _read_body(receive)
        body = b"x" * int(q.get("size", "17"))
        await _respond(send, int(q.get("status", "201")), body,
                       headers=[(b"x-resp", b"resp-value-42"), (b"content-length", str(len(body)).encode())])

    else:
        await _read_body(receive)
        await _respond(send, 200, b"drop-in app")


# -- apps ---------------------------------------------------------------------------------------

async def lifespan_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """Supports lifespan: fills the state at startup, records startup and shutdown.

    ``$DROPIN_STARTUP_DELAY`` / ``$DROPIN_SHUTDOWN_DELAY``: seconds of (async) work at startup /
    shutdown, to show that nothing is served before startup ends and that shutdown is bounded.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                record("startup-begin")
                delay = float(os.environ.get(STARTUP_DELAY_ENV) or 0)
                if delay:
                    await asyncio.sleep(delay)
                scope["state"]["greeting"] = "hello from startup"
                scope["state"]["startup_pid"] = os.getpid()
                scope["state"]["shared"] = []
                record("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                record("shutdown-begin")
                delay = float(os.environ.get(SHUTDOWN_DELAY_ENV) or 0)
                if delay:
                    await asyncio.sleep(delay)
                record("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    await http_app(scope, receive, send)


async def startup_failed_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the lifespan startup with ``lifespan.startup.failed``."""
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        record("startup-attempt")
        await send({"type": "lifespan.startup.failed", "message": "database unreachable: dropin-42"})
        return
    await http_app(scope, receive, send)


async def no_lifespan_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """Raises on the lifespan scope, as Django's ASGI handler does."""
    if scope["type"] != "http":
        record("lifespan-refused")
        raise ValueError("Django can only handle ASGI/HTTP connections, not %s (dropin-77)" % scope["type"])
    await http_app(scope, receive, send)


# -- a logger class -----------------------------------------------------------------------------

class RecordingLogger(Logger):
    """Gunicorn's logger, recording every ``access()`` call to ``$DROPIN_LOGGER_FILE``."""

    def access(self, resp: Any, req: Any, environ: Dict[str, Any], request_time: Any) -> None:
        record("access %s %s %s %s" % (resp.status, environ.get("REQUEST_METHOD"), environ.get("RAW_URI"),
                                       getattr(resp, "sent", None)), env=LOGGER_RECORD_ENV)
        super().access(resp, req, environ, request_time)


# -- a module to copy for --reload ----------------------------------------------------------------

def reloadable_source(version: str) -> str:
    """Source of a tiny ASGI module answering ``<version> <pid>``, for the --reload tests."""
    return (
        "import os\n"
        "VERSION = %r\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    body = ('%%s %%d' %% (VERSION, os.getpid())).encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': body})\n"
    ) % version
