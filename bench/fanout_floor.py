"""The floor under bench/fanout.py: what one message to one socket costs a Python process on
uvloop when it does nothing else: no ASGI, no channel layer, no Redis, no WebSocket library.

    .venv/bin/python bench/fanout_floor.py [--rate 20] [--duration 5] [--workers 4] [--connections 1000]

``--workers`` processes share one listening socket (as Gunicorn's workers do); each answers the
upgrade by hand, then on every tick of its own timer writes one pre-built text frame (the tick's
timestamp) to each of its sockets with ``transport.write``. The clients are fanout.py's
(fanout_client.py). Prints delivered/s, latency and the servers' CPU per delivered message: the
part of fanout.py's "worker CPU µs/msg" that is the kernel's send path and uvloop's, which any
server on uvloop pays.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fanout  # noqa: E402  # its process and /proc helpers

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FloorConn(asyncio.Protocol):
    def __init__(self, sockets: list) -> None:
        self.sockets = sockets
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.buf is None:
            return  # client frames (pongs): ignored
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        key = b""
        for line in self.buf[:end].split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.buf = None
        self.sockets.append(self.transport)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        if self.transport in self.sockets:
            self.sockets.remove(self.transport)


def serve(listener: socket.socket, control: int) -> None:
    """A worker: serve the listener; ticks at the rate read from the control pipe."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sockets: list = []
        await loop.create_server(lambda: FloorConn(sockets), sock=listener)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(control, "rb"))
        while True:
            line = (await reader.readline()).split()
            if not line:
                return
            rate, start, end = map(float, line)
            i = 0
            while True:
                due = start + i / rate
                if due >= end:
                    break
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                payload = f"{time.time():.6f}".encode()
                frame = bytes((0x81, len(payload))) + payload
                for transport in sockets:
                    transport.write(frame)
                i += 1

    uvloop.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--load-nice", type=int, default=-10)
    args = parser.parse_args()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    workers = []
    controls = []
    for _ in range(args.workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            fanout._die_with_parent()
            try:
                serve(listener, r)
            finally:
                os._exit(0)
        os.close(r)
        workers.append(pid)
        controls.append(os.fdopen(w, "w", buffering=1))
    listener.close()
    clients = []
    try:
        per = [args.connections // args.clients + (1 if i < args.connections % args.clients else 0)
               for i in range(args.clients)]
        for n in per:
            clients.append(fanout.spawn([sys.executable, str(HERE / "fanout_client.py"), "--port", str(port),
                                         "--connections", str(n), "--concurrency", "1"], pipes=True,
                                        nice=args.load_nice))
        for i, client in enumerate(clients):
            words = fanout.read_line(client, f"client {i}", 120).split()
            assert words[0] == "READY" and int(words[2]) == 0, words
        start = time.time() + 0.3
        w0 = start + args.warmup
        w1 = w0 + args.duration
        for control in controls:
            control.write(f"{args.rate} {start:.6f} {w1:.6f}\n")
        fanout.sleep_until(w0)
        before = {pid: fanout.cpu_seconds(pid) for pid in workers}
        sys0 = sum(fanout.sys_seconds(pid) for pid in workers)
        cl0 = [fanout.cpu_seconds(c.pid) for c in clients]
        m0 = fanout.machine_busy_seconds()
        fanout.sleep_until(w1)
        after = {pid: fanout.cpu_seconds(pid) for pid in workers}
        sys1 = sum(fanout.sys_seconds(pid) for pid in workers)
        cl1 = [fanout.cpu_seconds(c.pid) for c in clients]
        m1 = fanout.machine_busy_seconds()
        fanout.sleep_until(w1 + 1.5)
        for client in clients:
            fanout.tell(client, f"report {w0:.6f} {w1:.6f}")
        reports = [json.loads(fanout.read_line(c, "client report", 60)) for c in clients]
        received = sum(r["received_in_window"] for r in reports)
        pct = fanout.merged_percentiles([r["hist_first"] for r in reports] + [r["hist_second"] for r in reports])
        cpu = sum(after[p] - before[p] for p in workers)
        span = w1 - w0
        result = {
            "rate": args.rate, "delivered_per_s": received / span,
            "p50_ms": pct["p50"] * 1000, "p99_ms": pct["p99"] * 1000,
            "server_cpu_us_per_msg": cpu / received * 1e6 if received else None,
            "server_sys_share": (sys1 - sys0) / cpu if cpu else None,
            "server_cpu_pct": cpu / span * 100,
            "client_cpu_us_per_msg": sum(b - a for a, b in zip(cl0, cl1)) / received * 1e6 if received else None,
            "softirq_pct": (m1[2] - m0[2]) / span * 100,
            "machine_busy_pct": (m1[0] - m0[0]) / (m1[1] - m0[1]) * 100,
        }
        print(json.dumps(result))
        print(f"floor at {args.rate:g} ticks/s: {result['delivered_per_s']:,.0f} msg/s, p50 {result['p50_ms']:.1f} ms, "
              f"p99 {result['p99_ms']:.1f} ms; servers {result['server_cpu_us_per_msg'] or 0:.1f} µs/msg "
              f"(sys {(result['server_sys_share'] or 0) * 100:.0f}%), clients {result['client_cpu_us_per_msg'] or 0:.1f} "
              f"µs/msg, softirq {result['softirq_pct']:.0f}%, machine {result['machine_busy_pct']:.0f}%")
        return 0
    finally:
        for client in clients:
            try:
                fanout.tell(client, "quit")
            except OSError:
                pass
            fanout.kill_group(client, 1.0)
        for control in controls:
            control.close()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
