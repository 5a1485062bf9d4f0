"""Worker memory per idle connection: keep-alive HTTP and WebSocket (docs/deployment.md).

    .venv/bin/python bench/conn_memory.py [--counts 1000,5000] [--kinds http,ws]

For each kind it starts one `gunicorn -k asgiworker.ASGIWorker` worker (`--worker-connections
20000 --keep-alive 600`, default ASGIWORKER_* settings) serving this module's `app`, reads the
worker's VmRSS from /proc with no connection open, then opens connections from this process up
to each count and reads it again once they are all established and idle:

- http: `GET /` with keep-alive, the whole answer read, the connection left open;
- ws:   a WebSocket handshake to `/ws` (the app accepts and waits in receive()), left open.

It prints one line per (kind, N): RSS, growth over N = 0 and KiB per connection. The client
raises its own file-descriptor limit to the hard limit (resource.setrlimit).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent


async def app(scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Hello over HTTP; a WebSocket that accepts and sits in receive() until it is closed."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
        await send({"type": "http.response.body", "body": b"Hello, world!"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _worker_pid(master: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("no worker")


HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _ws_request() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")


async def _open(port: int, kind: str, gate: asyncio.Semaphore) -> Tuple[Any, Any]:
    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        writer.write(HTTP_REQUEST if kind == "http" else _ws_request())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        want = b"HTTP/1.1 200" if kind == "http" else b"HTTP/1.1 101"
        if not head.startswith(want):
            raise RuntimeError(head[:80])
        if kind == "http":
            await asyncio.wait_for(reader.readexactly(13), 30)
        return reader, writer


async def _measure(kind: str, counts: List[int]) -> None:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    master = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "bench.conn_memory:app", "-k", "asgiworker.ASGIWorker",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-connections", "20000",
         "--keep-alive", "600", "--log-level", "warning"],
        cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = _worker_pid(master.pid, time.monotonic() + 30)
        for _ in range(300):  # ready: it answers
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(100).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        base = _rss_kib(worker)
        print(f"{kind:4} N={0:5} worker RSS {base / 1024:7.1f} MiB", flush=True)
        gate = asyncio.Semaphore(200)
        conns: List[Tuple[Any, Any]] = []
        for n in counts:
            conns += await asyncio.gather(*(_open(port, kind, gate) for _ in range(n - len(conns))))
            await asyncio.sleep(2.5)  # idle: the once-a-second tick has run over all of them
            rss = _rss_kib(worker)
            print(f"{kind:4} N={n:5} worker RSS {rss / 1024:7.1f} MiB  growth {(rss - base) / 1024:6.1f} MiB"
                  f"  {(rss - base) / n:5.1f} KiB per connection", flush=True)
        for _, writer in conns:
            writer.transport.abort()
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,5000")
    parser.add_argument("--kinds", default="http,ws")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    counts = sorted(int(n) for n in args.counts.split(","))
    for kind in args.kinds.split(","):
        asyncio.run(_measure(kind, counts))


if __name__ == "__main__":
    main()
