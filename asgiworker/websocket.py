"""WebSocket connections (ASGI WebSocket spec 2.4) on the sans-I/O protocol of `websockets`.

The HTTP layer parses the upgrade request, then hands the transport to a ``WebSocketSession``.
Framing, masking, control frames, close handshake and permessage-deflate are the library's; we own
the ASGI side: message assembly with a size limit, the bounded receive queue with backpressure,
server pings, the denial response, and shutdown.
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from asgiworker.errors import ClientDisconnected
from asgiworker.wire.flow import FlowControl
from asgiworker.wire.headers import check_headers, response_pairs
from asgiworker.wire.lines import error_response, length_line, status_line

# Bytes a client may send before the app accepts (they wait for the accept); beyond this,
# reading pauses until it does.
EARLY_DATA_LIMIT = 64 * 1024


_UTF8Decoder = codecs.getincrementaldecoder("utf-8")


class _ServerProtocol(ServerProtocol):
    """The library's server protocol, answering a close that interrupts a fragmented message.

    RFC 6455 5.4 lets control frames, the close frame among them, arrive between the fragments of
    a message; the library calls that a protocol error and answers 1002 (Autobahn case 7.1.5
    fails it). The unfinished message can never complete, so we drop it and let the close be
    an ordinary one: the peer's code is echoed.
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None
        super().recv_frame(frame)


class WebSocketSession(asyncio.Protocol):
    """One upgraded connection: the ASGI ``receive``/``send`` pair of a websocket scope."""

    def __init__(self, state: Any, scope: Dict[str, Any], raw_request: bytes) -> None:
        self.state = state
        self.loop: asyncio.AbstractEventLoop = state.loop
        self.settings = state.settings
        self.scope = scope
        self.transport: Any = None
        extensions = [ServerPerMessageDeflateFactory()] if self.settings.ws_per_message_deflate else []
        # The library checks each frame (and its decompression) against the limit; the limit on
        # a whole fragmented message is ours, below.
        self.protocol = _ServerProtocol(extensions=extensions, max_size=(None, self.settings.ws_max_size))
        self._raw_request = raw_request
        self._handshake: Any = None
        self._inbox: Deque[Dict[str, Any]] = deque()
        self._waiter: Optional[asyncio.Future[Any]] = None
        self.flow: FlowControl = None  # type: ignore[assignment]  # set in start()
        self._fragments: List[bytes] = []
        self._fragment_size = 0
        self._fragment_text = False
        self._text_parts: List[str] = []  # a fragmented text message, decoded so far
        self._utf8: Optional[codecs.IncrementalDecoder] = None
        self._accepted = False
        self._responded = False  # a denial or handshake response went out instead of 101
        self._denial_status: Optional[int] = None
        self._denial_headers: Any = ()
        self._denial_body: List[bytes] = []
        self._disconnected = False
        self._close_code: Optional[int] = None
        self._close_reason = ""
        self._ping_sent_at: Optional[float] = None
        self._last_ping = self.loop.time()
        self.task: Optional[asyncio.Task[Any]] = None
        # What arrived before the accept (at most EARLY_DATA_LIMIT and one read), and when the
        # handshake reached the app (for the handshake timeout).
        self._early: List[bytes] = []
        self._early_size = 0
        self._started_at = 0.0

    # -- takeover from the HTTP connection ----------------------------------------------------

    def start(self, transport: Any, leftover: bytes) -> None:
        self.transport = transport
        self.flow = FlowControl(transport, self.loop)
        self._started_at = self.loop.time()
        transport.set_protocol(self)
        self.state.connections.add(self)
        version = _header(self.scope["headers"], b"sec-websocket-version")
        if version != b"13":
            self._respond_and_close(self._error(426, "Unsupported WebSocket version", b"sec-websocket-version: 13\r\n"))
            return
        self.protocol.receive_data(self._raw_request)
        events = self.protocol.events_received()
        request = events[0] if events and isinstance(events[0], Request) else None
        if request is None:
            self._respond_and_close(self._error(400, "Invalid WebSocket handshake"))
            return
        response = self.protocol.accept(request)
        if response.status_code != 101:
            self._respond_and_close(self._error(response.status_code, bytes(response.body).decode("utf-8", "replace").rstrip("\n")))
            return
        self._handshake = response
        self._enqueue({"type": "websocket.connect"})
        self.state.start_app_task(self, self.run())
        if leftover:
            self.data_received(leftover)

    # -- transport callbacks ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._accepted:
            if not self._responded:
                # Frames sent before our answer wait for the accept, bounded: past the limit we
                # stop reading and the client's own buffers (then TCP) hold the rest.
                self._early.append(data)
                self._early_size += len(data)
                if self._early_size >= EARLY_DATA_LIMIT:
                    self.flow.pause_reading()
            return  # (after a refusal: discarded while the transport closes)
        protocol = self.protocol
        protocol.receive_data(data)
        for frame in protocol.events_received():
            self._on_frame(frame)
        self._flush()

    def _on_frame(self, frame: Any) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
            if opcode is not Opcode.CONT:
                self._fragment_text = opcode is Opcode.TEXT
                self._fragments = []
                self._text_parts = []
                self._utf8 = None
                self._fragment_size = 0
            self._fragment_size += len(frame.data)
            max_size = self.settings.ws_max_size
            if max_size is not None and self._fragment_size > max_size:
                self.protocol.fail(1009, "message too big")
                self._fragments = []
                self._text_parts = []
                return
            if self._fragment_text and not (frame.fin and opcode is Opcode.TEXT):
                # A fragmented text message is decoded as its fragments arrive, so invalid UTF-8
                # fails the connection at the fragment that holds it (Autobahn 6.4.1/6.4.2: "fail
                # fast"), not after the client has sent, and we have held, the rest.
                if self._utf8 is None:
                    self._utf8 = _UTF8Decoder()
                try:
                    self._text_parts.append(self._utf8.decode(frame.data, frame.fin))
                except UnicodeDecodeError:
                    self.protocol.fail(1007, "invalid UTF-8")
                    self._text_parts = []
                    return
                if not frame.fin:
                    return
                text = "".join(self._text_parts)
                self._text_parts = []
                self._utf8 = None
                self._enqueue({"type": "websocket.receive", "text": text})
            elif self._fragment_text:
                try:
                    text = bytes(frame.data).decode("utf-8")
                except UnicodeDecodeError:
                    self.protocol.fail(1007, "invalid UTF-8")
                    return
                self._enqueue({"type": "websocket.receive", "text": text})
            else:
                self._fragments.append(frame.data)
                if not frame.fin:
                    return
                payload = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
                self._fragments = []
                self._enqueue({"type": "websocket.receive", "bytes": bytes(payload)})
            if len(self._inbox) >= self.settings.ws_max_queue:
                self.flow.pause_reading()
        elif opcode is Opcode.PONG:
            self._ping_sent_at = None
        elif opcode is Opcode.CLOSE:
            rcvd = self.protocol.close_rcvd
            self._set_close(rcvd.code if rcvd is not None else 1005, rcvd.reason if rcvd is not None else "")

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.state.connections.discard(self)
        self._set_close(self._close_code or 1006, self._close_reason)
        if self.flow is not None:
            self.flow.connection_lost()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- the ASGI application -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.state.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            self._abort_from_app()
            raise
        except BaseException:
            self.state.log.exception("Error in WebSocket application for %s", self.scope["raw_path"].decode("latin-1"))
            self._abort_from_app()
        else:
            if not self._accepted and not self._responded:
                self.state.log.error("WebSocket application returned without accepting or closing %s",
                                     self.scope["raw_path"].decode("latin-1"))
            self._abort_from_app(normal=True)
        finally:
            self.state.running.discard(self)

    def _abort_from_app(self, normal: bool = False) -> None:
        """The app is gone: refuse the handshake (500) or close the socket if still open (1000
        after a normal return, 1011 after an error)."""
        if self._disconnected or self.transport is None or self.transport.is_closing():
            return
        if not self._accepted:
            if not self._responded:
                self._respond_and_close(self._error(500, "Internal Server Error"))
            return
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000 if normal or self._close_code is not None else 1011)
            self._flush()
        self._close_transport_soon()

    async def receive(self) -> Dict[str, Any]:
        while not self._inbox:
            if self._disconnected:
                return {"type": "websocket.disconnect", "code": self._close_code or 1006,
                        "reason": self._close_reason}
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if self.flow.reading_paused and len(self._inbox) <= self.settings.ws_max_queue // 2 and not self._disconnected:
            self.flow.resume_reading()
        return message

    async def send(self, message: Dict[str, Any]) -> None:
        kind = message["type"]
        if self._disconnected or (self._responded and kind != "websocket.http.response.body"):
            raise ClientDisconnected("the WebSocket client has gone away")
        if not self._accepted:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                # Closing before accepting refuses the handshake (ASGI: HTTP 403).
                self._respond_and_close(self._error(403, "Forbidden"))
            elif kind == "websocket.http.response.start":
                self._denial_status = int(message["status"])
                self._denial_headers = message.get("headers", ())
            elif kind == "websocket.http.response.body" and self._denial_status is not None:
                self._denial_body.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    self._send_denial()
            else:
                raise RuntimeError(f"Expected 'websocket.accept', 'websocket.close' or "
                                   f"'websocket.http.response.start', got {kind!r}")
            return
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            raise ClientDisconnected("the WebSocket connection is closing")
        if kind == "websocket.send":
            data = message.get("bytes")
            if data is not None:
                protocol.send_binary(bytes(data))
            else:
                text = message.get("text")
                if not isinstance(text, str):
                    raise RuntimeError("'websocket.send' needs 'bytes' or 'text'")
                protocol.send_text(text.encode("utf-8"))
            self._flush()
            if self.flow.writing_paused:
                await self.flow.drain()
        elif kind == "websocket.close":
            code = message.get("code", 1000) or 1000
            self._close_code = code
            self._close_reason = message.get("reason") or ""
            protocol.send_close(code, self._close_reason)
            self._flush()
            self._close_transport_soon()
        else:
            raise RuntimeError(f"Expected 'websocket.send' or 'websocket.close', got {kind!r}")

    def _accept(self, message: Dict[str, Any]) -> None:
        response = self._handshake
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if subprotocol not in self.scope["subprotocols"]:
                raise RuntimeError(f"Subprotocol {subprotocol!r} was not offered by the client")
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        for name, value in response_pairs(message.get("headers", ())):
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        self.protocol.send_response(response)
        self._accepted = True
        self._flush()
        early = self._early
        if early:
            self._early = []
            self._early_size = 0
            self.data_received(early[0] if len(early) == 1 else b"".join(early))
        if len(self._inbox) < self.settings.ws_max_queue:
            self.flow.resume_reading()  # (else the early frames filled the inbox: receive() resumes)

    def _send_denial(self) -> None:
        body = b"".join(self._denial_body)
        status = self._denial_status or 403
        block = check_headers(self._denial_headers)  # (framing headers are ours: dropped)
        self._respond_and_close(b"".join((status_line(status), block[0], length_line(len(body)),
                                          b"connection: close\r\n", self.state.default_headers, b"\r\n", body)))

    def _error(self, status: int, text: str, extra_headers: bytes = b"") -> bytes:
        """The server's own answer to a handshake it refuses (the same as HTTP's)."""
        return error_response(status, text, self.state.default_headers, extra_headers)

    # -- writing and closing ------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            else:
                # The library's end-of-stream: the close handshake is done (or failed), and the
                # server is the side that closes TCP first.
                transport.close()

    def _respond_and_close(self, data: bytes) -> None:
        """An HTTP answer instead of the 101, then the close in stages, as HTTP's (the client may
        be sending frames already: they are read and discarded, lest the kernel reset the
        connection before the client reads our answer)."""
        self._responded = True
        transport = self.transport
        transport.write(data)
        linger = self.settings.linger_timeout
        if linger and transport.can_write_eof():
            transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(linger, self._force_close)
        else:
            transport.close()

    def _close_transport_soon(self) -> None:
        # The client should close after the close handshake; if it does not, we do.
        if not self.transport.is_closing():
            self.loop.call_later(2.0, self._force_close)

    def _force_close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _enqueue(self, message: Dict[str, Any]) -> None:
        self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_close(self, code: int, reason: str) -> None:
        if not self._disconnected:
            self._disconnected = True
            self._close_code = code
            self._close_reason = reason
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # -- worker hooks: the once-a-second tick and shutdown ------------------------------------

    def check_timeouts(self, now: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        settings = self.settings
        if self.flow.stalled_for(now) > settings.send_timeout:
            # The client reads none of what we send: its buffer is ours to free.
            self.state.log.info("WebSocket client %s read nothing for %gs: closing",
                                self.scope["client"], settings.send_timeout)
            self._set_close(1006, "send timeout")
            self.flow.cut()
            return
        if not self._accepted:
            if not self._responded and now - self._started_at > settings.ws_handshake_timeout:
                # The client waits for an answer the app is not giving: ours is that the service
                # is unavailable; the app's receive() says the socket is gone, its send() raises.
                self.state.log.warning("WebSocket application neither accepted nor refused %s within %gs "
                                       "(ASGIWORKER_WS_HANDSHAKE_TIMEOUT): answering 503",
                                       self.scope["raw_path"].decode("latin-1"), settings.ws_handshake_timeout)
                self._set_close(1006, "handshake timeout")
                self._respond_and_close(self._error(503, "Service Unavailable: the WebSocket was not accepted in time"))
            return
        interval = settings.ws_ping_interval
        if not interval or self.protocol.state is not State.OPEN:
            return
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > settings.ws_ping_timeout:
                self.state.log.info("WebSocket client %s did not answer a ping in %gs: closing",
                                    self.scope["client"], settings.ws_ping_timeout)
                self.protocol.fail(1011, "keepalive ping timeout")
                self._flush()
                self._set_close(1006, "keepalive ping timeout")
                transport.close()
        elif now - self._last_ping >= interval:
            self._last_ping = self._ping_sent_at = now
            self.protocol.send_ping(os.urandom(4))
            self._flush()

    def shutdown(self) -> None:
        """Graceful stop begins: a WebSocket is long-lived, it is closed at the deadline (abort)."""

    def abort(self) -> None:
        """The graceful deadline: close with 1001 (going away)."""
        if self.transport is None or self.transport.is_closing():
            return
        if self._accepted and self.protocol.state is State.OPEN:
            self.protocol.send_close(1001, "server shutting down")
            self._flush()
            self._set_close(1001, "server shutting down")
            self.transport.close()
        else:
            self.transport.abort()


def _header(headers: List[List[bytes]], name: bytes) -> Optional[bytes]:
    for key, value in headers:
        if key == name:
            return value
    return None


def is_websocket_upgrade(upgrade: Optional[bytes]) -> bool:
    return upgrade is not None and b"websocket" in upgrade.lower()


def build_raw_request(method: str, url: bytes, headers: List[List[bytes]]) -> bytes:
    """The upgrade request as bytes again, for the library's handshake checks."""
    lines = [method.encode("ascii"), b" ", url, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def subprotocols(headers: List[List[bytes]]) -> List[str]:
    found: List[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            found += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
    return found


def websocket_scope(http_scope: Dict[str, Any]) -> Dict[str, Any]:
    scope = dict(http_scope)
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if http_scope["scheme"] == "https" else "ws"
    scope["subprotocols"] = subprotocols(http_scope["headers"])
    extensions = {k: v for k, v in (http_scope.get("extensions") or {}).items() if k == "tls"}
    extensions["websocket.http.response"] = {}
    scope["extensions"] = extensions
    scope.pop("method", None)
    return scope

