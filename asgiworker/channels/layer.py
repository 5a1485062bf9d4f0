"""The channel layer's contract, common to both backends (``memory.py``, ``redis.py``).

The API is the Channels specification's: async ``send``, ``receive``, ``new_channel``, the
``groups`` extension (``group_add``, ``group_discard``, ``group_send``) and ``flush``, with
``capacity``, ``expiry``, ``ChannelFull`` and ``MessageTooLarge``. Beside it, for synchronous
code running on the worker's loop (sync consumers), a non-blocking ``*_nowait`` form of each
call: it queues the call on the loop and returns a ``Pending`` at once; the queued calls run one
after another in the order they were made (a ``group_add`` then a ``group_send`` from the same
code happen in that order).

Everything runs on one event loop, the worker's (``bind``): the backend's connections belong to
it. A call awaited on another loop (another thread's ``asyncio.run``) is carried over to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Tuple, TypeVar

from asgiworker.channels.errors import ChannelFull
from asgiworker.channels.local import LocalChannels
from asgiworker.channels.names import check_channel, check_group
from asgiworker.channels.pending import Pending

log = logging.getLogger("asgiworker.channels")
R = TypeVar("R")

# Calls queued by the *_nowait forms and not yet run; beyond this the call fails with
# ChannelFull at once (a sync consumer in a loop must not grow the queue without end).
MAX_PENDING_CALLS = 10_000
MiB = 1024 * 1024


class ChannelLayer:
    """``message['channel_layer']``: a channel layer bound to the worker's event loop."""

    extensions = ["groups", "flush"]
    backend = "base"

    def __init__(self, *, prefix: str = "asgi", capacity: int = 100, expiry: float = 60,
                 group_expiry: float = 86400, max_message_size: int = MiB) -> None:
        self.prefix = prefix
        self.capacity = capacity
        self.expiry = expiry
        self.group_expiry = group_expiry
        self.max_message_size = max_message_size
        self.local = LocalChannels(capacity, expiry)
        self.log: Any = log  # the worker gives us Gunicorn's error log
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        self._calls: Deque[Tuple[Callable[..., Awaitable[Any]], Tuple[Any, ...], "concurrent.futures.Future[Any]"]] = deque()
        self._runner: Optional[asyncio.Task[None]] = None
        self._in_transit = 0  # calls from other threads on their way to the loop
        self._in_transit_lock = threading.Lock()
        # Live memberships are re-added this often: well before group_expiry drops them.
        self.refresh_interval = max(1.0, group_expiry / 3)
        self._next_refresh = time.monotonic() + self.refresh_interval

    # -- the loop -----------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's running event loop (the attribute consumers have always had)."""
        if self._loop is None:
            raise RuntimeError("This channel layer is not bound to an event loop yet "
                               "(the worker binds it at boot; elsewhere, await any of its calls first)")
        return self._loop

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()

    async def _on_loop(self, call: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Run ``call(*args)`` on the layer's loop, from whatever loop awaits it."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self.bind(loop)
        home: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]  # bound just above
        if loop is home:
            return await call(*args)
        if home.is_closed():
            raise RuntimeError("The channel layer's event loop is closed")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(*args), home))  # type: ignore[arg-type]  # any awaitable coroutine

    # -- the Channels API ---------------------------------------------------------------------

    async def send(self, channel: str, message: Dict[str, Any]) -> None:
        """Put ``message`` on ``channel``; ``ChannelFull`` if it holds ``capacity`` messages."""
        check_channel(channel)
        _check_message(message)
        await self._on_loop(self._send, channel, message)

    async def receive(self, channel: str) -> Dict[str, Any]:
        """The next message on ``channel``, waiting for one. A process-specific name must be
        one of this process's (from ``new_channel()``)."""
        check_channel(channel)
        return await self._on_loop(self._receive_any, channel)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name whose messages ``receive()`` gets here."""
        name = self.new_channel_name(prefix)
        await self._on_loop(self._started)
        return name

    def new_channel_name(self, prefix: str = "specific") -> str:
        """``new_channel()`` for synchronous code."""
        name = check_channel(self.local.new_name(prefix))
        self.local.mailbox(name)
        return name

    async def group_add(self, group: str, channel: str) -> None:
        check_group(group)
        check_channel(channel)
        self.local.joined(group, channel)
        await self._on_loop(self._group_add, group, [channel])

    async def group_discard(self, group: str, channel: str) -> None:
        check_group(group)
        check_channel(channel)
        self.local.left(group, channel)
        await self._on_loop(self._group_discard, group, channel)

    async def group_send(self, group: str, message: Dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``; a full member misses it silently."""
        check_group(group)
        _check_message(message)
        await self._on_loop(self._group_send, group, message)

    async def flush(self) -> None:
        """Drop every message and group of this layer (its prefix), everywhere."""
        await self._on_loop(self._flush)
        # Only once the backend's flush is done: one that failed (Redis down) did nothing, and
        # must not have dropped the memberships the reconnect re-adds.
        self.local.flush()

    # -- non-blocking forms, for synchronous code ----------------------------------------------

    def send_nowait(self, channel: str, message: Dict[str, Any]) -> Pending:
        check_channel(channel)
        _check_message(message)
        return self._queue_call(f"send to {channel}", self.send, channel, message)

    def group_add_nowait(self, group: str, channel: str) -> Pending:
        check_group(group)
        check_channel(channel)
        # Noted now, not when the call runs: a socket that closes before then leaves the group
        # by a discard queued after this add.
        self.local.joined(group, channel)
        return self._queue_call(f"group_add of {channel} to {group}", self.group_add, group, channel)

    def group_discard_nowait(self, group: str, channel: str) -> Pending:
        check_group(group)
        check_channel(channel)
        self.local.left(group, channel)
        return self._queue_call(f"group_discard of {channel} from {group}", self.group_discard, group, channel)

    def group_send_nowait(self, group: str, message: Dict[str, Any]) -> Pending:
        check_group(group)
        _check_message(message)
        return self._queue_call(f"group_send to {group}", self.group_send, group, message)

    def flush_nowait(self) -> Pending:
        return self._queue_call("flush", self.flush)

    def receive_blocking(self, channel: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """``receive()`` for a thread other than the loop's: blocks until a message comes
        (``TimeoutError`` after ``timeout`` seconds)."""
        check_channel(channel)
        loop = self.loop
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("receive_blocking() on the worker's event loop thread would deadlock "
                               "it: await receive() instead")
        future = asyncio.run_coroutine_threadsafe(self.receive(channel), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"No message on {channel} within {timeout} s") from None

    def _queue_call(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any) -> Pending:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        loop = self.loop
        item = (call, args, future)
        if threading.get_ident() == self._loop_thread:
            self._enqueue(item)
        else:
            # Counted from here: a thread that calls faster than the loop runs the calls must
            # meet the bound too, not fill the loop's own queue of callbacks first.
            with self._in_transit_lock:
                if self._in_transit + len(self._calls) >= MAX_PENDING_CALLS:
                    future.set_exception(ChannelFull(f"{MAX_PENDING_CALLS} layer calls are already queued in this worker"))
                    return Pending(future, self._loop_thread, what, self.log)
                self._in_transit += 1
            loop.call_soon_threadsafe(self._arrive, item)
        return Pending(future, self._loop_thread, what, self.log)

    def _arrive(self, item: Tuple[Callable[..., Awaitable[Any]], Tuple[Any, ...], "concurrent.futures.Future[Any]"]) -> None:
        with self._in_transit_lock:
            self._in_transit -= 1
        self._enqueue(item)

    def _enqueue(self, item: Tuple[Callable[..., Awaitable[Any]], Tuple[Any, ...], "concurrent.futures.Future[Any]"]) -> None:
        if len(self._calls) >= MAX_PENDING_CALLS:
            item[2].set_exception(ChannelFull(f"{MAX_PENDING_CALLS} layer calls are already queued in this worker"))
            return
        self._calls.append(item)
        if self._runner is None:
            self._runner = self.loop.create_task(self._run_calls())

    async def _run_calls(self) -> None:
        calls = self._calls
        try:
            while calls:
                call, args, future = calls.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(await call(*args))
                except asyncio.CancelledError:
                    future.cancel()
                    raise
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            self._runner = None

    def _quietly(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any,
                 on_failure: Optional[Callable[[Pending], Any]] = None) -> None:
        """Queue a call of the layer's own (leaving groups, refreshing them): its failure is
        expected while the backend is down, and is not the application's business."""
        try:
            pending = self._queue_call(what, call, *args)
        except RuntimeError:
            return  # no loop any more: the worker is gone

        def done(pending: Pending) -> None:
            exc = pending.exception()
            if exc is not None:
                self.log.debug("%r failed: %r", pending, exc)
                if on_failure is not None:
                    on_failure(pending)

        pending.add_done_callback(done)

    # -- endpoints of this process ---------------------------------------------------------------

    def attach(self, endpoint: Any, prefix: str = "specific") -> str:
        """A new process-specific name whose messages go to ``endpoint.deliver()`` (a
        consumer's reply channel, while it lives)."""
        name = self.local.new_name(prefix)
        self.local.register(name, endpoint)
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self._ensure_started()
        return name

    def detach(self, name: str) -> None:
        """The endpoint is gone: forget its name and leave its groups."""
        for group in self.local.unregister(name):
            self._quietly(f"group_discard of {name} from {group}", self._group_discard, group, name)

    # -- the worker's part ------------------------------------------------------------------------

    async def start(self) -> None:
        """At boot, on the worker's loop: connect (a backend that is down is logged, not fatal)."""
        self.bind(asyncio.get_running_loop())
        await self._started()

    def tick(self) -> None:
        """Once a second, from the worker: re-add live memberships when due, forget idle names."""
        self.local.sweep()
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_interval
            self.refresh_memberships()

    def refresh_memberships(self) -> None:
        for group, names in self.local.members_by_group().items():
            self._quietly(f"refresh of group {group}", self._group_add, group, names,
                          on_failure=self._refresh_failed)

    def _refresh_failed(self, pending: Pending) -> None:
        # A refresh that failed must not wait a third of group_expiry for the next: the
        # memberships may be gone (a restarted Redis). Try again at the next tick, and say so;
        # unless the backend is known to be down: coming back, it refreshes them all anyway.
        if self.backend_down():
            return
        if time.monotonic() + 1.0 < self._next_refresh:
            self.log.warning("%r failed (%s); retrying in a second", pending, pending.exception())
        self._next_refresh = min(self._next_refresh, time.monotonic() + 1.0)

    async def close(self) -> None:
        """At shutdown: let queued calls finish (briefly), then drop the connections."""
        runner = self._runner
        if runner is not None:
            await asyncio.wait([runner], timeout=1.0)

    def describe(self) -> str:
        return self.backend

    def backend_down(self) -> bool:
        """The backend is known to be unreachable (its calls fail at once meanwhile)."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    # -- the backend's part -------------------------------------------------------------------

    async def _started(self) -> None:
        """Called before anything needs the backend's reader; idempotent."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        """Start whatever delivers messages to this process's endpoints (Redis: its reader)."""

    async def _receive_any(self, channel: str) -> Dict[str, Any]:
        if "!" in channel:
            if not self.local.owns(channel):
                raise ValueError(f"{channel} is another process's channel: only the process that made "
                                 "it with new_channel() can receive from it")
            self._ensure_started()
            return await self.local.mailbox(channel).get()
        return await self._receive(channel)

    async def _send(self, channel: str, message: Dict[str, Any]) -> None:
        raise NotImplementedError

    async def _receive(self, channel: str) -> Dict[str, Any]:
        raise NotImplementedError

    async def _group_add(self, group: str, channels: List[str]) -> None:
        raise NotImplementedError

    async def _group_discard(self, group: str, channel: str) -> None:
        raise NotImplementedError

    async def _group_send(self, group: str, message: Dict[str, Any]) -> None:
        raise NotImplementedError

    async def _flush(self) -> None:
        raise NotImplementedError


def _check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise TypeError(f"A channel message must be a dict, got {type(message).__name__}")
    if "__asgi_channel__" in message:
        raise ValueError("'__asgi_channel__' is reserved for the layer's routing")


