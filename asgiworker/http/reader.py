"""Reading requests: the parser's callbacks, the limits, the checks llhttp leaves to us (Host,
Transfer-Encoding, header names, targets), and the ASGI scope of each request.

``RequestReader`` is the reading half of ``HttpConnection`` (httptools calls its ``on_*``
methods as bytes are fed). Each complete head becomes a ``RequestCycle`` handed to the connection
(``_active`` or the ``_pipeline`` queue), or a WebSocket session waiting for its turn; body bytes go to the cycle
whose body is arriving (``_parsing``). A request is refused by raising ``Reject`` from a callback.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

import httptools

from asgiworker.http.cycle import COMPLETE, RequestCycle
from asgiworker.proxy import ContradictorySchemeHeaders
from asgiworker.websocket import WebSocketSession, build_raw_request, is_websocket_upgrade, websocket_scope
from asgiworker.wire.grammar import HOST, OWS, TOKEN_BYTES
from asgiworker.wire.memo import BoundedMemo

ASGI_VERSION = {"version": "3.0", "spec_version": "2.5"}
# Request body bytes buffered for the app before we stop reading from the socket.
BODY_HIGH_WATER = 256 * 1024
# Requests parsed and waiting behind the one being answered, at most (the connection stops
# feeding the parser at this many, and reading pauses).
MAX_PIPELINED = 16

# The method as str, for the methods llhttp knows (it refuses any other: a handful).
_METHOD_NAMES: Dict[bytes, str] = {}
# Request header names as sent, lower-cased (only those without `_`, which header_map judges).
_LOWERED_NAMES = BoundedMemo(4096)
# Hosts already found valid: a server is reached under few names.
_GOOD_HOSTS = BoundedMemo(4096)


class Reject(Exception):
    """Raised from parser callbacks to refuse a request with an HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestReader:
    """The parser-facing half of ``HttpConnection`` (which holds the attributes used here)."""

    # Declared for the type checker; set by HttpConnection.
    state: Any
    settings: Any
    parser: Any
    client: Any
    server: Any
    scheme: str
    flow: Any
    _pipeline: Any
    _active: Optional[RequestCycle]
    _deferred: Optional[RequestCycle]
    _last_activity: float
    _field_size_limit: int
    _fields_limit: int
    _line_limit: int
    _keepalive_on: bool
    _root_path: str
    _extensions: Dict[str, Any]

    # The state of the request whose head or body is arriving now (set up by HttpConnection).
    _url: bytes
    _headers: List[List[bytes]]
    _hosts: int
    _transfer_encoding: bool
    _expect_100: bool
    _special: "frozenset[bytes]"  # the headers looked at (more behind a trusted proxy)
    _upgrade: Optional[bytes]
    _forwarded: Optional[List[Tuple[bytes, bytes]]]  # a trusted proxy's headers
    _parsing: Optional[RequestCycle]  # the request whose body is arriving
    _websocket: Optional[WebSocketSession]
    _head_started: Optional[float]  # when the head under way began (the header timeout)
    _body_bytes: int  # body bytes read on this connection (the slow-body rate)
    _client_keeps_alive: bool  # the last request did not ask for the close (connection.py: _close)
    _body_left: int  # bytes of a Content-Length body still to come (connection.data_received)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._hosts = 0
        self._transfer_encoding = False
        self._expect_100 = False
        self._upgrade = None
        self._body_left = 0
        self._head_started = self._last_activity

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._line_limit:
            raise Reject(414, "Request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self._field_size_limit:
            raise Reject(431, "Request header field too large")
        if self._parsing is not None:
            return  # a trailer after a chunked body: never merged into the request's headers
        headers = self._headers
        if len(headers) >= self._fields_limit:
            raise Reject(431, "Too many request header fields")
        lowered = _LOWERED_NAMES.get(name)
        if lowered is None:
            lowered = name.lower()
            # (find, not `in`: CPython's bytes.__contains__ first tries the needle as an int
            # and builds and drops a TypeError every time.)
            if lowered.find(b"_") >= 0:
                # Gunicorn's header_map: `X_Forwarded_For` and `X-Forwarded-For` look the same
                # to many frameworks, so a name with `_` is dropped (default) or refused.
                if self.settings.header_map == "refuse":
                    raise Reject(400, "Header names with underscores are refused")
                if self.settings.header_map != "dangerous":
                    return
            else:
                _LOWERED_NAMES.remember(name, lowered)  # clients send the same few names
        name = lowered
        if value[-1:] in OWS:
            value = value.rstrip(b" \t")
        if name in self._special:
            self._special_header(name, value)
        headers.append([name, value])

    def _special_header(self, name: bytes, value: bytes) -> None:
        if name == b"host":
            self._hosts += 1
            if self._hosts > 1:
                raise Reject(400, "More than one Host header")
            if value not in _GOOD_HOSTS:
                if HOST.fullmatch(value) is None:
                    raise Reject(400, "Invalid Host header")
                _GOOD_HOSTS.remember(value, True)
        elif name == b"transfer-encoding":
            # Only a lone `chunked` frames a request: anything else is a smuggling vector.
            codings = [c.strip().lower() for c in value.split(b",")]
            if self._transfer_encoding or b"chunked" in codings[:-1]:
                raise Reject(400, "Invalid Transfer-Encoding")
            if codings != [b"chunked"]:
                raise Reject(501, "Unsupported Transfer-Encoding")
            self._transfer_encoding = True
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self._expect_100 = True
        elif name == b"upgrade":
            self._upgrade = value
        elif name == b"content-length":
            # llhttp frames the body (and refuses a bad or repeated value); this copy only tells
            # the connection that a read shorter than what is left of the body holds no head.
            self._body_left = int(value) if value.isdigit() else 0
        else:  # a proxy header from a trusted peer
            if self._forwarded is None:
                self._forwarded = []
            self._forwarded.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        http_version = parser.get_http_version()
        if http_version == "1.1":
            if self._hosts != 1:
                raise Reject(400, "Missing Host header")
        elif http_version == "1.0":
            if self._transfer_encoding:
                raise Reject(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        else:
            raise Reject(505, "HTTP version not supported")
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
            raw_path, query, path = split_target(url, method)
        self._client_keeps_alive = client_keeps_alive = parser.should_keep_alive()
        keep_alive = self._keepalive_on and client_keeps_alive
        client = self.client
        scheme = self.scheme
        if self._forwarded is not None:
            forwarded, self._forwarded = self._forwarded, None
            try:
                client, scheme = self.settings.proxy.apply(forwarded, client, scheme)
            except ContradictorySchemeHeaders:
                raise Reject(400, "Contradictory scheme headers") from None
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
            # Handed over once httptools stops at the upgrade (see HttpConnection._parse).
            self._websocket = WebSocketSession(self.state, websocket_scope(scope),
                                               build_raw_request(method, self._url, self._headers))
            self._head_started = None
            return
        cycle = RequestCycle(self, scope, keep_alive, self._expect_100 and http_version == "1.1")
        self._parsing = cycle
        self._head_started = None
        # To the connection's queue: the request runs once the bytes at hand are parsed if none
        # is being answered (HttpConnection._parse starts it), else it waits its turn.
        if self._active is None:
            self._active = self._deferred = cycle
        else:
            self._pipeline.append(cycle)
            if len(self._pipeline) >= MAX_PIPELINED:
                self.flow.pause_reading()

    def on_body(self, body: bytes) -> None:
        self._body_left -= len(body)
        cycle = self._parsing
        if cycle is None or cycle.phase == COMPLETE:
            return  # the app answered without reading it all: drop the rest
        cycle.body.append(body)
        cycle.buffered += len(body)
        self._body_bytes += len(body)
        if cycle.buffered > BODY_HIGH_WATER:
            self.flow.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        self._body_left = 0
        cycle = self._parsing
        if cycle is not None:
            cycle.more_body = False
            if cycle.waiter is not None:
                cycle.wake()
            self._parsing = None


def split_target(url: bytes, method: str) -> Tuple[bytes, bytes, str]:
    """(raw_path, query_string, path) of a request-target; Reject if it is not one."""
    if method == "CONNECT":
        # authority-form is for proxies; any other form is not a CONNECT at all.
        if url[:1] == b"/" or url.find(b"://") >= 0:
            raise Reject(400, "Invalid request target for CONNECT")
        raise Reject(501, "CONNECT is not supported")
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
            raise Reject(400, "Invalid request target") from None
        if parsed.schema not in (b"http", b"https") or not parsed.host:
            raise Reject(400, "Invalid request target")
        raw_path = parsed.path or b"/"
        query = parsed.query or b""
    if raw_path.find(b"%") < 0:
        return raw_path, query, raw_path.decode("ascii")
    try:
        return raw_path, query, unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise Reject(400, "Request path is not valid UTF-8 once percent-decoded") from None


class _NoCallbacks:
    pass


def failing_message_start(data: bytes) -> int:
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
    while start > 0 and data[start - 1] in TOKEN_BYTES:
        start -= 1
    return start
