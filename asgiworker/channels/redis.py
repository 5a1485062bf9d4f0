"""The Redis channel layer: one layer across worker processes and hosts, on redis-py's asyncio
client (hiredis parses replies where it is installed).

Keys and encoding are those of ``channels_redis`` (its ``RedisChannelLayer``), so that a Django
Channels process on the same Redis and prefix and our workers send to each other's channels and
groups:

- a channel's messages are a sorted set at ``<prefix><channel>``, scored by the time they were
  sent, each member 12 random bytes and the msgpack of the message (codec.py); a process-specific
  channel (``specific.<process>!<id>``) is stored under its part up to the ``!``, with its full
  name in the message's ``__asgi_channel__``, so each process has one key for all its channels;
- a group is a sorted set at ``<prefix>:group:<group>`` of member channel names, scored by the
  time they joined; a member older than ``group_expiry`` is dropped.

For many workers: each worker process has **one reader** (one connection blocked in BZPOPMIN on
its one key) whatever its number of sockets, and hands what it reads to its endpoints;
``group_send`` writes **one message per process** that has members (its ``__asgi_channel__``
lists them), so its cost grows with the worker processes in a group, not with the sockets.
Delivery is at most once (no in-flight backup: a message read by a worker that dies is lost).

What we do differently from channels_redis, on purpose (its issue tracker has each):
blocking reads time out well before the socket does; the connections are made on, and only used
from, the worker's loop; live memberships are refreshed, so they expire only with their socket;
``flush`` walks keys with SCAN, never KEYS; a channel's shard is always chosen by the part of its
name a reader reads (sends and reads hash alike).
"""

from __future__ import annotations

import asyncio
import binascii
import math
import random
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from asgiworker.channels.codec import copier, decode, encode
from asgiworker.channels.errors import ChannelFull, ChannelLayerUnavailable
from asgiworker.channels.layer import ChannelLayer
from asgiworker.channels.names import non_local_name

# A blocking read waits this long, then asks again: the socket's own timeout is longer, so an
# idle layer never mistakes its wait for a dead server (channels_redis issue: socket_timeout
# shorter than the BRPOP timeout).
BLOCK_SECONDS = 2.0
COMMAND_TIMEOUT = 2.0  # no layer call hangs longer than this on a stalled server
CONNECT_TIMEOUT = 2.0
POOL_SIZE = 16  # commands in flight per worker process and server; more wait for a connection
READ_BATCH = 256  # messages taken per round trip by the reader under load
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0

_SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[3])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[4]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# One message per channel key (per process, for process-specific members): KEYS are the keys,
# ARGV the messages, then the capacities, then now, the expiry cutoff and the expiry.
_GROUP_SEND = """
local n = #KEYS
local now, cutoff, expiry = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local full = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        full = full + 1
    end
end
return full
"""


def shard(name: str, shards: int) -> int:
    """channels_redis's consistent hash (CRC-32 on a ring of 4096), so that both pick the same
    server for a name."""
    if shards == 1:
        return 0
    return int((binascii.crc32(name.encode("utf8")) & 0xFFF) / (4096 / float(shards)))


def ttl(seconds: float) -> int:
    """EXPIRE's whole seconds for a key that must outlive ``seconds``: rounded up, never 0
    (``EXPIRE key 0`` deletes the key at once: an expiry of 0.5 s would lose every message)."""
    return max(1, math.ceil(seconds))


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class RedisChannelLayer(ChannelLayer):
    backend = "redis"

    def __init__(self, urls: Sequence[str], **options: Any) -> None:
        super().__init__(**options)
        if not urls:
            raise ValueError("The Redis channel layer needs at least one redis:// URL")
        self.urls = list(urls)
        self._clients: List[Redis] = []
        self._reader: Optional[asyncio.Task[None]] = None
        self._reader_keys: List[str] = []
        self._down: Optional[str] = None  # why the server is unreachable, while it is
        self._send_script: Any = None
        self._group_send_script: Any = None
        self.reconnects = 0
        self.dropped = 0  # messages read for a full endpoint (see _dropped_full)
        self._next_drop_report = 0.0

    def describe(self) -> str:
        return f"redis {', '.join(redact(url) for url in self.urls)} (prefix {self.prefix!r})"

    # -- connections ----------------------------------------------------------------------------

    def _client(self, index: int) -> Redis:
        if not self._clients:
            self._clients = [self._make_client(url, COMMAND_TIMEOUT, POOL_SIZE) for url in self.urls]
            first = self._clients[0]
            self._send_script = first.register_script(_SEND)
            self._group_send_script = first.register_script(_GROUP_SEND)
        return self._clients[index]

    @staticmethod
    def _make_client(url: str, timeout: Optional[float], connections: int) -> Redis:
        # No retries inside redis-py: a command that failed may have run (a retried ZADD would
        # deliver twice), and the layer promises at most once. Our reader retries, with backoff.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 0))
        return Redis(connection_pool=pool)

    def _unavailable(self, exc: BaseException, index: int = 0) -> ChannelLayerUnavailable:
        return ChannelLayerUnavailable(
            f"The channel layer's Redis at {redact(self.urls[index])} is unreachable: {exc or type(exc).__name__}")

    def backend_down(self) -> bool:
        return self._down is not None

    def _check_up(self) -> None:
        if self._down is not None:
            raise ChannelLayerUnavailable(self._down)

    async def _started(self) -> None:
        self._client(0)
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._reader is None and self._loop is not None:
            self._client(0)
            self._reader_keys = [self.prefix + self._process_channel()]
            self._reader = self._loop.create_task(self._read_forever())

    async def start(self) -> None:
        self.bind(asyncio.get_running_loop())
        try:
            await self._client(0).ping()
        except (RedisError, OSError) as exc:
            self._down = str(self._unavailable(exc))
            self.log.warning("%s; layer calls fail until it is back (the worker serves on)", self._down)
        self._ensure_started()

    async def close(self) -> None:
        await super().close()
        reader = self._reader
        if reader is not None:
            # Cancel until it takes: before Python 3.12, redis-py writes each command under
            # asyncio.wait_for, which swallows a cancellation landing in that moment, and the
            # reader would read on (and close() wait for it) forever.
            while not reader.done():
                reader.cancel()
                await asyncio.wait([reader], timeout=0.1)
            await asyncio.gather(reader, return_exceptions=True)
            self._reader = None
        for client in self._clients:
            await client.aclose(close_connection_pool=True)
        self._clients = []

    # -- the reader: this process's one key, to its endpoints ---------------------------------------

    async def _read_forever(self) -> None:
        reader = self._make_client(self.urls[self._reader_shard()], BLOCK_SECONDS + 5, 1)
        backoff = BACKOFF_FIRST
        try:
            while True:
                try:
                    await self._read_some(reader)
                    backoff = BACKOFF_FIRST
                except (RedisError, OSError) as exc:
                    if self._down is None:
                        self._down = str(self._unavailable(exc, self._reader_shard()))
                        self.log.warning("%s; reconnecting (layer calls fail meanwhile)", self._down)
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                    backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            await reader.aclose(close_connection_pool=True)

    def _process_channel(self) -> str:
        """The non-local part of every name this process hands out: its one key."""
        return non_local_name(self.local.new_name())

    def _reader_shard(self) -> int:
        return shard(self._process_channel(), len(self.urls))

    async def _read_some(self, reader: Redis) -> None:
        if self._down is not None:
            await reader.ping()
            # The command connections idle in the pools were made to the server that went away
            # (a restarted one is a new server): drop them, or the first command on each fails,
            # the refresh of the memberships just below first of all.
            for client in self._clients:
                await client.connection_pool.disconnect(inuse_connections=False)
            was = self._down
            self._down = None
            self.reconnects += 1
            memberships = self.local.membership_count()
            self.log.warning("The channel layer's Redis is reachable again (was: %s); re-adding %d "
                             "group membership(s)", was, memberships)
            self.refresh_memberships()
        key = self._reader_keys[0]
        # (redis-py's reply types are unions of every command's: these are [(member, score)].)
        items: Any = await reader.zpopmin(key, READ_BATCH)
        if not items:
            popped: Any = await reader.bzpopmin(key, timeout=BLOCK_SECONDS)
            if popped is None:
                return
            items = [(popped[1], popped[2])]
        cutoff = time.time() - self.expiry
        for data, score in items:
            if score < cutoff:
                continue  # expired unread: the sender was told nothing, as on channels_redis
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        try:
            message = decode(data)
        except Exception as exc:  # not ours to crash on: somebody wrote garbage into our key
            self.log.warning("Dropped an undecodable channel message: %r", exc)
            return
        names = message.pop("__asgi_channel__", None)
        if isinstance(names, str):
            if self.local.deliver(names, message) is False:
                self._dropped_full(names)
        elif isinstance(names, list):
            copy = copier(message) if len(names) > 1 else None
            for i, name in enumerate(names):
                if isinstance(name, str):
                    # each member its own copy, nested values too
                    if self.local.deliver(name, copy() if i and copy is not None else message) is False:
                        self._dropped_full(name)

    def _dropped_full(self, name: str) -> None:
        """A message read for an endpoint that is full (a socket whose client does not read):
        its sender's ZADD succeeded long ago, so it cannot be told ChannelFull; the message is
        dropped, and said so (at most once a second, with the count)."""
        self.dropped += 1
        now = time.monotonic()
        if now >= self._next_drop_report:
            self._next_drop_report = now + 1.0
            self.log.warning("Channel layer: dropped a message for %s, whose %d waiting messages "
                             "are its capacity (%d dropped so far by this worker)",
                             name, self.capacity, self.dropped)

    # -- the backend's calls ------------------------------------------------------------------------

    def _channel_key(self, channel: str) -> str:
        return self.prefix + non_local_name(channel)

    def _group_key(self, group: str) -> str:
        return f"{self.prefix}:group:{group}"

    async def _send(self, channel: str, message: Dict[str, Any]) -> None:
        if self.local.owns(channel):
            self._send_here(channel, message)
            return
        self._check_up()
        if "!" in channel:
            message = dict(message)
            message["__asgi_channel__"] = channel
        data = encode(message, self.max_message_size)
        index = shard(non_local_name(channel), len(self.urls))
        now = time.time()
        try:
            client = self._client(index)
            script = self._send_script if index == 0 else client.register_script(_SEND)
            sent = await script(keys=[self._channel_key(channel)],
                                args=[data, now, now - self.expiry, self.capacity, ttl(self.expiry)],
                                client=client)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc, index) from exc
        if not sent:
            raise ChannelFull(f"{channel} already holds {self.capacity} messages (the layer's capacity)")

    def _send_here(self, channel: str, message: Dict[str, Any]) -> None:
        """A send to one of this process's own endpoints, handed over here rather than through
        Redis and this process's reader: the reader could only drop a message for a full
        endpoint unseen, here ``send`` raises ``ChannelFull`` as the spec says (and the memory
        layer does). Needs no Redis. Delivery is in call order with group_send's (same path)."""
        delivered = self.local.deliver(channel, decode(encode(message, self.max_message_size)))
        if delivered is False:
            raise ChannelFull(f"{channel} already holds {self.capacity} messages (the layer's capacity)")

    async def _receive(self, channel: str) -> Dict[str, Any]:
        # A general channel: a connection of its own, blocked on that channel's key.
        self._check_up()
        index = shard(channel, len(self.urls))
        # No socket timeout, ours instead: with one, redis-py writes each command under
        # asyncio.wait_for, which (before Python 3.12) swallows a cancellation landing in that
        # moment, and a receive() whose caller gave up (wait_for(receive(), t)) would go on
        # waiting, its caller with it, until a message came.
        client = self._make_client(self.urls[index], None, 1)
        key = self._channel_key(channel)
        try:
            while True:
                popped: Any = await asyncio.wait_for(client.bzpopmin(key, timeout=BLOCK_SECONDS), BLOCK_SECONDS + 5)
                if popped is not None and popped[2] >= time.time() - self.expiry:
                    message = decode(popped[1])
                    message.pop("__asgi_channel__", None)
                    return message
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise self._unavailable(exc, index) from exc
        finally:
            await client.aclose(close_connection_pool=True)

    async def _group_add(self, group: str, channels: List[str]) -> None:
        self._check_up()
        index = shard(group, len(self.urls))
        now = time.time()
        try:
            pipe = self._client(index).pipeline(transaction=False)
            pipe.zadd(self._group_key(group), {channel: now for channel in channels})
            pipe.expire(self._group_key(group), ttl(self.group_expiry))
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc, index) from exc

    async def _group_discard(self, group: str, channel: str) -> None:
        self._check_up()
        index = shard(group, len(self.urls))
        try:
            await self._client(index).zrem(self._group_key(group), channel)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc, index) from exc

    async def _group_send(self, group: str, message: Dict[str, Any]) -> None:
        # Refused (too large, not serialisable) whether or not the group has members, as in memory.
        data = encode(message, self.max_message_size)
        self._check_up()
        index = shard(group, len(self.urls))
        key = self._group_key(group)
        try:
            pipe = self._client(index).pipeline(transaction=False)
            pipe.zremrangebyscore(key, 0, time.time() - self.group_expiry)
            pipe.zrange(key, 0, -1)
            _, members = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc, index) from exc
        if not members:
            return
        by_key: Dict[str, List[str]] = {}
        for member in members:
            name = member.decode("utf8") if isinstance(member, bytes) else member
            if self.local.owns(name):
                # This process's own: handed over here, like send() does (a full one misses it).
                self.local.deliver(name, decode(data))
                continue
            by_key.setdefault(self._channel_key(name), []).append(name)
        by_shard: Dict[int, List[str]] = {}
        for channel_key in by_key:
            by_shard.setdefault(shard(channel_key[len(self.prefix):], len(self.urls)), []).append(channel_key)
        base = dict(message)
        for target, keys in by_shard.items():
            datas = []
            for channel_key in keys:
                base["__asgi_channel__"] = by_key[channel_key]
                datas.append(encode(base, self.max_message_size))
            now = time.time()
            try:
                client = self._client(target)
                script = self._group_send_script if target == 0 else client.register_script(_GROUP_SEND)
                await script(keys=keys, args=[*datas, *([self.capacity] * len(keys)), now,
                                              now - self.expiry, ttl(self.expiry)], client=client)
            except (RedisError, OSError) as exc:
                raise self._unavailable(exc, target) from exc

    async def _flush(self) -> None:
        self._check_up()
        for index in range(len(self.urls)):
            client = self._client(index)
            try:
                batch: List[Any] = []
                async for key in client.scan_iter(match=self._escaped_prefix() + "*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        await client.unlink(*batch)
                        batch = []
                if batch:
                    await client.unlink(*batch)
            except (RedisError, OSError) as exc:
                raise self._unavailable(exc, index) from exc

    def _escaped_prefix(self) -> str:
        return "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
