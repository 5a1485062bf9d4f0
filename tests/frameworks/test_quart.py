"""Quart under our worker and under uvicorn-worker: sync views in the executor, async views,
streamed bodies, request JSON, WebSockets, and the serving hooks at start and stop."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from typing import Any, List

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.frameworks.apps.quart_app import SHUTDOWN_MARKER
from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.quart_app:app"


@pytest.fixture(scope="module")
def pair():
    with Pair(APP) as p:
        yield p


def test_before_serving_ran_before_the_first_request(pair):
    def check(server):
        r = httpx.get(server.url + "/lifespan")
        assert r.status_code == 200, r.text
        assert r.json() == {"started": True}
    pair.check(check)


def test_sync_view_runs_in_the_executor(pair):
    """A plain ``def`` view ran off the loop thread, with the request context carried over."""
    def check(server):
        r = httpx.get(server.url + "/sync", params={"arg": "x y"})
        assert r.status_code == 200, r.text
        assert r.json() == {"report": {"loop_thread_known": True, "off_loop": True, "in_task": None}, "arg": "x y"}
    pair.check(check)


def test_sync_views_side_by_side(pair):
    def check(server):
        with httpx.Client(base_url=server.url, timeout=10) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda i: client.get("/sync", params={"arg": str(i)}), range(16)))
        assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses if r.status_code != 200]
        assert [r.json()["arg"] for r in responses] == [str(i) for i in range(16)]
        assert all(r.json()["report"]["off_loop"] for r in responses)
    pair.check(check)


def test_async_view_runs_on_the_loop_inside_a_task(pair):
    def check(server):
        r = httpx.get(server.url + "/async")
        assert r.status_code == 200, r.text
        on_loop_in_task = {"loop_thread_known": True, "off_loop": False, "in_task": True}
        assert r.json() == {"at_entry": on_loop_in_task, "after_await": on_loop_in_task}
    pair.check(check)


def test_async_generator_body_is_streamed(pair):
    """Chunked, in order, the first chunk before the generator's 0.6 s pause ends, and the
    request still readable inside the generator (``stream_with_context``)."""
    def check(server):
        arrivals: List[Any] = []
        with httpx.stream("GET", server.url + "/stream", params={"tag": "t"}, timeout=10) as r:
            assert r.status_code == 200
            assert "content-length" not in r.headers
            assert r.headers.get("transfer-encoding") == "chunked"
            for chunk in r.iter_raw():
                arrivals.append((time.monotonic(), chunk))
        assert b"".join(c for _, c in arrivals) == b"first\nt-0\nt-1\nt-2\n"
        assert arrivals[0][1].startswith(b"first\n")
        assert arrivals[-1][0] - arrivals[0][0] > 0.4, "the stream was buffered, not streamed"
    pair.check(check)


def test_sync_generator_body_is_stepped_in_the_executor(pair):
    def check(server):
        r = httpx.get(server.url + "/stream/sync")
        assert r.status_code == 200, r.text
        assert r.text == "".join(f"sync-{i} off_loop=True\n" for i in range(4))
    pair.check(check)


def test_request_json_echoed(pair):
    payload = {"a": [1, 2, {"b": None}], "s": "\u00fcnic\u00f8de", "big": "z" * 200000}

    def check(server):
        r = httpx.post(server.url + "/echo", json=payload, timeout=10)
        assert r.status_code == 200, r.text[:300]
        assert r.json() == {"received": payload, "content_type": "application/json"}
    pair.check(check)


def test_malformed_json_is_400(pair):
    def check(server):
        r = httpx.post(server.url + "/echo", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
    pair.check(check)


def test_unknown_route_and_wrong_method(pair):
    def check(server):
        assert httpx.get(server.url + "/nope").status_code == 404
        r = httpx.get(server.url + "/echo")
        assert r.status_code == 405
        assert "POST" in r.headers["allow"]
    pair.check(check)


def test_websocket_echo(pair):
    def check(server):
        with connect(server.ws_url("/ws"), open_timeout=5) as ws:
            for text in ["hi", "\u263a smile", "y" * 70000]:
                ws.send(text)
                assert ws.recv(timeout=5) == text.upper()
            ws.send(b"\x01\x02\x03")
            assert ws.recv(timeout=5) == b"\x03\x02\x01"
    pair.check(check)


def test_websocket_route_that_returns_closes_normally(pair):
    """Path parameter and query string reach the handler; its return closes the socket with 1000."""
    def check(server):
        with connect(server.ws_url("/ws/path/ada?q=lovelace"), open_timeout=5) as ws:
            assert ws.recv(timeout=5) == "hello ada lovelace"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000, closed.value
    pair.check(check)


def test_no_extra_tracebacks(pair):
    """Last of the module's Pair tests: nothing above made our worker log an extra traceback."""
    pair.assert_no_extra_tracebacks()


def test_clean_stop_runs_after_serving_without_errors():
    """SIGTERM: after_serving runs, the lifespan shutdown completes, nothing failed or cancelled."""
    with Pair(APP) as p:
        def check(server):
            assert httpx.get(server.url + "/lifespan").json() == {"started": True}
            server.signal(signal.SIGTERM)
            assert server.wait_exit(15) == 0
            log = server.log()
            assert SHUTDOWN_MARKER in log, log[-3000:]
            assert "shutdown failed" not in log.lower(), log[-3000:]
            assert "CancelledError" not in log, log[-3000:]
            assert "Traceback (most recent call last)" not in log, log[-3000:]
        p.check(check)
