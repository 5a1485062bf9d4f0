"""Flow control, both ways, for every protocol on a transport (HTTP and WebSocket alike).

Read side: the protocol decides *why* to stop reading (a full body buffer, a full pipeline, a
full WebSocket inbox); this piece only makes each pause and resume reach the transport once, and
never after the connection is gone. Write side: the transport says when its buffer is full
(``pause_writing``) and drained again (``resume_writing``); a sender awaits ``drain()`` in
between, and is let go when the connection is lost.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Optional

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, drops the buffer


class FlowControl:
    __slots__ = ("_transport", "_loop", "reading_paused", "writing_paused", "writing_paused_at", "_drain_waiter",
                 "closed")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.reading_paused = False
        self.writing_paused = False
        # When the transport's buffer last filled up (for the send timeout).
        self.writing_paused_at = 0.0
        self._drain_waiter: Optional[asyncio.Future[None]] = None
        self.closed = False

    # -- reading --------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self._transport.resume_reading()

    # -- writing (the transport's callbacks, forwarded by the protocol) ------------------------

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.writing_paused_at = self._loop.time()

    def stalled_for(self, now: float) -> float:
        """How long the client has taken none of our output (0 if the buffer is not full)."""
        return now - self.writing_paused_at if self.writing_paused and not self.closed else 0.0

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drain()

    async def drain(self) -> None:
        """Wait until the transport's write buffer has drained (or the connection is gone)."""
        if self.closed or not self.writing_paused:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        await waiter

    def cut(self) -> None:
        """Close with a reset, dropping what the kernel still holds for the client: for one that
        reads nothing (the send timeout), whose unsent bytes would otherwise sit in the kernel,
        in FIN-WAIT-1, for minutes after we let go (nginx's ``reset_timedout_connection``)."""
        transport = self._transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            except (OSError, AttributeError):
                pass  # (not a TCP socket: the abort alone)
        transport.abort()

    def connection_lost(self) -> None:
        self.closed = True
        if self._drain_waiter is not None:
            self._wake_drain()

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
