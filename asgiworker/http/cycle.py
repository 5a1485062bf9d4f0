"""One request and its response: the ASGI ``receive``/``send`` pair handed to the application.

The cycle runs as one Task (``ServerState.start_app_task``). It talks to its connection through
a narrow interface: ``out`` (the connection's ``OutputBuffer``) and ``conn.flow`` (its
``FlowControl``) to write, and ``on_body_consumed`` / ``on_response_complete`` / ``close`` /
``abort`` / ``send_and_close`` to tell it what happened. The connection feeds the request body in
through ``body`` and ``wake``, and says when the client left (``on_disconnect``) or sends no more
(``on_eof``).

The response's progress is one phase, moving forward only:
AWAITING_START -> STARTED (``http.response.start`` received) -> SENDING (the head is written) ->
COMPLETE (the last body part went out, or the response failed).
"""

from __future__ import annotations

import asyncio
from enum import IntEnum
from time import perf_counter
from typing import Any, Dict, List, Optional

from asgiworker.accesslog import log_access
from asgiworker.errors import ClientDisconnected
from asgiworker.http.framing import NO_BODY
from asgiworker.http.writer import ResponseWriter
from asgiworker.wire.lines import CONTINUE_RESPONSE, error_response


class ResponsePhase(IntEnum):
    AWAITING_START = 0
    STARTED = 1
    SENDING = 2
    COMPLETE = 3


# The phases as plain ints where they are read on every request: CPython compares exact ints in
# its fast path, int subclasses (enum members) in the slow one.
AWAITING_START, STARTED, SENDING, COMPLETE = (int(phase) for phase in ResponsePhase)

# The extension every HTTP scope offers: a whole response in one message,
#   {"type": "asgiworker.http.response.complete", "status": int, "headers": [...], "body": bytes}
# what `http.response.start` and one final `http.response.body` do, in one await. Our channel
# consumer adapter uses it, since a consumer's reply is complete before it reaches the server.
RESPONSE_COMPLETE = "asgiworker.http.response.complete"
_DISCONNECT = "the client has closed the connection"


# (The checks are written inline where messages arrive, one comparison each on the hot path; the
# errors are raised here.)
_BYTES_TYPES = (bytes, bytearray, memoryview)


def _bad_status(status: Any) -> RuntimeError:
    return RuntimeError("ASGI 'status' must be an int between 100 and 999, got %r" % (status,))


def _bad_body(body: Any) -> RuntimeError:
    return RuntimeError("ASGI 'body' must be bytes, got %s" % type(body).__name__)


def _odd_status(status: Any) -> int:
    """A status the one-comparison check did not pass (not an exact int from 200 to 999): the
    int it stands for, or RuntimeError. Int subclasses (``HTTPStatus.OK``) are ints, bool is not.
    A 1xx goes out as the app asked (the connection then closes: see the writer); 101 never
    does: no client of a plain HTTP request asked to switch protocols (a WebSocket's 101 is
    the server's to write)."""
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 999:
        if status == 101:
            raise RuntimeError("ASGI 'status' 101 (Switching Protocols) is not a response to an HTTP request")
        return int(status)
    raise _bad_status(status)


def _odd_body(body: Any) -> "bytes | bytearray | memoryview":
    """A body that is not exactly ``bytes``: as it is if it is a bytearray or a flat view of
    bytes, else RuntimeError. A memoryview of wider items counts items, not bytes, in len()
    (its Content-Length would be short, and the rest of its bytes read as the next response):
    seen as its bytes, without a copy when it is contiguous."""
    if type(body) is memoryview:
        if body.itemsize == 1 and body.ndim == 1 and body.c_contiguous:
            return body
        return body.cast("B") if body.c_contiguous else body.tobytes()
    if isinstance(body, _BYTES_TYPES):
        return body
    raise _bad_body(body)


class RequestCycle(ResponseWriter):
    __slots__ = (
        "conn", "state", "out", "scope", "expect_100", "body", "buffered", "more_body",
        "body_done", "eof", "waiter", "disconnected", "phase", "task", "started",
    )

    def __init__(self, conn: Any, scope: Dict[str, Any], keep_alive: bool, expect_100: bool) -> None:
        self.conn = conn
        self.state = conn.state
        self.out = conn.out
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        # The request body: parts the connection has read and the app has not taken yet.
        self.body: List[bytes] = []
        self.buffered = 0
        self.more_body = True  # more of the body is still to come from the client
        self.body_done = False  # the app has received the whole body
        self.eof = False  # the client will send nothing more
        self.waiter: Optional[asyncio.Future[None]] = None
        self.disconnected = False  # the client is gone: nothing more can be sent
        self.phase = AWAITING_START
        self.status = 0
        self.headers = ()
        self.framing = NO_BODY
        self.remaining = None
        self.task: Optional[asyncio.Task[None]] = None
        self.sent = 0
        # Timing is only paid for when someone reads it.
        self.started = perf_counter() if self.state.timing else 0.0

    # -- what the connection tells the cycle ---------------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_disconnect(self) -> None:
        self.disconnected = True
        self.wake()

    def on_eof(self) -> None:
        """The client sends nothing more (it may still read): once the body is delivered,
        receive() says `http.disconnect`, while send() still writes the response."""
        self.eof = True
        self.wake()

    # -- the application -----------------------------------------------------------------------

    async def run(self) -> None:
        state = self.state
        hooks = state.hooks
        if hooks is not None:
            hooks.before(self.scope)
        try:
            await state.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            self._fail()  # (the app gave up on a client that left: let go of the connection)
        except asyncio.CancelledError:
            self._fail()
            raise
        except BaseException:
            state.log.exception("Error handling request %s %s", self.scope["method"],
                                self.scope["raw_path"].decode("latin-1"))
            self._fail()
        else:
            if self.phase == COMPLETE:
                return
            if self.disconnected or (self.eof and self.body_done):
                # Nobody to answer, or the app was told so (receive() said http.disconnect once
                # the client shut its side): not an error, just let go of the connection.
                self._fail()
                return
            what = "completing" if self.phase == SENDING else "sending"
            state.log.error("ASGI application returned without %s the response to %s %s", what,
                            self.scope["method"], self.scope["raw_path"].decode("latin-1"))
            self._fail()
        finally:
            state.running.discard(self)

    def _fail(self) -> None:
        """Answer 500 if nothing went out yet, else cut the connection: never a second response."""
        phase = self.phase
        if phase == COMPLETE:
            return
        self.phase = COMPLETE
        self.body = []
        self.wake()
        state = self.state
        state.request_done()
        conn = self.conn
        if self.disconnected or self.out.closed:
            conn.close()
        elif phase == SENDING:
            self._report(self.status, True)
            conn.abort()
        else:
            self._report(500, False)
            conn.send_and_close(error_response(500, "Internal Server Error", state.default_headers,
                                               head=self.scope["method"] == "HEAD"))

    def _report(self, status: int, head_sent: bool) -> None:
        """The request is over: Gunicorn's post_request hook and access log, when set."""
        settings = self.state.settings
        headers = self.headers if head_sent else ()
        if settings.request_hooks is not None:
            settings.request_hooks.after(self.scope, status, headers, self.sent)
        if settings.access_log:
            log_access(self.state.log, self.scope, status, headers, self.sent, perf_counter() - self.started)

    # -- ASGI receive -------------------------------------------------------------------------

    async def receive(self) -> Dict[str, Any]:
        if self.phase == COMPLETE or self.disconnected:
            return {"type": "http.disconnect"}
        if self.body_done:
            # The whole body was delivered: the next event is the end of the response or the
            # client leaving (apps wait here to notice a disconnect while they stream).
            if not self.eof:
                await self._wait()
            return {"type": "http.disconnect"}
        if not self.body and self.more_body:
            if self.expect_100:
                # Decided once the bytes at hand are parsed: the body may be among them already.
                self.conn.loop.call_soon(self._send_continue)
            await self._wait()
            if self.disconnected:
                return {"type": "http.disconnect"}
        self.expect_100 = False
        chunks = self.body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.body = []
        self.buffered = 0
        if self.conn.flow.reading_paused:
            self.conn.on_body_consumed()
        more_body = self.more_body
        self.body_done = not more_body
        return {"type": "http.request", "body": body, "more_body": more_body}

    async def _wait(self) -> None:
        self.waiter = self.conn.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _send_continue(self) -> None:
        if self.expect_100 and not self.body and self.more_body and self.phase < SENDING \
                and not self.disconnected and not self.out.closed:
            self.expect_100 = False
            self.out.write(CONTINUE_RESPONSE)

    # -- ASGI send ----------------------------------------------------------------------------

    async def send(self, message: Dict[str, Any]) -> None:
        if self.disconnected:
            raise ClientDisconnected(_DISCONNECT)
        message_type = message["type"]
        phase = self.phase
        if phase == AWAITING_START:
            if message_type == RESPONSE_COMPLETE:
                self.respond(message["status"], message.get("headers", ()), message.get("body", b""))
                return
            if message_type != "http.response.start":
                raise RuntimeError("Expected ASGI message 'http.response.start', got %r" % (message_type,))
            status = message["status"]
            if type(status) is not int or not 200 <= status <= 999:
                status = _odd_status(status)
            self.status = status
            self.headers = message.get("headers", ())
            self.phase = STARTED
            return
        if message_type != "http.response.body":
            raise RuntimeError("Expected ASGI message 'http.response.body', got %r" % (message_type,))
        if phase == COMPLETE:
            raise RuntimeError("The response is already complete; no more 'http.response.body' is allowed")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if type(body) is not bytes:
            body = _odd_body(body)
        if self.out.closed:
            self.on_disconnect()
            raise ClientDisconnected(_DISCONNECT)
        if phase == STARTED:
            self._write_head_and_body(body, more_body)  # (raises on invalid headers: nothing sent)
            self.phase = SENDING
        elif body:
            self._write_body(body, more_body)
        elif not more_body:
            self._end_body()
        if more_body:
            if self.conn.flow.writing_paused:
                await self.conn.flow.drain()
            return
        if phase == SENDING:
            self.out.flush()  # the end of a stream (a one-message response went out whole)
        self._complete()

    def respond(self, status: Any, headers: Any, body: Any) -> None:
        """A whole response at once (the RESPONSE_COMPLETE extension message)."""
        if self.disconnected or self.out.closed:
            self.on_disconnect()
            raise ClientDisconnected(_DISCONNECT)
        if self.phase != AWAITING_START:
            raise RuntimeError("The response has already started")
        if type(status) is not int or not 200 <= status <= 999:
            status = _odd_status(status)
        if type(body) is not bytes:
            body = _odd_body(body)
        self.status = status
        self.headers = headers
        self.phase = STARTED
        try:
            self._write_head_and_body(body, False)
        except BaseException:
            self.phase = AWAITING_START  # refused (invalid headers): nothing was sent, nothing started
            raise
        self.phase = SENDING
        self._complete()

    def _complete(self) -> None:
        if self.remaining:
            self.state.log.error("Response to %s %s ended %d bytes short of its Content-Length; closing the connection",
                                 self.scope["method"], self.scope["raw_path"].decode("latin-1"), self.remaining)
            self.keep_alive = False
        self.phase = COMPLETE
        self.body = []
        self.wake()
        state = self.state
        if state.reporting:
            self._report(self.status, True)
        state.request_done()
        self.conn.on_response_complete(self)
