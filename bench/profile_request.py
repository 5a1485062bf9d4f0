"""The Python cost of one request through our HTTP layer, without sockets or a load generator.

    bench/.venv/bin/python bench/profile_request.py                 # µs per request, each app
    bench/.venv/bin/python bench/profile_request.py --profile hello # cProfile of one app
    valgrind --tool=callgrind bench/.venv/bin/python bench/profile_request.py --only hello -n 20000

One ``HttpConnection`` on a stand-in transport (it only counts bytes) is fed the same keep-alive
request over and over on a real uvloop loop, so this measures exactly what the worker does per
request in Python: parsing callbacks, scope, the app's cycle, framing, the write call. What it
leaves out (the kernel's socket work, the loop's polling) is what wrk measures in bench.py. Use it
to compare two versions of the code; its numbers are not comparable to the wrk figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import sys
import time

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import apps  # noqa: E402  (bench/apps.py: the same apps wrk is pointed at)

from asgiworker.adapters import load as load_app  # noqa: E402
from asgiworker.channels import InMemoryChannelLayer  # noqa: E402
from asgiworker.config import Settings  # noqa: E402
from asgiworker.http import HttpConnection, ServerState  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
APPS = ("hello", "consumer_hello", "json_1k", "stream", "echo")


class CountingTransport(asyncio.Transport):
    """Takes what a socket transport would and keeps only the byte count."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.writes = 0
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data) -> None:
        self.bytes += len(data)
        self.writes += 1

    def writelines(self, chunks) -> None:
        self.bytes += sum(len(c) for c in chunks)
        self.writes += 1

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def request_for(name: str) -> bytes:
    if name == "echo":
        body = apps.POST_BODY
        return b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return REQUEST


async def run(name: str, count: int, profiler, connections: int = 1) -> "tuple[float, int, int]":
    loop = asyncio.get_running_loop()
    layer = InMemoryChannelLayer()
    layer.bind(loop)  # as the worker does
    app = load_app(getattr(apps, name), layer=layer)
    state = ServerState(app, Settings(), logging.getLogger("profile"), loop)
    conns = []
    transports = []
    for _ in range(connections):
        conn = HttpConnection(state)
        transport = CountingTransport()
        conn.connection_made(transport)
        conns.append(conn)
        transports.append(transport)
    request = request_for(name)
    feeds = [conn.data_received for conn in conns]

    async def serve_once() -> None:
        # One request on each connection, as one turn of a loaded loop delivers them, then the
        # turns their tasks need (none for a request answered in its task's eager first step).
        for feed in feeds:
            feed(request)
        while any(conn._active is not None for conn in conns):
            await asyncio.sleep(0)

    for _ in range(max(1, 200 // connections)):  # warm up
        await serve_once()
    for transport in transports:
        transport.bytes = transport.writes = 0
    rounds = max(1, count // connections)
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    for _ in range(rounds):
        await serve_once()
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
    assert not any(t.closed for t in transports), "a connection was closed: the app failed?"
    served = rounds * connections
    return (elapsed / served * 1e6, sum(t.bytes for t in transports) // served,
            sum(t.writes for t in transports) / served)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50000, help="requests per app")
    parser.add_argument("--only", action="append", choices=APPS, help="these apps only")
    parser.add_argument("--profile", choices=APPS, help="print a cProfile of this app")
    parser.add_argument("--connections", type=int, default=1,
                        help="connections served side by side, one request each per loop turn, as under "
                             "load (default 1: every request pays a whole turn of the loop)")
    args = parser.parse_args()
    names = [args.profile] if args.profile else (args.only or APPS)
    for name in names:
        profiler = cProfile.Profile() if args.profile else None
        count = args.n // 20 if name in ("stream", "echo") else args.n
        micros, size, writes = uvloop.run(run(name, count, profiler, args.connections))
        print(f"{name:16s} {micros:8.2f} µs/request  {size:7d} bytes/response  {writes:6.1f} writes/response")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
