"""Our Redis channel layer and Django Channels' channels_redis on one Redis, talking to each other.

Two real servers on the same Redis and prefix (``asgi``):

- ``channels``: a Django Channels project (tests/apps/interop/channels_app.py) on
  ``channels_redis.core.RedisChannelLayer``, served by gunicorn with uvicorn-worker;
- ``ours``: a channel-style consumer (tests/apps/interop/ours.py) on asgiworker's Redis layer
  (``ASGIWORKER_CHANNEL_LAYER``), gunicorn with asgiworker, ``--workers 2``.

On both, a socket on ``/ws/<room>/`` joins group ``<room>`` and says hello with its channel name;
its client's text goes to the group as a ``chat.message`` (or, as JSON ``{"to", "text"}``, to one
channel), and ``chat.message`` events come back to the client as their bare text. Channels'
consumer sends a ``websocket.send`` to a named channel (what Channels consumers send each other's
sockets); ours sends a ``chat.message``.

Clients of our server are spread over both workers (``open_on_both_workers``), so every message
crosses processes whichever way it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from typing import Iterator, List

import httpx
import pytest
import redis

from tests.conftest import BootedServers, GunicornServer, wait_for
from tests.test_websocket import ws_connect

CHANNELS_APP = "tests.apps.interop.channels_app:application"
OURS_APP = "tests.apps.interop.ours:app"
SPECIFIC_NAME = re.compile(r"^specific\.[0-9a-f]{32}![0-9A-Za-z]+$")


# -- helpers (tests/test_layer_faults.py uses them too) ----------------------------------------------


class RoomClient:
    """A WebSocket client of the room protocol: connected, and past the hello (so its socket is
    in the group, in Redis)."""

    def __init__(self, server: GunicornServer, room: str, stack: contextlib.ExitStack) -> None:
        self.ws = stack.enter_context(ws_connect(server, f"/ws/{room}/"))
        hello = json.loads(self.ws.recv(timeout=5))
        self.name: str = hello["hello"]
        self.pid: int = hello["pid"]

    def say(self, text: str) -> None:
        self.ws.send(text)

    def tell(self, to: str, text: str) -> None:
        self.ws.send(json.dumps({"to": to, "text": text}))

    def expect(self, text: str, timeout: float = 5.0) -> None:
        got = self.ws.recv(timeout=timeout)
        assert got == text, f"{self.name} (pid {self.pid}) got {got!r}, expected {text!r}"

    def silent(self, timeout: float = 0.3) -> None:
        """Nothing (more) comes within ``timeout`` seconds."""
        try:
            got = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return
        raise AssertionError(f"{self.name} got {got!r}, expected nothing")

    def __repr__(self) -> str:
        return f"<RoomClient {self.name} pid={self.pid}>"


def all_silent(clients: List[RoomClient], timeout: float = 0.3) -> None:
    """None of ``clients`` gets anything more within ``timeout`` seconds (one wait for all)."""
    time.sleep(timeout)
    for client in clients:
        client.silent(0.01)


def open_on_both_workers(server: GunicornServer, room: str, stack: contextlib.ExitStack,
                         at_least: int = 2) -> List[RoomClient]:
    """At least ``at_least`` clients of ``server`` (two workers) in ``room``, on both workers.

    The kernel tends to hand every new connection to the same idle worker: while that worker's
    loop is blocked (``/block``, asked on a keep-alive connection known to be served by it), the
    other worker accepts the connections made meanwhile.
    """
    clients = [RoomClient(server, room, stack) for _ in range(max(1, at_least - 1))]
    for _ in range(5):
        pids = {c.pid for c in clients}
        if len(pids) >= 2:
            break
        busy = _connection_to(server, clients[0].pid)
        try:
            blocker = threading.Thread(target=busy.get, args=("/block",), kwargs={"params": {"s": "0.5"}})
            blocker.start()
            time.sleep(0.1)  # the /block request is in that worker's loop by now
            clients.append(RoomClient(server, room, stack))
            blocker.join()
        finally:
            busy.close()
    pids = {c.pid for c in clients}
    assert len(pids) >= 2, f"could not get clients on both workers: {clients}"
    while len(clients) < at_least:
        clients.append(RoomClient(server, room, stack))
    return clients


def _connection_to(server: GunicornServer, pid: int) -> httpx.Client:
    """An HTTP keep-alive connection that worker ``pid`` serves."""
    for _ in range(30):
        client = httpx.Client(base_url=server.url, timeout=5)
        if client.get("/pid").json()["pid"] == pid:
            return client
        client.close()
    pytest.fail(f"no connection reached worker {pid}")


def call(server: GunicornServer, op: str, timeout: float = 10.0, **params: str) -> dict:
    """One layer call through ours.py's ``/call`` route: its report."""
    return httpx.get(server.url + "/call", params={"op": op, **params}, timeout=timeout).json()


# -- the servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(redis_url) -> Iterator[BootedServers]:
    booted = BootedServers({
        "channels": (CHANNELS_APP, (), {"worker_class": "uvicorn_worker.UvicornWorker", "env": {
            "INTEROP_REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "tests.apps.interop.settings"}}),
        "ours": (OURS_APP, ("--workers", "2"), {"env": {"ASGIWORKER_CHANNEL_LAYER": redis_url}}),
    })
    try:
        yield booted
    finally:
        booted.stop()


@pytest.fixture
def channels(servers, fresh_redis) -> GunicornServer:
    return servers["channels"]


@pytest.fixture
def ours(servers, fresh_redis) -> GunicornServer:
    return servers["ours"]


@pytest.fixture
def redis_client(fresh_redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fresh_redis.url)
    yield client
    client.close()


# -- the tests -------------------------------------------------------------------------------------


def test_group_messages_cross_both_ways(channels, ours):
    """A Channels client's text reaches every client in ``room``, ours on both workers included;
    one of our clients' text reaches the Channels clients (and ours); nobody gets anything
    twice."""
    with contextlib.ExitStack() as stack:
        theirs = [RoomClient(channels, "room", stack) for _ in range(2)]
        mine = open_on_both_workers(ours, "room", stack)
        everyone = theirs + mine

        text = f"from channels {uuid.uuid4().hex[:8]}"
        theirs[0].say(text)
        for client in everyone:
            client.expect(text)

        for sender in (mine[0], mine[-1]):  # one on each worker
            text = f"from ours {sender.pid} {uuid.uuid4().hex[:8]}"
            sender.say(text)
            for client in everyone:
                client.expect(text)

        all_silent(everyone)


def test_direct_sends_both_ways(channels, ours):
    """Channels' ``channel_layer.send(our_socket_name, {'type': 'websocket.send', ...})`` reaches
    that one socket of ours (on either worker); our ``layer.send(channels_consumer.channel_name,
    {'type': 'chat.message', ...})`` reaches that one Channels consumer, whose handler sends it."""
    with contextlib.ExitStack() as stack:
        theirs = [RoomClient(channels, f"d{uuid.uuid4().hex[:8]}", stack) for _ in range(2)]
        mine = open_on_both_workers(ours, f"d{uuid.uuid4().hex[:8]}", stack)

        for target in (mine[0], mine[-1]):
            text = f"to {target.name}"
            theirs[0].tell(target.name, text)
            target.expect(text)
        for target in theirs:
            text = f"to {target.name}"
            mine[-1].tell(target.name, text)
            target.expect(text)

        all_silent(theirs + mine)


def test_same_key_layout(channels, ours, redis_client):
    """The group is one sorted set, ``asgi:group:room``, holding a Channels consumer's
    ``channel_name`` and our socket's name side by side, both ``specific.<32 hex>!<id>``, scored by
    the time they joined (epoch seconds) and the key given an expiry; a socket that closes leaves
    it, on either side."""
    key = "asgi:group:room"
    with contextlib.ExitStack() as stack:
        theirs = RoomClient(channels, "room", stack)
        with contextlib.ExitStack() as mine_stack:
            mine = RoomClient(ours, "room", mine_stack)
            members = {m.decode(): score for m, score in redis_client.zrange(key, 0, -1, withscores=True)}
            assert set(members) == {theirs.name, mine.name}
            for name in members:
                assert SPECIFIC_NAME.match(name), name
                assert abs(members[name] - time.time()) < 60, members
            assert 0 < redis_client.ttl(key) <= 86400
            assert redis_client.type(key) == b"zset"
        assert wait_for(lambda: redis_client.zrange(key, 0, -1) == [theirs.name.encode()], timeout=5), \
            redis_client.zrange(key, 0, -1)
    assert wait_for(lambda: not redis_client.exists(key) or redis_client.zcard(key) == 0, timeout=5)


def test_message_encoding_is_channels_redis(ours, redis_url, redis_client):
    """Below the consumers, message for message: what we store channels_redis decodes, and the
    other way round. Our send to a process-specific name of another process is in that
    process's one key (``asgi`` + the name up to ``!``), with the full name in
    ``__asgi_channel__``; general channels carry messages both ways."""
    from channels_redis.core import RedisChannelLayer

    theirs = RedisChannelLayer(hosts=[redis_url], prefix="asgi")
    process = uuid.uuid4().hex
    specific = f"specific.{process}!abc"
    assert call(ours, "send", channel=specific, text="for a Channels process")["ok"]
    stored = redis_client.zrange(f"asgispecific.{process}!", 0, -1)
    assert len(stored) == 1
    assert theirs.deserialize(stored[0]) == {"type": "chat.message", "text": "for a Channels process",
                                             "__asgi_channel__": specific}

    async def exchange() -> tuple:
        out = f"interop.out.{uuid.uuid4().hex[:8]}"
        back = f"interop.back.{uuid.uuid4().hex[:8]}"
        sent = call(ours, "send", channel=out, text="ours to theirs")
        got = await asyncio.wait_for(theirs.receive(out), 5)
        await theirs.send(back, {"type": "chat.message", "text": "theirs to ours", "n": [1, 2.5, None, "é"]})
        received = call(ours, "receive", channel=back, wait="5")
        await theirs.close_pools()
        return sent, got, received

    sent, got, received = asyncio.run(exchange())
    assert sent["ok"], sent
    assert got == {"type": "chat.message", "text": "ours to theirs"}
    assert received["ok"], received
    assert received["result"] == {"type": "chat.message", "text": "theirs to ours", "n": [1, 2.5, None, "é"]}
