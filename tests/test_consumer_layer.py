"""Channel-style consumers on the channel layer, against real Gunicorn masters.

``message['channel_layer']`` is the worker's layer (the Channels API plus ``*_nowait`` forms),
``message['reply_channel'].name`` a process-specific channel that any process on the layer can
send to: a reply goes to the socket (or streams more of an HTTP response), a message with another
``type`` is an event handed to the consumer, in its turn. ``Group`` joins reply channels; their
memberships end with the socket and are refreshed while it lives.

Apps: tests/apps/layer_apps.py (``consumer``, a plain def; ``async_consumer``, an async def) and
tests/apps/layer_asgi_app.py (Starlette, through ``get_channel_layer()``). Servers, booted once
per backend and in parallel:

- memory: ``sync`` and ``async`` consumers (``--workers 1``; ``async`` with
  ASGIWORKER_CHANNEL_CAPACITY=5), the Starlette app; ASGIWORKER_CHANNEL_GROUP_EXPIRY=3;
- redis (one redis-server, ``tests/redis_server.py``): the same three as three masters on one
  Redis and one prefix, ``sync`` with ``--workers 4``, ``async`` with 2.

With the memory layer each master is its own layer, so "another process" is the server itself
(``POST /send`` in the app); with Redis it is this test process, through a layer built with
``asgiworker.channels.build``, or another master.

From another process on Redis a sender cannot be told that one socket is full (its ZADD to the
worker's key succeeded; the worker's reader finds the socket full later): such messages are dropped
and the worker logs it (``test_a_stalled_socket_drops_and_logs_what_another_process_sends_redis``).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
import pytest

from asgiworker.channels import ChannelFull, LayerSpec, build
from tests.conftest import BootedServers, GunicornServer, wait_for
from tests.test_websocket import RawWebSocket, closed_by_server, ws_connect
from tests.wire import connect, nothing_within, read_response, read_until, read_until_close, request_bytes

CONSUMER = "tests.apps.layer_apps:consumer"
ASYNC_CONSUMER = "tests.apps.layer_apps:async_consumer"
ASGI_APP = "tests.apps.layer_asgi_app:app"
PREFIX = "consumer-layer-test."
NAME = re.compile(r"^specific\.[0-9a-f]{32}![0-9a-f]+$")
FLAVOURS = ("sync", "async")


def token() -> str:
    return uuid.uuid4().hex[:12]


# -- this process on the layer ---------------------------------------------------------------------


class RemoteLayer:
    """A Redis layer in this test process (a process of its own on the layer), on a loop of its
    own thread: ``call(coroutine)`` runs it there and returns its result."""

    def __init__(self, spec: LayerSpec) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.layer = build(spec)
        self.call(self.layer.start())

    def call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.call(self.layer.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def to_json(value: Any) -> Any:
    """A layer message as the apps' control endpoints take it (bytes as {"__bytes__": text})."""
    if isinstance(value, bytes):
        return {"__bytes__": value.decode("latin-1")}
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def as_json_message(message: Dict[str, Any]) -> Dict[str, Any]:
    return {"message": to_json(message)}


def post(server: GunicornServer, path: str, data: Dict[str, Any], timeout: float = 10.0) -> Any:
    response = httpx.post(server.url + path, json=data, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


class Backend:
    """One backend's servers, and how another process sends on its layer."""

    def __init__(self, name: str, servers: BootedServers, remote: Optional[RemoteLayer]) -> None:
        self.name = name
        self.servers = servers
        self.remote = remote

    def server(self, key: str) -> GunicornServer:
        return self.servers[key]

    def send(self, server: GunicornServer, channel: str, message: Dict[str, Any]) -> None:
        """``layer.send(channel, message)`` from another process (memory: the server itself)."""
        if self.remote is not None:
            self.remote.call(self.remote.layer.send(channel, message))
        else:
            result = post(server, "/send", {"channel": channel, **as_json_message(message)})
            assert result["ok"], result

    def group_send(self, server: GunicornServer, group: str, message: Dict[str, Any]) -> None:
        if self.remote is not None:
            self.remote.call(self.remote.layer.group_send(group, message))
        else:
            result = post(server, "/group_send", {"group": group, **as_json_message(message)})
            assert result["ok"], result

    def group_add(self, server: GunicornServer, group: str, channel: str) -> None:
        if self.remote is not None:
            self.remote.call(self.remote.layer.group_add(group, channel))
        else:
            post(server, "/group_add", {"group": group, "channel": channel})

    def members(self, server: GunicornServer, group: str) -> List[str]:
        return httpx.get(server.url + "/members", params={"group": group}, timeout=5).json()["members"]


# -- servers ----------------------------------------------------------------------------------------


def _specs(env: Dict[str, str], sync_workers: str, async_workers: str) -> Dict[str, Any]:
    return {
        "sync": (CONSUMER, ("--workers", sync_workers), {"env": env}),
        "async": (ASYNC_CONSUMER, ("--workers", async_workers),
                  {"env": {**env, "ASGIWORKER_CHANNEL_CAPACITY": "5"}}),
        "asgi": (ASGI_APP, (), {"env": env}),
    }


@pytest.fixture(scope="module")
def memory_servers():
    booted = BootedServers(_specs({"ASGIWORKER_CHANNEL_LAYER": "memory",
                                   "ASGIWORKER_CHANNEL_GROUP_EXPIRY": "3"}, "1", "1"))
    yield booted
    booted.stop()


@pytest.fixture(scope="module")
def redis_servers(redis_url):
    booted = BootedServers(_specs({"ASGIWORKER_CHANNEL_LAYER": redis_url, "ASGIWORKER_CHANNEL_PREFIX": PREFIX,
                                   "ASGIWORKER_CHANNEL_GROUP_EXPIRY": "3"}, "4", "2"))
    yield booted
    booted.stop()


@pytest.fixture(scope="module")
def remote(redis_url):
    # The servers' settings: group_expiry is applied by whoever sends to the group.
    layer = RemoteLayer(LayerSpec("redis", (redis_url,), prefix=PREFIX, group_expiry=3))
    yield layer
    layer.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> Backend:
    if request.param == "memory":
        return Backend("memory", request.getfixturevalue("memory_servers"), None)
    return Backend("redis", request.getfixturevalue("redis_servers"), request.getfixturevalue("remote"))


@pytest.fixture
def redis_backend(redis_servers, remote) -> Backend:
    return Backend("redis", redis_servers, remote)


# -- client helpers ---------------------------------------------------------------------------------


def recv_json(ws, timeout: float = 5.0) -> Any:
    return json.loads(ws.recv(timeout=timeout))


def recv_texts(ws, count: int, timeout: float = 5.0) -> List[str]:
    return [ws.recv(timeout=timeout) for _ in range(count)]


def nothing_more(ws, seconds: float = 0.3) -> None:
    try:
        extra = ws.recv(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {extra!r}")


class EventStream:
    """A raw HTTP/1.1 client on a server-sent-events response: what arrived so far in ``data``."""

    def __init__(self, server: GunicornServer, path: str) -> None:
        self.sock = connect(server.port)
        self.sock.sendall(request_bytes(path, headers=[("Accept", "text/event-stream")]))
        self.data = b""
        self.wait_for(b"\n\n")
        head = self.data.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 200 "), self.data
        assert b"transfer-encoding: chunked" in head.lower(), head
        first = re.search(rb"data: (\{.*?\})\n\n", self.data)
        assert first is not None, self.data
        self.first = json.loads(first.group(1))

    def wait_for(self, marker: bytes, timeout: float = 5.0) -> bytes:
        if marker not in self.data:
            self.data += read_until(self.sock, marker, timeout)
        assert marker in self.data, f"no {marker!r} in {self.data!r}"
        return self.data

    def close(self) -> None:
        self.sock.close()


def read_report(path: Path, timeout: float = 10.0) -> Any:
    assert wait_for(path.exists, timeout), f"no report at {path}"
    return json.loads(path.read_text())


def open_group_socket(stack: ExitStack, server: GunicornServer, group: str, path: str = "/ws/group"):
    """A socket in ``group`` (closed with ``stack``) and what it said first: its name and pid."""
    ws = stack.enter_context(ws_connect(server, f"{path}?group={group}"))
    info = recv_json(ws)
    assert NAME.match(info["name"]), info
    return ws, info


# -- boot and configuration ---------------------------------------------------------------------------


def test_boot_log_names_the_layer(backend, redis_url_if_any):
    workers = {"sync": 4, "async": 2, "asgi": 1} if backend.name == "redis" else {"sync": 1, "async": 1, "asgi": 1}
    want = ("Channel layer: memory (this worker process only)" if backend.name == "memory"
            else f"Channel layer: redis {redis_url_if_any} (prefix {PREFIX!r})")
    for key, count in workers.items():
        server = backend.server(key)
        assert wait_for(lambda server=server, count=count: server.log().count(want) >= count), server.log()[-3000:]
        assert server.log().count(want) == count, server.log()[-3000:]


@pytest.fixture
def redis_url_if_any(request, backend) -> Optional[str]:
    return request.getfixturevalue("redis_url") if backend.name == "redis" else None


BAD_SETTINGS = [
    ({"ASGIWORKER_CHANNEL_LAYER": "mysql://x"},
     ["ASGIWORKER_CHANNEL_LAYER='mysql://x'", "neither 'memory' nor a Redis URL", "redis://host:port/db"]),
    ({"ASGIWORKER_CHANNEL_CAPACITY": "0"}, ["ASGIWORKER_CHANNEL_CAPACITY='0' is not a positive whole number"]),
    ({"ASGIWORKER_CHANNEL_GROUP_EXPIRY": "soon"}, ["ASGIWORKER_CHANNEL_GROUP_EXPIRY='soon' is not a positive number"]),
    ({"ASGIWORKER_CHANNEL_GROUP_EXPIRY": "2"}, ["ASGIWORKER_CHANNEL_GROUP_EXPIRY='2' is too short", "3 seconds or more"]),
]


def test_bad_layer_settings_stop_the_boot():
    servers = [GunicornServer(CONSUMER, env=env, wait=False) for env, _ in BAD_SETTINGS]
    try:
        for server, (env, expected) in zip(servers, BAD_SETTINGS):
            try:
                code = server.wait_exit(20)
            except Exception:
                pytest.fail(f"gunicorn with {env} did not exit:\n{server.log()[-3000:]}")
            log = server.log()
            assert code != 0, log[-3000:]
            assert "asgiworker cannot start" in log, log[-3000:]
            for text in expected:
                assert text in log, (text, log[-3000:])
            assert "Channel layer:" not in log
    finally:
        for server in servers:
            server.stop()


# -- the message's layer and the reply channel's name ---------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_message_has_the_worker_layer_and_a_named_reply_channel(backend, flavour):
    server = backend.server(flavour)
    with ws_connect(server, "/ws/info") as first, ws_connect(server, "/ws/info") as second:
        infos = [recv_json(first), recv_json(second)]
    for info in infos:
        assert info["backend"] == backend.name
        assert info["layer_type"] == ("InMemoryChannelLayer" if backend.name == "memory" else "RedisChannelLayer")
        assert info["is_process_layer"] is True, "message['channel_layer'] is not get_channel_layer()"
        assert info["loop_ok"] is True, "layer.loop is not the worker's running loop"
        assert all(info["async_api"].values()), info["async_api"]
        assert all(info["nowait_api"].values()), info["nowait_api"]
        assert {"groups", "flush"} <= set(info["extensions"])
        assert NAME.match(info["name"]), info["name"]
        assert info["name_again"] == info["name"], "the name changed between two reads"
        assert info["capacity"] == (5 if flavour == "async" else 100)
        assert info["group_expiry"] == 3
        assert info["prefix"] == ("asgi" if backend.name == "memory" else PREFIX)
        if flavour == "sync":
            assert info["is_pending"] is True and info["nowait_returns"] == "Pending", info
    assert infos[0]["name"] != infos[1]["name"]
    if infos[0]["pid"] == infos[1]["pid"]:  # one process: one routing part before the '!'
        assert infos[0]["name"].split("!")[0] == infos[1]["name"].split("!")[0]


def test_asgi_app_gets_the_worker_layer(backend):
    info = httpx.get(backend.server("asgi").url + "/info", timeout=5).json()
    assert info["backend"] == backend.name
    assert info["loop_ok"] is True
    assert info["prefix"] == ("asgi" if backend.name == "memory" else PREFIX)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_send_to_the_name_reaches_the_socket(backend, flavour):
    server = backend.server(flavour)
    with ws_connect(server, "/ws/info") as ws:
        name = recv_json(ws)["name"]
        backend.send(server, name, {"text": "plain text"})
        assert ws.recv(timeout=5) == "plain text"
        backend.send(server, name, {"bytes": b"\x00\xffraw"})
        assert ws.recv(timeout=5) == b"\x00\xffraw"
        backend.send(server, name, {"type": "websocket.send", "text": "as Channels sends it"})
        assert ws.recv(timeout=5) == "as Channels sends it"
        backend.send(server, name, {"type": "websocket.send", "bytes": b"\x01\x02"})
        assert ws.recv(timeout=5) == b"\x01\x02"
        ws.send("still mine")  # the socket's own consumer calls go on as before
        assert ws.recv(timeout=5) == "echo still mine"
        if backend.name == "redis":
            # from a master serving another app (an ASGI one) on the same Redis
            post(backend.server("asgi"), "/send", {"channel": name, "message": {"text": "from the ASGI master"}})
            assert ws.recv(timeout=5) == "from the ASGI master"
        backend.send(server, name, {"type": "websocket.close", "code": 4000})
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 4000, exc
    # The name has gone with the socket: sending to it is dropped, silently.
    backend.send(server, name, {"text": "nobody is there"})


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_typed_message_is_an_event_for_the_consumer(backend, flavour):
    server = backend.server(flavour)
    with ws_connect(server, "/ws/info?room=7", additional_headers={"X-Probe": "probe-value"}) as ws:
        name = recv_json(ws)["name"]
        backend.send(server, name, {"type": "chat.message", "x": 1})
        event = recv_json(ws)
        backend.send(server, name, {"type": "chat.message", "x": [1, "two", {"three": 3.0}]})
        second = recv_json(ws)
    assert event["event"] == "chat.message"
    assert event["x"] == 1
    assert second["x"] == [1, "two", {"three": 3.0}]
    assert event["name"] == name, "the event's reply_channel is not the socket's"
    assert event["reply_channel_type"] == "WebSocketReplyChannel"
    assert event["is_process_layer"] is True
    assert event["path"] == "/ws/info"
    assert event["query_string"] == "room=7"
    assert event["probe_header"] == "probe-value"
    for key in ("type", "x", "reply_channel", "channel_layer", "path", "raw_path", "query_string", "root_path",
                "scheme", "headers", "client", "server", "subprotocols"):
        assert key in event["keys"], (key, event["keys"])
    assert "__asgi_channel__" not in event["keys"]


def test_events_wait_for_the_consumer_call_in_progress(backend):
    """An async consumer awaiting inside a handler: events for its socket (and its own next
    message) queue behind it, one call at a time, events in the order sent."""
    server = backend.server("async")
    with ws_connect(server, "/ws/slow") as ws:
        name = recv_json(ws)["name"]
        ws.send("block 1.0")
        assert ws.recv(timeout=5) == "enter block 0"
        started = time.monotonic()
        for n in range(3):
            backend.send(server, name, {"type": "slow.event", "n": n})
        ws.send("after")
        sent_within = time.monotonic() - started
        texts = recv_texts(ws, 9)
    assert sent_within < 0.8, f"the events took {sent_within:.2f}s to send: the test proves nothing"
    assert texts[0] == "exit block", texts
    labels = []
    for enter, exit_ in zip(texts[1::2], texts[2::2]):
        kind, label, overlap = enter.split()
        assert kind == "enter" and overlap == "0", f"two calls overlapped: {texts}"
        assert exit_ == f"exit {label}", f"another call ran inside {label}: {texts}"
        labels.append(label)
    assert sorted(labels) == ["after", "event0", "event1", "event2"], texts
    assert [label for label in labels if label.startswith("event")] == ["event0", "event1", "event2"], texts


def test_events_waiting_for_a_busy_consumer_are_at_most_capacity(backend):
    """CAPACITY=5: while the consumer is busy, five events wait their turn; more are refused
    (memory: ChannelFull to the sender; Redis: dropped, the sender is not told, see
    test_a_sender_to_a_stalled_socket_is_told_channel_full_redis)."""
    server = backend.server("async")
    with ws_connect(server, "/ws/slow") as ws:
        name = recv_json(ws)["name"]
        ws.send("block 1.5")
        assert ws.recv(timeout=5) == "enter block 0"
        started = time.monotonic()
        refused = []
        for n in range(8):
            if backend.remote is not None:
                backend.send(server, name, {"type": "slow.event", "n": n})
            else:
                result = post(server, "/send", {"channel": name, "message": {"type": "slow.event", "n": n}})
                if not result["ok"]:
                    assert result["error"] == "ChannelFull", result
                    refused.append(n)
        sent_within = time.monotonic() - started
        texts = recv_texts(ws, 11)
        nothing_more(ws)
    assert sent_within < 1.2, f"the events took {sent_within:.2f}s to send: the test proves nothing"
    assert texts[0] == "exit block"
    assert [t for t in texts if t.startswith("enter")] == [f"enter event{n} 0" for n in range(5)], texts
    if backend.remote is None:
        assert refused == [5, 6, 7]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_exception_in_an_event_handler_closes_1011_with_traceback(backend, flavour):
    server = backend.server(flavour)
    tag = token()
    with ws_connect(server, "/ws/info") as ws:
        name = recv_json(ws)["name"]
        backend.send(server, name, {"type": "test.explode", "tag": tag})
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 1011, exc
    assert wait_for(lambda: f"boom in event {tag}" in server.log()), server.log()[-3000:]
    log = server.log()
    assert "Traceback" in log[:log.index(f"boom in event {tag}")], log[-3000:]
    # The same as an exception in the consumer's own websocket.receive call:
    with ws_connect(server, "/ws/info") as ws:
        recv_json(ws)
        ws.send(f"explode:{tag}")
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 1011, exc
    assert wait_for(lambda: f"boom in receive {tag}" in server.log()), server.log()[-3000:]
    # and the worker serves on
    with ws_connect(server, "/ws/info") as ws:
        assert NAME.match(recv_json(ws)["name"])


# -- groups ---------------------------------------------------------------------------------------------


def test_groups_from_sync_and_async_consumers(backend):
    """Sync consumers join with Group.add and send with Group.send; async ones await
    group_add/group_send. On Redis all of them (two masters) are in one group."""
    group = f"room-{token()}"
    sync, async_ = backend.server("sync"), backend.server("async")
    with ExitStack() as stack:
        sockets = [open_group_socket(stack, server, group) for server in (sync, sync, async_, async_)]
        if backend.name == "redis":
            circles = [sockets]
        else:  # one layer per master
            circles = [sockets[:2], sockets[2:]]
        for circle in circles:
            speaker, speaker_info = circle[0]
            speaker.send("hello")
            for ws, _ in circle:
                assert ws.recv(timeout=5) == f"{speaker_info['pid']}: hello"
        # An event sent to the group reaches each member's consumer, which answers its socket.
        for circle, server in zip(circles, (sync, async_)):
            backend.group_send(server, group, {"type": "group.hello", "x": 3})
            for ws, _ in circle:
                assert ws.recv(timeout=5) == "hello-event 3"
        # Leaving (Group.discard, group_discard): that socket is out, the others still in.
        leavers = [sockets[1][0], sockets[3][0]]
        for ws in leavers:
            ws.send("leave")
            assert ws.recv(timeout=5) == "left"
        for circle in circles:
            speaker, speaker_info = circle[0]
            speaker.send("after leaving")
            for ws, _ in circle:
                if ws not in leavers:
                    assert ws.recv(timeout=5) == f"{speaker_info['pid']}: after leaving"
        for ws in leavers:
            nothing_more(ws)
    # A closed socket's memberships go with it.
    for server in (sync, async_):
        assert wait_for(lambda server=server: not [m for m in backend.members(server, group)
                                                    if m in {info["name"] for _, info in sockets}]), \
            backend.members(server, group)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_joining_then_sending_from_one_call_happens_in_that_order(backend, flavour):
    group = f"announce-{token()}"
    server = backend.server(flavour)
    with ws_connect(server, f"/ws/group?group={group}&announce=1") as ws:
        name = recv_json(ws)["name"]
        assert ws.recv(timeout=5) == f"joined {name}"  # its own announcement: it had joined first


def test_sync_consumer_waiting_on_a_pending_gets_a_deadlock_error(backend):
    group = f"deadlock-{token()}"
    server = backend.server("sync")
    with ws_connect(server, f"/ws/deadlock?group={group}") as ws:
        results = recv_json(ws)
        for what in ("group_add", "send"):
            assert results[what] is not None, f"{what}: result() on the loop thread did not raise"
            assert "deadlock" in results[what], results[what]
            assert "await" in results[what], results[what]  # it says what to do instead
        # The calls themselves still ran, in the order they were made.
        assert recv_texts(ws, 2) == ["to myself", "after the deadlock"]


@pytest.fixture(scope="module")
def both_sync(request, memory_servers):
    """Both backends (memory alone where there is no Redis), for a test that waits once for both."""
    backends = [Backend("memory", memory_servers, None)]
    try:
        backends.append(Backend("redis", request.getfixturevalue("redis_servers"), request.getfixturevalue("remote")))
    except pytest.skip.Exception:
        pass
    return backends


def test_memberships_refresh_and_expire(both_sync):
    group = f"expiry-{token()}"
    stray = f"nobody.{token()}"
    opened = []
    with ExitStack() as stack:
        for backend in both_sync:
            server = backend.server("sync")
            ws, info = open_group_socket(stack, server, group)
            backend.group_add(server, group, stray)
            opened.append((backend, server, ws, info))
        for backend, server, _, info in opened:
            assert sorted(backend.members(server, group)) == sorted([info["name"], stray])
        time.sleep(5.0)  # past GROUP_EXPIRY=3 (Redis counts it in whole seconds)
        for backend, server, ws, info in opened:
            backend.group_send(server, group, {"text": "still here"})
            assert ws.recv(timeout=5) == "still here", backend.name
            assert backend.members(server, group) == [info["name"]], backend.name


# -- HTTP reply channels: server-sent events --------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_named_http_response_streams_what_the_layer_sends(backend, flavour):
    server = backend.server(flavour)
    group = f"sse-{token()}"
    stream = EventStream(server, f"/sse?group={group}")
    try:
        name = stream.first["name"]
        assert NAME.match(name), name
        assert backend.members(server, group) == [name]
        backend.send(server, name, {"content": b"data: one\n\n", "more_content": True})
        stream.wait_for(b"data: one\n\n")
        backend.group_send(server, group, {"content": b"data: to the group\n\n", "more_content": True})
        stream.wait_for(b"data: to the group\n\n")
        backend.send(server, name, {"type": "sse.event", "x": 7})  # an event: the consumer streams it
        stream.wait_for(b"data: event 7\n\n")
        assert b"0\r\n\r\n" not in stream.data, "the response ended early"
        backend.send(server, name, {"content": b"data: the end\n\n"})  # no more_content: the end
        stream.wait_for(b"data: the end\n\n")
        stream.wait_for(b"\r\n0\r\n\r\n")
        order = [stream.data.index(part) for part in (b"data: one", b"data: to the group", b"data: event 7",
                                                      b"data: the end")]
        assert order == sorted(order), stream.data
        # The connection is kept alive and serves the next request.
        stream.data = b""
        stream.sock.sendall(request_bytes("/pid"))
        stream.wait_for(b'"pid"')
        assert stream.data.startswith(b"HTTP/1.1 200 "), stream.data
    finally:
        stream.close()
    # The ended response's name has left its group.
    assert wait_for(lambda: backend.members(server, group) == []), backend.members(server, group)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_named_http_response_hears_of_the_client_leaving(backend, flavour, how, tmp_path):
    """The client closes (or only shuts its sending side): the consumer gets http.disconnect,
    the name stops working, the memberships go; a half-closed client reads the stream's end."""
    server = backend.server(flavour)
    group = f"sse-gone-{token()}"
    report = tmp_path / "disconnect.json"
    log_before = len(server.log())
    stream = EventStream(server, f"/sse?group={group}&report={report}")
    name = stream.first["name"]
    backend.send(server, name, {"content": b"data: before\n\n", "more_content": True})
    stream.wait_for(b"data: before\n\n")
    if how == "close":
        stream.close()
    else:
        stream.sock.shutdown(socket.SHUT_WR)
        stream.wait_for(b"\r\n0\r\n\r\n")
        stream.close()
    data = read_report(report)
    assert data["event"] == "http.disconnect"
    assert data["name"] == name
    assert data["reply_channel_type"] == "ReplyChannel"
    assert data["path"] == "/sse"
    for key in ("reply_channel", "channel_layer", "path", "headers", "method", "query_string"):
        assert key in data["keys"], (key, data["keys"])
    assert data["pid"] == stream.first["pid"]
    # The name no longer works (sends are dropped silently) and its memberships are gone.
    assert wait_for(lambda: backend.members(server, group) == []), backend.members(server, group)
    backend.send(server, name, {"content": b"data: too late\n\n", "more_content": True})
    backend.send(server, name, {"type": "sse.event", "x": 1})
    backend.group_send(server, group, {"content": b"data: nobody\n\n", "more_content": True})
    time.sleep(0.3)
    # A client leaving a stream is no error of the application's.
    assert "ERROR" not in server.log()[log_before:], server.log()[log_before:]


def test_an_exception_in_an_http_event_handler_cuts_the_stream_with_traceback(backend):
    server = backend.server("sync")
    tag = token()
    stream = EventStream(server, f"/sse?group=explode-{tag}")
    try:
        backend.send(server, stream.first["name"], {"type": "test.explode", "tag": tag})
        data, closed = read_until_close(stream.sock)
    finally:
        stream.close()
    assert closed, "the stream stayed open after its consumer raised"
    assert b"0\r\n\r\n" not in stream.data + data, "a failed stream must not look complete"
    assert wait_for(lambda: f"boom in event {tag}" in server.log()), server.log()[-3000:]
    log = server.log()
    assert "Traceback" in log[:log.index(f"boom in event {tag}")], log[-3000:]


def _start_long_poll(server: GunicornServer, path: Path, group: str):
    sock = connect(server.port)
    sock.sendall(request_bytes(f"/longpoll?group={group}&report={path}"))
    return sock, read_report(path)


def test_a_named_request_is_answered_from_another_process(backend, tmp_path):
    """A consumer that only names the request (and joins a group) lets anyone on the layer answer
    it: a whole response in one reply, or the first of a stream."""
    server = backend.server("sync")
    group = f"poll-{token()}"
    sock, info = _start_long_poll(server, tmp_path / "one.json", group)
    with sock:
        assert nothing_within(sock, 0.2) == b""
        backend.send(server, info["name"], {"status": 201, "headers": [[b"x-answered-by", b"layer"]],
                                            "content": b"answered"})
        response, _ = read_response(sock)
    assert (response.status, response.get(b"x-answered-by"), response.body) == (201, b"layer", b"answered")
    assert wait_for(lambda: backend.members(server, group) == []), backend.members(server, group)
    # A group message answers every request waiting in the group.
    polls = [_start_long_poll(server, tmp_path / f"{i}.json", group) for i in range(2)]
    if backend.name == "redis":
        post(backend.server("asgi"), "/broadcast", {"group": group, "text": "not an HTTP reply"})
    backend.group_send(server, group, {"status": 200, "content": b"to all"})
    for sock, _ in polls:
        with sock:
            response, _ = read_response(sock)
            assert (response.status, response.body) == (200, b"to all")
    if backend.name == "redis":  # the ASGI master's {'text'} message was no HTTP reply: dropped, logged
        assert wait_for(lambda: "Dropped a message for" in server.log()), server.log()[-3000:]


def test_a_long_poll_client_leaving_is_not_an_error(backend, tmp_path):
    server = backend.server("sync")
    log_before = len(server.log())
    sock, info = _start_long_poll(server, tmp_path / "poll.json", f"gone-{token()}")
    (tmp_path / "poll.json").unlink()
    sock.close()
    data = read_report(tmp_path / "poll.json")
    assert data["event"] == "http.disconnect" and data["name"] == info["name"]
    time.sleep(0.3)
    assert "ERROR" not in server.log()[log_before:], server.log()[log_before:]


# -- many workers, many masters, one Redis ----------------------------------------------------------------


def test_one_group_across_worker_processes_and_masters(redis_backend):
    backend = redis_backend
    sync, async_, asgi = backend.server("sync"), backend.server("async"), backend.server("asgi")
    group = f"many-{token()}"
    sockets = []
    with ExitStack() as stack:
        pids = set()
        for _ in range(40):  # until we have sockets on three of the four workers (at least two)
            ws, info = open_group_socket(stack, sync, group)
            sockets.append((ws, info))
            pids.add(info["pid"])
            if len(pids) >= 3:
                break
        assert len(pids) >= 2, f"40 sockets all on worker {pids}"
        assert pids <= set(sync.worker_pids()), (pids, sync.worker_pids())
        sockets.append(open_group_socket(stack, async_, group))
        asgi_ws = stack.enter_context(ws_connect(asgi, f"/room?group={group}"))
        asgi_name = recv_json(asgi_ws)["name"]

        def everyone_gets(text: str) -> None:
            for ws, info in sockets:
                assert ws.recv(timeout=5) == text, info
            assert recv_json(asgi_ws) == {"text": text}

        # From this process, from the ASGI master's endpoint, from a consumer's socket on one
        # worker, from the ASGI master's own socket.
        backend.group_send(sync, group, {"text": "from the test process"})
        everyone_gets("from the test process")
        post(asgi, "/broadcast", {"group": group, "text": "from the ASGI master"})
        everyone_gets("from the ASGI master")
        speaker, speaker_info = sockets[0]
        speaker.send("from a consumer")
        everyone_gets(f"{speaker_info['pid']}: from a consumer")
        asgi_ws.send("from an ASGI socket")
        everyone_gets(f"asgi {recv_pid(asgi)}: from an ASGI socket")
        # Each socket's own name, from this process, reaches that socket on its worker.
        for ws, info in sockets:
            backend.send(sync, info["name"], {"text": f"only for {info['name']}"})
            assert ws.recv(timeout=5) == f"only for {info['name']}"
        backend.send(sync, asgi_name, {"type": "direct", "n": 1})
        assert recv_json(asgi_ws) == {"type": "direct", "n": 1}
    assert wait_for(lambda: backend.members(sync, group) == []), backend.members(sync, group)


def recv_pid(server: GunicornServer) -> int:
    return httpx.get(server.url + "/info", timeout=5).json()["pid"]


def test_api_from_inside_an_async_consumer(backend):
    with ws_connect(backend.server("async"), "/ws/info") as ws:
        recv_json(ws)
        ws.send("api")
        result = recv_json(ws)
    assert "error" not in result, result.get("error")
    assert NAME.match(result["name"]), result
    assert result["got"] == {"type": "api.ping", "n": 1}
    assert result["grouped"] == {"type": "api.grouped", "n": 2}
    assert result["late"] is None, "a discarded channel still got the group's message"


def test_asgi_socket_on_the_memory_layer(memory_servers):
    server = memory_servers["asgi"]
    group = f"asgi-{token()}"
    with ws_connect(server, f"/room?group={group}") as first, ws_connect(server, f"/room?group={group}") as second:
        names = [recv_json(first)["name"], recv_json(second)["name"]]
        assert names[0] != names[1] and all(NAME.match(n) for n in names)
        post(server, "/broadcast", {"group": group, "text": "to both"})
        assert recv_json(first) == {"text": "to both"}
        assert recv_json(second) == {"text": "to both"}
        post(server, "/send", {"channel": names[1], "message": {"text": "to the second"}})
        assert recv_json(second) == {"text": "to the second"}
        with pytest.raises(TimeoutError):
            first.recv(timeout=0.3)


def test_flush_drops_groups_and_memberships(memory_servers):
    server = memory_servers["sync"]
    group = f"flush-{token()}"
    with ExitStack() as stack:
        ws, info = open_group_socket(stack, server, group)
        assert server_members(server, group) == [info["name"]]
        assert post(server, "/flush", {})["ok"]
        assert server_members(server, group) == []
        time.sleep(2.5)  # refreshes (each second) must not bring the flushed membership back
        assert server_members(server, group) == []
        post(server, "/group_send", {"group": group, "message": {"text": "after the flush"}})
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
        ws.send("back in")  # the socket itself is fine


def server_members(server: GunicornServer, group: str) -> List[str]:
    return httpx.get(server.url + "/members", params={"group": group}, timeout=5).json()["members"]


# -- bounded ----------------------------------------------------------------------------------------------


def _stalled_socket(server: GunicornServer) -> RawWebSocket:
    """A WebSocket whose client reads its first message and then nothing."""
    ws = RawWebSocket(server.port, "/ws/info")
    frame = ws.recv_frame()
    ws.name = json.loads(frame.data)["name"]
    return ws


def _drain_texts(ws: RawWebSocket, expected: int, size: int) -> List[int]:
    numbers = []
    while len(numbers) < expected:
        frame = ws.recv_frame(timeout=10)
        assert frame.opcode == 1, frame
        assert len(frame.data) == 6 + size, len(frame.data)
        numbers.append(int(frame.data[:6]))
    return numbers


SIZE = 512 * 1024


def test_a_stalled_socket_holds_at_most_capacity_replies_memory(memory_servers):
    server = memory_servers["async"]  # ASGIWORKER_CHANNEL_CAPACITY=5
    ws = _stalled_socket(server)
    try:
        result = post(server, "/flood", {"channel": ws.name, "size": SIZE, "count": 400, "pause": 0.01}, timeout=60)
        assert result["full"] is not None, f"{result['sent']} messages of {SIZE} bytes and no ChannelFull"
        assert "5 messages" in result["full"], result
        # Still full while the client does not read.
        again = post(server, "/flood", {"channel": ws.name, "size": SIZE, "count": 3})
        assert again == {"sent": 0, "full": result["full"]}
        # What was accepted is all delivered, in order, once the client reads.
        assert _drain_texts(ws, result["sent"], SIZE) == list(range(result["sent"]))
    finally:
        ws.close()


def _flood_from_this_process(redis_url: str, name: str, count: int) -> "tuple[int, Optional[ChannelFull]]":
    sender = RemoteLayer(LayerSpec("redis", (redis_url,), prefix=PREFIX, capacity=5))
    try:
        for i in range(count):
            try:
                sender.call(sender.layer.send(name, {"text": f"{i:06d}" + "x" * SIZE}))
            except ChannelFull as exc:
                return i, exc
            time.sleep(0.01)
        return count, None
    finally:
        sender.close()


def test_a_stalled_socket_holds_at_most_capacity_replies_redis(redis_backend, redis_url):
    """From another process on Redis: what the socket cannot take is dropped, not queued without
    end; the socket gets the first messages, in order, and nothing from past its capacity."""
    server = redis_backend.server("async")  # ASGIWORKER_CHANNEL_CAPACITY=5
    ws = _stalled_socket(server)
    try:
        sent, _ = _flood_from_this_process(redis_url, ws.name, 80)
        numbers = []
        try:
            while True:
                frame = ws.recv_frame(timeout=2)
                numbers.append(int(frame.data[:6]))
        except TimeoutError:
            pass
        assert numbers == list(range(len(numbers))), numbers
        assert 5 <= len(numbers) < 60, f"{len(numbers)} of {sent} messages of {SIZE} bytes reached a stalled socket"
    finally:
        ws.close()


def test_a_stalled_socket_drops_and_logs_what_another_process_sends_redis(redis_backend, redis_url):
    """The documented limit: across processes ChannelFull means the worker's key is full (its
    reader stopped); a message for one full socket is dropped by the worker, which says so."""
    server = redis_backend.server("async")  # ASGIWORKER_CHANNEL_CAPACITY=5
    ws = _stalled_socket(server)
    try:
        log_before = len(server.log())
        _flood_from_this_process(redis_url, ws.name, 60)
        assert wait_for(lambda: "Channel layer: dropped a message for " + ws.name in server.log()[log_before:]), \
            server.log()[log_before:][-3000:]
    finally:
        ws.close()
