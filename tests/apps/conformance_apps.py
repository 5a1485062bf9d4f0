"""The ASGI 3 app behind tests/test_conformance.py, test_smuggling.py and test_flow_control.py
(their client side is tests/conformance_client.py, over tests/wire.py).

The app keeps per-key counters and event lists in module globals (one worker per test server), so
a test can ask through a *separate* connection whether a request ever reached the app:

    /count?key=K    counts a hit for K (the "canary" smuggled after a bad request); body "canary:K"
    /hits?key=K     how many times /count?key=K ran
    /events?key=K   JSON list of what an app instance recorded for K (disconnects, exceptions)

Every route reads the whole request body first unless its name says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Dict, List, Tuple
from urllib.parse import parse_qs

from tests.apps import answer_lifespan

COUNTS: Dict[str, int] = {}
EVENTS: Dict[str, List[Any]] = {}


def _query(scope) -> Dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def _read_body(receive) -> Tuple[bytes, bool]:
    """The whole body; the flag says whether the app saw a disconnect instead of the end."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


async def _reply(send, body: bytes, status: int = 200, headers=None, content_type=b"text/plain") -> None:
    hdrs = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    hdrs += list(headers or [])
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def _types(value) -> List[str]:
    return [type(v).__name__ for v in value] if value is not None else []


def describe(scope: Dict[str, Any], body: bytes) -> Dict[str, Any]:
    """A JSON-able picture of the scope, types included (bytes travel as latin-1 text)."""
    headers = [list(h) for h in scope["headers"]]
    return {
        "type": scope["type"],
        "asgi": dict(scope.get("asgi", {})),
        "http_version": scope["http_version"],
        "method": scope["method"],
        "scheme": scope.get("scheme"),
        "path": scope["path"],
        "path_type": type(scope["path"]).__name__,
        "raw_path": scope["raw_path"].decode("latin-1") if isinstance(scope.get("raw_path"), bytes) else None,
        "raw_path_type": type(scope.get("raw_path")).__name__,
        "query_string": scope["query_string"].decode("latin-1")
        if isinstance(scope["query_string"], bytes) else scope["query_string"],
        "query_string_type": type(scope["query_string"]).__name__,
        "root_path": scope.get("root_path"),
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers],
        "header_types": sorted({type(x).__name__ for h in headers for x in h}),
        "client": list(scope["client"]) if scope.get("client") is not None else None,
        "client_types": _types(scope.get("client")),
        "server": list(scope["server"]) if scope.get("server") is not None else None,
        "server_types": _types(scope.get("server")),
        "body": body.decode("latin-1"),
    }


def _rss_kb(pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# Invalid messages for /invalid?case=N: each is a list of messages sent in order.
INVALID_CASES: Dict[str, List[Dict[str, Any]]] = {
    # unknown message type
    "1": [{"type": "http.response.zork", "status": 200}],
    # http.response.body before http.response.start
    "2": [{"type": "http.response.body", "body": b"early"}],
    # http.response.start twice
    "3": [{"type": "http.response.start", "status": 200, "headers": []},
          {"type": "http.response.start", "status": 201, "headers": []}],
    # status is not an int
    "4": [{"type": "http.response.start", "status": "200", "headers": []},
          {"type": "http.response.body", "body": b"x"}],
    # body is not bytes (nothing sent yet)
    "5": [{"type": "http.response.start", "status": 200, "headers": []},
          {"type": "http.response.body", "body": "a str, not bytes"}],
    # header name/value are str, not bytes
    "6": [{"type": "http.response.start", "status": 200, "headers": [("x-str", "value")]},
          {"type": "http.response.body", "body": b"x"}],
    # body not bytes after the response has started on the wire
    "7": [{"type": "http.response.start", "status": 200, "headers": []},
          {"type": "http.response.body", "body": b"partial", "more_body": True},
          {"type": "http.response.body", "body": 12345}],
}

# Response headers the app must never get onto the wire: /badhdr?case=N
BAD_HEADER_CASES: Dict[str, Tuple[bytes, bytes]] = {
    "1": (b"x-ok", b"a\r\nx-injected: 1"),        # CRLF in value: response splitting
    "2": (b"x-ok", b"a\nx-injected: 1"),          # bare LF in value
    "3": (b"x-ok", b"a\rx-injected: 1"),          # bare CR in value
    "4": (b"x-ok", b"a\x00x-injected"),           # NUL in value
    "5": (b"x-bad name", b"v"),                   # space in name
    "6": (b"x-bad:name", b"v"),                   # colon in name
    "7": (b"", b"v"),                             # empty name
    "8": (b"x-bad\r\nx-injected", b"1"),          # CRLF in name
    "9": (b"x-bad\x00", b"1"),                    # NUL in name
}


def _bad_start(case: str) -> Dict[str, Any]:
    name, value = BAD_HEADER_CASES[case]
    return {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"), (name, value)]}


def _body(data: bytes, more: bool = False) -> Dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = _query(scope)
    key = q.get("key", "")

    if path == "/count":
        COUNTS[key] = COUNTS.get(key, 0) + 1
        await _read_body(receive)
        await _reply(send, b"canary:" + key.encode())
    elif path == "/hits":
        await _reply(send, b"%d" % COUNTS.get(key, 0))
    elif path == "/events":
        await _reply(send, json.dumps(EVENTS.get(key, [])).encode(), content_type=b"application/json")
    elif path.endswith("/scope"):
        body, _ = await _read_body(receive)
        # read the body first: trailers (if any) have arrived by now and must not be in the scope
        await _reply(send, json.dumps(describe(scope, body)).encode(), content_type=b"application/json")
    elif path == "/echo":
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        await _reply(send, body)
    elif path == "/cl":
        await _read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-custom", b"yes"),
                                (b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
    elif path == "/stream":
        # no Content-Length: the server picks the framing
        await _read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-custom", b"yes")]})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/app-te":
        # the app claims to do the framing itself: the server must not believe it
        await _read_body(receive)
        more = q.get("stream") == "1"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")]})
        if more:
            await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
            await send({"type": "http.response.body", "body": b"world"})
        else:
            await send({"type": "http.response.body", "body": b"hello world"})
    elif path == "/status":
        # a status that has no body: the app tries to send one anyway, in two parts
        await _read_body(receive)
        await send({"type": "http.response.start", "status": int(q["code"]),
                    "headers": [(b"content-type", b"text/plain"), (b"x-custom", b"yes")]})
        await send({"type": "http.response.body", "body": b"must-not", "more_body": True})
        await send({"type": "http.response.body", "body": b"-appear"})
    elif path == "/badhdr":
        # (built outside this frame: a traceback shows `await send(m)`, no telltale words, so
        # a test can check that the server's own log line names the problem)
        await _read_body(receive)
        m = _bad_start(q["case"])
        await send(m)
        m = _body(b"ok")
        await send(m)
    elif path == "/cl-long":
        # declares 5 bytes, sends 11
        await _read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        if q.get("parts") == "2":
            await send({"type": "http.response.body", "body": b"hel", "more_body": True})
            await send({"type": "http.response.body", "body": b"lo world"})
        else:
            await send({"type": "http.response.body", "body": b"hello world"})
    elif path == "/cl-short":
        # declares 10 bytes, sends 5
        await _read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"hello"})
    elif path == "/error":
        await _read_body(receive)
        when = q.get("when")
        if when == "before":
            raise RuntimeError("boom-before-start " + key)
        if when == "exit":
            raise SystemExit(3)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        if when == "after":
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom-after-start " + key)
    elif path == "/noresponse":
        await _read_body(receive)
        if q.get("partial") == "1":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        return
    elif path == "/invalid":
        await _read_body(receive)
        for message in INVALID_CASES[q["case"]]:
            await send(message)
    elif path == "/noread":
        # answers without touching the body
        await _reply(send, b"answered without reading")
    elif path == "/expect-slow":
        # waits before asking for the body: 100 Continue must not go out before that
        await asyncio.sleep(float(q.get("delay", "1")))
        body, disconnected = await _read_body(receive)
        if not disconnected:
            await _reply(send, body)
    elif path == "/sleep":
        await asyncio.sleep(float(q.get("s", "0.5")))
        body, _ = await _read_body(receive)
        await _reply(send, b"slept:" + body)
    elif path == "/slow-read":
        # reads the body slowly; reports how much arrived and the biggest single message
        total = count = biggest = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                EVENTS.setdefault(key, []).append("http.disconnect")
                return
            n = len(message.get("body", b""))
            total += n
            count += 1
            biggest = max(biggest, n)
            if not message.get("more_body", False):
                break
            await asyncio.sleep(float(q.get("pause", "0.02")))
        await _reply(send, json.dumps({"total": total, "messages": count, "biggest": biggest}).encode(),
                     content_type=b"application/json")
    elif path == "/big":
        # streams N MiB lazily: one 1 MiB chunk per send(), each send waits for the drain.
        # Safety valve: if the worker's own memory runs away (no backpressure), stop early.
        await _read_body(receive)
        mib = int(q.get("mib", "1024"))
        chunk = b"x" * (1 << 20)
        start_rss = _rss_kb()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        sent = 0
        try:
            for i in range(mib):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += 1
                if i % 16 == 0 and _rss_kb() - start_rss > 400 * 1024:
                    EVENTS.setdefault(key, []).append({"runaway_after_mib": sent})
                    raise RuntimeError("no backpressure: worker RSS grew by more than 400 MB")
            await send({"type": "http.response.body", "body": b""})
        except OSError as exc:
            EVENTS.setdefault(key, []).append({"exception": type(exc).__name__, "oserror": True, "sent_mib": sent})
            return
        EVENTS.setdefault(key, []).append({"completed_mib": sent})
    elif path == "/wait-body":
        # records every receive() result until the disconnect
        events = EVENTS.setdefault(key, [])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = await receive()
            events.append({"type": message["type"], "len": len(message.get("body", b"")),
                           "more_body": message.get("more_body", False)})
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        if events and events[-1]["type"] != "http.disconnect":
            await _reply(send, b"got it all")
    elif path == "/stream-forever":
        # streams until send() fails (bounded at 15 s); records what send() raised
        await _read_body(receive)
        events = EVENTS.setdefault(key, [])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                await send({"type": "http.response.body", "body": b"y" * 16384, "more_body": True})
                await asyncio.sleep(0.001)
        except BaseException as exc:
            events.append({"exception": type(exc).__name__, "oserror": isinstance(exc, OSError)})
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        events.append({"exception": None})
    else:
        await _read_body(receive)
        await _reply(send, b"ok")
