"""The channel layer's contract (asgiworker/channels), one suite run on both backends.

Every test runs twice: on ``InMemoryChannelLayer`` (a stdlib asyncio loop) and on
``RedisChannelLayer`` against the session's redis-server (tests/redis_server.py, on a uvloop loop,
as in the worker), each time on a layer of its own prefix. In-process: each test drives one event
loop with ``loop.run_until_complete``; threads that play sync code or another event loop are
started from it with ``asyncio.to_thread``, so the layer's loop keeps running meanwhile.

What is checked is the Channels layer specification (send/receive, new_channel, groups, flush,
capacity, expiry, group_expiry, ChannelFull, MessageTooLarge, the name and message rules) and
asgiworker's additions (the ``*_nowait`` forms and their ``Pending``, ``receive_blocking``,
off-loop awaits, ``attach``/``detach``, ``tick``'s membership refresh). Redis-only matters
(channels_redis interop, key layout, faults, shards) are in tests/test_channel_layer_redis.py.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import sys
import threading
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgiworker.channels import (
    ChannelFull,
    ChannelLayer,
    InvalidChannelName,
    LayerSpec,
    MessageTooLarge,
    Pending,
    build,
)
from asgiworker.channels.names import check_channel

# -- the two backends -------------------------------------------------------------------------------

_prefixes = itertools.count(1)


class Backend:
    """Makes layers of one backend and runs coroutines against them on a fresh loop."""

    def __init__(self, name: str, redis: Any = None) -> None:
        self.name = name
        self.redis = redis  # the RedisServer, for the redis backend

    @property
    def is_redis(self) -> bool:
        return self.name == "redis"

    def layer(self, prefix: Optional[str] = None, **options: Any) -> ChannelLayer:
        urls = (self.redis.url,) if self.is_redis else ()
        # A prefix per layer: tests share the session's Redis and must not see each other's keys.
        prefix = prefix or f"t{next(_prefixes)}{uuid.uuid4().hex[:6]}"
        return build(LayerSpec(self.name, urls, prefix=prefix, **options))

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return uvloop.new_event_loop() if self.is_redis else asyncio.new_event_loop()

    def run(self, main: Callable[[ChannelLayer], Awaitable[Any]], timeout: float = 20.0,
            layer: Optional[ChannelLayer] = None, **options: Any) -> Any:
        """``main(layer)`` on a started layer on a new loop; nothing may take over ``timeout``."""
        layer = layer or self.layer(**options)
        loop = self.new_loop()

        async def go() -> Any:
            await layer.start()
            try:
                return await asyncio.wait_for(main(layer), timeout)
            finally:
                await layer.close()

        try:
            return loop.run_until_complete(go())
        finally:
            loop.close()

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "redis":
        return Backend("redis", request.getfixturevalue("fresh_redis"))
    return Backend("memory")


# -- helpers ------------------------------------------------------------------------------------------


class Endpoint:
    """What ``attach()`` takes: collects what it is delivered, or refuses it (``accept=False``)."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.messages: List[Dict[str, Any]] = []
        self.refused: List[Dict[str, Any]] = []

    def deliver(self, message: Dict[str, Any]) -> bool:
        if not self.accept:
            self.refused.append(message)
            return False
        self.messages.append(message)
        return True


async def receive(layer: ChannelLayer, channel: str, timeout: float = 3.0) -> Dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def nothing_on(layer: ChannelLayer, channel: str, wait: float = 0.2) -> None:
    """Nothing arrives on ``channel`` within ``wait`` seconds."""
    try:
        message = await asyncio.wait_for(layer.receive(channel), wait)
    except asyncio.TimeoutError:
        return
    pytest.fail(f"{channel} unexpectedly received {message!r}")


async def until(predicate: Callable[[], Any], timeout: float = 3.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def group_members(backend: Backend, layer: ChannelLayer, group: str) -> List[str]:
    """The group's current members as the backend stores them (read directly, not through the
    layer's API): the memory layer's table, or the ``<prefix>:group:<group>`` zset on Redis."""
    if backend.is_redis:
        from redis.asyncio import Redis

        client = Redis.from_url(backend.redis.url)
        try:
            return sorted(m.decode() for m in await client.zrange(f"{layer.prefix}:group:{group}", 0, -1))
        finally:
            await client.aclose()
    return sorted(layer._groups.get(group, {}))  # type: ignore[attr-defined]  # the memory layer's own table


def lists_for_tuples(value: Any) -> Any:
    """What a message looks like after the layer: msgpack has no tuple, so tuples come back as
    lists (the Channels spec: "tuples should be encoded as lists")."""
    if isinstance(value, (list, tuple)):
        return [lists_for_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: lists_for_tuples(v) for k, v in value.items()}
    return value


def assert_same(got: Any, want: Any, path: str = "message") -> None:
    """Equal and of the same types all the way down (``b"a"`` is not ``"a"``, ``True`` not ``1``)."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} {got!r} != {type(want).__name__} {want!r}"
    if isinstance(want, dict):
        assert set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_same(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


# -- send and receive ---------------------------------------------------------------------------------


def test_send_receive_in_order(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        specific = await layer.new_channel()
        for channel in ("tasks.general", specific):
            for i in range(10):
                await layer.send(channel, {"type": "n", "i": i})
            assert [(await receive(layer, channel))["i"] for _ in range(10)] == list(range(10))
            await nothing_on(layer, channel, 0.05)

    backend.run(main)


def test_receive_waits_for_a_message(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        specific = await layer.new_channel()
        for channel in ("waiting.general", specific):
            task = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(0.1)
            assert not task.done(), task  # nothing sent yet: it waits (no error, no None)
            await layer.send(channel, {"type": "late"})
            assert await asyncio.wait_for(task, 3) == {"type": "late"}

    backend.run(main)


def test_new_channel_names_are_valid_unique_and_receivable(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        names = [await layer.new_channel() for _ in range(20)] + [layer.new_channel_name() for _ in range(20)]
        assert len(set(names)) == len(names)
        for name in names:
            assert check_channel(name) == name and name.startswith("specific.") and "!" in name
        # a message reaches exactly the name it was sent to
        for name in names:
            await layer.send(name, {"to": name})
        for name in reversed(names):
            assert (await receive(layer, name))["to"] == name
        for name in names[:3]:
            await nothing_on(layer, name, 0.05)

    backend.run(main)


def test_new_channel_with_a_prefix(backend: Backend) -> None:
    """``new_channel(prefix)`` names carry the prefix and are received like the others, also
    from another process (on Redis: a second layer, another process id). The prefix goes after
    the ``!``: the part before it routes to this process's one key (one reader per process)."""
    async def main(layer: ChannelLayer) -> None:
        name = await layer.new_channel("custom.room")
        assert "custom.room" in name and check_channel(name) == name
        assert layer.local.owns(name) and name.split("!")[0] == layer.new_channel_name().split("!")[0]
        await layer.send(name, {"type": "own"})
        assert await receive(layer, name) == {"type": "own"}
        if backend.is_redis:
            other = backend.layer(prefix=layer.prefix)
            await other.start()
            try:
                await other.send(name, {"type": "from another process"})
                assert await receive(layer, name) == {"type": "from another process"}
            finally:
                await other.close()

    backend.run(main)


def test_general_and_process_specific_channels(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        # a general channel needs no creating: anyone may send to and receive from any name
        await layer.send("anything-at_all.1", {"type": "g"})
        assert await receive(layer, "anything-at_all.1") == {"type": "g"}
        # a process-specific name belongs to the process that made it
        other = backend.layer(prefix=layer.prefix)
        foreign = other.new_channel_name()
        assert not layer.local.owns(foreign) and other.local.owns(foreign)
        for name in (foreign, "specific.0123456789abcdef!1", "specific.x!"):
            with pytest.raises(ValueError, match="another process"):
                await layer.receive(name)
        # sending to another process's name is fine (it is that process's business)
        await layer.send(foreign, {"type": "for the other"})
        own = await layer.new_channel()
        assert layer.local.owns(own)

    backend.run(main)


# -- capacity -------------------------------------------------------------------------------------------


def test_capacity_channel_full(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        specific = await layer.new_channel()
        for channel in ("full.general", specific):
            for i in range(3):
                await layer.send(channel, {"i": i})
            with pytest.raises(ChannelFull):
                await layer.send(channel, {"i": 3})
            pending = layer.send_nowait(channel, {"i": 3})
            await until(pending.done)
            assert isinstance(pending.exception(), ChannelFull)
            assert (await receive(layer, channel))["i"] == 0
            await layer.send(channel, {"i": 4})  # room for one again
            with pytest.raises(ChannelFull):
                await layer.send(channel, {"i": 5})
            assert [(await receive(layer, channel))["i"] for _ in range(3)] == [1, 2, 4]

    backend.run(main, capacity=3)


def test_group_send_skips_a_full_member(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        roomy = Endpoint()
        refusing = Endpoint(accept=False)
        mailbox = await layer.new_channel()
        members = ["full.member", mailbox, layer.attach(roomy), layer.attach(refusing)]
        for member in members:
            await layer.group_add("room", member)
        for i in range(2):
            await layer.send("full.member", {"old": i})
        for i in range(3):
            await layer.group_send("room", {"i": i})  # never ChannelFull
        await until(lambda: len(roomy.messages) == 3, what="the roomy endpoint's 3 messages")
        assert [m["i"] for m in roomy.messages] == [0, 1, 2]
        assert refusing.messages == []
        # the mailbox took the first two, then was full
        assert [(await receive(layer, mailbox))["i"] for _ in range(2)] == [0, 1]
        await nothing_on(layer, mailbox)
        # the full general channel still holds what it had, and nothing more
        assert [await receive(layer, "full.member") for _ in range(2)] == [{"old": 0}, {"old": 1}]
        await nothing_on(layer, "full.member")

    backend.run(main, capacity=2)


# -- expiry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expiry", [1, 0.5])
def test_expiry_drops_old_messages_unread(backend: Backend, expiry: float) -> None:
    async def main(layer: ChannelLayer) -> None:
        specific, counted = await layer.new_channel(), await layer.new_channel()
        channels = ["expiring.general", specific]
        counting = ["expiry.counted", counted]
        # young enough: received
        for channel in channels:
            await layer.send(channel, {"age": "young"})
        await asyncio.sleep(expiry * 0.4)
        for channel in channels:
            assert await receive(layer, channel) == {"age": "young"}
        # too old: gone, the next receive gets the next message; and an expired message no
        # longer counts against the capacity (1 here): the next send fits
        for channel in channels:
            await layer.send(channel, {"age": "old"})
        for channel in counting:
            await layer.send(channel, {"n": 1})
            with pytest.raises(ChannelFull):
                await layer.send(channel, {"n": "full while the first is young"})
        await asyncio.sleep(expiry + 0.1)
        for channel in channels:
            await layer.send(channel, {"age": "new"})
        for channel in channels:
            assert await receive(layer, channel) == {"age": "new"}, channel
        for channel in counting:
            await layer.send(channel, {"n": 2})
            assert await receive(layer, channel) == {"n": 2}

    backend.run(main, expiry=expiry, capacity=1)


def test_group_expiry_drops_stale_members_but_refresh_keeps_live_ones(backend: Backend) -> None:
    """A member nobody refreshes is dropped after ``group_expiry``; an endpoint of this process
    (``attach()``) that joined is re-added by ``tick()`` every ``refresh_interval`` and stays."""
    async def main(layer: ChannelLayer) -> None:
        layer.refresh_interval = 0.2
        layer._next_refresh = time.monotonic()  # (the first refresh was scheduled at construction)
        live = Endpoint()
        live_name = layer.attach(live)
        await layer.group_add("room", "stale.member")
        await layer.group_add("room", live_name)
        joined = time.monotonic()
        sent = 0
        while "stale.member" in await group_members(backend, layer, "room"):
            assert time.monotonic() - joined < 4.0, "the stale member never expired"
            layer.tick()
            await layer.group_send("room", {"n": sent})  # (group_send is what prunes)
            sent += 1
            await asyncio.sleep(0.1)
        dropped_after = time.monotonic() - joined
        assert dropped_after >= 0.95, f"dropped after {dropped_after:.2f} s, before group_expiry"
        # still refreshing: the live one is a member well past group_expiry
        for _ in range(3):
            layer.tick()
            await asyncio.sleep(0.1)
        assert live_name in await group_members(backend, layer, "room")
        await layer.group_send("room", {"n": "final"})
        await until(lambda: live.messages and live.messages[-1] == {"n": "final"}, what="the final message")
        assert [m["n"] for m in live.messages] == [*range(sent), "final"]
        # the stale member got messages while it was one, but not the last
        got = []
        while True:
            try:
                got.append((await receive(layer, "stale.member", 0.2))["n"])
            except asyncio.TimeoutError:
                break
        assert "final" not in got and got == list(range(len(got))) and len(got) < sent + 1

    backend.run(main, group_expiry=1)


# -- groups -----------------------------------------------------------------------------------------------


def test_group_add_discard_send(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("chat", a)
        await layer.group_add("chat", b)
        await layer.group_add("chat", b)  # twice: still one membership
        await layer.group_add("other", "general.c")
        await layer.group_send("chat", {"text": "one"})
        assert await receive(layer, a) == {"text": "one"}
        assert await receive(layer, b) == {"text": "one"}
        await nothing_on(layer, b, 0.1)
        await nothing_on(layer, "general.c", 0.1)  # another group's member
        await layer.group_discard("chat", a)
        await layer.group_discard("chat", a)  # not a member any more: a no-op
        await layer.group_discard("chat", "never.joined")
        await layer.group_discard("no-such-group", b)
        await layer.group_send("chat", {"text": "two"})
        assert await receive(layer, b) == {"text": "two"}
        await nothing_on(layer, a, 0.1)
        assert await group_members(backend, layer, "chat") == [b]
        await layer.group_send("no-such-group", {"text": "nobody"})  # no members: nothing, no error
        await layer.group_send("other", {"text": "three"})
        assert await receive(layer, "general.c") == {"text": "three"}

    backend.run(main)


def test_flush_empties_channels_and_groups(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        endpoint = Endpoint()
        attached = layer.attach(endpoint)
        specific = await layer.new_channel()
        for channel in ("flushed.general", specific):
            await layer.send(channel, {"before": "flush"})
        for member in ("flushed.member", attached, specific):
            await layer.group_add("flushed-group", member)
        await layer.flush()
        for channel in ("flushed.general", specific):
            await nothing_on(layer, channel, 0.1)
        assert await group_members(backend, layer, "flushed-group") == []
        # flushed memberships are not refreshed back
        layer.refresh_interval = 0.05
        layer._next_refresh = 0.0  # due now
        layer.tick()
        await asyncio.sleep(0.1)
        assert await group_members(backend, layer, "flushed-group") == []
        await layer.group_send("flushed-group", {"after": "flush"})
        await nothing_on(layer, "flushed.member", 0.1)
        assert endpoint.messages == []
        # and the layer works on
        await layer.send(specific, {"after": "flush"})
        assert await receive(layer, specific) == {"after": "flush"}
        await layer.group_add("flushed-group", attached)
        await layer.group_send("flushed-group", {"again": True})
        await until(lambda: endpoint.messages == [{"again": True}], what="the message after flush")

    backend.run(main)


# -- what is refused -------------------------------------------------------------------------------------


def test_message_too_large(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        big = {"blob": b"x" * 2000}
        specific = await layer.new_channel()
        await layer.group_add("big-room", specific)
        for channel in ("big.general", specific):
            with pytest.raises(MessageTooLarge):
                await layer.send(channel, big)
            await layer.send(channel, {"blob": b"x" * 900})  # under the limit: fine
            assert await receive(layer, channel) == {"blob": b"x" * 900}
        with pytest.raises(MessageTooLarge):
            await layer.group_send("big-room", big)
        with pytest.raises(MessageTooLarge):
            await layer.group_send("empty-room", big)  # too large whoever is (not) listening
        pending = layer.send_nowait("big.general", big)
        await until(pending.done)
        assert isinstance(pending.exception(), MessageTooLarge)
        await nothing_on(layer, specific, 0.1)
        assert not issubclass(MessageTooLarge, TypeError)

    backend.run(main, max_message_size=1024)


BAD_CHANNELS = ["", "has space", "ünïcode", "x" * 100, "two!bangs!here", "tab\there", "slash/no", 123, None, b"bytes"]
BAD_GROUPS = ["", "has space", "bang!group", "x" * 100, 7, None, b"bytes"]


def test_invalid_channel_and_group_names_raise_type_error(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        calls: List[Callable[[], Any]] = []
        for bad in BAD_CHANNELS:
            calls += [
                lambda bad=bad: layer.send(bad, {}),
                lambda bad=bad: layer.receive(bad),
                lambda bad=bad: layer.group_add("ok", bad),
                lambda bad=bad: layer.group_discard("ok", bad),
                lambda bad=bad: layer.send_nowait(bad, {}),
                lambda bad=bad: layer.group_add_nowait("ok", bad),
                lambda bad=bad: layer.group_discard_nowait("ok", bad),
                lambda bad=bad: layer.receive_blocking(bad, 0.1),
            ]
        for bad in BAD_GROUPS:
            calls += [
                lambda bad=bad: layer.group_add(bad, "ok"),
                lambda bad=bad: layer.group_discard(bad, "ok"),
                lambda bad=bad: layer.group_send(bad, {}),
                lambda bad=bad: layer.group_add_nowait(bad, "ok"),
                lambda bad=bad: layer.group_send_nowait(bad, {}),
            ]
        for call in calls:
            with pytest.raises(InvalidChannelName) as info:
                result = call()
                if asyncio.iscoroutine(result):
                    await result
            assert isinstance(info.value, TypeError)
        with pytest.raises(InvalidChannelName):
            await layer.new_channel("bad prefix")
        # the longest valid names pass
        longest = "y" * 99
        await layer.send(longest, {"ok": 1})
        assert await receive(layer, longest) == {"ok": 1}
        await layer.group_add(longest, longest)
        await layer.group_send(longest, {"ok": 2})
        assert await receive(layer, longest) == {"ok": 2}

    backend.run(main)


def test_messages_must_be_dicts_of_serialisable_values(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        await layer.group_add("typed", "typed.member")
        for bad in (["list"], "text", b"bytes", None, 3, ("tuple",)):
            with pytest.raises(TypeError):
                await layer.send("typed.general", bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await layer.group_send("typed", bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                layer.send_nowait("typed.general", bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                layer.group_send_nowait("typed", bad)  # type: ignore[arg-type]
        for bad in ({"x": object()}, {"x": {1, 2}}, {"x": 2 ** 70}):
            with pytest.raises(TypeError):
                await layer.send("typed.general", bad)
            with pytest.raises(TypeError):
                await layer.group_send("typed", bad)
            with pytest.raises(TypeError):
                await layer.group_send("typed-empty", bad)
        await nothing_on(layer, "typed.general", 0.05)
        await nothing_on(layer, "typed.member", 0.05)

    backend.run(main)


def test_reserved_key_is_refused(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        message = {"type": "x", "__asgi_channel__": "specific.abc!1"}
        with pytest.raises(ValueError, match="reserved"):
            await layer.send("reserved.general", message)
        with pytest.raises(ValueError, match="reserved"):
            await layer.group_send("reserved", message)
        with pytest.raises(ValueError, match="reserved"):
            layer.send_nowait("reserved.general", message)
        with pytest.raises(ValueError, match="reserved"):
            layer.group_send_nowait("reserved", message)

    backend.run(main)


def test_extensions(backend: Backend) -> None:
    layer = backend.layer()
    assert "groups" in layer.extensions and "flush" in layer.extensions
    assert layer.capacity == 100 and layer.expiry == 60 and layer.group_expiry == 86400


# -- messages as received -------------------------------------------------------------------------------------

SAMPLE = {
    "type": "sample.message",
    "bytes": b"\x00\xff binary",
    "str": "héllo ☃ \x00",
    "int": -(2 ** 63),
    "uint": 2 ** 63 - 1,
    "float": 1.5e-300,
    "true": True,
    "false": False,
    "none": None,
    "list": [1, "a", b"b", None, [2.5]],
    "tuple": (1, (b"x", "y")),  # comes back as [1, [b"x", "y"]]
    "nested": {"a": {"b": [{"c": b"d", "e": ("f",)}]}},
    "empty": {},
    "empty_list": [],
}


def test_messages_round_trip(backend: Backend) -> None:
    want = lists_for_tuples(SAMPLE)
    assert want["tuple"] == [1, [b"x", "y"]]

    async def main(layer: ChannelLayer) -> None:
        specific = await layer.new_channel()
        endpoint = Endpoint()
        attached = layer.attach(endpoint)
        for channel in ("round.trip", specific, attached):
            await layer.send(channel, SAMPLE)
        assert_same(await receive(layer, "round.trip"), want)
        assert_same(await receive(layer, specific), want)
        await until(lambda: endpoint.messages, what="the attached endpoint's message")
        assert_same(endpoint.messages.pop(), want)
        for member in ("round.member", specific, attached):
            await layer.group_add("round", member)
        await layer.group_send("round", SAMPLE)
        assert_same(await receive(layer, "round.member"), want)
        assert_same(await receive(layer, specific), want)
        await until(lambda: endpoint.messages, what="the attached endpoint's group message")
        assert_same(endpoint.messages.pop(), want)

    backend.run(main)


def test_each_receiver_gets_its_own_copy(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        message = {"type": "copy", "nested": {"items": [1, 2]}}
        specific = await layer.new_channel()
        await layer.send(specific, message)
        message["nested"]["items"].append("changed after send")
        got = await receive(layer, specific)
        assert got == {"type": "copy", "nested": {"items": [1, 2]}}
        # one group_send, four receivers in this process: four separate copies
        a, b = await layer.new_channel(), await layer.new_channel()
        e1, e2 = Endpoint(), Endpoint()
        for member in (a, b, layer.attach(e1), layer.attach(e2)):
            await layer.group_add("copies", member)
        await layer.group_send("copies", {"nested": {"items": [1]}})
        got_a, got_b = await receive(layer, a), await receive(layer, b)
        await until(lambda: e1.messages and e2.messages, what="both endpoints' messages")
        received = [got_a, got_b, e1.messages[0], e2.messages[0]]
        got_a["nested"]["items"].append("a's own")
        e1.messages[0]["nested"]["extra"] = "e1's own"
        assert got_b == e2.messages[0] == {"nested": {"items": [1]}}
        assert len({id(m) for m in received}) == 4
        assert len({id(m["nested"]) for m in received}) == 4

    backend.run(main)


# -- the non-blocking forms and Pending -------------------------------------------------------------------


def test_nowait_calls_run_in_call_order(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        # sync code on the loop's thread: nothing here awaits
        name = layer.new_channel_name()
        handles: List[Pending] = [
            layer.group_add_nowait("ordered", name),
            layer.group_send_nowait("ordered", {"n": "to the new member"}),
            *(layer.send_nowait(name, {"n": i}) for i in range(20)),
            layer.group_discard_nowait("ordered", name),
            layer.group_send_nowait("ordered", {"n": "after the discard"}),
        ]
        assert not any(h.done() for h in handles)  # queued: they run once this code returns
        await until(lambda: all(h.done() for h in handles), what="the queued calls")
        assert [h.result() for h in handles] == [None] * len(handles)
        got = [(await receive(layer, name))["n"] for _ in range(21)]
        assert got == ["to the new member", *range(20)]
        await nothing_on(layer, name)
        assert await group_members(backend, layer, "ordered") == []
        # flush_nowait is queued after what came before it
        layer.send_nowait("ordered.general", {"n": "flushed"})
        flushed = layer.flush_nowait()
        layer.send_nowait("ordered.general", {"n": "kept"})
        await until(flushed.done)
        assert await receive(layer, "ordered.general") == {"n": "kept"}

    backend.run(main)


def test_pending_result_on_the_loop_thread_raises_instead_of_deadlocking(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        pending = layer.send_nowait("pending.general", {"n": 1})
        assert not pending.done()
        with pytest.raises(RuntimeError, match="deadlock"):
            pending.result()
        with pytest.raises(RuntimeError, match="deadlock"):
            pending.result(timeout=5)
        with pytest.raises(RuntimeError, match="deadlock"):
            pending.exception()
        assert "pending" in repr(pending)
        await until(pending.done)
        assert pending.result() is None and pending.exception() is None  # once done: fine here too
        assert "done" in repr(pending)
        assert await receive(layer, "pending.general") == {"n": 1}

    backend.run(main)


def test_pending_result_from_another_thread(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        called = threading.Event()
        seen: List[Pending] = []

        def sync_code() -> None:
            assert layer.send_nowait("thread.general", {"n": 1}).result(timeout=5) is None
            full = layer.send_nowait("thread.general", {"n": 2})
            with pytest.raises(ChannelFull):
                full.result(timeout=5)
            assert isinstance(full.exception(timeout=5), ChannelFull)
            handle = layer.group_add_nowait("thread-group", "thread.member")
            handle.add_done_callback(lambda h: (seen.append(h), called.set()))
            assert called.wait(5)
            assert seen == [handle] and handle.done() and handle.result() is None
            # a callback added once done runs at once
            late: List[Pending] = []
            handle.add_done_callback(late.append)
            assert late == [handle]

        await asyncio.to_thread(sync_code)
        assert await receive(layer, "thread.general") == {"n": 1}
        await nothing_on(layer, "thread.general", 0.05)
        assert await group_members(backend, layer, "thread-group") == ["thread.member"]

    backend.run(main, capacity=1)


def test_receive_blocking(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        specific = await layer.new_channel()

        def sync_code() -> List[Dict[str, Any]]:
            got = [layer.receive_blocking("blocking.general", timeout=5), layer.receive_blocking(specific, 5)]
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                layer.receive_blocking("blocking.empty", timeout=0.2)
            assert time.monotonic() - started < 1.5
            return got

        thread = asyncio.ensure_future(asyncio.to_thread(sync_code))
        await asyncio.sleep(0.05)
        await layer.send("blocking.general", {"n": "general"})
        await layer.send(specific, {"n": "specific"})
        assert await asyncio.wait_for(thread, 5) == [{"n": "general"}, {"n": "specific"}]
        # on the loop's own thread it would block the loop that has to deliver: refused
        with pytest.raises(RuntimeError, match="deadlock"):
            layer.receive_blocking("blocking.general", timeout=0.1)
        # and the timed-out receive did not eat a later message
        await layer.send("blocking.empty", {"n": "later"})
        assert await receive(layer, "blocking.empty") == {"n": "later"}

    backend.run(main)


def test_unobserved_failed_pending_is_logged_when_collected(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    async def main(layer: ChannelLayer) -> None:
        await layer.send("logged.general", {"fill": 1})
        caplog.set_level(logging.WARNING, logger="asgiworker.channels")

        async def settled(pending: Pending) -> None:
            while not pending.done():
                await asyncio.sleep(0.01)

        observed = layer.send_nowait("logged.general", {"n": "observed"})
        await settled(observed)
        assert isinstance(observed.exception(), ChannelFull)
        succeeded = layer.send_nowait("logged.other", {"n": "ok"})
        await settled(succeeded)
        del observed, succeeded
        gc.collect()
        assert not [r for r in caplog.records if "nobody asked" in r.getMessage()]

        dropped = layer.send_nowait("logged.general", {"n": "dropped"})
        await settled(dropped)
        del dropped
        gc.collect()
        records = [r for r in caplog.records if "nobody asked" in r.getMessage()]
        assert len(records) == 1 and records[0].levelno == logging.WARNING
        assert "logged.general" in records[0].getMessage() and "ChannelFull" in records[0].getMessage()

    backend.run(main, capacity=1)


def test_awaiting_from_another_event_loop(backend: Backend) -> None:
    """A call awaited on another thread's loop is carried over to the layer's loop."""
    async def main(layer: ChannelLayer) -> None:
        layer_loop = asyncio.get_running_loop()

        def other_thread() -> Dict[str, Any]:
            async def go() -> Dict[str, Any]:
                assert asyncio.get_running_loop() is not layer_loop
                await layer.send("offloop.general", {"from": "the other loop"})
                name = await layer.new_channel()
                await layer.group_add("offloop", name)
                await layer.group_send("offloop", {"via": "group"})
                got = await layer.receive(name)
                reply = await layer.receive("offloop.reply")  # waits while the layer's loop sends
                with pytest.raises(ChannelFull):
                    await layer.send("offloop.full", {"n": 2})  # exceptions come over too
                await layer.group_discard("offloop", name)
                return {"group": got, "reply": reply}

            return asyncio.run(go())

        await layer.send("offloop.full", {"n": 1})
        thread = asyncio.ensure_future(asyncio.to_thread(other_thread))
        assert await receive(layer, "offloop.general") == {"from": "the other loop"}
        await layer.send("offloop.reply", {"from": "the layer's loop"})
        assert await asyncio.wait_for(thread, 5) == {"group": {"via": "group"}, "reply": {"from": "the layer's loop"}}
        assert await group_members(backend, layer, "offloop") == []

    backend.run(main, capacity=1)


# -- attach and detach -------------------------------------------------------------------------------------


def test_attach_and_detach(backend: Backend) -> None:
    async def main(layer: ChannelLayer) -> None:
        endpoint = Endpoint()
        name = layer.attach(endpoint)
        assert check_channel(name) == name and "!" in name and layer.local.owns(name)
        assert name != layer.attach(Endpoint())
        await layer.send(name, {"n": 1})
        await until(lambda: endpoint.messages == [{"n": 1}], what="the direct message")
        await layer.group_add("attached", name)
        await layer.group_add("attached-too", name)
        await layer.group_send("attached", {"n": 2})
        await until(lambda: endpoint.messages[-1:] == [{"n": 2}], what="the group message")
        with pytest.raises(ValueError, match="reply channel"):
            await layer.receive(name)  # its messages go to the endpoint, not to receive()
        endpoint.accept = False
        with pytest.raises(ChannelFull):
            await layer.send(name, {"n": "refused"})
        endpoint.accept = True
        # gone: sends are dropped silently, its groups no longer list it
        layer.detach(name)
        layer.detach(name)  # twice: harmless
        layer.detach("specific.nobody!1")  # never attached: harmless
        for group in ("attached", "attached-too"):
            await until_async(lambda group=group: group_members(backend, layer, group), lambda members: members == [],
                              what=f"{name} to leave {group}")
        await layer.send(name, {"n": "dropped"})
        await layer.group_send("attached", {"n": "dropped too"})
        await asyncio.sleep(0.1)
        assert endpoint.messages == [{"n": 1}, {"n": 2}]
        # nor is it refreshed back into its groups
        layer.refresh_interval = 0.05
        layer._next_refresh = 0.0
        layer.tick()
        await asyncio.sleep(0.1)
        assert await group_members(backend, layer, "attached") == []

    backend.run(main)


async def until_async(get: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], timeout: float = 3.0,
                      what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        if check(value):
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.02)


# -- properties ------------------------------------------------------------------------------------------------

# What msgpack carries and the Channels spec allows: str-keyed dicts, lists (tuples become lists),
# str, bytes, signed 64-bit ints, floats (no NaN: it is not equal to itself), booleans, None.
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=30) | st.binary(max_size=30))
VALUES = st.recursive(
    SCALARS,
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=25,
)
MESSAGES = st.dictionaries(st.text(max_size=20).filter(lambda k: k != "__asgi_channel__"), VALUES, max_size=6)


class LoopSession:
    """One started layer on one loop for all of a property's examples (a loop per example
    would be most of the time spent)."""

    def __init__(self, backend: Backend, **options: Any) -> None:
        self.layer = backend.layer(**options)
        self.loop = backend.new_loop()
        self.run(self.layer.start())

    def run(self, coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        try:
            self.run(self.layer.close())
        finally:
            self.loop.close()


def test_property_any_message_round_trips(backend: Backend) -> None:
    session = LoopSession(backend)
    layer = session.layer
    try:
        specific = session.run(layer.new_channel())

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(message=MESSAGES)
        def check(message: Dict[str, Any]) -> None:
            async def round_trip() -> List[Dict[str, Any]]:
                await layer.send("prop.general", message)
                await layer.send(specific, message)
                return [await receive(layer, "prop.general"), await receive(layer, specific)]

            for got in session.run(round_trip()):
                assert_same(got, lists_for_tuples(message))

        check()
    finally:
        session.close()


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 2)),
        st.tuples(st.just("receive"), st.integers(0, 2)),
        st.tuples(st.just("add"), st.integers(0, 2)),
        st.tuples(st.just("discard"), st.integers(0, 2)),
        st.tuples(st.just("group_send"), st.just(0)),
        st.tuples(st.just("nowait_send"), st.integers(0, 2)),
        st.tuples(st.just("nowait_group_send"), st.just(0)),
    ),
    max_size=40,
)
CAPACITY = 3


def test_property_interleavings_never_exceed_capacity(backend: Backend) -> None:
    """Any sequence of sends, receives, group adds/discards and group sends (also as *_nowait)
    against a model: a send raises ChannelFull exactly when the channel holds ``capacity``
    messages, a group send skips full members, receives come in order. At the end each channel
    holds exactly what the model says (it takes ``capacity`` more and then refuses)."""
    session = LoopSession(backend, capacity=CAPACITY)
    layer = session.layer
    try:
        specific = session.run(layer.new_channel())
        channels = ["prop.one", "prop.two", specific]

        @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(ops=OPS)
        def check(ops: List[Any]) -> None:
            async def play() -> None:
                queues: List[List[int]] = [[], [], []]
                members: set = set()
                ids = itertools.count()

                def model_put(i: int, n: int) -> bool:
                    if len(queues[i]) >= CAPACITY:
                        return False
                    queues[i].append(n)
                    return True

                for op, i in ops:
                    n = next(ids)
                    if op in ("send", "nowait_send"):
                        fits = model_put(i, n)
                        if op == "send":
                            try:
                                await layer.send(channels[i], {"n": n})
                                assert fits, f"send {n} to {channels[i]} over capacity was accepted"
                            except ChannelFull:
                                assert not fits, f"ChannelFull for {channels[i]} holding {queues[i]}"
                        else:
                            error = await _settle(layer.send_nowait(channels[i], {"n": n}))
                            assert isinstance(error, ChannelFull) == (not fits), (error, queues[i])
                    elif op == "receive":
                        if queues[i]:
                            assert (await receive(layer, channels[i]))["n"] == queues[i].pop(0)
                    elif op == "add":
                        await layer.group_add("prop", channels[i])
                        members.add(i)
                    elif op == "discard":
                        await layer.group_discard("prop", channels[i])
                        members.discard(i)
                    elif op == "group_send":
                        await layer.group_send("prop", {"n": n})
                        for m in members:
                            model_put(m, n)
                    else:
                        assert await _settle(layer.group_send_nowait("prop", {"n": n})) is None
                        for m in members:
                            model_put(m, n)
                for i, channel in enumerate(channels):
                    for want in queues[i]:
                        assert (await receive(layer, channel))["n"] == want
                    for _ in range(CAPACITY):  # empty now: exactly CAPACITY more fit
                        await layer.send(channel, {"n": -1})
                    with pytest.raises(ChannelFull):
                        await layer.send(channel, {"n": -2})
                await layer.flush()

            session.run(play())

        check()
    finally:
        session.close()


async def _settle(pending: Pending) -> Optional[BaseException]:
    while not pending.done():
        await asyncio.sleep(0.001)
    return pending.exception()


def test_tick_while_other_threads_attach_and_join() -> None:
    """Sync consumers' threads attach reply channels, join and leave groups while the loop's
    tick() walks the same tables (sweep, refresh): tick() must never meet a table resized under
    it ("dictionary changed size during iteration")."""
    backend = Backend("memory")

    async def main(layer: ChannelLayer) -> None:
        for _ in range(2000):
            layer.new_channel_name()  # a big table: a walk long enough to be interrupted
        layer.refresh_interval = 0.0
        stop = threading.Event()

        def churn() -> int:
            n = 0
            while not stop.is_set():
                name = layer.attach(Endpoint())
                layer.group_add_nowait("churn", name)
                # The tables change here, in this thread; waiting for the queued call keeps the
                # thread at the loop's pace (unpaced, it would only meet MAX_PENDING_CALLS).
                (layer.group_discard_nowait("churn", name).result(5) if n % 2 else layer.detach(name))
                n += 1
            return n

        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # hand the GIL over often
        thread = asyncio.ensure_future(asyncio.to_thread(churn))
        try:
            for _ in range(60):
                layer.tick()
                await asyncio.sleep(0)
        finally:
            stop.set()
            sys.setswitchinterval(switch)
            assert await asyncio.wait_for(thread, 10) > 0

    backend.run(main)


def test_calls_from_a_thread_are_bounded_before_they_reach_the_loop() -> None:
    """A thread calling *_nowait faster than the loop runs them (here: while the loop is blocked)
    gets ChannelFull at once past MAX_PENDING_CALLS, instead of filling the loop's callback queue."""
    from asgiworker.channels.layer import MAX_PENDING_CALLS

    backend = Backend("memory")
    extra = 300

    async def main(layer: ChannelLayer) -> None:
        pendings: List[Any] = []
        thread = threading.Thread(target=lambda: pendings.extend(
            layer.group_add_nowait("bounded", f"member{i}") for i in range(MAX_PENDING_CALLS + extra)))
        thread.start()
        thread.join()  # the loop is blocked meanwhile: every call is still on its way to it
        refused = [p for p in pendings if p.done()]
        assert len(refused) == extra
        assert all(isinstance(p.exception(), ChannelFull) for p in refused)
        await until(lambda: all(p.done() for p in pendings), timeout=10, what="the accepted calls run")
        assert sum(p.exception() is None for p in pendings) == MAX_PENDING_CALLS

    backend.run(main)
