"""The receiving side of bench/fanout.py: N raw WebSocket connections in one uvloop process.

    python fanout_client.py --port PORT [--connections 500] [--path /]

Lean on purpose (the client must never be the bottleneck): the upgrade is written by hand, and
server-to-client frames (unmasked) are parsed minimally: a 2-byte header, 126/127 extended
lengths. A text frame's payload is the ticker's send timestamp (``time.time()`` as text, the
same clock: one machine); the client stores (receive time, send timestamp) as two doubles per
message, in an array, and does the arithmetic only when asked for a report, outside the
measured window. Pings are answered (uvicorn pings every 20 s and closes a silent client).

Talks to the runner by lines: prints ``READY <open> <failed>`` once every connection is
upgraded; then for each stdin line ``report S0 S1`` prints one JSON line about the messages
sent in [S0, S1] (by their timestamp) and received in [S0, S1] (by arrival time), then forgets
everything stored so far; ``quit`` closes all connections and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import sys
import time
from array import array
from typing import Dict, List, Optional

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in every venv we run in
    uvloop = None

# Latency histogram: bins 1% wide (log scale) from 10 µs; p50/p99 are read to within 1%.
BIN_BASE = 1e-5
BIN_LOG = math.log(1.01)


def bin_of(seconds: float) -> int:
    return 0 if seconds <= BIN_BASE else int(math.log(seconds / BIN_BASE) / BIN_LOG) + 1


def bin_value(index: int) -> float:
    """The upper edge of bin ``index``, in seconds."""
    return BIN_BASE * math.exp(index * BIN_LOG)


class Stats:
    __slots__ = ("records", "closed", "other_frames", "pings")

    def __init__(self) -> None:
        self.records = array("d")  # recv time, send timestamp, recv time, send timestamp...
        self.closed = 0
        self.other_frames = 0
        self.pings = 0


class Conn(asyncio.Protocol):
    __slots__ = ("request", "stats", "transport", "upgraded", "buf", "ready", "lost")

    def __init__(self, request: bytes, stats: Stats, ready: "asyncio.Future[bool]") -> None:
        self.request = request
        self.stats = stats
        self.transport: Optional[asyncio.Transport] = None
        self.upgraded = False
        self.buf = b""
        self.ready = ready
        self.lost = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                if not self.ready.done():
                    self.ready.set_result(False)
                self.transport.close()
                return
            self.upgraded = True
            if not self.ready.done():
                self.ready.set_result(True)
            data = data[end + 4:]
        # The hot path: frames, back to back.
        append = self.stats.records.append
        i = 0
        n = len(data)
        while n - i >= 2:
            b0 = data[i]
            length = data[i + 1]
            if length < 126:
                start = i + 2
            elif length == 126:
                if n - i < 4:
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                start = i + 4
            else:
                if n - i < 10:
                    break
                length = int.from_bytes(data[i + 2:i + 10], "big")
                start = i + 10
            end = start + length
            if end > n:
                break
            if b0 == 0x81:
                append(now)
                append(float(data[start:end]))
            else:
                self._control(b0, data[start:end])
            i = end
        if i < n:
            self.buf = data[i:]

    def _control(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode == 0x9:  # ping: answer with a masked pong (zero mask: payload unchanged)
            self.stats.pings += 1
            if len(payload) < 126:
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
        elif opcode == 0x8:  # close: answer it, count it
            self.stats.closed += 1
            self.transport.write(b"\x88\x80\0\0\0\0")
            self.transport.close()
        else:
            self.stats.other_frames += 1

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.lost = True
        if not self.ready.done():
            self.ready.set_result(False)


def upgrade_request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def open_all(args, stats: Stats) -> "tuple[List[Conn], int]":
    loop = asyncio.get_running_loop()
    conns: List[Conn] = []
    failed = 0
    gate = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        nonlocal failed
        async with gate:
            for attempt in range(5):
                ready: asyncio.Future[bool] = loop.create_future()
                conn = Conn(upgrade_request(args.host, args.port, args.path), stats, ready)
                try:
                    await loop.create_connection(lambda conn=conn: conn, args.host, args.port)
                    ok = await asyncio.wait_for(ready, 10)
                except (OSError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    conns.append(conn)
                    return
                if conn.transport is not None:
                    conn.transport.close()
                await asyncio.sleep(0.2 * (attempt + 1))
            failed += 1

    await asyncio.gather(*(one() for _ in range(args.connections)))
    return conns, failed


def report(stats: Stats, conns: List[Conn], s0: float, s1: float) -> Dict[str, object]:
    records = stats.records
    stats.records = array("d")
    # Latencies of the messages sent in the first and in the second half of the window apart:
    # a server that keeps up has the same in both, one that falls behind a growing backlog.
    halves: "tuple[Dict[int, int], Dict[int, int]]" = ({}, {})
    mid = (s0 + s1) / 2
    sent_in = received_in = 0
    lat_sum = 0.0
    lat_max = 0.0
    for k in range(0, len(records), 2):
        recv, sent = records[k], records[k + 1]
        if s0 <= recv <= s1:
            received_in += 1
        if s0 <= sent <= s1:
            sent_in += 1
            latency = recv - sent
            lat_sum += latency
            if latency > lat_max:
                lat_max = latency
            b = bin_of(latency)
            hist = halves[sent >= mid]
            hist[b] = hist.get(b, 0) + 1
    return {
        "stored": len(records) // 2,
        "delivered_sent_in_window": sent_in,
        "received_in_window": received_in,
        "latency_sum": lat_sum,
        "latency_max": lat_max,
        "hist_first": halves[0],
        "hist_second": halves[1],
        "open": sum(1 for c in conns if not c.lost),
        "closed_by_server": stats.closed,
        "pings": stats.pings,
        "other_frames": stats.other_frames,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight")
    args = parser.parse_args()
    stats = Stats()
    conns, failed = await open_all(args, stats)
    print(f"READY {len(conns)} {failed}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        if line[0] == "report":
            out = report(stats, conns, float(line[1]), float(line[2]))
            print(json.dumps(out), flush=True)
    for conn in conns:
        if conn.transport is not None and not conn.lost:
            conn.transport.abort()


if __name__ == "__main__":
    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())
