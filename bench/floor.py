"""The floor: the least a uvloop + httptools server can do per request, with no ASGI at all.

    taskset -c 0 bench/.venv/bin/python bench/floor.py --port 8000 [--listener native|ours]

A bare protocol answering every request with the 13-byte hello (keep-alive, or close when asked).
It is not a server anyone should run: it parses nothing but what httptools hands it and checks
nothing. Its CPU time per request, measured like the real servers' (bench/floor.sh), is what a
Python server on this loop and parser cannot go below: the gap to it is our own work.

``--listener ours`` accepts through asgiworker's Listener instead of uvloop's server, to weigh
that choice on its own; ``--protocol ours`` serves through asgiworker.http instead of the bare
protocol. Under callgrind (bench/conn_cost.sh) the four combinations give repeatable
instruction counts per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

import httptools
import uvloop

RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n"
            b"date: Thu, 01 Jan 2015 00:00:00 GMT\r\nserver: floor\r\n\r\nHello, world!")
CLOSE = RESPONSE.replace(b"server: floor\r\n", b"server: floor\r\nconnection: close\r\n")


class Bare(asyncio.Protocol):
    def __init__(self, *_: object) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE)
        else:
            self.transport.write(CLOSE)
            self.transport.close()


def our_protocol(loop):
    """Our whole HTTP stack (asgiworker.http) serving bench/apps.py's hello, without Gunicorn."""
    import os
    import sys

    from asgiworker.config import Settings
    from asgiworker.http import HttpConnection, ServerState

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import apps

    state = ServerState(apps.hello, Settings(), logging.getLogger("floor"), loop)
    return lambda peer=None, local=None: HttpConnection(state, peer, local)


async def main(port: int, listener: str, protocol: str) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # a clean exit: callgrind then writes its counts
    factory = Bare if protocol == "bare" else our_protocol(loop)
    if listener == "native":
        await loop.create_server(factory, sock=sock, backlog=2048)
    else:
        from asgiworker.listener import Listener

        Listener(loop, sock, factory, None, logging.getLogger("floor")).start()
    await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--listener", choices=("native", "ours"), default="native")
    parser.add_argument("--protocol", choices=("bare", "ours"), default="bare",
                        help="ours: asgiworker.http serving the hello app (no Gunicorn)")
    args = parser.parse_args()
    uvloop.run(main(args.port, args.listener, args.protocol))
