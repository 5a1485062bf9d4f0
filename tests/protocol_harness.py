"""Drive ``asgiworker.http.HttpConnection`` in-process, without sockets.

``FakeTransport`` stands in for the loop's socket transport: ``write()`` collects the bytes,
``pause_reading()``/``resume_reading()`` are honoured by ``Harness.feed`` (no data is delivered
while reading is paused, as with a real transport), and ``close()`` calls ``connection_lost`` on the
next loop iteration, as real transports do.

    harness = Harness(app, loop)
    loop.run_until_complete(harness.feed([b"GET / HTTP/1.1\\r\\n", b"Host: x\\r\\n\\r\\n"]))
    harness.output()   # everything written
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List, Optional, Sequence

from asgiworker.config import Settings
from asgiworker.http import HttpConnection, ServerState

FROZEN_DEFAULT_HEADERS = b"date: Thu, 01 Jan 2015 00:00:00 GMT\r\nserver: asgiworker\r\n"


class FakeTransport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol,
                 peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8000), half_close: bool = False) -> None:
        super().__init__()
        # Whether write_eof() is offered (a TCP socket's half-close); off by default, so that a
        # closing connection closes at once, as over TLS.
        self.half_close = half_close
        self.eof_written = False
        self.loop = loop
        self.protocol = protocol
        self.written: List[bytes] = []
        self.reading_paused = False
        self.pause_count = 0
        self.closing = False
        self.lost = False
        self.writes_after_close: List[bytes] = []
        self.aborted = False
        self._extra = {"peername": peername, "sockname": sockname, "sslcontext": None}

    # -- what the protocol calls --------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: Any) -> None:
        if self.closing or self.eof_written:
            # A real transport drops (or refuses) these; keep them aside for tests to look at.
            self.writes_after_close.append(bytes(data))
            return
        self.written.append(bytes(data))

    def writelines(self, list_of_data) -> None:
        for data in list_of_data:
            self.write(data)

    def pause_reading(self) -> None:
        assert not self.reading_paused, "pause_reading() while already paused"
        self.reading_paused = True
        self.pause_count += 1

    def resume_reading(self) -> None:
        self.reading_paused = False

    def is_reading(self) -> bool:
        return not self.reading_paused

    def can_write_eof(self) -> bool:
        return self.half_close

    def write_eof(self) -> None:
        assert self.half_close, "write_eof() on a transport that cannot half-close"
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def _lose(self, exc: Optional[BaseException]) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)


class Harness:
    """One ``HttpConnection`` over a ``FakeTransport`` on ``loop``, serving ``app``."""

    def __init__(self, app, loop: asyncio.AbstractEventLoop, settings: Optional[Settings] = None,
                 logger_name: str = "tests.protocol_harness", half_close: bool = False) -> None:
        self.loop = loop
        self.state = ServerState(app, settings or Settings(), logging.getLogger(logger_name), loop)
        # The Date header is refreshed by the worker's ticker, which does not run here: freeze it
        # so that outputs are comparable byte for byte.
        self.state.default_headers = FROZEN_DEFAULT_HEADERS
        self.conn = HttpConnection(self.state)
        self.transport = FakeTransport(loop, self.conn, half_close=half_close)
        self.conn.connection_made(self.transport)

    def output(self) -> bytes:
        return b"".join(self.transport.written)

    def idle(self) -> bool:
        """Nothing left to do: no task runs on the loop but the caller (each request is a task,
        and a waiting pipelined request is started by the one before it)."""
        conn = self.conn
        if not conn.closed and (conn._active is not None or conn._pipeline or conn._held is not None):
            return False  # a request is queued or answered (with eager tasks it may hold no task)
        current = asyncio.current_task(self.loop)
        return not any(t is not current and not t.done() for t in asyncio.all_tasks(self.loop))

    async def feed(self, pieces: Sequence[bytes], yields: Sequence[int] = (), timeout: float = 2.0) -> None:
        """Deliver ``pieces`` one ``data_received`` each, yielding to the loop ``yields[i]`` times
        after piece i, and never while reading is paused. Then wait until everything is answered."""
        deadline = self.loop.time() + timeout
        for i, piece in enumerate(pieces):
            while self.transport.reading_paused and not self.transport.closing:
                if self.loop.time() > deadline:
                    raise TimeoutError("reading stayed paused")
                await asyncio.sleep(0)
            if self.transport.closing:
                break
            self.conn.data_received(piece)
            for _ in range(yields[i] if i < len(yields) else 0):
                await asyncio.sleep(0)
        await self.settle(deadline)

    async def settle(self, deadline: float) -> None:
        # Run the loop until the connection is idle for a few iterations in a row.
        quiet = 0
        while quiet < 3:
            if self.loop.time() > deadline:
                raise TimeoutError(f"connection never went idle; wrote {self.output()[-500:]!r}")
            await asyncio.sleep(0)
            quiet = quiet + 1 if self.idle() else 0

    async def close(self) -> None:
        """The client goes away; let the tasks see it and finish."""
        if not self.transport.lost:
            self.transport.closing = True
            self.transport._lose(None)
        for _ in range(5):
            await asyncio.sleep(0)
