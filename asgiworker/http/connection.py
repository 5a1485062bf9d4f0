"""One HTTP/1.1 connection: the transport's callbacks, feeding the parser without ever queueing
more than ``MAX_PIPELINED`` requests, answering them in order, keep-alive, timeouts, and the
hand-over of an upgraded connection to its WebSocket session.

The connection's phase says what becomes of its input, and so what happens once the queued
requests are answered:

    OPEN         requests are read and answered; idle between them (keep-alive)
    FINISHING    nothing more is read as HTTP (the client shut its side; a protocol switch we do
                 not serve): close once the queued requests are answered
    REJECTING    a bad request: its error response goes out once the requests before it are
                 answered (its request line may still be arriving)
    UPGRADING    a WebSocket upgrade: handed over once the requests before it are answered
    CLOSED       the transport is closed (or closing)
    HANDED_OVER  the transport now belongs to the WebSocket session

Only OPEN reads; every phase change is in one method (``_finish``, ``_reject``, ``_close`` ...).
"""

from __future__ import annotations

import asyncio
from collections import deque
from enum import IntEnum
from typing import Any, Deque, Dict, List, Optional, Tuple

import httptools

from asgiworker.http.cycle import COMPLETE, RESPONSE_COMPLETE, SENDING, RequestCycle
from asgiworker.http.reader import MAX_PIPELINED, Reject, RequestReader, failing_message_start
from asgiworker.http.state import ServerState
from asgiworker.http.timeouts import ConnectionTimeouts
from asgiworker.http.unparsed import UnparsedInput
from asgiworker.http.writer import OutputBuffer
from asgiworker.tls import tls_extension
from asgiworker.websocket import WebSocketSession
from asgiworker.wire.flow import FlowControl
from asgiworker.wire.grammar import HEAD_END, MIN_REQUEST, SPECIAL_HEADERS
from asgiworker.wire.lines import error_response

# The body buffered for the app is bounded by reader.BODY_HIGH_WATER; reading resumes below this.
BODY_LOW_WATER = 64 * 1024
_SHORT_READ = MAX_PIPELINED * MIN_REQUEST
# How far into a read a head's end is looked for, to parse the head apart from its body.
_HEAD_SEARCH = 16 * 1024
# One shared dict, with nothing per request in it.
HTTP_EXTENSIONS: Dict[str, Any] = {RESPONSE_COMPLETE: {}}


class ConnectionPhase(IntEnum):
    OPEN = 0
    FINISHING = 1
    REJECTING = 2
    UPGRADING = 3
    CLOSED = 4
    HANDED_OVER = 5


# As plain ints for the hot path (see cycle.py).
OPEN, FINISHING, REJECTING, UPGRADING, CLOSED, HANDED_OVER = (int(phase) for phase in ConnectionPhase)


class HttpConnection(RequestReader, UnparsedInput, ConnectionTimeouts, asyncio.Protocol):
    def __init__(self, state: ServerState, peer: Any = None, local: Any = None) -> None:
        # (Every attribute is set here, none left to a class-level default: CPython reads an
        # instance's own attributes in its fast path, and one shadowing a class attribute slowly.)
        self.state = state
        # The peer's and our own address when the listener already knows them (it saves the
        # transport a system call for each); otherwise asked of the transport.
        self._peer = peer
        self._local = local
        self.loop = state.loop
        self.settings = settings = state.settings
        self.parser = httptools.HttpRequestParser(self)
        # Read for every header of every request: kept at hand.
        self._field_size_limit = settings.limit_request_field_size
        self._fields_limit = settings.limit_request_fields
        self._line_limit = settings.limit_request_line
        self._keepalive_on = settings.keepalive > 0
        self._root_path = settings.root_path
        self.transport: Any = None
        self.out: OutputBuffer = None  # type: ignore[assignment]  # set in connection_made
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in connection_made
        self.client: Any = None
        self.server: Any = None
        self.scheme = "http"
        self._extensions: Dict[str, Any] = HTTP_EXTENSIONS
        self._phase = OPEN
        # A graceful stop began: the response being written says `connection: close`.
        self.stopping = False
        self._proxy_buffer: Optional[bytes] = b"" if settings.proxy_protocol != "off" else None
        # The reader's state (reader.py) for the request whose head or body is arriving now.
        self._url = b""
        self._headers: List[List[bytes]] = []
        self._hosts = 0
        self._transfer_encoding = False
        self._expect_100 = False
        self._special: "frozenset[bytes]" = SPECIAL_HEADERS  # (more behind a trusted proxy)
        self._upgrade: Optional[bytes] = None
        self._forwarded: Optional[List[Tuple[bytes, bytes]]] = None
        self._parsing: Optional[RequestCycle] = None
        self._websocket: Optional[WebSocketSession] = None
        self._head_started: Optional[float] = None  # when the head under way began
        # The request being answered, and those parsed and waiting their turn.
        self._active: Optional[RequestCycle] = None
        self._deferred: Optional[RequestCycle] = None
        self._pipeline: Deque[RequestCycle] = deque()
        # Bytes not fed to the parser yet because MAX_PIPELINED requests wait (reading is paused).
        self._held: Optional[bytes] = None
        self._served = 0
        # REJECTING: the error response to send, or the bad request line still arriving.
        self._pending_error: Optional[bytes] = None
        self._bad_line: Optional[bytes] = None
        # The bytes since the parser last stood between two requests (to find where a request
        # with a bad method starts), and what follows an upgrade request.
        self._since_boundary: Optional[bytes] = None
        self._websocket_leftover = b""
        self._last_activity = self.loop.time()
        # The client has shut its side (no EOF will come to end a lingering close).
        self._peer_closed = False
        # Closing in stages (RFC 9112 9.6): our side is shut; input is discarded until then.
        self._linger_until: Optional[float] = None
        # Request body bytes read on this connection, and the body rate's window: the body it
        # measures, when it began and the count then (see _body_too_slow).
        self._body_bytes = 0
        self._client_keeps_alive = True
        self._body_left = 0
        self._rate_cycle: Optional[RequestCycle] = None
        self._rate_since = 0.0
        self._rate_mark = 0

    @property
    def closed(self) -> bool:
        return self._phase >= CLOSED

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.out = OutputBuffer(transport, self.loop)
        self.flow = FlowControl(transport, self.loop)
        state = self.state
        state.connections.add(self)
        # Accepted just before a graceful stop began: served, and then closed.
        self.stopping = state.stopping
        peer = self._peer if self._peer is not None else transport.get_extra_info("peername")
        sock = self._local if self._local is not None else transport.get_extra_info("sockname")
        if isinstance(peer, (tuple, list)) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        if isinstance(sock, (tuple, list)) and len(sock) >= 2:
            self.server = (str(sock[0]), int(sock[1]))
        elif isinstance(sock, str) and sock:
            self.server = (sock, None)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.scheme = "https"
            self._extensions = {**HTTP_EXTENSIONS, "tls": tls_extension(ssl_object, self.settings.server_cert)}
        proxy = self.settings.proxy
        if proxy is not None and proxy.trusts(self.client[0] if self.client else None):
            self._special = state.proxied_headers
        if len(state.connections) > self.settings.worker_connections:
            # Over Gunicorn's worker_connections: say so at once rather than queue the client.
            state.log.warning("worker_connections (%d) reached: answering 503", self.settings.worker_connections)
            self.send_and_close(error_response(503, "Service Unavailable: too many connections",
                                               state.default_headers))

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if self._phase != HANDED_OVER:
            self._phase = CLOSED
        self.state.connections.discard(self)
        for cycle in (self._active, self._parsing, *self._pipeline):
            if cycle is not None:
                cycle.on_disconnect()
        active = self._active
        if active is not None and active.task is not None and not active.task.done():
            # Gunicorn's asgi_disconnect_grace_period: the app has seen its disconnect; if it
            # is still running after the grace period, it is cancelled.
            self.loop.call_later(self.settings.disconnect_grace, _cancel_if_running, active.task)
        self._pipeline.clear()
        self._held = None
        if self.out is not None:
            self.out.discard()
            self.flow.connection_lost()

    def eof_received(self) -> Optional[bool]:
        # A client may shut down its write side after its request and still wait for the
        # answer: keep the transport open while there is a request to answer. Its requests whose
        # body is complete learn it from receive() (`http.disconnect`) and may still send their
        # response; one whose body was cut short is disconnected. (A lingering close ends here:
        # the transport closes itself.)
        self._peer_closed = True
        if (self._active is None and not self._pipeline) or self._phase >= CLOSED:
            return None
        if self._phase == OPEN:
            self._phase = FINISHING
        parsing = self._parsing
        for cycle in (self._active, *self._pipeline):
            if cycle is not None and cycle is not parsing:
                cycle.on_eof()
        if parsing is not None and parsing.more_body:
            parsing.on_disconnect()
        return True

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._phase:  # not OPEN: nothing more is parsed
            if self._bad_line is not None:
                self._read_bad_request_line(data)
            return
        self._last_activity = self.loop.time()
        if self._proxy_buffer is not None:
            data = self._read_proxy_header(data)
            if not data:
                return
        if self._held is not None:
            self._held += data  # behind the bytes already waiting (reading is paused: bounded)
            return
        # A read completes at most one request more than it holds head terminators (the one
        # already under way when it arrived), and no more than one per MIN_REQUEST bytes.
        if not self._pipeline and len(data) <= _SHORT_READ:
            self._parse(data, b"")  # (the usual read: too short to overflow an empty pipeline)
            return
        room = MAX_PIPELINED - len(self._pipeline)
        # A read that is all body holds no head: parsed without counting (which costs 30 µs a
        # 64 KiB read).
        if len(data) <= room * MIN_REQUEST or len(data) <= self._body_left:
            self._parse(data, b"")
            return
        if self._parsing is None and room > 1:
            # Between two requests: an upload's head usually comes with its body. Its head is
            # parsed alone first, and its Content-Length then says how much of the rest is body:
            # only what follows that needs counting. (That piece completes at most two heads: the
            # one whose end it holds, and one begun in the last read whose CRLF CRLF was split.)
            end = data.find(HEAD_END, 0, _HEAD_SEARCH)
            if end >= 0:
                cut = end + len(HEAD_END)
                data, rest = data[:cut], data[cut:]
                self._parse(data, rest, start=False)
                if self._phase or not rest:
                    self._start_deferred()
                    if rest and self._bad_line is not None:
                        self._read_bad_request_line(rest)
                    return  # (an upgrade took the rest as the WebSocket's first bytes)
                data = rest
                room = MAX_PIPELINED - len(self._pipeline)
                if len(data) <= self._body_left:
                    self._parse(data, b"")
                    return
        if data.count(HEAD_END, self._body_left) < room:
            self._parse(data, b"")
        else:
            self._feed(data)

    # -- feeding the parser -------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` without ever queueing more than MAX_PIPELINED requests: cut it before
        the head that would overflow the pipeline, and hold the rest until there is room."""
        while data and self._phase == OPEN:
            room = MAX_PIPELINED - len(self._pipeline)
            if room <= 0:
                self._held = data
                self.flow.pause_reading()
                return
            cut = -1
            for _ in range(room):
                cut = data.find(HEAD_END, cut + 1)
                if cut < 0:
                    break
            if cut < 0:
                piece, data = data, b""
            else:
                # Up to the last byte of the room-th head terminator: at most room-1 heads end in
                # the piece, plus the request under way before it.
                piece, data = data[:cut + 3], data[cut + 3:]
            self._parse(piece, data)
        if data and self._bad_line is not None:
            self._read_bad_request_line(data)

    def _parse(self, data: bytes, rest: bytes, start: bool = True) -> None:
        """Feed ``data`` to the parser; ``rest``: the bytes that follow it, not fed yet.
        ``start=False``: a request whose head this completes waits for ``_start_deferred``."""
        if self._head_started is None and self._parsing is None:
            self._since_boundary = data
        elif self._since_boundary is not None:
            self._since_boundary += data
            if len(self._since_boundary) > 16384:
                self._since_boundary = None  # inside a body: no request line to find here
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._websocket is not None:
                self._websocket_leftover = (data[exc.args[0]:] if exc.args else b"") + rest
                self._phase = UPGRADING
                if self._active is None and not self._pipeline:
                    self._hand_over_to_websocket()
            else:
                # Other protocol switches (h2c, CONNECT) are not served: the request is answered
                # as plain HTTP and the connection closes after it (what follows is not HTTP/1.1).
                self._phase = FINISHING
                last = self._pipeline[-1] if self._pipeline else self._active
                if last is not None:
                    last.keep_alive = False
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if isinstance(reject, Reject):
                self._reject(reject.status, reject.reason)
            else:
                self._reject(400, "Invalid HTTP request")
        except httptools.HttpParserInvalidMethodError:
            # llhttp knows the registered methods only. Whether this is a well-formed request for
            # a method we do not implement (RFC 9110 9.1: 501) or garbage (400) is told by its
            # whole request line, which may still be on its way.
            seen = self._since_boundary if self._since_boundary is not None else data
            self._phase = REJECTING
            self._bad_line = b""
            self._head_started = self._last_activity
            self._read_bad_request_line(seen[failing_message_start(seen):])
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":
                self._reject(505, "HTTP version not supported")
            else:
                self._reject(400, "Invalid HTTP request: %s" % exc)
        finally:
            # A request becomes active as its head is parsed, but runs once the bytes at hand are
            # all parsed: a small request's body is then already there, and the app answers it
            # without ever waiting. (Inline: this runs for every read.)
            deferred = self._deferred
            if deferred is not None and start:
                self._deferred = None
                if not deferred.disconnected:
                    self.state.start_app_task(deferred, deferred.run())

    def _start_deferred(self) -> None:
        """What ``_parse`` does at its end, for a ``_parse(start=False)``."""
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            if not deferred.disconnected:
                self.state.start_app_task(deferred, deferred.run())

    # -- answering in order -------------------------------------------------------------------

    def on_body_consumed(self) -> None:
        """The app took the body buffered so far: read again if that is what held us."""
        self._maybe_resume_reading()

    def on_response_complete(self, cycle: RequestCycle) -> None:
        self._active = None
        self._served += 1
        if cycle is self._parsing and cycle.expect_100:
            # The client is still holding back a body we never asked for: we cannot know
            # what it will send next, so this connection cannot carry another request.
            cycle.keep_alive = False
        phase = self._phase
        if not cycle.keep_alive or phase >= CLOSED:
            # The client asked for the close itself (`connection: close`, HTTP/1.0) and sent
            # nothing after that request (what it did send is read: more would have been a parse
            # error, and the phase would say so): it MUST NOT send more (RFC 9112 9.6), so there
            # is nothing to linger for (nginx's heuristic too; it saves a proxy's every request
            # two system calls and a turn of the loop).
            self._close(linger=self._client_keeps_alive or phase != OPEN or self._parsing is not None
                        or self._held is not None or bool(self._pipeline))
        elif self._pipeline:
            # The next request is the active one from now on (new heads queue behind it); it
            # starts from the loop, never inside this app's send().
            self._active = self._pipeline.popleft()
            self.loop.call_soon(self._start_next)
        elif phase == UPGRADING:
            self.loop.call_soon(self._hand_over_to_websocket)  # from the loop too
        elif phase == REJECTING:
            if self._pending_error is not None:
                self.send_and_close(self._pending_error)
            # else: the bad request line is still arriving; its error response comes next
        elif phase == FINISHING:
            self._close()
        # (Stopping, after a response that promised keep-alive: the stop began while it went out,
        # say at --max-requests. Its client may be sending the next request now: it gets the
        # idle grace of shutdown(), as every idle connection does.)
        else:
            self._last_activity = now = self.loop.time()
            if self._head_started is not None:
                self._head_started = now  # a head begun behind this request: its time starts now
            if self.flow.reading_paused:
                self._maybe_resume_reading()

    def _start_next(self) -> None:
        """From the loop, once the previous response is complete: run the next pipelined request
        (started here, never inside the previous app's send(), so the stack does not grow with
        the depth of the pipeline), then parse what waited for its place."""
        cycle = self._active
        if self._phase >= CLOSED or cycle is None:
            return
        if not cycle.disconnected and cycle.task is None:
            self.state.start_app_task(cycle, cycle.run())
        held, self._held = self._held, None
        if held is not None and self._phase == OPEN:
            self._feed(held)
        self._maybe_resume_reading()

    def _maybe_resume_reading(self) -> None:
        if not self.flow.reading_paused or self._phase >= CLOSED or self._held is not None \
                or len(self._pipeline) >= MAX_PIPELINED:
            return
        parsing = self._parsing
        if parsing is not None and parsing.buffered > BODY_LOW_WATER and parsing.phase != COMPLETE:
            return
        self.flow.resume_reading()

    def _hand_over_to_websocket(self) -> None:
        session, self._websocket = self._websocket, None
        if session is None or self._phase >= CLOSED:
            return  # the client left before its turn came
        self.state.connections.discard(self)
        self._phase = HANDED_OVER  # this object no longer owns the transport
        self.out.close()
        self.flow.resume_reading()
        session.start(self.transport, self._websocket_leftover)

    def _reject(self, status: int, reason: str, quiet: bool = False) -> None:
        """A bad request: nothing after it is read; its error response goes out now, or after the
        requests before it. One whose body is arriving is cut off (its app sees a disconnect).
        ``quiet``: the client is slow rather than wrong (logged at info level)."""
        self._phase = REJECTING
        log = self.state.log.info if quiet else self.state.log.warning
        log("%s from %s: %s", "Closing connection" if quiet else "Invalid request", self._peer_host(), reason)
        parsing = self._parsing
        # (The refusal answers the request being read; to a HEAD, without its text.)
        response = error_response(status, reason, self.state.default_headers,
                                  head=parsing is not None and parsing.scope["method"] == "HEAD")
        if parsing is not None:
            # Its body is broken: the app reading it sees a disconnect, and nothing after it is
            # answered. If the app has not started answering, it gets our error instead.
            self._pipeline = deque(c for c in self._pipeline if c is not parsing)
            parsing.more_body = False
            parsing.on_disconnect()
            if parsing is self._active and parsing.phase < SENDING:
                self.send_and_close(response)
                return
        if self._active is None and not self._pipeline:
            self.send_and_close(response)
        else:
            self._pending_error = response
            self.flow.pause_reading()

    # -- closing ----------------------------------------------------------------------------

    def send_and_close(self, data: bytes) -> None:
        """Write ``data`` (a whole response of the server's own) after what is gathered, then close."""
        if self._phase < CLOSED:
            self.out.flush()
            self.out.write(data)
        self._close()

    def close(self) -> None:
        self._close()

    def _close(self, linger: bool = True) -> None:
        """Close in stages (RFC 9112 9.6): what was written goes out, then our side is shut
        (FIN), and what the client still sends is read and discarded until it closes too, or
        for at most ``linger_timeout``. Closing at once would make the kernel answer any unread
        or later input with a reset, which can destroy our last response before the client reads
        it, and leaves the client unable to tell whether its request was read. (TLS has its own
        close, close_notify: closed at once.) ``linger=False``: the client will send nothing more."""
        if self._phase < CLOSED:
            self._phase = CLOSED
            self.out.close()
            transport = self.transport
            timeout = self.settings.linger_timeout
            if linger and timeout and not self._peer_closed and transport.can_write_eof():
                transport.write_eof()  # (after the buffered output)
                self._linger_until = self.loop.time() + timeout
                self.flow.resume_reading()  # input is discarded now: read it, whatever held it
            else:
                transport.close()

    def abort(self) -> None:
        """Cut the connection at once (what the app sent before failing goes out first, as it
        would unbuffered)."""
        if self.transport is None:
            return
        if self._phase < CLOSED:
            self._phase = CLOSED
            self.out.close()
            self.transport.abort()
        elif self._linger_until is not None:
            self._end_linger(abort=self.flow.writing_paused)

    def _cut(self) -> None:
        """Cut with a reset: for a client that reads nothing (its unsent bytes are dropped)."""
        if self._phase < CLOSED:
            self._phase = CLOSED
            self.out.close()
            self.flow.cut()

    def _end_linger(self, abort: bool) -> None:
        """The lingering close is over: close (after what is still buffered), or cut."""
        self._linger_until = None
        if abort:
            self.flow.cut()
        elif not self.transport.is_closing():
            self.transport.close()

def _cancel_if_running(task: "asyncio.Task[None]") -> None:
    if not task.done():
        task.cancel()
