"""The Redis channel layer's own matters, in-process (the contract is tests/test_channel_layer.py).

- interop with Django Channels' ``channels_redis.core.RedisChannelLayer`` on the same Redis and
  prefix, both ways: a process-specific channel, a group, a general channel;
- the keys are channels_redis's layout (``<prefix><non-local name>`` and ``<prefix>:group:<g>``
  sorted sets, 12 random bytes then msgpack), and ``flush`` walks them with SCAN, leaving other
  prefixes alone;
- several "processes" (layers, each its own process id) on one Redis;
- faults, on a private redis-server (``own_redis``): down at start, killed and restarted on the
  same port, stalled (SIGSTOP); nothing hangs;
- two shards (two servers, a layer of two URLs).

Everything runs on uvloop loops, as in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Sequence

import msgpack
import pytest
import uvloop
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer
from redis.asyncio import Redis

import asgiworker.channels.redis as redis_layer
from asgiworker.channels import ChannelFull, ChannelLayerUnavailable, LayerSpec, build
from asgiworker.channels.names import non_local_name
from asgiworker.channels.redis import RedisChannelLayer, shard
from tests.redis_server import RedisServer
from tests.test_channel_layer import SAMPLE, Endpoint, assert_same, lists_for_tuples, nothing_on, receive, until


def run(main: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), timeout))
    finally:
        loop.close()


def new_prefix() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def started(urls: Sequence[str], prefix: str, **options: Any) -> AsyncIterator[RedisChannelLayer]:
    layer = build(LayerSpec("redis", tuple(urls), prefix=prefix, **options))
    assert isinstance(layer, RedisChannelLayer)
    await layer.start()
    try:
        yield layer
    finally:
        await layer.close()


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def channels_redis(url: str, prefix: str, **options: Any) -> AsyncIterator[ChannelsRedisLayer]:
    theirs = ChannelsRedisLayer(hosts=[url], prefix=prefix, **options)
    try:
        yield theirs
    finally:
        await theirs.close_pools()


async def bounded(call: Awaitable[Any], limit: float, what: str) -> Any:
    """``call``'s result or exception (returned, not raised), asserting it came within ``limit`` s."""
    started_at = time.monotonic()
    try:
        result: Any = await asyncio.wait_for(call, limit + 2)
    except Exception as exc:
        result = exc
    elapsed = time.monotonic() - started_at
    assert elapsed < limit, f"{what} took {elapsed:.2f} s (over {limit} s): {result!r}"
    return result


# -- Django Channels' channels_redis on the same Redis and prefix ---------------------------------------------


def test_interop_process_specific_channels_both_ways(fresh_redis: RedisServer) -> None:
    async def main() -> None:
        prefix = new_prefix()
        async with started([fresh_redis.url], prefix) as ours, channels_redis(fresh_redis.url, prefix) as theirs:
            # ours -> theirs
            their_name = await theirs.new_channel()
            await ours.send(their_name, SAMPLE)
            assert_same(await asyncio.wait_for(theirs.receive(their_name), 5), lists_for_tuples(SAMPLE))
            # theirs -> ours: a new_channel() mailbox and an attached endpoint (a consumer's socket)
            our_name = await ours.new_channel()
            endpoint = Endpoint()
            attached = ours.attach(endpoint)
            await theirs.send(our_name, SAMPLE)
            await theirs.send(attached, {"type": "websocket.send", "text": "hi"})
            assert_same(await receive(ours, our_name), lists_for_tuples(SAMPLE))
            await until(lambda: endpoint.messages == [{"type": "websocket.send", "text": "hi"}], what="the reply")

    run(main)


def test_interop_groups_both_ways(fresh_redis: RedisServer) -> None:
    async def main() -> None:
        prefix = new_prefix()
        async with started([fresh_redis.url], prefix) as ours, channels_redis(fresh_redis.url, prefix) as theirs:
            their_name = await theirs.new_channel()
            our_name = await ours.new_channel()
            endpoint = Endpoint()
            attached = ours.attach(endpoint)
            await theirs.group_add("mixed", their_name)
            await theirs.group_add("mixed", attached)  # they may add our names, and we theirs
            await ours.group_add("mixed", our_name)
            await ours.group_add("mixed", "mixed.general")
            for sender, n in ((ours, 1), (theirs, 2)):
                await sender.group_send("mixed", {"type": "chat.message", "n": n})
                want = {"type": "chat.message", "n": n}
                assert await asyncio.wait_for(theirs.receive(their_name), 5) == want
                assert await receive(ours, our_name) == want
                assert await receive(ours, "mixed.general") == want
                await until(lambda want=want: endpoint.messages[-1:] == [want], what=f"group message {n}")
            await theirs.group_discard("mixed", attached)
            await ours.group_discard("mixed", their_name)
            await ours.group_send("mixed", {"n": 3})
            assert await receive(ours, our_name) == {"n": 3}
            assert len(endpoint.messages) == 2
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(theirs.receive(their_name), 0.3)

    run(main)


def test_interop_general_channel_both_ways(fresh_redis: RedisServer) -> None:
    async def main() -> None:
        prefix = new_prefix()
        async with started([fresh_redis.url], prefix) as ours, channels_redis(fresh_redis.url, prefix) as theirs:
            await ours.send("jobs.general", {"from": "ours", "blob": b"\x00\x01"})
            assert await asyncio.wait_for(theirs.receive("jobs.general"), 5) == {"from": "ours", "blob": b"\x00\x01"}
            await theirs.send("jobs.general", {"from": "theirs"})
            assert await receive(ours, "jobs.general") == {"from": "theirs"}
            # their capacity and ours count the same messages
            for i in range(3):
                await theirs.send("jobs.full", {"i": i})
        async with started([fresh_redis.url], prefix, capacity=3) as ours:
            with pytest.raises(ChannelFull):
                await ours.send("jobs.full", {"i": 3})

    run(main)


def test_interop_a_different_prefix_is_another_layer(fresh_redis: RedisServer) -> None:
    async def main() -> None:
        async with started([fresh_redis.url], new_prefix()) as ours, channels_redis(fresh_redis.url, new_prefix()) as theirs:
            await theirs.send("jobs.general", {"n": 1})
            await nothing_on(ours, "jobs.general", 0.2)

    run(main)


# -- the keys ------------------------------------------------------------------------------------------------


def test_keys_are_channels_redis_layout(fresh_redis: RedisServer) -> None:
    async def main() -> None:
        prefix = new_prefix()
        async with started([fresh_redis.url], prefix, expiry=30, group_expiry=600) as ours, \
                redis_client(fresh_redis.url) as client:
            before = time.time()
            # a general channel: <prefix><channel>, one member per message, scored by send time
            await ours.send("layout.general", {"n": 1})
            [(member, score)] = await client.zrange(f"{prefix}layout.general", 0, -1, withscores=True)
            assert len(member) > 12 and msgpack.unpackb(member[12:], raw=False) == {"n": 1}
            assert before - 1 <= score <= time.time() + 1
            assert 0 < await client.ttl(f"{prefix}layout.general") <= 30
            # another process's channels: one key for the part up to the '!', the full name inside
            theirs = "specific.0123456789abcdef0123456789abcdef!"
            await ours.send(theirs + "a1", {"n": 2})
            await ours.send(theirs + "b2", {"n": 3})
            stored = [msgpack.unpackb(m[12:], raw=False) for m in await client.zrange(prefix + theirs, 0, -1)]
            assert stored == [{"n": 2, "__asgi_channel__": theirs + "a1"}, {"n": 3, "__asgi_channel__": theirs + "b2"}]
            # a group: <prefix>:group:<group>, members by name, scored by join time
            await ours.group_add("layout", theirs + "a1")
            await ours.group_add("layout", theirs + "b2")
            await ours.group_add("layout", "layout.general")
            members = await client.zrange(f"{prefix}:group:layout", 0, -1, withscores=True)
            assert sorted(m for m, _ in members) == sorted([(theirs + "a1").encode(), (theirs + "b2").encode(),
                                                           b"layout.general"])
            assert all(before - 1 <= s <= time.time() + 1 for _, s in members)
            assert 0 < await client.ttl(f"{prefix}:group:layout") <= 600
            # a group send writes one message per process, listing that process's members
            await client.delete(prefix + theirs)
            await ours.group_send("layout", {"n": 4})
            [one] = [msgpack.unpackb(m[12:], raw=False) for m in await client.zrange(prefix + theirs, 0, -1)]
            assert one["n"] == 4 and sorted(one["__asgi_channel__"]) == [theirs + "a1", theirs + "b2"]
            assert await client.zcard(f"{prefix}layout.general") == 2
            # our own names: this process's key, <prefix>specific.<process>!, what channels_redis reads
            name = await ours.new_channel()
            assert non_local_name(name) == f"specific.{ours.local.process}!" and len(ours.local.process) == 32
            # fractional expiries are honoured, not truncated to EXPIRE 0 (which deletes the key)
        async with started([fresh_redis.url], prefix, expiry=0.5, group_expiry=0.5) as short, \
                redis_client(fresh_redis.url) as client:
            await short.send("layout.short", {"n": 5})
            await short.group_add("short", "layout.short")
            assert await client.exists(f"{prefix}layout.short", f"{prefix}:group:short") == 2
            assert await receive(short, "layout.short") == {"n": 5}

    run(main)


def test_flush_scans_its_own_prefix_only(fresh_redis: RedisServer) -> None:
    async def main() -> None:
        prefix = new_prefix()
        glob = "w*["  # glob characters in a prefix are matched literally
        async with started([fresh_redis.url], prefix) as ours, started([fresh_redis.url], glob) as globbed, \
                started([fresh_redis.url], "other" + prefix) as other, redis_client(fresh_redis.url) as client:
            await ours.send("flush.general", {"n": 1})
            await ours.group_add("flush", "flush.general")
            await ours.send("specific.abc!1", {"n": 2})
            pipe = client.pipeline(transaction=False)
            for i in range(2500):  # more than one SCAN batch
                pipe.zadd(f"{prefix}bulk.{i}", {b"x": 1})
            await pipe.execute()
            await globbed.send("g", {"n": 3})
            await other.send("flush.general", {"n": 4})
            await other.group_add("flush", "flush.general")
            await client.set("unrelated", b"1")
            await client.set("wx", b"1")
            await client.set(f"w{prefix}", b"1")
            await client.config_resetstat()
            await ours.flush()
            await globbed.flush()
            stats = await client.info("commandstats")
            assert stats.get("cmdstat_scan", {}).get("calls", 0) >= 3, stats
            assert "cmdstat_keys" not in stats, stats
            left = sorted(k.decode() for k in await client.keys("*"))
            assert left == sorted(["unrelated", "wx", f"w{prefix}", f"other{prefix}flush.general",
                                   f"other{prefix}:group:flush"]), left
            assert await receive(other, "flush.general") == {"n": 4}

    run(main)


# -- several processes on one Redis -----------------------------------------------------------------------------


def test_processes_share_channels_and_groups(fresh_redis: RedisServer) -> None:
    async def main() -> None:
        prefix = new_prefix()
        async with started([fresh_redis.url], prefix) as a, started([fresh_redis.url], prefix) as b:
            assert a.local.process != b.local.process
            a_name, b_name = await a.new_channel(), await b.new_channel()
            with pytest.raises(ValueError):
                await a.receive(b_name)
            await a.send(b_name, {"to": "b"})
            await b.send(a_name, {"to": "a"})
            assert await receive(b, b_name) == {"to": "b"}
            assert await receive(a, a_name) == {"to": "a"}
            # a general channel is one queue for all: each message to one receiver
            await a.send("shared.queue", {"n": 1})
            assert await receive(b, "shared.queue") == {"n": 1}
            await nothing_on(a, "shared.queue", 0.1)
            # a group across processes, two members in a: each gets its own copy
            a_two = await a.new_channel()
            endpoint = Endpoint()
            b_attached = b.attach(endpoint)
            for member in (a_name, a_two, b_attached):
                await b.group_add("across", member)
            await b.group_send("across", {"nested": {"items": [1]}})
            got_one, got_two = await receive(a, a_name), await receive(a, a_two)
            await until(lambda: endpoint.messages, what="b's endpoint's message")
            got_one["nested"]["items"].append("mutated")
            assert got_two == endpoint.messages[0] == {"nested": {"items": [1]}}
            # a full endpoint in another process: the sender cannot know, the message is dropped
            # there (at most once); a full endpoint in the sender's own process raises ChannelFull
            endpoint.accept = False
            await a.send(b_attached, {"n": "dropped in b"})
            await until(lambda: endpoint.refused == [{"n": "dropped in b"}], what="b's reader to hand it over")
            with pytest.raises(ChannelFull):
                await b.send(b_attached, {"n": "refused in b"})
            endpoint.accept = True
            await a.send(b_attached, {"n": "taken"})
            await until(lambda: endpoint.messages[-1:] == [{"n": "taken"}], what="the message after")
            assert len(endpoint.messages) == 2

    run(main)


# -- cancellation --------------------------------------------------------------------------------------------------


def test_cancelled_receive_and_close_take_effect_promptly(fresh_redis: RedisServer) -> None:
    """A receive() cancelled at any moment (its caller's wait_for gave up) ends, and close()
    right after start() returns. (Before Python 3.12, redis-py's asyncio.wait_for around a
    command's write swallows a cancellation landing then: the receive went on waiting, close()
    waited for the reader forever.)"""
    async def main() -> None:
        prefix = new_prefix()
        async with started([fresh_redis.url], prefix) as layer:
            for spins in range(40):
                task = asyncio.ensure_future(layer.receive("cancelled.general"))
                for _ in range(spins):
                    await asyncio.sleep(0)
                task.cancel()
                done, _ = await asyncio.wait([task], timeout=1.0)
                if not done:
                    while not task.done():  # do not leave it blocked on the server
                        task.cancel()
                        await asyncio.wait([task], timeout=0.1)
                    pytest.fail(f"receive() cancelled after {spins} loop turns went on waiting")
            await layer.send("cancelled.general", {"n": "kept"})  # no cancelled receive took it
            assert await receive(layer, "cancelled.general") == {"n": "kept"}
        for spins in range(0, 30, 2):
            layer = build(LayerSpec("redis", (fresh_redis.url,), prefix=prefix))
            await layer.start()
            for _ in range(spins):
                await asyncio.sleep(0)
            await bounded(layer.close(), 1.5, f"close() {spins} loop turns after start()")

    run(main)


# -- faults --------------------------------------------------------------------------------------------------------

UNAVAILABLE_CALLS = {
    "send to a general channel": lambda layer: layer.send("down.general", {"n": 1}),
    "send to another process": lambda layer: layer.send("specific.0123abcd!1", {"n": 1}),
    "receive from a general channel": lambda layer: layer.receive("down.general"),
    "group_add": lambda layer: layer.group_add("down", "down.general"),
    "group_discard": lambda layer: layer.group_discard("down", "down.general"),
    "group_send": lambda layer: layer.group_send("down", {"n": 1}),
    "flush": lambda layer: layer.flush(),
}


def test_redis_down_at_start(own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asgiworker.channels")
    own_redis.stop()
    where = f"127.0.0.1:{own_redis.port}"

    async def main() -> None:
        layer = build(LayerSpec("redis", (own_redis.url,), prefix=new_prefix()))
        assert isinstance(layer, RedisChannelLayer)
        result = await bounded(layer.start(), 1.0, "start() with Redis down")
        assert result is None  # no exception: the worker boots and serves on
        try:
            assert any(where in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)
            assert layer.backend_down()
            for what, call in UNAVAILABLE_CALLS.items():
                error = await bounded(call(layer), 1.0, what)
                assert isinstance(error, ChannelLayerUnavailable), (what, error)
                assert where in str(error), (what, error)
            pending = layer.send_nowait("down.general", {"n": 1})
            await until(pending.done)
            assert isinstance(pending.exception(), ChannelLayerUnavailable)
            # this process's own endpoints need no Redis
            endpoint = Endpoint()
            name = layer.attach(endpoint)
            await layer.send(name, {"n": "local"})
            assert endpoint.messages == [{"n": "local"}]
            with pytest.raises(ChannelLayerUnavailable):
                await layer.group_add("down-room", name)  # fails, but the membership is remembered
            # up again: the reader notices, calls work, the membership is added
            own_redis.start()
            await until(lambda: not layer.backend_down(), timeout=5, what="the reader to reconnect")
            assert layer.reconnects == 1
            assert any("reachable again" in r.getMessage() for r in caplog.records)
            await layer.send("down.general", {"n": 2})
            assert await receive(layer, "down.general") == {"n": 2}
            async with redis_client(own_redis.url) as client:
                await until_members(client, f"{layer.prefix}:group:down-room", [name])
        except BaseException:
            await layer.close()
            raise
        await bounded(layer.close(), 3.0, "close()")

    run(main)


async def until_members(client: Redis, key: str, want: List[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        members = sorted(m.decode() for m in await client.zrange(key, 0, -1))
        if members == sorted(want):
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"{key} holds {members}, not {sorted(want)}, after {timeout} s")
        await asyncio.sleep(0.05)


def test_redis_killed_and_restarted(own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Killed: calls fail fast (none hangs); restarted empty on the same port: the reader
    reconnects, this process's live memberships are re-added with nobody calling group_add,
    and messages from another process reach its endpoints again."""
    caplog.set_level(logging.WARNING, logger="asgiworker.channels")

    async def main() -> None:
        prefix = new_prefix()
        async with started([own_redis.url], prefix) as layer, redis_client(own_redis.url) as client:
            endpoint = Endpoint()
            attached = layer.attach(endpoint)
            mailbox = await layer.new_channel()
            await layer.group_add("room", attached)
            await layer.group_add("room", mailbox)
            await layer.group_add("room", "room.general")  # not ours to keep alive
            await layer.group_add("lobby", attached)
            own_redis.kill()
            deadline = time.monotonic() + 5
            while not layer.backend_down():
                assert time.monotonic() < deadline, "the reader never noticed the server was gone"
                error = await bounded(layer.send("killed.general", {"n": 0}), 3.0, "send while killed")
                assert isinstance(error, ChannelLayerUnavailable), error
                await asyncio.sleep(0.02)
            for what, call in UNAVAILABLE_CALLS.items():
                error = await bounded(call(layer), 1.0, f"{what} while down")
                assert isinstance(error, ChannelLayerUnavailable), (what, error)
            own_redis.start()
            restarted = time.monotonic()
            await until(lambda: not layer.backend_down(), timeout=5, what="the reader to reconnect")
            assert time.monotonic() - restarted < 4.0
            await until_members(client, f"{prefix}:group:room", [attached, mailbox])
            await until_members(client, f"{prefix}:group:lobby", [attached])
            # another process's messages reach this one's endpoints again
            async with started([own_redis.url], prefix) as other:
                await bounded(other.group_send("room", {"n": "after"}), 3.0, "group_send after the restart")
                await until(lambda: endpoint.messages == [{"n": "after"}], what="the group message")
                assert await receive(layer, mailbox) == {"n": "after"}
                await bounded(other.send(attached, {"n": "direct"}), 3.0, "send after the restart")
                await until(lambda: endpoint.messages[-1:] == [{"n": "direct"}], what="the direct message")
            await layer.send("killed.general", {"n": 1})
            assert await receive(layer, "killed.general") == {"n": 1}
        messages = [r.getMessage() for r in caplog.records]
        assert any("reconnecting" in m for m in messages) and any("reachable again" in m for m in messages)

    run(main)


def test_redis_stalled(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts but never answers (SIGSTOP): calls fail after the command timeout
    (shortened here from its 2 s to keep the test short) instead of hanging; they work again
    once it resumes."""
    monkeypatch.setattr(redis_layer, "COMMAND_TIMEOUT", 0.5)

    async def main() -> None:
        async with started([own_redis.url], new_prefix()) as layer:
            await layer.send("stalled.general", {"n": 0})
            assert await receive(layer, "stalled.general") == {"n": 0}
            own_redis.pause()
            try:
                for what, call in (("send", lambda: layer.send("stalled.general", {"n": 1})),
                                   ("group_add", lambda: layer.group_add("stalled", "stalled.general")),
                                   ("group_send", lambda: layer.group_send("stalled", {"n": 1}))):
                    started_at = time.monotonic()
                    error = await bounded(call(), 0.5 + 1.0, f"{what} on a stalled server")
                    assert isinstance(error, ChannelLayerUnavailable), (what, error)
                    assert time.monotonic() - started_at >= 0.4, "failed before the timeout: not the stall"
            finally:
                own_redis.resume()
            await until_async_ok(lambda: layer.send("stalled.general", {"n": 2}))
            got = []
            while True:  # what the stalled server took before the timeout may still be there
                message = await receive(layer, "stalled.general")
                got.append(message["n"])
                if message["n"] == 2:
                    break
            assert set(got) <= {1, 2}, got

    run(main)


async def until_async_ok(call: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except ChannelLayerUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


# -- two shards ----------------------------------------------------------------------------------------------------


def test_two_shards(fresh_redis: RedisServer, own_redis: RedisServer) -> None:
    urls = [fresh_redis.url, own_redis.url]

    def named(shard_index: int, stem: str) -> str:
        return next(f"{stem}{i}" for i in range(1000) if shard(f"{stem}{i}", 2) == shard_index)

    async def main() -> None:
        prefix = new_prefix()
        async with contextlib.AsyncExitStack() as stack:
            # "processes" until one reads from each server
            layers: Dict[int, RedisChannelLayer] = {}
            for _ in range(64):
                layer = await stack.enter_async_context(started(urls, prefix))
                layers.setdefault(shard(non_local_name(layer.new_channel_name()), 2), layer)
                if len(layers) == 2:
                    break
            a, b = layers[0], layers[1]
            clients = [await stack.enter_async_context(redis_client(url)) for url in urls]
            a_name, b_name = await a.new_channel(), await b.new_channel()
            await a.send(b_name, {"to": "b"})
            await b.send(a_name, {"to": "a"})
            assert await receive(b, b_name) == {"to": "b"}
            assert await receive(a, a_name) == {"to": "a"}
            # general channels: on the server their name hashes to
            for index in (0, 1):
                channel = named(index, "sharded.general.")
                await a.send(channel, {"on": index})
                assert await clients[index].exists(prefix + channel) and not await clients[1 - index].exists(prefix + channel)
                assert await receive(b, channel) == {"on": index}
            # groups on either server, members of both processes on both
            for index in (0, 1):
                group = named(index, "sharded-group-")
                endpoint = Endpoint()
                members = [a_name, b_name, b.attach(endpoint)]
                for member in members:
                    await a.group_add(group, member)
                assert await clients[index].zcard(f"{prefix}:group:{group}") == 3
                assert not await clients[1 - index].exists(f"{prefix}:group:{group}")
                for sender in (a, b):
                    await sender.group_send(group, {"group": group, "by": sender.local.process})
                    want = {"group": group, "by": sender.local.process}
                    assert await receive(a, a_name) == want
                    assert await receive(b, b_name) == want
                    await until(lambda want=want, endpoint=endpoint: endpoint.messages[-1:] == [want],
                                what=f"{group}'s message")
            await a.flush()
            for client in clients:
                assert await client.keys(f"{prefix}*") == []

    run(main)
