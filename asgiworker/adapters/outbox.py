"""The outbox of a consumer's reply channel: replies on their way from the consumer (any thread)
to the request's or socket's task (the loop), and whose turn it is to call the consumer.

The consumer is never called for a socket while another of its calls for that socket runs: each
call takes the socket's turn (``take_turn``) and gives it back (``give_turn``); events arriving from
the channel layer wait for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Optional

from asgiworker.channels import ChannelLayer

if TYPE_CHECKING:
    from asgiworker.adapters.consumer import ConsumerAdapter

# Guards the check-then-queue of a reply against another thread replying on the same channel at
# the same moment. One lock for all channels: it is held for microseconds, rarely contended, and
# saves allocating one per request.
REPLY_LOCK = threading.Lock()


class Outbox:
    """Replies on their way from the consumer (any thread) to the request's task (the loop)."""

    __slots__ = ("loop", "thread_id", "queue", "waiter", "started", "finished", "failure",
                 "abandoned", "disconnect", "next_gc", "gc_interval", "whole", "reaped",
                 "layer", "name", "adapter", "base", "context", "busy", "turn_waiters",
                 "events_waiting", "event_error", "receive", "watcher", "websocket", "ended")

    def __init__(self, loop: asyncio.AbstractEventLoop, whole: bool = False,
                 reaped: "Optional[set[Outbox]]" = None, layer: Optional[ChannelLayer] = None,
                 adapter: "Optional[ConsumerAdapter]" = None, base: Optional[Dict[str, Any]] = None,
                 websocket: bool = False, receive: Optional[Callable[..., Any]] = None) -> None:
        self.loop = loop
        # Where the outbox waits to be checked for abandonment (ConsumerAdapter.reap_abandoned).
        self.reaped = reaped
        # The server takes a whole response in one message (the RESPONSE_COMPLETE extension):
        # a reply that is the whole response is queued as that one message.
        self.whole = whole
        self.thread_id = threading.get_ident()
        self.queue: Deque[Dict[str, Any]] = deque()
        self.waiter: Optional[asyncio.Future[Any]] = None
        self.started = False
        self.finished = False
        self.failure: Optional[str] = None
        self.abandoned = False
        self.disconnect: Optional[OSError] = None
        self.next_gc = 0.0
        self.gc_interval = 1.0
        # The channel layer's side (see Endpoint): the name once it has one, the consumer to
        # hand events to, the keys every event message carries, whose turn it is to run.
        self.layer = layer
        self.name: Optional[str] = None
        self.adapter = adapter
        self.base = base
        self.websocket = websocket
        self.context: Optional[contextvars.Context] = None
        # Born busy: the consumer's first call runs at once (an HTTP request's only one, a
        # socket's connect), and events arriving meanwhile must wait for it.
        self.busy = True
        self.turn_waiters: Optional[Deque[asyncio.Future[None]]] = None  # made when first needed
        self.events_waiting = 0
        self.event_error: Optional[BaseException] = None
        # HTTP: the scope, not the message (the message holds the reply channel, whose collection
        # is how an abandoned response is noticed). Also the request's receive, for a named
        # response to learn that its client left.
        self.receive = receive
        self.watcher: Optional[asyncio.Task[None]] = None
        self.ended = False

    def wake(self) -> None:
        if threading.get_ident() == self.thread_id:
            self._wake_in_loop()
        else:
            try:
                self.loop.call_soon_threadsafe(self._wake_in_loop)
            except RuntimeError:
                pass  # the loop is closed: the worker is gone, nobody is waiting

    def _wake_in_loop(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send_queued(self, send: Callable[..., Any]) -> None:
        """Hand every queued reply to the ASGI ``send``, in order; remember a disconnect, so
        that the consumer's next ``send()`` raises it too."""
        queue = self.queue
        while queue:
            try:
                await send(queue.popleft())
            except OSError as exc:
                self.disconnect = exc
                raise

    async def wait(self) -> None:
        reaped = self.reaped
        if reaped is not None and self not in reaped:
            self.next_gc = time.monotonic() + self.gc_interval
            reaped.add(self)
        self.waiter = self.loop.create_future()
        # Re-check after arming the waiter: another thread may have replied just before.
        if not (self.queue or self.finished or self.abandoned or self.event_error is not None
                or (self.name is not None and self.disconnect is not None)):
            await self.waiter
        self.waiter = None

    # -- the channel layer's side -------------------------------------------------------------------

    def attach(self, endpoint: Any) -> str:
        """Give this reply channel its name on the layer (the first time ``.name`` is read):
        ``endpoint`` is what the layer hands its messages to (replies.Endpoint)."""
        with REPLY_LOCK:
            if self.name is None:
                assert self.layer is not None
                self.context = contextvars.copy_context()
                self.name = self.layer.attach(endpoint)
                if not self.websocket and self.receive is not None and not self.finished:
                    # A named HTTP response may be answered from anywhere, for as long as the
                    # client stays: watch for it leaving (the body has been read already).
                    self.loop.call_soon_threadsafe(self._watch_disconnect)
        return self.name

    def _watch_disconnect(self) -> None:
        if self.watcher is None and not self.ended:
            self.watcher = self.loop.create_task(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        assert self.receive is not None
        while True:
            event = await self.receive()
            if event.get("type") == "http.disconnect":
                break
        with REPLY_LOCK:
            if self.disconnect is None:
                self.disconnect = ConnectionResetError("the client has gone away")
        self._wake_in_loop()

    def detach(self) -> None:
        """The socket or response is done: its name and group memberships go with it."""
        self.ended = True
        if self.name is not None and self.layer is not None:
            self.layer.detach(self.name)
        watcher = self.watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()


async def take_turn(outbox: Outbox) -> None:
    """Wait until no other call of the consumer runs for this socket; the turn is then ours."""
    if not outbox.busy:
        outbox.busy = True
        return
    turn: asyncio.Future[None] = outbox.loop.create_future()
    if outbox.turn_waiters is None:
        outbox.turn_waiters = deque()
    outbox.turn_waiters.append(turn)
    try:
        await turn
    except asyncio.CancelledError:
        if turn.done() and not turn.cancelled():
            give_turn(outbox)  # it was handed to us as we were cancelled: pass it on
        raise


def give_turn(outbox: Outbox) -> None:
    waiters = outbox.turn_waiters
    while waiters:  # (None or empty: nobody waits, the usual case)
        turn = waiters.popleft()
        if not turn.done():
            turn.set_result(None)  # still busy: the turn goes straight to the next caller
            return
    outbox.busy = False
