"""Falcon's ASGI app under our worker and under uvicorn-worker: JSON resources, a custom media
handler, 404s, a streamed body, WebSocket routes (accepted and refused), the lifespan middleware."""

from __future__ import annotations

import time
import uuid
from typing import Any, List

import httpx
import pytest
from websockets.exceptions import InvalidHandshake
from websockets.sync.client import connect

from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.falcon_app:app"
KV_TYPE = "application/x-kv"


@pytest.fixture(scope="module")
def pair():
    with Pair(APP) as p:
        yield p


def test_lifespan_middleware_and_responder_in_a_task(pair):
    """process_startup ran; the responder runs on the loop thread inside an asyncio Task."""
    def check(server):
        r = httpx.get(server.url + "/where")
        assert r.status_code == 200, r.text
        assert r.json() == {"started": True, "on_loop": True, "in_task": True}
    pair.check(check)


def test_json_resource_post_then_get(pair):
    def check(server):
        name = f"thing-{uuid.uuid4().hex[:8]}"
        created = httpx.post(server.url + "/items", json={"name": name, "extra": {"n": [1, 2]}})
        assert created.status_code == 201, created.text
        item = created.json()
        assert item["name"] == name and item["extra"] == {"n": [1, 2]}
        location = created.headers["location"]
        assert location.endswith(f"/items/{item['id']}")
        fetched = httpx.get(server.url + f"/items/{item['id']}")
        assert fetched.status_code == 200 and fetched.json() == item
        assert fetched.headers["content-type"].startswith("application/json")
        listing = httpx.get(server.url + "/items").json()["items"]
        assert item in listing
    pair.check(check)


def test_json_resource_rejects_bad_bodies(pair):
    def check(server):
        wrong = httpx.post(server.url + "/items", json={"name": 42})
        assert wrong.status_code == 400, wrong.text
        assert wrong.json()["title"] == "Invalid item"
        broken = httpx.post(server.url + "/items", content=b"{oops", headers={"content-type": "application/json"})
        assert broken.status_code == 400, broken.text
    pair.check(check)


def test_custom_media_handler_both_ways(pair):
    """A media type Falcon does not know, parsed from the body and rendered into the response."""
    def check(server):
        r = httpx.post(server.url + "/kv", content=b"b=2\na=1=one\n\n", headers={"content-type": KV_TYPE})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == KV_TYPE
        assert r.content == b"a=1=one\nb=2\ncount=2\n"
        malformed = httpx.post(server.url + "/kv", content=b"no equals sign", headers={"content-type": KV_TYPE})
        assert malformed.status_code == 400, malformed.text
    pair.check(check)


def test_404s(pair):
    """Falcon's own 404 for an unrouted path, and a resource's HTTPNotFound with its description."""
    def check(server):
        unrouted = httpx.get(server.url + "/no/such/thing")
        assert unrouted.status_code == 404
        assert unrouted.json() == {"title": "404 Not Found"}
        missing = httpx.get(server.url + "/items/999999")
        assert missing.status_code == 404
        assert missing.json() == {"title": "404 Not Found", "description": "no item 999999"}
        not_an_int = httpx.get(server.url + "/items/abc")
        assert not_an_int.status_code == 404
    pair.check(check)


def test_wrong_method_is_405(pair):
    def check(server):
        r = httpx.delete(server.url + "/items")
        assert r.status_code == 405
        assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    pair.check(check)


def test_async_generator_stream(pair):
    def check(server):
        arrivals: List[Any] = []
        with httpx.stream("GET", server.url + "/stream", timeout=10) as r:
            assert r.status_code == 200
            assert "content-length" not in r.headers
            for chunk in r.iter_raw():
                arrivals.append((time.monotonic(), chunk))
        assert b"".join(c for _, c in arrivals) == b"first\nfalcon-0\nfalcon-1\nfalcon-2\n"
        assert arrivals[-1][0] - arrivals[0][0] > 0.4, "the stream was buffered, not streamed"
    pair.check(check)


def test_websocket_echo_text(pair):
    def check(server):
        with connect(server.ws_url("/ws"), open_timeout=5) as ws:
            for text in ["abc", "\u00e9\u00e8", "q" * 70000]:
                ws.send(text)
                assert ws.recv(timeout=5) == text[::-1]
    pair.check(check)


def test_websocket_echo_binary(pair):
    def check(server):
        with connect(server.ws_url("/ws?mode=binary"), open_timeout=5) as ws:
            ws.send(b"\x00\xff")
            assert ws.recv(timeout=5) == b"\x00\xff\x00\xff"
    pair.check(check)


def test_websocket_refused_before_accept_is_403(pair):
    """A responder that never accepts: the handshake is answered with HTTP 403, not upgraded."""
    def check(server):
        with pytest.raises(InvalidHandshake) as refused, connect(server.ws_url("/ws/refuse"), open_timeout=5):
            pass
        exc = refused.value
        # websockets >= 14: InvalidStatus(.response.status_code); older: InvalidStatusCode(.status_code)
        status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status_code", None)
        assert status == 403, repr(exc)
    pair.check(check)


def test_no_extra_tracebacks(pair):
    """Last in the module: nothing above made our worker log a traceback the reference did not."""
    pair.assert_no_extra_tracebacks()
