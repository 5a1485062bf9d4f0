"""The ASGI 3 app behind tests/test_conformance.py, test_smuggling.py and test_flow_control.py,
plus the small wire-level client helpers those tests share (raw sockets, a strict response parser).

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
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
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


# ---------------------------------------------------------------------------------------------
# Client side: raw sockets and a strict HTTP/1.1 response parser (no leniency: a framing error in
# what the server sends is a test failure).
# ---------------------------------------------------------------------------------------------


class Incomplete(Exception):
    """The bytes end in the middle of a response."""


class Malformed(Exception):
    """The server sent something that is not HTTP/1.1."""


@dataclass
class Response:
    status: int
    reason: bytes
    version: bytes
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False
    raw: bytes = b""

    def get_all(self, name: bytes) -> List[bytes]:
        return [v for n, v in self.headers if n == name.lower()]

    def get(self, name: bytes) -> Optional[bytes]:
        values = self.get_all(name)
        assert len(values) <= 1, f"header {name!r} sent {len(values)} times: {self.headers}"
        return values[0] if values else None

    def names(self) -> List[bytes]:
        return [n for n, _ in self.headers]


def parse_one(data: bytes, method: bytes = b"GET", eof: bool = True) -> Tuple[Response, bytes]:
    """Parse one response from the start of data; returns it and the bytes after it."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete(data[:200])
    head, rest = data[:end], data[end + 4:]
    lines = head.split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise Malformed(f"bad status line {status_line!r}")
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else b""
    headers: List[Tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if b"\n" in line or b"\r" in line or b"\0" in line:
            raise Malformed(f"CR/LF/NUL inside header line {line!r}")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise Malformed(f"bad header line {line!r}")
        headers.append((name.lower(), value.strip(b" \t")))
    resp = Response(status, reason, parts[0], headers, b"")
    te = [v for n, v in headers if n == b"transfer-encoding"]
    cl = [v for n, v in headers if n == b"content-length"]
    if te and cl:
        raise Malformed("response has both Transfer-Encoding and Content-Length")
    if len(cl) > 1:
        raise Malformed("response has several Content-Length")
    if 100 <= status < 200 or status in (204, 304) or method == b"HEAD":
        body = b""
    elif te:
        if te != [b"chunked"]:
            raise Malformed(f"unexpected transfer-encoding {te!r}")
        resp.chunked = True
        chunks = []
        while True:
            line_end = rest.find(b"\r\n")
            if line_end < 0:
                raise Incomplete("in chunk size")
            size_text = rest[:line_end].split(b";")[0]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise Malformed(f"bad chunk size {size_text!r}") from None
            rest = rest[line_end + 2:]
            if size == 0:
                # no trailers expected from our server
                if rest[:2] != b"\r\n":
                    if len(rest) < 2:
                        raise Incomplete("in last chunk")
                    raise Malformed(f"bad end of chunked body {rest[:20]!r}")
                rest = rest[2:]
                break
            if len(rest) < size + 2:
                raise Incomplete("in chunk data")
            if rest[size:size + 2] != b"\r\n":
                raise Malformed("chunk data not followed by CRLF")
            chunks.append(rest[:size])
            rest = rest[size + 2:]
        body = b"".join(chunks)
    elif cl:
        if not cl[0].isdigit():
            raise Malformed(f"bad content-length {cl[0]!r}")
        n = int(cl[0])
        if len(rest) < n:
            raise Incomplete(f"body: {len(rest)} of {n}")
        body, rest = rest[:n], rest[n:]
    else:
        if not eof:
            raise Incomplete("close-delimited body")
        body, rest = rest, b""
    resp.body = body
    resp.raw = data[: len(data) - len(rest)]
    return resp, rest


def parse_all(data: bytes, methods: Optional[List[bytes]] = None) -> Tuple[List[Response], bytes]:
    """Every complete response in data (which ends at the server's close)."""
    responses: List[Response] = []
    methods = list(methods or [])
    rest = data
    while rest:
        final_count = sum(1 for r in responses if not 100 <= r.status < 200)
        method = methods[final_count] if final_count < len(methods) else b"GET"
        try:
            resp, rest = parse_one(rest, method)
        except Incomplete:
            break
        responses.append(resp)
    return responses, rest


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_close(s: socket.socket, timeout: float = 5.0) -> Tuple[bytes, bool]:
    """Everything the server sends until it closes; the flag is False if it did not close in time."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return b"".join(chunks), False
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def read_response(s: socket.socket, method: bytes = b"GET", timeout: float = 5.0,
                  buffered: bytes = b"") -> Tuple[Response, bytes]:
    """Read exactly one response (interim 1xx included as responses); returns it and extra bytes."""
    deadline = time.monotonic() + timeout
    data = buffered
    while True:
        try:
            return parse_one(data, method, eof=False)
        except Incomplete:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete response within {timeout}s; got {data[:300]!r}")
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            raise AssertionError(f"no complete response within {timeout}s; got {data[:300]!r}") from None
        if not chunk:
            # close-delimited body, or a truncated response
            return parse_one(data, method, eof=True)
        data += chunk


def nothing_within(s: socket.socket, seconds: float) -> bytes:
    """Bytes received within the given time (b"" if none; the socket stays usable)."""
    r, _, _ = select.select([s], [], [], seconds)
    if not r:
        return b""
    s.settimeout(0.5)
    try:
        return s.recv(65536) or b"<closed>"
    except ConnectionResetError:
        return b"<reset>"


def exchange(port: int, data: bytes, timeout: float = 5.0, shut_wr: bool = False) -> Tuple[bytes, bool]:
    with connect(port, timeout) as s:
        try:
            s.sendall(data)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_close(s, timeout)


def get(port: int, target: str, headers: bytes = b"") -> Response:
    """One simple request on its own connection."""
    with connect(port) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n" % (target.encode(), headers))
        data, _ = read_until_close(s)
    resp, _ = parse_one(data)
    return resp


def hits(port: int, key: str) -> int:
    resp = get(port, f"/hits?key={key}")
    assert resp.status == 200, resp
    return int(resp.body)


def events(port: int, key: str, want=None, timeout: float = 5.0) -> List[Any]:
    """The app's event list for key, polled until want(events) is true (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        evs = json.loads(get(port, f"/events?key={key}").body)
        if want is None or want(evs) or time.monotonic() > deadline:
            return evs
        time.sleep(0.05)


def rss_kb(pid: int) -> int:
    return _rss_kb(str(pid))


def log_since(server, offset: int, want: Optional[str] = None, timeout: float = 3.0) -> str:
    """The server log written after offset (waiting up to timeout for want to show up)."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.log()[offset:]
        if want is None or want in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def new_key() -> str:
    return os.urandom(8).hex()


CANARY = b"GET /count?key=%s HTTP/1.1\r\nHost: a\r\n\r\n"


def assert_rejected(port: int, bad: bytes, status: int):
    """bad + a pipelined canary: exactly one response (the rejection), a close, canary never run."""
    key = new_key()
    data, closed = exchange(port, bad + CANARY % key.encode(), timeout=5)
    responses, rest = parse_all(data)
    assert responses, f"no response to {bad!r}: got {data!r} (closed={closed})"
    assert len(responses) == 1, f"{len(responses)} responses to {bad!r}: {data!r}"
    r = responses[0]
    assert r.status == status, f"{bad!r}: expected {status}, got {r.status}: {data!r}"
    assert rest == b"", f"bytes after the rejection: {rest!r}"
    assert r.get(b"connection") == b"close", r.headers
    assert r.get(b"content-type") == b"text/plain; charset=utf-8", r.headers
    assert r.get(b"content-length") is not None and 0 < len(r.body) < 1000, r.raw
    assert closed, f"server kept the connection open after rejecting {bad!r}"
    assert hits(port, key) == 0, f"the request pipelined after {bad!r} reached the app"
    return r
