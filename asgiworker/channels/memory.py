"""The in-memory channel layer: channels and groups inside one worker process (the default).

Nothing to set up, nothing shared: with ``--workers 1`` it is a complete layer; with more, each
worker has its own (use the Redis layer for one across workers and hosts). Messages are encoded
as on Redis (codec.py), so both layers accept the same messages and every receiver gets a copy.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

from asgiworker.channels.codec import decode, encode
from asgiworker.channels.errors import ChannelFull
from asgiworker.channels.layer import ChannelLayer
from asgiworker.channels.local import Mailbox


class InMemoryChannelLayer(ChannelLayer):
    backend = "memory"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._channels: Dict[str, Mailbox[bytes]] = {}
        self._groups: Dict[str, Dict[str, float]] = {}

    def describe(self) -> str:
        return "memory (this worker process only)"

    def tick(self) -> None:
        super().tick()
        now = time.monotonic()
        for name in [name for name, box in self._channels.items() if box.idle_since(now)]:
            del self._channels[name]

    async def _send(self, channel: str, message: Dict[str, Any]) -> None:
        if not self._put(channel, encode(message, self.max_message_size)):
            raise ChannelFull(f"{channel} already holds {self.capacity} messages (the layer's capacity)")

    def _put(self, channel: str, data: bytes) -> bool:
        if "!" in channel:
            # Nothing by that name (any more): dropped, as on Redis. Delivery is at most once.
            return self.local.deliver(channel, decode(data)) is not False
        box = self._channels.get(channel)
        if box is None:
            box = self._channels[channel] = Mailbox(self.capacity, self.expiry)
        return box.put(data)

    async def _receive(self, channel: str) -> Dict[str, Any]:
        box = self._channels.get(channel)
        if box is None:
            box = self._channels[channel] = Mailbox(self.capacity, self.expiry)
        return decode(await box.get())

    async def _group_add(self, group: str, channels: List[str]) -> None:
        members = self._groups.setdefault(group, {})
        now = time.monotonic()
        for channel in channels:
            members[channel] = now

    async def _group_discard(self, group: str, channel: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._groups[group]

    async def _group_send(self, group: str, message: Dict[str, Any]) -> None:
        data = encode(message, self.max_message_size)
        members = self._groups.get(group)
        if not members:
            return
        cutoff = time.monotonic() - self.group_expiry
        for channel, added in list(members.items()):
            if added < cutoff:
                del members[channel]
            else:
                self._put(channel, data)  # a full member misses this one, silently (the spec)
        if not members:
            del self._groups[group]

    async def _flush(self) -> None:
        self._channels.clear()
        self._groups.clear()
