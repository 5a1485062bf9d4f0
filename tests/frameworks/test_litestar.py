"""Litestar under our worker and under uvicorn-worker: threads, streams, background tasks, lifespan.

Litestar runs sync handlers, sync stream iterators and sync background tasks through anyio's
worker threads, and anyio needs the app to be running inside an asyncio Task; its lifespan
shutdown must complete without a CancelledError. Each of those is checked here on both servers.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
import uuid
from typing import Any, Dict, List

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import wait_for
from tests.frameworks.apps.litestar_app import BACKGROUND_DELAY, SHUTDOWN_MARKER
from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.litestar_app:app"


@pytest.fixture(scope="module")
def pair():
    with Pair(APP) as p:
        yield p


# -- lifespan and threads -------------------------------------------------------------------------

def test_startup_hook_ran_before_serving(pair):
    """on_startup ran (inside the lifespan Task) before the first request was answered."""
    def check(server):
        r = httpx.get(server.url + "/lifespan")
        assert r.status_code == 200, r.text
        assert r.json() == {"started": True, "startup_in_task": True}
    pair.check(check)


def test_sync_handler_runs_in_a_worker_thread(pair):
    """``sync_to_thread=True``: the handler ran, off the loop thread (anyio.to_thread)."""
    def check(server):
        r = httpx.get(server.url + "/sync")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["loop_thread_known"] is True, body
        assert body["off_loop"] is True, body
        assert body["in_task"] is None, body  # a worker thread has no running loop
    pair.check(check)


def test_sync_handlers_overlap_in_threads(pair):
    """Several sync handlers at once all succeed: the thread pool serves them side by side."""
    def check(server):
        with httpx.Client(base_url=server.url, timeout=10) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: client.get("/sync"), range(16)))
        assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses if r.status_code != 200]
        assert all(r.json()["off_loop"] for r in responses)
    pair.check(check)


def test_sync_handler_told_not_to_use_a_thread_runs_on_the_loop(pair):
    """The counterpart: ``sync_to_thread=False`` runs inline, so the thread check can tell apart."""
    def check(server):
        r = httpx.get(server.url + "/sync-on-loop")
        assert r.status_code == 200, r.text
        assert r.json()["off_loop"] is False, r.json()
    pair.check(check)


def test_async_handler_runs_on_the_loop_inside_a_task(pair):
    def check(server):
        r = httpx.get(server.url + "/async")
        assert r.status_code == 200, r.text
        on_loop_in_task = {"loop_thread_known": True, "off_loop": False, "in_task": True}
        assert r.json() == {"at_entry": on_loop_in_task, "after_await": on_loop_in_task}
    pair.check(check)


# -- request bodies -------------------------------------------------------------------------------

def test_json_body_into_a_dataclass(pair):
    item = {"name": "widget \u2603", "qty": 3, "tags": ["a", "b", "c"]}

    def check(server):
        r = httpx.post(server.url + "/items", json=item)
        assert r.status_code == 201, r.text  # Litestar's default for POST
        assert r.json() == {"item": item, "total_tags": 3}
        assert r.headers["content-type"].startswith("application/json")
    pair.check(check)


def test_large_json_dict_body_echoed(pair):
    """A body far bigger than one read (about 600 KB) arrives whole."""
    data = {f"key{i:05d}": "v" * 50 for i in range(10000)}

    def check(server):
        r = httpx.post(server.url + "/echo-dict", json=data, timeout=10)
        assert r.status_code == 201, r.text[:300]
        body = r.json()
        assert body["received"] == data
        assert body["keys"] == sorted(data)
    pair.check(check)


def test_invalid_json_bodies_are_400(pair):
    def check(server):
        missing = httpx.post(server.url + "/items", json={"name": "no qty"})
        assert missing.status_code == 400, missing.text
        assert "qty" in missing.text
        broken = httpx.post(server.url + "/items", content=b'{"name": ', headers={"content-type": "application/json"})
        assert broken.status_code == 400, broken.text
    pair.check(check)


def test_unknown_route_is_404(pair):
    def check(server):
        r = httpx.get(server.url + "/no/such/route")
        assert r.status_code == 404, r.text
        assert r.json()["status_code"] == 404
    pair.check(check)


# -- streams --------------------------------------------------------------------------------------

def test_stream_from_a_sync_generator(pair):
    """A sync generator behind ``Stream``: every chunk made in a worker thread, sent chunked."""
    def check(server):
        r = httpx.get(server.url + "/stream/sync")
        assert r.status_code == 200, r.text
        assert "content-length" not in r.headers
        assert r.headers.get("transfer-encoding") == "chunked"
        assert r.text == "".join(f"sync-{i} off_loop=True\n" for i in range(5))
    pair.check(check)


def test_stream_from_an_async_generator_is_sent_as_produced(pair):
    """The first chunk reaches the client before the generator's 0.6 s pause ends."""
    def check(server):
        arrivals: List[Any] = []
        with httpx.stream("GET", server.url + "/stream/async", timeout=10) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                arrivals.append((time.monotonic(), chunk))
        body = b"".join(chunk for _, chunk in arrivals)
        assert body == b"first\nasync-0\nasync-1\nasync-2\n"
        assert arrivals[0][1].startswith(b"first\n")
        assert arrivals[-1][0] - arrivals[0][0] > 0.4, "the stream was buffered, not streamed"
    pair.check(check)


# -- background tasks -----------------------------------------------------------------------------

def _background_check(kind: str, expect_off_loop: bool):
    def check(server):
        token = uuid.uuid4().hex
        started = time.monotonic()
        r = httpx.get(server.url + f"/background/{kind}", params={"token": token}, timeout=10)
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.json() == {"queued": token, "seen_at_response_time": False}
        # The response is complete before the task (which sleeps BACKGROUND_DELAY) is done.
        assert elapsed < BACKGROUND_DELAY * 0.8, f"the response waited for the background task ({elapsed:.2f}s)"

        def seen() -> Dict[str, Any]:
            entries = httpx.get(server.url + "/background-seen").json()
            return next((e for e in entries if e["token"] == token), {})
        entry = wait_for(seen, timeout=5)
        assert entry, f"the {kind} background task never ran"
        assert entry["off_loop"] is expect_off_loop, entry
    return check


def test_async_background_task_runs_after_the_response(pair):
    pair.check(_background_check("async", expect_off_loop=False))


def test_sync_background_task_runs_in_a_thread_after_the_response(pair):
    pair.check(_background_check("sync", expect_off_loop=True))


# -- websockets -----------------------------------------------------------------------------------

def test_websocket_listener_echo(pair):
    def check(server):
        with connect(server.ws_url("/ws/listener"), open_timeout=5) as ws:
            for text in ["hello", "", "\u00e9t\u00e9", "x" * 70000]:
                ws.send(text)
                assert ws.recv(timeout=5) == f"echo:{text}"
    pair.check(check)


def test_websocket_handler_text_bytes_and_close_code(pair):
    def check(server):
        with connect(server.ws_url("/ws/raw"), open_timeout=5) as ws:
            ws.send("shout")
            assert ws.recv(timeout=5) == "SHOUT"
            ws.send(b"\x00\x01\x02abc")
            assert ws.recv(timeout=5) == b"cba\x02\x01\x00"
            ws.send("bye")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye to you")
    pair.check(check)


# -- logs -----------------------------------------------------------------------------------------

def test_no_extra_tracebacks(pair):
    """Last in the module: nothing above made our worker log a traceback the reference did not."""
    pair.assert_no_extra_tracebacks()


def test_clean_stop_runs_on_shutdown_without_errors():
    """SIGTERM: the on_shutdown hook runs, the lifespan shutdown completes, nothing is logged as
    failed or cancelled. A Pair of its own, so the module's servers stay up for the tests above."""
    with Pair(APP) as p:
        def check(server):
            assert httpx.get(server.url + "/lifespan").json()["started"] is True
            server.signal(signal.SIGTERM)
            assert server.wait_exit(15) == 0
            log = server.log()
            assert SHUTDOWN_MARKER in log, log[-3000:]
            assert "lifespan shutdown failed" not in log.lower(), log[-3000:]
            assert "shutdown failed" not in log.lower(), log[-3000:]
            assert "CancelledError" not in log, log[-3000:]
            assert "Traceback (most recent call last)" not in log, log[-3000:]
        p.check(check)
