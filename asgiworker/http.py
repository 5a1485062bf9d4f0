"""HTTP/1.1 connections on httptools: parsing, framing, keep-alive, pipelining, flow control.

One ``HttpConnection`` per socket. Each request becomes a ``RequestCycle`` whose ``receive`` and
``send`` are handed to the (single, internal) ASGI 3 callable; the cycle runs as one real asyncio
Task (``asgiworker.tasks``). Pipelined requests are parsed as they arrive but answered strictly in
order: only the oldest request's task runs, the others wait in ``_pipeline`` with their bodies
buffered (bounded). The next one is started from the event loop once the previous response is
complete, never from inside the previous application's ``send()``. At most ``MAX_PIPELINED``
requests wait; past that the parser is not fed (the rest of the read waits as bytes, reading
paused) until one of them has been answered.
"""

from __future__ import annotations

import asyncio
import re
from contextvars import copy_context
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from time import perf_counter
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

import httptools

from asgiworker import proxy_protocol
from asgiworker.accesslog import log_access
from asgiworker.config import Settings
from asgiworker.errors import ClientDisconnected
from asgiworker.tasks import start_task
from asgiworker.tls import tls_extension
from asgiworker.websocket import WebSocketSession, build_raw_request, is_websocket_upgrade, websocket_scope

ASGIApp = Callable[[Dict[str, Any], Callable[[], Awaitable[Dict[str, Any]]], Callable[[Dict[str, Any]], Awaitable[None]]], Awaitable[None]]

# Request body bytes buffered for the app before we stop reading from the socket, and the level
# at which we start again. Pipelined requests waiting their turn are bounded in number too.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024
MAX_PIPELINED = 16
# The shortest complete request is 18 bytes (`GET / HTTP/1.0` CRLF CRLF), and every request head
# ends in CRLF CRLF (the parser takes no bare LF): a read holds at most one completed request more
# than it has head terminators (the request already under way when it arrived).
_MIN_REQUEST = 18
_HEAD_END = b"\r\n\r\n"
# Above this, a body is handed to the transport as is rather than joined to its framing.
_COPY_LIMIT = 64 * 1024
# The parts of a streamed response are held until the app lets the loop run (or this much has
# gathered): a burst of small sends then costs one system call instead of one each.
FLUSH_SIZE = 64 * 1024

ASGI_VERSION = {"version": "3.0", "spec_version": "2.5"}


class _Reject(Exception):
    """Raised from parser callbacks to refuse a request with an HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


STATUS_LINES = {int(s): _status_line(int(s)) for s in HTTPStatus}
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# uri-host [ ":" port ]: an IP literal or a reg-name (RFC 3986), nothing else.
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?")
_OWS = (b" ", b"\t")
# What a request line can look like before its CRLF has arrived: a token, then printable ASCII.
_REQUEST_LINE_PREFIX = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*( [\x21-\x7e ]*)?\r?")
_UNKNOWN_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ ]+ HTTP/1\.[01]\r\n")
_SPECIAL_HEADERS = frozenset((b"host", b"transfer-encoding", b"expect", b"upgrade"))
# The method as str, for the methods llhttp knows (it refuses any other).
_METHOD_NAMES: Dict[bytes, str] = {}
_known_good_names: Dict[bytes, bool] = {}
# Checked response header blocks by the app's headers (see RequestCycle._check_headers).
_HEAD_BLOCKS: Dict[Any, "tuple[bytes, Optional[int], bool]"] = {}
_HEAD_BLOCKS_MAX = 1024
# Request header names as sent, lower-cased (only those without `_`, which header_map judges).
_lowered_names: Dict[bytes, bytes] = {}
# Hosts already found valid: a server is reached under few names (bounded: the client picks them).
_known_good_hosts: Dict[bytes, bool] = {}
# `content-length: N` lines, made once per N (formatting an int is dear; bodies repeat sizes).
_length_lines: Dict[int, bytes] = {}


def _length_line(length: int) -> bytes:
    line = _length_lines.get(length)
    if line is None:
        line = b"content-length: %d\r\n" % length
        if len(_length_lines) < 4096:
            _length_lines[length] = line
    return line


def _valid_header_name(name: bytes) -> bool:
    # Apps send the same few names over and over: remember the ones already checked.
    if name in _known_good_names:
        return True
    if _TOKEN.fullmatch(name) is None:
        return False
    if len(_known_good_names) < 4096:
        _known_good_names[name] = True
    return True


def error_response(status: int, text: str, default_headers: bytes = b"") -> bytes:
    """A complete, self-contained response that closes the connection."""
    body = text.encode("utf-8") + b"\n"
    return b"".join(
        (
            STATUS_LINES.get(status) or _status_line(status),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            default_headers,
            b"\r\n",
            body,
        )
    )


class ServerState:
    """What all connections of one worker share: the app, settings, and the clock."""

    def __init__(self, app: ASGIApp, settings: Settings, log: Any, loop: asyncio.AbstractEventLoop,
                 max_requests: int = 0, on_max_requests: Optional[Callable[[], None]] = None) -> None:
        self.app = app
        self.settings = settings
        self.log = log
        self.loop = loop
        self.connections: "set[HttpConnection]" = set()
        # Every request and WebSocket session runs in its own copy of this context, taken before
        # anything is served (see asgiworker.tasks). Those whose task is still running are kept
        # here (each takes itself out as its task ends), so that a shutdown cancels the
        # application's requests and nothing else: the lifespan and whatever it started live on
        # until the lifespan shutdown.
        self.base_context = copy_context()
        self.running: "set[Any]" = set()
        self.stopping = False
        self.requests_total = 0
        # 0 (no limit) is never reached: the counter starts at 0 and is compared after a +1.
        self.max_requests = max_requests
        self.on_max_requests = on_max_requests
        self.default_headers = b""
        # Whether a finished request is reported (access log, post_request hook).
        self.reporting = bool(settings.access_log or settings.request_hooks is not None)
        proxy = settings.proxy
        self.proxied_headers = _SPECIAL_HEADERS | proxy.header_names if proxy else _SPECIAL_HEADERS
        # Set by the worker when the app's lifespan startup filled a state (copied per request).
        self.lifespan_state: Optional[Dict[str, Any]] = None
        self.update_date()

    def update_date(self) -> None:
        # The Date header is cached and refreshed once a second by the worker's ticker.
        self.default_headers = b"".join(
            (b"date: ", formatdate(usegmt=True).encode("ascii"), b"\r\nserver: ", self.settings.server_header, b"\r\n")
        )

    def start_app_task(self, owner: Any, coro: Any) -> None:
        """Start ``coro``, ``owner``'s application call, as ``owner.task`` (asgiworker.tasks).
        ``owner`` is in ``running`` until its call ends; the call takes it out itself, which
        costs less than a done-callback (a request answered in its first step never goes in)."""
        owner.task = task = start_task(self.loop, coro, self.base_context)
        if not task.done():
            self.running.add(owner)

    def running_tasks(self) -> "list[asyncio.Task[Any]]":
        """The application tasks still running (requests, WebSocket sessions)."""
        return [owner.task for owner in self.running if owner.task is not None and not owner.task.done()]

    def request_done(self) -> None:
        self.requests_total += 1
        if self.requests_total == self.max_requests and self.on_max_requests is not None:
            self.on_max_requests()

    def tick(self) -> None:
        """Once a second: refresh the Date header and close idle or too slow connections."""
        self.update_date()
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_timeouts(now)

    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their last response."""
        self.stopping = True
        for conn in list(self.connections):
            conn.shutdown()

    def force_close(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class HttpConnection(asyncio.Protocol):
    """One client connection: httptools calls the ``on_*`` methods as bytes arrive."""

    def __init__(self, state: ServerState, peer: Any = None, local: Any = None) -> None:
        self.state = state
        # The peer's and our own address when the listener already knows them (it saves the
        # transport a system call for each); otherwise asked of the transport.
        self._peer = peer
        self._local = local
        self.loop = state.loop
        self.settings = state.settings
        self.parser = httptools.HttpRequestParser(self)
        # Read for every header of every request: kept at hand.
        self._field_size_limit = self.settings.limit_request_field_size
        self._fields_limit = self.settings.limit_request_fields
        self._line_limit = self.settings.limit_request_line
        self._keepalive_on = self.settings.keepalive > 0
        self._root_path = self.settings.root_path
        self.transport: Any = None
        self.client: Any = None
        self.server: Any = None
        self.scheme = "http"
        # Parsing state of the request whose head or body is arriving now.
        self._url = b""
        self._headers: List[List[bytes]] = []
        self._hosts = 0
        self._transfer_encoding = False
        self._expect_100 = False
        self._special = _SPECIAL_HEADERS
        self._upgrade: Optional[bytes] = None
        self._bad_line: Optional[bytes] = None
        self._deferred: Optional[RequestCycle] = None
        # Bytes not fed to the parser yet because MAX_PIPELINED requests wait (reading is paused).
        self._held: Optional[bytes] = None
        # The client has shut down its sending side: nothing more will arrive.
        self._eof = False
        self._served = 0
        self._since_boundary: Optional[bytes] = None
        self._websocket: Optional[WebSocketSession] = None
        self._websocket_leftover = b""
        self._extensions: Dict[str, Any] = HTTP_EXTENSIONS
        self._proxy_buffer: Optional[bytes] = b"" if self.settings.proxy_protocol != "off" else None
        self._forwarded: Optional[List[Tuple[bytes, bytes]]] = None
        self._parsing: Optional[RequestCycle] = None
        # Response state: the request being answered and those waiting their turn.
        self._active: Optional[RequestCycle] = None
        self._pipeline: Deque[RequestCycle] = deque()
        self._pending_error: Optional[bytes] = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: Optional[asyncio.Future] = None
        self._out: List[bytes] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._closing = False
        self._closed = False
        self._ignore_input = False
        self._last_activity = self.loop.time()
        self._head_started: Optional[float] = None

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        self.state.connections.add(self)
        # Accepted just before a graceful stop began: served, and then closed.
        self._closing = self.state.stopping
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
            self._special = self.state.proxied_headers
        if len(self.state.connections) > self.settings.worker_connections:
            # Over Gunicorn's worker_connections: say so at once rather than queue the client.
            self.state.log.warning("worker_connections (%d) reached: answering 503", self.settings.worker_connections)
            self._ignore_input = True
            self._send_and_close(error_response(503, "Service Unavailable: too many connections",
                                                self.state.default_headers))

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._closed = True
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
        self._out = []
        self._out_size = 0
        self._wake_drain()

    def eof_received(self) -> Optional[bool]:
        # A client may shut down its write side after its request and still wait for the
        # answer: keep the transport open while there is a request to answer.
        # Its requests whose body is complete learn it from receive() (`http.disconnect`) and may
        # still send their response; one whose body was cut short is disconnected.
        if self._active is not None or self._pipeline:
            self._eof = True
            parsing = self._parsing
            for cycle in (self._active, *self._pipeline):
                if cycle is not None and cycle is not parsing:
                    cycle.on_eof()
            if parsing is not None and parsing.more_body:
                parsing.on_disconnect()
            return True
        return None

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
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
        room = MAX_PIPELINED - len(self._pipeline)
        if len(data) <= room * _MIN_REQUEST or data.count(_HEAD_END) < room:
            self._parse(data, b"")  # cannot complete more requests than there is room for
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` without ever queueing more than MAX_PIPELINED requests: cut it before
        the head that would overflow the pipeline, and hold the rest until there is room."""
        while data and not self._ignore_input and not self._closed:
            room = MAX_PIPELINED - len(self._pipeline)
            if room <= 0:
                self._held = data
                self._pause_reading()
                return
            cut = -1
            for _ in range(room):
                cut = data.find(_HEAD_END, cut + 1)
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

    def _feed_held(self) -> None:
        """A pipelined request was answered: parse what waited for room, then read again."""
        data, self._held = self._held, None
        if data is not None and not self._ignore_input:
            self._feed(data)
        self._maybe_resume_reading()

    def _parse(self, data: bytes, rest: bytes) -> None:
        """Feed ``data`` to the parser; ``rest``: the bytes that follow it, not fed yet."""
        # The bytes since the parser last stood between two requests at the start of a read:
        # only to find where a request with a bad method starts, if one comes (see below).
        if self._head_started is None and self._parsing is None:
            self._since_boundary = data
        elif self._since_boundary is not None:
            self._since_boundary += data
            if len(self._since_boundary) > 16384:
                self._since_boundary = None  # inside a body: no request line to find here
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._ignore_input = True
            if self._websocket is not None:
                self._websocket_leftover = (data[exc.args[0]:] if exc.args else b"") + rest
                if self._active is None and not self._pipeline:
                    self._hand_over_to_websocket()
                return
            # Other protocol switches (h2c, CONNECT) are not served: the request is answered as
            # plain HTTP and the connection closes after it, since what follows is not HTTP/1.1.
            last = self._pipeline[-1] if self._pipeline else self._active
            if last is not None:
                last.keep_alive = False
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._protocol_error(reject.status, reject.reason)
            else:
                self._protocol_error(400, "Invalid HTTP request")
        except httptools.HttpParserInvalidMethodError:
            # llhttp knows the registered methods only. Whether this is a well-formed request for
            # a method we do not implement (RFC 9110 9.1: 501) or garbage (400) is told by its
            # whole request line, which may still be on its way.
            seen = self._since_boundary if self._since_boundary is not None else data
            self._ignore_input = True
            self._bad_line = b""
            self._head_started = self._last_activity
            self._read_bad_request_line(seen[_failing_message_start(seen):])
        except httptools.HttpParserError as exc:
            if str(exc) == "Invalid HTTP version":
                self._protocol_error(505, "HTTP version not supported")
            else:
                self._protocol_error(400, "Invalid HTTP request: %s" % exc)
        finally:
            # A request becomes active as its head is parsed, but runs once the bytes at hand are
            # all parsed: a small request's body is then already there, and the app answers it
            # without ever waiting.
            deferred = self._deferred
            if deferred is not None:
                self._deferred = None
                if not deferred.disconnected:
                    self.state.start_app_task(deferred, deferred.run())

    def _read_bad_request_line(self, data: bytes) -> None:
        line = self._bad_line + data.lstrip(b"\r\n") if not self._bad_line else self._bad_line + data  # type: ignore[operator]
        end = line.find(b"\r\n")
        if end < 0 and len(line) <= self.settings.limit_request_line + 32 and _REQUEST_LINE_PREFIX.fullmatch(line):
            self._bad_line = line  # bounded; the header timeout ends a client that stops here
            return
        self._bad_line = None
        if end >= 0 and _UNKNOWN_METHOD.fullmatch(line[:end + 2]):
            self._protocol_error(501, "Method not implemented")
        else:
            self._protocol_error(400, "Invalid HTTP method")

    def _read_proxy_header(self, data: bytes) -> bytes:
        """Strip a PROXY protocol header off the connection's first bytes; return the rest."""
        buffer = self._proxy_buffer + data  # type: ignore[operator]
        try:
            result = proxy_protocol.parse(buffer, self.settings.proxy_protocol)
        except proxy_protocol.ProxyHeaderError as exc:
            self._protocol_error(400, str(exc))
            return b""
        if result is None:
            self._proxy_buffer = buffer
            return b""
        self._proxy_buffer = None
        consumed, client, server = result
        if consumed:
            peers = self.settings.proxy_protocol_peers
            if peers is not None and not peers.trusts(self.client[0] if self.client else None):
                self._protocol_error(403, "PROXY protocol header not allowed from this peer")
                return b""
            self.client = client or self.client
            self.server = server or self.server
        return buffer[consumed:]

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._hosts = 0
        self._transfer_encoding = False
        self._expect_100 = False
        self._upgrade = None
        self._head_started = self._last_activity

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._line_limit:
            raise _Reject(414, "Request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self._field_size_limit:
            raise _Reject(431, "Request header field too large")
        if self._parsing is not None:
            return  # a trailer after a chunked body: never merged into the request's headers
        headers = self._headers
        if len(headers) >= self._fields_limit:
            raise _Reject(431, "Too many request header fields")
        lowered = _lowered_names.get(name)
        if lowered is None:
            lowered = name.lower()
            # (find, not `in`: CPython's bytes.__contains__ first tries the needle as an int
            # and builds and drops a TypeError every time.)
            if lowered.find(b"_") >= 0:
                # Gunicorn's header_map: `X_Forwarded_For` and `X-Forwarded-For` look the same
                # to many frameworks, so a name with `_` is dropped (default) or refused.
                if self.settings.header_map == "refuse":
                    raise _Reject(400, "Header names with underscores are refused")
                if self.settings.header_map != "dangerous":
                    return
            elif len(_lowered_names) < 4096:
                _lowered_names[name] = lowered  # clients send the same few names: kept, bounded
        name = lowered
        if value[-1:] in _OWS:
            value = value.rstrip(b" \t")
        if name in self._special:
            self._special_header(name, value)
        headers.append([name, value])

    def _special_header(self, name: bytes, value: bytes) -> None:
        if name == b"host":
            self._hosts += 1
            if self._hosts > 1:
                raise _Reject(400, "More than one Host header")
            if value not in _known_good_hosts:
                if _HOST.fullmatch(value) is None:
                    raise _Reject(400, "Invalid Host header")
                if len(_known_good_hosts) < 4096:
                    _known_good_hosts[value] = True
        elif name == b"transfer-encoding":
            # Only a lone `chunked` frames a request: anything else is a smuggling vector.
            codings = [c.strip().lower() for c in value.split(b",")]
            if self._transfer_encoding or b"chunked" in codings[:-1]:
                raise _Reject(400, "Invalid Transfer-Encoding")
            if codings != [b"chunked"]:
                raise _Reject(501, "Unsupported Transfer-Encoding")
            self._transfer_encoding = True
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self._expect_100 = True
        elif name == b"upgrade":
            self._upgrade = value
        else:  # a proxy header from a trusted peer
            if self._forwarded is None:
                self._forwarded = []
            self._forwarded.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        http_version = parser.get_http_version()
        if http_version == "1.1":
            if self._hosts != 1:
                raise _Reject(400, "Missing Host header")
        elif http_version == "1.0":
            if self._transfer_encoding:
                raise _Reject(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        else:
            raise _Reject(505, "HTTP version not supported")
        raw_method = parser.get_method()
        method = _METHOD_NAMES.get(raw_method)
        if method is None:
            method = _METHOD_NAMES[raw_method] = raw_method.decode("ascii")
        url = self._url
        if url[:1] == b"/" and url.find(b"%") < 0 and url.find(b"#") < 0 and method != "CONNECT":
            # origin-form with nothing to decode: by far the most common target
            raw_path, _, query = url.partition(b"?")
            path = raw_path.decode("ascii")
        else:
            raw_path, query, path = self._split_target(url, method)
        keep_alive = self._keepalive_on and parser.should_keep_alive()
        client = self.client
        scheme = self.scheme
        if self._forwarded is not None:
            client, scheme = self.settings.proxy.apply(self._forwarded, client, scheme)  # type: ignore[union-attr]
            self._forwarded = None
        scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": http_version,
            "server": self.server,
            "client": client,
            "scheme": scheme,
            "method": method,
            "root_path": self._root_path,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
        }
        if self.state.lifespan_state is not None:
            scope["state"] = self.state.lifespan_state.copy()
        scope["extensions"] = self._extensions
        if self._upgrade is not None and method == "GET" and parser.should_upgrade() \
                and is_websocket_upgrade(self._upgrade):
            # Handed over once httptools stops at the upgrade (see data_received).
            self._websocket = WebSocketSession(self.state, websocket_scope(scope),
                                               build_raw_request(method, self._url, self._headers))
            self._head_started = None
            return
        cycle = RequestCycle(self, scope, keep_alive, self._expect_100 and http_version == "1.1")
        self._parsing = cycle
        self._head_started = None
        if self._active is None:
            self._active = self._deferred = cycle
        else:
            self._pipeline.append(cycle)
            if len(self._pipeline) >= MAX_PIPELINED:
                self._pause_reading()

    @staticmethod
    def _split_target(url: bytes, method: str) -> "tuple[bytes, bytes, str]":
        """(raw_path, query_string, path) of a request-target; _Reject if it is not one."""
        if method == "CONNECT":
            # authority-form is for proxies; any other form is not a CONNECT at all.
            if url[:1] == b"/" or url.find(b"://") >= 0:
                raise _Reject(400, "Invalid request target for CONNECT")
            raise _Reject(501, "CONNECT is not supported")
        if url[:1] == b"/":  # origin-form, by far the most common
            if url.find(b"#") >= 0:
                url = url.split(b"#", 1)[0]
            raw_path, _, query = url.partition(b"?")
        elif url == b"*" and method == "OPTIONS":  # asterisk-form
            return b"*", b"", "*"
        else:  # absolute-form: the path and query of the URI
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(400, "Invalid request target") from None
            if parsed.schema not in (b"http", b"https") or not parsed.host:
                raise _Reject(400, "Invalid request target")
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
        if raw_path.find(b"%") < 0:
            return raw_path, query, raw_path.decode("ascii")
        try:
            return raw_path, query, unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(400, "Request path is not valid UTF-8 once percent-decoded") from None

    def on_body(self, body: bytes) -> None:
        cycle = self._parsing
        if cycle is None or cycle.response_complete:
            return  # the app answered without reading it all: drop the rest
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > BODY_HIGH_WATER:
            self._pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self._parsing
        if cycle is not None:
            cycle.more_body = False
            if cycle.waiter is not None:
                cycle.wake()
            self._parsing = None

    # -- request scheduling -------------------------------------------------------------------

    def _start_next(self) -> None:
        """From the loop, once the previous response is complete: run the next pipelined request
        (started here, never inside the previous app's send(), so the stack does not grow with
        the depth of the pipeline), then parse what waited for its place."""
        cycle = self._active
        if self._closed or cycle is None:
            return
        if not cycle.disconnected and cycle.task is None:
            self.state.start_app_task(cycle, cycle.run())
        if self._held is not None:
            self._feed_held()
        else:
            self._maybe_resume_reading()

    def response_complete(self, cycle: "RequestCycle") -> None:
        self._active = None
        self._served += 1
        if cycle is self._parsing and cycle.expect_100:
            # The client is still holding back a body we never asked for: we cannot know
            # what it will send next, so this connection cannot carry another request.
            cycle.keep_alive = False
        if not cycle.keep_alive or self._closed:
            self._close()
            return
        if self._pipeline:
            # The next request is the active one from now on (new heads queue behind it); it
            # starts from the loop.
            self._active = self._pipeline.popleft()
            self.loop.call_soon(self._start_next)
            return
        if self._websocket is not None:
            # From the loop too: the WebSocket app must not start inside this app's send().
            self.loop.call_soon(self._hand_over_to_websocket)
            return
        if self._pending_error is not None:
            self._send_and_close(self._pending_error)
            return
        if self._bad_line is not None:
            return  # a bad request line is still arriving: its error response comes next
        if self._closing or self._ignore_input or self._eof:
            self._close()
            return
        self._last_activity = now = self.loop.time()
        if self._head_started is not None:
            self._head_started = now  # a head begun behind this request: its time starts now
        self._maybe_resume_reading()

    def _hand_over_to_websocket(self) -> None:
        if self._closed or self._websocket is None:
            return  # the client left before its turn came
        session, self._websocket = self._websocket, None
        self.state.connections.discard(self)
        self._closed = True  # this object no longer owns the transport
        if self._reading_paused:
            self.transport.resume_reading()
        session.start(self.transport, self._websocket_leftover)  # type: ignore[union-attr]

    def _protocol_error(self, status: int, reason: str) -> None:
        self._ignore_input = True
        self.state.log.warning("Invalid request from %s: %s", self.client[0] if self.client else "?", reason)
        response = error_response(status, reason, self.state.default_headers)
        parsing = self._parsing
        if parsing is not None:
            # Its body is broken: the app reading it sees a disconnect, and nothing after it is
            # answered. If the app has not started answering, it gets our error instead.
            self._pipeline = deque(c for c in self._pipeline if c is not parsing)
            parsing.more_body = False
            parsing.on_disconnect()
            if parsing is self._active and not parsing.head_sent:
                self._send_and_close(response)
                return
        if self._active is None and not self._pipeline:
            self._send_and_close(response)
        else:
            self._pending_error = response
            self._pause_reading()

    def _send_and_close(self, data: bytes) -> None:
        if not self._closed:
            self.flush()
            self.transport.write(data)
        self._close()

    # -- writing ------------------------------------------------------------------------------

    def write_soon(self, data: bytes) -> None:
        """Queue part of a streamed response. It goes out when the app next lets the loop run,
        when FLUSH_SIZE has gathered, or with the response's last part (see ``flush``)."""
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_SIZE:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write out what ``write_soon`` queued, in one call."""
        out = self._out
        if out:
            self._out = []
            self._out_size = 0
            if not self._closed:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    # -- flow control -------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self._closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if not self._reading_paused or self._closed or self._held is not None \
                or len(self._pipeline) >= MAX_PIPELINED:
            return
        parsing = self._parsing
        if parsing is not None and parsing.buffered > BODY_LOW_WATER and not parsing.response_complete:
            return
        self._reading_paused = False
        self.transport.resume_reading()

    async def drain(self) -> None:
        if self._closed:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self.loop.create_future()
        await waiter

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    # -- life and death -----------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        if self._closed:
            return
        active = self._active
        if active is not None:
            task = active.task
            if task is None or not task.done():
                return  # an application is at work (or about to start): its time is its own
            # Nothing runs for this connection any more although requests are queued: the idle
            # and header timeouts below apply, so that a stalled connection cannot live forever.
        if self._head_started is not None:
            if now - self._head_started > self.settings.header_timeout:
                self.state.log.info("Closing connection from %s: request head not received in %gs",
                                    self.client[0] if self.client else "?", self.settings.header_timeout)
                self._send_and_close(error_response(408, "Request Timeout", self.state.default_headers))
        elif self._parsing is None and now - self._last_activity > self.settings.keepalive:
            self._close()

    def shutdown(self) -> None:
        self._closing = True
        # Close now only between two requests of a kept-alive connection. A connection that has
        # not sent its first request yet was accepted to be served: it gets its answer (with
        # `connection: close`), or the keep-alive timeout if nothing comes.
        if self._active is None and not self._pipeline and self._head_started is None and self._parsing is None \
                and self._served:
            self._close()

    def abort(self) -> None:
        if not self._closed and self.transport is not None:
            self.flush()  # what the app sent before failing goes out, as it would unbuffered
            self.transport.abort()

    def _close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True
            self.transport.close()


def _cancel_if_running(task: "asyncio.Task") -> None:
    if not task.done():
        task.cancel()


class _NoCallbacks:
    pass


_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _failing_message_start(data: bytes) -> int:
    """Where, in ``data``, the request with the unknown method begins. httptools does not say
    where it stopped, so find the first byte a fresh parser rejects (a bisection, only on this
    error path), then step back over the method token it is part of."""
    low, high = 0, len(data)
    while low < high:
        middle = (low + high) // 2
        try:
            httptools.HttpRequestParser(_NoCallbacks()).feed_data(data[:middle + 1])
        except httptools.HttpParserUpgrade:
            return 0
        except httptools.HttpParserError:
            high = middle
        else:
            low = middle + 1
    start = low
    while start > 0 and data[start - 1] in _TOKEN_BYTES:
        start -= 1
    return start


# The extension every HTTP scope offers: a whole response in one message,
#   {"type": "asgiworker.http.response.complete", "status": int, "headers": [...], "body": bytes}
# what `http.response.start` and one final `http.response.body` do, in one await. Our channel
# consumer adapter uses it, since a consumer's reply is complete before it reaches the server.
# One shared dict, with nothing per request in it.
RESPONSE_COMPLETE = "asgiworker.http.response.complete"
HTTP_EXTENSIONS = {RESPONSE_COMPLETE: {}}


class RequestCycle:
    """One request and its response: the ASGI ``receive``/``send`` pair and the framing state."""

    __slots__ = (
        "conn", "scope", "keep_alive", "expect_100", "body", "buffered", "more_body", "waiter",
        "disconnected", "response_started", "head_sent", "response_complete", "status", "headers",
        "chunked", "remaining", "no_body", "task", "started", "sent", "body_done", "eof",
    )

    def __init__(self, conn: HttpConnection, scope: Dict[str, Any], keep_alive: bool, expect_100: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.body: List[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.body_done = False
        self.eof = False
        self.waiter: Optional[asyncio.Future] = None
        self.disconnected = False
        self.response_started = False
        self.head_sent = False
        self.response_complete = False
        self.status = 0
        self.headers: Any = ()
        self.chunked = False
        self.remaining: Optional[int] = None
        self.no_body = False
        self.task: Optional[asyncio.Task] = None
        self.sent = 0
        # Timing is only paid for when someone reads it.
        self.started = perf_counter() if conn.settings.access_log else 0.0

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

    async def run(self) -> None:
        conn = self.conn
        if conn.settings.request_hooks is not None:
            conn.settings.request_hooks.before(self.scope)
        try:
            await conn.state.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            self._fail()
            raise
        except BaseException:
            scope = self.scope
            conn.state.log.exception("Error handling request %s %s", scope["method"],
                                     scope["raw_path"].decode("latin-1"))
            self._fail()
        else:
            if self.response_complete:
                return
            if self.disconnected:
                self._fail()  # nobody to answer: just let go of the connection
                return
            what = "completing" if self.head_sent else "sending"
            conn.state.log.error("ASGI application returned without %s the response to %s %s", what,
                                 self.scope["method"], self.scope["raw_path"].decode("latin-1"))
            self._fail()
        finally:
            conn.state.running.discard(self)

    def _fail(self) -> None:
        """Answer 500 if nothing went out yet, else cut the connection: never a second response."""
        if self.response_complete:
            return
        self.response_complete = True
        self.body = []
        self.wake()
        conn = self.conn
        conn.state.request_done()
        if self.disconnected or conn._closed:
            conn._close()
            return
        if self.head_sent:
            self._report(self.status)
            conn.abort()
        else:
            self._report(500)
            conn._send_and_close(error_response(500, "Internal Server Error", conn.state.default_headers))

    def _report(self, status: int) -> None:
        """The request is over: Gunicorn's post_request hook and access log, when set."""
        conn = self.conn
        headers = self.headers if self.head_sent else ()
        if conn.settings.request_hooks is not None:
            conn.settings.request_hooks.after(self.scope, status, headers, self.sent)
        if conn.settings.access_log:
            log_access(conn.state.log, self.scope, status, self.headers if self.head_sent else (),
                       self.sent, perf_counter() - self.started)

    # -- ASGI receive -------------------------------------------------------------------------

    async def receive(self) -> Dict[str, Any]:
        if self.response_complete or self.disconnected:
            return {"type": "http.disconnect"}
        if self.body_done:
            # The whole body was delivered: the next event is the end of the response or the
            # client leaving (apps wait here to notice a disconnect while they stream).
            if not self.eof:
                self.waiter = self.conn.loop.create_future()
                try:
                    await self.waiter
                finally:
                    self.waiter = None
            return {"type": "http.disconnect"}
        if not self.body and self.more_body:
            if self.expect_100:
                # Decided once the bytes at hand are parsed: the body may be among them already.
                self.conn.loop.call_soon(self._send_continue)
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
            if self.disconnected:
                return {"type": "http.disconnect"}
        self.expect_100 = False
        chunks = self.body
        if len(chunks) == 1:
            body = chunks[0]
        else:
            body = b"".join(chunks)
        self.body = []
        self.buffered = 0
        if self.conn._reading_paused:
            self.conn._maybe_resume_reading()
        more_body = self.more_body
        self.body_done = not more_body
        return {"type": "http.request", "body": body, "more_body": more_body}

    def _send_continue(self) -> None:
        if self.expect_100 and not self.body and self.more_body and not self.head_sent \
                and not self.disconnected and not self.conn._closed:
            self.expect_100 = False
            self.conn.transport.write(CONTINUE_RESPONSE)

    # -- ASGI send ----------------------------------------------------------------------------

    async def send(self, message: Dict[str, Any]) -> None:
        if self.disconnected:
            raise ClientDisconnected("the client has closed the connection")
        message_type = message["type"]
        if not self.response_started:
            if message_type == RESPONSE_COMPLETE:
                self.respond(message["status"], message.get("headers", ()), message.get("body", b""))
                return
            if message_type != "http.response.start":
                raise RuntimeError("Expected ASGI message 'http.response.start', got %r" % (message_type,))
            status = message["status"]
            if type(status) is not int or not 100 <= status <= 999:
                raise RuntimeError("ASGI 'status' must be an int between 100 and 999, got %r" % (status,))
            self.status = status
            self.headers = message.get("headers", ())
            self.response_started = True
            return
        if message_type != "http.response.body":
            raise RuntimeError("Expected ASGI message 'http.response.body', got %r" % (message_type,))
        if self.response_complete:
            raise RuntimeError("The response is already complete; no more 'http.response.body' is allowed")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise RuntimeError("ASGI 'body' must be bytes, got %s" % type(body).__name__)
        conn = self.conn
        if conn._closed:
            self.on_disconnect()
            raise ClientDisconnected("the client has closed the connection")
        if not self.head_sent:
            self._write_head_and_body(body, more_body)
        elif body:
            self._write_body(body, more_body)
        elif not more_body and self.chunked and not self.no_body:
            conn.write_soon(b"0\r\n\r\n")
        if more_body:
            if conn._writing_paused:
                await conn.drain()
            return
        if conn._out:
            conn.flush()
        self._complete()

    def respond(self, status: int, headers: Any, body: bytes) -> None:
        """A whole response at once (the RESPONSE_COMPLETE extension message)."""
        if self.disconnected or self.conn._closed:
            self.on_disconnect()
            raise ClientDisconnected("the client has closed the connection")
        if self.response_started:
            raise RuntimeError("The response has already started")
        if type(status) is not int or not 100 <= status <= 999:
            raise RuntimeError("ASGI 'status' must be an int between 100 and 999, got %r" % (status,))
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise RuntimeError("ASGI 'body' must be bytes, got %s" % type(body).__name__)
        self.status = status
        self.headers = headers
        self.response_started = True
        self._write_head_and_body(body, False)
        self._complete()

    def _complete(self) -> None:
        conn = self.conn
        if self.remaining:
            conn.state.log.error("Response to %s %s ended %d bytes short of its Content-Length; closing the connection",
                                 self.scope["method"], self.scope["raw_path"].decode("latin-1"), self.remaining)
            self.keep_alive = False
        self.response_complete = True
        self.body = []
        self.wake()
        state = conn.state
        if state.reporting:
            self._report(self.status)
        state.request_done()
        conn.response_complete(self)

    def _write_head_and_body(self, body: bytes, more_body: bool) -> None:
        conn = self.conn
        status = self.status
        scope = self.scope
        keep_alive = self.keep_alive and not conn._closing
        headers = self.headers
        try:
            headers = headers if type(headers) is tuple else tuple(headers)
        except TypeError:
            pass  # not iterable: _check_headers says so
        # Most apps send the same few header sets again and again: their checked block is kept
        # (headers as tuples only: [name, value] lists cannot be keys).
        cacheable = type(headers) is tuple and (not headers or type(headers[0]) is tuple)
        cached = None
        if cacheable:
            try:
                cached = _HEAD_BLOCKS.get(headers)
            except TypeError:
                cacheable = False
        if cached is None:
            cached = self._check_headers(headers, cacheable)
        app_block, content_length, close = cached
        if close:
            keep_alive = False
        parts = [STATUS_LINES.get(status) or _status_line(status), app_block]
        head_request = scope["method"] == "HEAD"
        if status < 200 or status == 204 or status == 304:
            self.no_body = True
        elif content_length is not None:
            parts.append(_length_line(content_length))
            self.remaining = content_length
        elif not more_body:
            if body or not head_request:
                parts.append(_length_line(len(body)))
                self.remaining = len(body)
        elif scope["http_version"] == "1.1":
            parts.append(b"transfer-encoding: chunked\r\n")
            self.chunked = True
        else:
            keep_alive = False  # HTTP/1.0 without a length: the end of the body is the close
        if self.expect_100 and self.more_body:
            # The client holds back a body we never asked for: what it sends next is unknowable.
            keep_alive = False
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif scope["http_version"] == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        self.keep_alive = keep_alive
        parts.append(conn.state.default_headers)
        parts.append(b"\r\n")
        self.head_sent = True
        if head_request or self.no_body:
            # HEAD gets the headers GET would get, and never a byte of body or chunk framing.
            self.no_body = True
            conn.transport.write(b"".join(parts))
            self.remaining = None
            return
        if more_body:
            # The start of a stream: held with the parts that follow (see write_soon).
            conn.write_soon(b"".join(parts))
            if body:
                self._write_body(body, True)
            return
        if body:
            body = self._bounded(body)
            self.sent = len(body)
            if len(body) > _COPY_LIMIT:
                conn.transport.writelines((b"".join(parts), body))  # no copy of a large body
                return
            parts.append(body)
        conn.transport.write(b"".join(parts))  # head and a small body: one copy, one syscall

    def _check_headers(self, headers: Any, cacheable: bool) -> "tuple[bytes, Optional[int], bool]":
        """The app's response headers as one block of lines, with the Content-Length we will
        write ourselves and whether the app asked to close; RuntimeError for anything invalid.
        Kept in _HEAD_BLOCKS when ``cacheable`` (a hashable tuple of tuples) and small."""
        app_parts: List[bytes] = []
        content_length: Optional[int] = None
        close = False
        lines = 0
        try:
            for name, value in headers:
                lname = name.lower()
                if lname == b"content-length":
                    content_length = int(value)
                    if content_length < 0:
                        raise ValueError
                    continue  # written by us, once, in canonical form
                elif lname == b"transfer-encoding":
                    continue  # we frame the body ourselves
                elif lname == b"connection":
                    if value.lower().find(b"close") >= 0:
                        close = True
                    continue
                if not _valid_header_name(name):
                    raise RuntimeError("Invalid response header name %r" % (name,))
                app_parts += (name, b": ", value, b"\r\n")
                lines += 1
            app_block = b"".join(app_parts)
        except (TypeError, AttributeError):
            raise RuntimeError("ASGI response headers must be an iterable of [name, value] byte strings, got %r"
                               % (headers,)) from None
        except ValueError:
            raise RuntimeError("Invalid Content-Length response header in %r" % (headers,)) from None
        # Every line the app gave ends in our CRLF; any other CR, LF or NUL would be response
        # splitting. Counting is one C-speed pass instead of a regex per header.
        if app_block.count(b"\n") != lines or app_block.count(b"\r") != lines or app_block.find(b"\0") >= 0:
            raise RuntimeError("Invalid response header value (CR, LF or NUL) in %r" % (headers,))
        result = (app_block, content_length, close)
        if cacheable and len(app_block) <= 4096:
            if len(_HEAD_BLOCKS) >= _HEAD_BLOCKS_MAX:
                _HEAD_BLOCKS.clear()  # per-response values (cookies, lengths) filled it: start over
            _HEAD_BLOCKS[headers] = result
        return result

    def _write_body(self, body: bytes, more_body: bool) -> None:
        if self.no_body:
            return
        conn = self.conn
        if type(body) is not bytes:
            body = bytes(body)  # held until the flush: the app may reuse its buffer meanwhile
        if self.chunked:
            self.sent += len(body)
            tail = b"\r\n0\r\n\r\n" if not more_body else b"\r\n"
            if len(body) > _COPY_LIMIT:
                conn.flush()
                conn.transport.writelines((b"%x\r\n" % len(body), body, tail))
            else:
                conn.write_soon(b"%x\r\n%b%b" % (len(body), body, tail))
        else:
            body = self._bounded(body)
            self.sent += len(body)
            if len(body) > _COPY_LIMIT:
                conn.flush()
                conn.transport.write(body)
            else:
                conn.write_soon(body)

    def _bounded(self, body: bytes) -> bytes:
        """Never send past the declared Content-Length."""
        remaining = self.remaining
        if remaining is None:
            return body
        if len(body) > remaining:
            self.conn.state.log.error("Response to %s %s is longer than its Content-Length; truncated and closing",
                                      self.scope["method"], self.scope["raw_path"].decode("latin-1"))
            self.keep_alive = False
            body = body[:remaining]
        self.remaining = remaining - len(body)
        return body
