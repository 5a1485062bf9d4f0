"""The one wire-level HTTP/1.1 client of the test suite: raw sockets and a strict response parser.

Tests that care about exact bytes (framing, smuggling, pipelining, what is sent before a close)
cannot go through an HTTP library, which would hide or repair what the server sent. Every such
test reads with the helpers here, so that "read until the server closes" and "what counts as a
well-formed response" mean the same thing everywhere:

    data, closed = send_and_read(port, b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    responses, rest = parse_all(data)

The parser has no leniency: a framing error in what the server sends is a test failure
(``Malformed``); bytes that stop in the middle of a response raise ``Incomplete``. It knows the
bodiless answers (HEAD, 1xx, 204, 304), chunked, Content-Length and close-delimited bodies.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

# -- parsing ------------------------------------------------------------------------------------


class Incomplete(Exception):
    """The bytes end in the middle of a response."""


class Malformed(Exception):
    """The server sent something that is not HTTP/1.1."""


class CleanClose(Exception):
    """The server closed the connection before sending a single byte of the response (during a
    graceful stop, say: the request may be retried on a new connection)."""


@dataclass
class Response:
    status: int
    reason: bytes
    version: bytes
    headers: List[Tuple[bytes, bytes]]  # names lower-cased, in the order sent
    body: bytes
    chunked: bool = False
    raw: bytes = b""  # the response's bytes as sent, head and body

    def get_all(self, name: bytes) -> List[bytes]:
        return [v for n, v in self.headers if n == name.lower()]

    def get(self, name: bytes) -> Optional[bytes]:
        """The one value of ``name`` (None if absent); a header sent twice fails the test."""
        values = self.get_all(name)
        assert len(values) <= 1, f"header {name!r} sent {len(values)} times: {self.headers}"
        return values[0] if values else None

    def names(self) -> List[bytes]:
        return [n for n, _ in self.headers]

    def json(self) -> Any:
        return json.loads(self.body)


def parse_head(data: bytes) -> Tuple[Response, bytes]:
    """Only the head at the start of ``data`` (body left empty) and the bytes after it: for a
    response the server cut off on purpose, whose body can not be parsed."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete(data[:200])
    lines = data[:end].split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise Malformed(f"bad status line {status_line!r}")
    headers: List[Tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if b"\n" in line or b"\r" in line or b"\0" in line:
            raise Malformed(f"CR/LF/NUL inside header line {line!r}")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise Malformed(f"bad header line {line!r}")
        headers.append((name.lower(), value.strip(b" \t")))
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else b"", parts[0], headers, b""), data[end + 4:]


def _parse_chunked(rest: bytes) -> Tuple[bytes, bytes]:
    """The de-chunked body at the start of ``rest`` and the bytes after it (no trailers: our
    server never sends any)."""
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
            if rest[:2] != b"\r\n":
                if len(rest) < 2:
                    raise Incomplete("in last chunk")
                raise Malformed(f"bad end of chunked body {rest[:20]!r}")
            return b"".join(chunks), rest[2:]
        if len(rest) < size + 2:
            raise Incomplete("in chunk data")
        if rest[size:size + 2] != b"\r\n":
            raise Malformed("chunk data not followed by CRLF")
        chunks.append(rest[:size])
        rest = rest[size + 2:]


def parse_one(data: bytes, method: bytes = b"GET", eof: bool = True) -> Tuple[Response, bytes]:
    """Parse one response from the start of ``data`` (the answer to a ``method`` request); returns
    it and the bytes after it. ``eof``: data ends where the server closed, so a body without
    framing runs to the end (otherwise that raises ``Incomplete``)."""
    resp, rest = parse_head(data)
    te = resp.get_all(b"transfer-encoding")
    cl = resp.get_all(b"content-length")
    if te and cl:
        raise Malformed("response has both Transfer-Encoding and Content-Length")
    if len(cl) > 1:
        raise Malformed("response has several Content-Length")
    if 100 <= resp.status < 200 or resp.status in (204, 304) or method == b"HEAD":
        body = b""
    elif te:
        if te != [b"chunked"]:
            raise Malformed(f"unexpected transfer-encoding {te!r}")
        resp.chunked = True
        body, rest = _parse_chunked(rest)
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
    """Every complete response in ``data`` (which ends at the server's close), interim 1xx ones
    included; ``methods[i]`` is the method of the request the i-th final response answers (GET
    when not given). Returns the responses and the bytes left that make no complete response."""
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


# -- sockets ------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection with Nagle off, so that each sendall() leaves as the test wrote it."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_to_close(s: socket.socket, timeout: float = 5.0) -> Tuple[bytes, str]:
    """Everything the server sends until it closes or ``timeout`` has passed in all, and how it
    ended: ``"eof"``, ``"reset"`` or ``"timeout"`` (tests of graceful shutdown tell them apart)."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), "timeout"
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return b"".join(chunks), "timeout"
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not chunk:
            return b"".join(chunks), "eof"
        chunks.append(chunk)


def read_until_close(s: socket.socket, timeout: float = 5.0) -> Tuple[bytes, bool]:
    """``read_to_close`` for tests that only ask whether the server closed (eof or reset) in time."""
    data, how = read_to_close(s, timeout)
    return data, how != "timeout"


def read_until(s: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until ``marker`` has arrived (or the server closes, or the timeout passes): for a test
    that must act at a known point of a response still being sent."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_response(s: socket.socket, method: bytes = b"GET", timeout: Optional[float] = 5.0,
                  buffered: bytes = b"") -> Tuple[Response, bytes]:
    """Read exactly one response (an interim 1xx counts as one) on a connection that stays open;
    returns it and the bytes read past it (pass them back as ``buffered`` for the next one).

    ``timeout``: for the whole response, then an AssertionError; None leaves it to the socket's
    own timeout (``socket.timeout``, an OSError, as load clients count failures). A connection
    that ends before the first byte raises ``CleanClose``; in the middle, ``ConnectionError``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    data = buffered
    while True:
        try:
            return parse_one(data, method, eof=False)
        except Incomplete:
            pass
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no complete response within {timeout}s; got {data[:300]!r}")
            s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if deadline is None:
                raise
            raise AssertionError(f"no complete response within {timeout}s; got {data[:300]!r}") from None
        except ConnectionResetError:
            if not data:
                raise CleanClose("connection reset before the response") from None
            raise
        if not chunk:
            if not data:
                raise CleanClose("connection closed before the response")
            try:  # a close-delimited body ends here; any other is cut short
                return parse_one(data, method, eof=True)
            except Incomplete:
                raise ConnectionError(f"connection closed in the middle of a response: {data[:300]!r}") from None
        data += chunk


def read_responses(s: socket.socket, methods: Sequence[bytes], timeout: float = 5.0) -> List[Response]:
    """Read the final responses to pipelined requests with these ``methods``, in order (a HEAD
    answer has no body), on a connection that stays open; interim 1xx responses are skipped."""
    responses: List[Response] = []
    rest = b""
    deadline = time.monotonic() + timeout
    for method in methods:
        while True:
            resp, rest = read_response(s, method, max(0.01, deadline - time.monotonic()), rest)
            if not 100 <= resp.status < 200:
                break
        responses.append(resp)
    return responses


def nothing_within(s: socket.socket, seconds: float) -> bytes:
    """Bytes received within ``seconds`` (b"" if none; the socket stays usable): for asserting
    that the server says nothing yet."""
    r, _, _ = select.select([s], [], [], seconds)
    if not r:
        return b""
    s.settimeout(0.5)
    try:
        return s.recv(65536) or b"<closed>"
    except ConnectionResetError:
        return b"<reset>"


def send_and_read(port: int, data: bytes, timeout: float = 5.0, shut_wr: bool = False,
             host: str = "127.0.0.1") -> Tuple[bytes, bool]:
    """Send ``data`` on a new connection (then half-close it if ``shut_wr``) and read until the
    server closes: (everything received, whether it closed in time). A server that closes while
    we still send is an answer too, not an error."""
    with connect(port, timeout, host) as s:
        try:
            s.sendall(data)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_close(s, timeout)


def request_bytes(path: str, method: str = "GET", headers: Any = (), host: str = "127.0.0.1",
                  close: bool = False, version: str = "1.1") -> bytes:
    """A request with no body: these ``(name, value)`` header lines after Host."""
    lines = ["%s %s HTTP/%s" % (method, path, version), "Host: %s" % host]
    lines += ["%s: %s" % (k, v) for k, v in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_request(port: int, path: str, method: str = "GET", headers: Any = (), timeout: float = 10.0,
                 version: str = "1.1") -> Response:
    """One request over a fresh connection (Connection: close), its response parsed; the
    ``timeout`` is the socket's, so a silent server raises ``socket.timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_bytes(path, method, headers, close=True, version=version))
        return read_response(s, method.encode(), timeout=None)[0]


def raw_request(port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """``send_and_read`` for tests that only want the bytes."""
    return send_and_read(port, data, timeout, host=host)[0]


class KeepAliveClient:
    """One connection carrying request after request, each read as it is answered; ``raw`` keeps
    every byte of every response, for tests of exact bytes across a kept-alive connection."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = connect(port, timeout)
        self.timeout = timeout
        self.raw = b""
        self._rest = b""

    def __enter__(self) -> "KeepAliveClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, method: str, target: str, body: bytes = b"", headers: bytes = b"") -> Response:
        """Send one request (with a Content-Length if it has a body) and read its final response
        (interim 1xx ones are skipped)."""
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        self.sock.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\n%s%s\r\n%s"
                          % (method.encode(), target.encode(), headers, length, body))
        while True:
            resp, self._rest = read_response(self.sock, method.encode(), self.timeout, self._rest)
            self.raw += resp.raw
            if not 100 <= resp.status < 200:
                return resp
