"""What one worker process owns on the layer: its process-specific channels and their groups.

Every name this process hands out is ``<prefix>.<process>!<n>``: ``<process>`` is random per
process, so the part up to the ``!`` routes a message to this process (on Redis, to this
process's one key, read by its one reader) and the rest picks the endpoint here. An endpoint is
either a consumer's reply channel (replies go to its socket, events to its consumer) or a
``Mailbox`` made by ``new_channel()`` whose messages wait for ``receive()``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import deque
from typing import Any, Deque, Dict, Generic, List, Optional, Protocol, Set, Tuple, TypeVar

from asgiworker.channels.errors import ChannelFull

T = TypeVar("T")


class Endpoint(Protocol):
    def deliver(self, message: Dict[str, Any]) -> bool:
        """Take one message; False when the endpoint is full (the message is not taken)."""


class Mailbox(Generic[T]):
    """Messages waiting for ``receive()``: at most ``capacity``, each for at most ``expiry``
    seconds (an older one is dropped unread, as the Channels spec allows)."""

    __slots__ = ("capacity", "expiry", "_items", "_waiters", "last_used")

    def __init__(self, capacity: int, expiry: float) -> None:
        self.capacity = capacity
        self.expiry = expiry
        self._items: Deque[Tuple[float, T]] = deque()
        self._waiters: Deque[asyncio.Future[T]] = deque()
        self.last_used = time.monotonic()

    def put(self, item: T) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return True
        self._drop_expired()
        if len(self._items) >= self.capacity:
            return False
        self._items.append((time.monotonic() + self.expiry, item))
        return True

    def put_or_raise(self, item: T) -> None:
        if not self.put(item):
            raise ChannelFull(f"The channel already holds {self.capacity} messages (the layer's capacity)")

    def deliver(self, message: Any) -> bool:
        return self.put(message)

    async def get(self) -> T:
        self.last_used = time.monotonic()
        self._drop_expired()
        if self._items:
            return self._items.popleft()[1]
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            self.last_used = time.monotonic()
            if not waiter.done() or waiter.cancelled():
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def idle_since(self, now: float) -> bool:
        """Empty, unwatched and unused for ``expiry`` seconds: safe to forget."""
        self._drop_expired()
        return not self._items and not self._waiters and now - self.last_used > self.expiry

    def clear(self) -> None:
        self._items.clear()

    def _drop_expired(self) -> None:
        items = self._items
        if items:
            now = time.monotonic()
            while items and items[0][0] <= now:
                items.popleft()


class LocalChannels:
    """This process's names, endpoints and group memberships.

    Changed from other threads too (a sync consumer's thread attaches a reply channel or joins a
    group while the loop's tick() sweeps): changes and walks hold ``_lock``. Without it a walk
    could meet a table another thread resized midway ("dictionary changed size during
    iteration", out of tick()); not even ``list(d.items())`` is one step (a garbage collection
    it triggers runs Python code, and lets other threads in).
    """

    def __init__(self, capacity: int, expiry: float) -> None:
        self.process = uuid.uuid4().hex
        self.capacity = capacity
        self.expiry = expiry
        self._numbers = itertools.count(1)
        self.endpoints: Dict[str, Endpoint] = {}
        # group memberships of this process's live endpoints: dropped when the endpoint goes,
        # refreshed while it lives (so that it never expires out of its groups)
        self.memberships: Dict[str, Set[str]] = {}
        self._lock = threading.Lock()

    def new_name(self, prefix: str = "specific") -> str:
        # Whatever the prefix asked for, the part before the '!' is this process's one routing
        # part (on Redis: its one key, read by its one reader); another prefix goes after it.
        local = f"{next(self._numbers):x}" if prefix == "specific" else f"{prefix}.{next(self._numbers):x}"
        return f"specific.{self.process}!{local}"

    def owns(self, name: str) -> bool:
        bang = name.find("!")
        return bang > 0 and name.endswith(self.process, 0, bang)

    def register(self, name: str, endpoint: Endpoint) -> None:
        with self._lock:
            self.endpoints[name] = endpoint

    def unregister(self, name: str) -> Set[str]:
        """Forget ``name``; returns the groups it was in, for the caller to leave."""
        with self._lock:
            self.endpoints.pop(name, None)
            return self.memberships.pop(name, set())

    def mailbox(self, name: str) -> "Mailbox[Dict[str, Any]]":
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            with self._lock:
                endpoint = self.endpoints.setdefault(name, Mailbox(self.capacity, self.expiry))
        if not isinstance(endpoint, Mailbox):
            raise ValueError(f"{name} is a consumer's reply channel: its messages go to that "
                             "consumer and its socket, receive() cannot take them")
        return endpoint

    def deliver(self, name: str, message: Dict[str, Any]) -> Optional[bool]:
        """True: taken; False: the endpoint is full; None: nothing here by that name (it has
        gone: the message is dropped, delivery is at most once)."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return None
        return endpoint.deliver(message)

    def joined(self, group: str, name: str) -> None:
        with self._lock:
            if name in self.endpoints:
                self.memberships.setdefault(name, set()).add(group)

    def left(self, group: str, name: str) -> None:
        with self._lock:
            groups = self.memberships.get(name)
            if groups is not None:
                groups.discard(group)
                if not groups:
                    del self.memberships[name]

    def members_by_group(self) -> Dict[str, List[str]]:
        by_group: Dict[str, List[str]] = {}
        with self._lock:
            for name, groups in self.memberships.items():
                for group in groups:
                    by_group.setdefault(group, []).append(name)
        return by_group

    def membership_count(self) -> int:
        with self._lock:
            return sum(len(groups) for groups in self.memberships.values())

    def sweep(self) -> None:
        """Forget the mailboxes nobody has used for ``expiry`` seconds (new_channel() names
        never received from must not pile up)."""
        now = time.monotonic()
        with self._lock:
            idle = [name for name, endpoint in self.endpoints.items()
                    if isinstance(endpoint, Mailbox) and endpoint.idle_since(now) and name not in self.memberships]
            for name in idle:
                del self.endpoints[name]

    def flush(self) -> None:
        with self._lock:
            for endpoint in self.endpoints.values():
                if isinstance(endpoint, Mailbox):
                    endpoint.clear()
            self.memberships.clear()
