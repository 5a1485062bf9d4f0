"""Writing responses: the connection's output path, and the framing of one response's bytes.

``OutputBuffer`` (one per connection) owns the writes to the transport. A response that fits in
one message goes out as one write, head and body joined; the parts of a streamed response are
gathered and written when the app lets the loop run, when ``FLUSH_SIZE`` has gathered, or with
the last part: a burst of small sends costs one system call, never a delayed or altered byte.
Bodies over ``COPY_LIMIT`` are handed to the transport as they are, never copied to be joined.

``ResponseWriter`` (the response half of a ``RequestCycle``) turns the app's messages into bytes:
the head from the checked header block (``headers.head_block``) and the framing that
``framing.choose_framing`` decides; then each body part framed (chunks) and bounded (never past
a declared Content-Length).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List, Optional, Union

from asgiworker.http.framing import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, choose_framing
from asgiworker.wire.headers import head_block
from asgiworker.wire.lines import STATUS_LINES, length_line, status_line

# Above this, a body is handed to the transport as is rather than joined to its framing.
COPY_LIMIT = 64 * 1024
# The parts of a streamed response are held until the app lets the loop run, or this much has
# gathered.
FLUSH_SIZE = 64 * 1024
_CHUNKED_LINE = b"transfer-encoding: chunked\r\n"
_CLOSE_LINE = b"connection: close\r\n"
_KEEP_ALIVE_LINE = b"connection: keep-alive\r\n"
LAST_CHUNK = b"0\r\n\r\n"
# What an app may send as a body part.
BodyPart = Union[bytes, bytearray, memoryview]


class OutputBuffer:
    """The writes of one connection. After ``close()`` (the connection is closed, or its
    transport handed over) nothing more is written."""

    __slots__ = ("_transport", "_loop", "_parts", "_size", "_flush_scheduled", "closed", "write")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        # write(data): now (a whole response, or a head); nothing may be gathered at that point.
        # The transport's own method: no call of ours in between.
        self.write: Callable[[bytes], None] = transport.write
        self._loop = loop
        self._parts: List[BodyPart] = []
        self._size = 0
        self._flush_scheduled = False
        self.closed = False

    def write_large(self, *parts: "bytes | bytearray | memoryview") -> None:
        """Write what was gathered, then ``parts`` without joining them (no copy of a big body)."""
        self.flush()
        if not self.closed:
            self._transport.writelines(parts)

    def write_soon(self, data: "bytes | bytearray | memoryview") -> None:
        """Gather part of a streamed response (see the module's docstring)."""
        self._parts.append(data)
        self._size += len(data)
        if self._size >= FLUSH_SIZE:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write out what ``write_soon`` gathered, in one call."""
        parts = self._parts
        if parts:
            self._parts = []
            self._size = 0
            if not self.closed:
                self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        """No more writes: what was gathered goes out first (the app sent it)."""
        if self._parts:
            self.flush()
        self.closed = True

    def discard(self) -> None:
        """The connection is gone: drop what was gathered."""
        self._parts = []
        self._size = 0
        self.closed = True


class ResponseWriter:
    """The response half of a request cycle; ``RequestCycle`` holds the state it works on."""

    # The response's state (RequestCycle sets it up).
    __slots__ = ("status", "headers", "framing", "remaining", "sent", "keep_alive")
    status: int
    headers: Any
    framing: int
    remaining: Optional[int]  # bytes still owed under a Content-Length
    sent: int
    keep_alive: bool
    # What the cycle provides (declared for the type checker).
    out: OutputBuffer
    scope: Any
    state: Any
    expect_100: bool
    more_body: bool
    conn: Any

    def _write_head_and_body(self, body: BodyPart, more_body: bool) -> None:
        """The head, with the first (or only) body part."""
        status = self.status
        scope = self.scope
        app_block, app_length, close = head_block(self.headers)
        head_request = scope["method"] == "HEAD"
        http11 = scope["http_version"] == "1.1"
        framing = self.framing = choose_framing(status, head_request, app_length,
                                                None if more_body else len(body), http11)
        keep_alive = self.keep_alive and not close and not self.conn.stopping
        parts: List[BodyPart] = [STATUS_LINES.get(status) or status_line(status), app_block]
        if framing == LENGTH:
            length = app_length if app_length is not None else len(body)
            parts.append(length_line(length))
            self.remaining = length
        elif framing == CHUNKED:
            parts.append(_CHUNKED_LINE)
        elif framing == UNTIL_CLOSE:
            keep_alive = False  # the end of the body is the close
        if self.expect_100 and self.more_body:
            # The client holds back a body we never asked for: what it sends next is unknowable.
            keep_alive = False
        if not keep_alive:
            parts.append(_CLOSE_LINE)
        elif not http11:
            parts.append(_KEEP_ALIVE_LINE)
        # A 1xx as the response is not a final one: its client waits for one still, and would
        # take the next request's answer for it. The close tells it there is none.
        self.keep_alive = keep_alive if status >= 200 else False
        parts.append(self.state.default_headers)
        parts.append(b"\r\n")
        if head_request or framing == NO_BODY:
            # HEAD gets the headers GET would get, and never a byte of body or chunk framing.
            self.framing = NO_BODY
            self.remaining = None
            self.out.write(b"".join(parts))
            return
        if more_body:
            # The start of a stream: gathered with the parts that follow.
            self.out.write_soon(b"".join(parts))
            if body:
                self._write_body(body, True)
            return
        if body:
            if app_length is not None:
                body = self._bounded(body)
            else:
                self.remaining = 0
            self.sent = len(body)
            if len(body) > COPY_LIMIT:
                self.out.write_large(b"".join(parts), body)
                return
            parts.append(body)
        self.out.write(b"".join(parts))  # head and a small body: one copy, one system call

    def _write_body(self, body: BodyPart, more_body: bool) -> None:
        """A later body part (or the stream's first, after its head)."""
        framing = self.framing
        if framing == NO_BODY:
            return
        # Gathered until the flush as bytes: the app may reuse its buffer meanwhile.
        data = body if isinstance(body, bytes) else bytes(body)
        out = self.out
        if framing == CHUNKED:
            self.sent += len(data)
            tail = b"\r\n" if more_body else b"\r\n0\r\n\r\n"
            if len(data) > COPY_LIMIT:
                out.write_large(b"%x\r\n" % len(data), data, tail)
            else:
                out.write_soon(b"%x\r\n%b%b" % (len(data), data, tail))
            return
        bounded = self._bounded(data)
        self.sent += len(bounded)
        if len(bounded) > COPY_LIMIT:
            out.write_large(bounded)
        else:
            out.write_soon(bounded)

    def _end_body(self) -> None:
        """The last message carried no body: end the chunks, if chunked."""
        if self.framing == CHUNKED:
            self.out.write_soon(LAST_CHUNK)

    def _bounded(self, body: BodyPart) -> BodyPart:
        """Never send past the declared Content-Length."""
        remaining = self.remaining
        if remaining is None:
            return body
        if len(body) > remaining:
            self.state.log.error("Response to %s %s is longer than its Content-Length; truncated and closing",
                                 self.scope["method"], self.scope["raw_path"].decode("latin-1"))
            self.keep_alive = False
            body = body[:remaining]
        self.remaining = remaining - len(body)
        return body
