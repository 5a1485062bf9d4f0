"""Django Channels under our worker and under uvicorn-worker, through a real Gunicorn each.

The app is the ProtocolTypeRouter in apps/django_project/channels_asgi.py: WebSocket through
AuthMiddlewareStack to the consumers of consumers.py, HTTP to a Channels HTTP consumer and to the
Django views of test_django.py. The channel layer is Channels' in-memory one; Gunicorn runs a
single worker, so every client of a server meets the same layer.

One Pair for the module; each check runs against the reference first (a failure there means the
test is wrong), then against ours.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import GunicornServer
from tests.frameworks.apps.django_project import consumers
from tests.frameworks.conftest import Pair
from tests.test_websocket import ws_connect

APP = "tests.frameworks.apps.django_project.channels_asgi:application"
SETTINGS = "tests.frameworks.apps.django_project.settings"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with Pair(APP, env={"DJANGO_SETTINGS_MODULE": SETTINGS}) as p:
        yield p


def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def welcome(ws, room: str) -> dict:
    """Read the consumer's first message: it is sent once the consumer has joined its group."""
    msg = recv_json(ws)
    assert msg["type"] == "welcome" and msg["room"] == room, msg
    return msg


# -- WebSocket --------------------------------------------------------------------------------


def test_group_broadcast_reaches_both_clients(pair):
    """A message from A goes through the channel layer's group to A and B, not to C (another
    room); then B's message reaches both too; after A leaves, B still chats alone."""
    def check(server: GunicornServer):
        room, other = f"r{uuid.uuid4().hex[:8]}", f"o{uuid.uuid4().hex[:8]}"
        with ws_connect(server, f"/ws/chat/{room}/") as a, ws_connect(server, f"/ws/chat/{room}/") as b, \
                ws_connect(server, f"/ws/chat/{other}/") as c:
            for ws, name in ((a, room), (b, room), (c, other)):
                welcome(ws, name)

            a.send("hello from A")
            assert recv_json(a) == {"type": "message", "text": "hello from A", "mine": True}
            assert recv_json(b) == {"type": "message", "text": "hello from A", "mine": False}

            b.send("and from B")
            assert recv_json(a) == {"type": "message", "text": "and from B", "mine": False}
            assert recv_json(b) == {"type": "message", "text": "and from B", "mine": True}

            with pytest.raises(TimeoutError):
                c.recv(timeout=0.3)  # the other room heard nothing

            a.close()
            b.send("alone now")
            assert recv_json(b) == {"type": "message", "text": "alone now", "mine": True}
    pair.check(check)


def test_auth_middleware_stack_and_http_session(pair):
    """AuthMiddlewareStack fills scope["user"] (anonymous) and scope["session"]; the session is the
    one the Django side set over HTTP, read from the cookie at the WebSocket handshake."""
    def check(server: GunicornServer):
        room = f"s{uuid.uuid4().hex[:8]}"
        with ws_connect(server, f"/ws/chat/{room}/") as ws:
            assert welcome(ws, room) == {"type": "welcome", "room": room, "anonymous": True, "count": None}
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert [c.get("/counter/").json()["count"] for _ in range(2)] == [1, 2]
            cookie = f"sessionid={c.cookies['sessionid']}"
        with ws_connect(server, f"/ws/chat/{room}/", additional_headers={"Cookie": cookie}) as ws:
            assert welcome(ws, room) == {"type": "welcome", "room": room, "anonymous": True, "count": 2}
    pair.check(check)


def test_sync_consumer_echo(pair):
    """A sync WebsocketConsumer: handlers run in a thread (asgiref), text and binary frames."""
    def check(server: GunicornServer):
        with ws_connect(server, "/ws/echo/") as ws:
            for word in ("one", "twö", "x" * 70_000):
                ws.send(word)
                assert recv_json(ws) == {"upper": word.upper(), "main_thread": False}
            ws.send(b"\x00\x01\x02bytes")
            assert ws.recv(timeout=5) == b"setyb\x02\x01\x00"
    pair.check(check)


def test_consumer_refuses_handshake(pair):
    """A consumer that closes before accepting: the handshake is answered 403."""
    def check(server: GunicornServer):
        with pytest.raises(InvalidStatus) as info:
            with ws_connect(server, "/ws/refuse/"):
                pass
        assert info.value.response.status_code == 403
    pair.check(check)


def test_consumer_closes_with_code(pair):
    """The consumer closes the connection with an application code; the client sees that code."""
    def check(server: GunicornServer):
        room = f"c{uuid.uuid4().hex[:8]}"
        with ws_connect(server, f"/ws/chat/{room}/") as ws:
            welcome(ws, room)
            ws.send("bye")
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4000
    pair.check(check)


# -- HTTP through the same router ---------------------------------------------------------------


def test_http_django_views_through_router(pair):
    """The router's HTTP side still serves Django: sync and async views, middleware, sessions."""
    def check(server: GunicornServer):
        with httpx.Client(base_url=server.url, timeout=10) as c:
            r = c.get("/sync/", params={"q": "a"})
            assert r.status_code == 200
            assert r.json() == {"kind": "sync", "main_thread": False, "q": "a"}
            assert r.headers["x-async-middleware"] == "async"
            r = c.get("/async/", params={"q": "b"})
            assert r.json() == {"kind": "async", "main_thread": True, "in_task": True, "q": "b"}
            assert [c.get("/counter/").json()["count"] for _ in range(3)] == [1, 2, 3]
            r = c.post("/echo/", json={"k": [1, 2]})
            assert r.status_code == 200 and r.json()["echo"] == {"k": [1, 2]}
            assert c.get("/no/such/page/").status_code == 404
    pair.check(check)


def test_http_consumer_streams(pair):
    """A Channels AsyncHttpConsumer sending its body in several messages: chunked, in order, and
    each event on the wire as it is sent."""
    expected = b"".join(f"data: event-{i}\n\n".encode() for i in range(consumers.EventsConsumer.EVENTS))
    spread = (consumers.EventsConsumer.EVENTS - 1) * consumers.EventsConsumer.GAP

    def check(server: GunicornServer):
        with httpx.Client(base_url=server.url, timeout=10) as c, c.stream("GET", "/events/") as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            assert r.headers.get("transfer-encoding") == "chunked"
            chunks = [(time.monotonic(), chunk) for chunk in r.iter_raw() if chunk]
        assert b"".join(chunk for _, chunk in chunks) == expected
        assert chunks[-1][0] - chunks[0][0] >= spread * 0.6, chunks
    pair.check(check)


def test_no_extra_tracebacks(pair):
    """Last: nothing in the module made our worker log a traceback the reference did not."""
    pair.assert_no_extra_tracebacks()
