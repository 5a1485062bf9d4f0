"""Accepting connections on a listening socket, as many as are waiting at each wake-up.

libuv (hence uvloop's ``create_server``) accepts one connection per turn of the event loop. Under
a thousand busy connections a turn is long, new clients queue in the kernel for hundreds of
milliseconds, and tail latency explodes. We accept in a loop until the queue is empty, then hand
each socket to uvloop as an already accepted connection.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Callable

from asgiworker.tasks import start_server_task

# Bounds one wake-up, so that accepting cannot starve the connections already being served.
MAX_ACCEPTS_PER_WAKEUP = 512
_RETRY_LATER = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Listener:
    """``protocol_factory(peer, local)`` makes each connection's protocol, given the peer's
    address as accept() returned it and our own (None where only the connection knows it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[Any, Any], asyncio.Protocol], ssl: Any, log: Any) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self._proto = sock.proto
        self._family, self._type = int(sock.family), int(sock.type)
        # The accepted sockets' class: `family` and `type` as plain ints. The standard socket
        # turns them into enums on every read, and the loop reads them for every connection.
        self._socket_class = type("AcceptedSocket", (socket.socket,),
                                  {"__slots__": (), "family": int(sock.family), "type": int(sock.type)})
        local = sock.getsockname()
        # Bound to one address, every connection's local address is that one; bound to all of
        # them, only the connection can say which it came in on.
        wildcard = isinstance(local, tuple) and local[0] in ("0.0.0.0", "::", "")
        self._local = None if wildcard or not local else local
        self.ssl = ssl
        self.log = log
        self._reading = False
        # Accepted sockets still being set up as connections: a stopping worker must wait for
        # them too, or a client whose connection it accepted would be dropped unanswered.
        self.pending = 0

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._accept_waiting)
        self._reading = True

    def close(self) -> None:
        """Stop accepting. The socket itself is Gunicorn's (shared with the master and the other
        workers): what waits in its queue goes to them."""
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.sock.fileno())

    def _accept_waiting(self) -> None:
        for _ in range(MAX_ACCEPTS_PER_WAKEUP):
            try:
                # socket._accept() (CPython's own, under accept() since 3.3): the bare descriptor,
                # without the socket object accept() would build and we would throw away.
                fd, peer = self.sock._accept()  # type: ignore[attr-defined]  # not in typeshed
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in _RETRY_LATER:
                    # Out of file descriptors: leave the rest queued and look again in a moment.
                    self.log.warning("Cannot accept connections for now: %s", exc)
                    self.close()
                    self.loop.call_later(0.5, self._resume)
                    return
                raise
            self._adopt(self._socket_class(self._family, self._type, self._proto, fd), peer)

    def _resume(self) -> None:
        if not self._reading:
            self.start()

    def _adopt(self, conn: socket.socket, peer: Any) -> None:
        self.pending += 1
        factory, local = self.protocol_factory, self._local
        # The loop's own set-up coroutine (no application code runs in it), as a Task of its own.
        setup = start_server_task(self.loop, self.loop.connect_accepted_socket(lambda: factory(peer, local), conn, ssl=self.ssl))
        if setup.done():
            self._set_up(setup)
        else:
            setup.add_done_callback(self._set_up)

    def _set_up(self, setup: "asyncio.Task[Any]") -> None:
        self.pending -= 1
        if not setup.cancelled() and setup.exception() is not None:
            self.log.debug("Connection not set up: %r", setup.exception())  # e.g. a failed TLS handshake
