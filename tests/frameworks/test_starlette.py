"""Starlette through a real gunicorn, under our worker and under uvicorn-worker (the reference).

Starlette's primitives as people use them directly: sync and async routes, BackgroundTask,
StreamingResponse over sync and async iterators, FileResponse with ranges, StaticFiles with
conditional requests, pure ASGI middleware and BaseHTTPMiddleware, HTTPException, WebSocket,
lifespan state and server-sent events.
"""

from __future__ import annotations

import email.utils
import json
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import GunicornServer, wait_for
from tests.frameworks.apps.starlette_app import GREETING, NUMBERS, STATIC
from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.starlette_app:app"
TIMEOUT = 5.0
STYLE = (STATIC / "style.css").read_bytes()


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with Pair(APP) as p:
        yield p


def get(server: GunicornServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(server.url + path, timeout=TIMEOUT, **kwargs)


def get_json(server: GunicornServer, path: str, **kwargs: Any) -> Any:
    response = get(server, path, **kwargs)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


# -- routes, pure ASGI middleware, lifespan ---------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    ("/sync", {"endpoint": "sync", "in_worker_thread": True}),
    ("/async", {"endpoint": "async", "in_worker_thread": False}),
])
def test_routes_through_pure_asgi_middleware(pair: Pair, path: str, body: Dict[str, Any]) -> None:
    """A sync route runs in a worker thread, an async one on the loop; the app-wide pure ASGI
    middleware stamps both."""
    def check(server: GunicornServer) -> None:
        response = get(server, path)
        assert response.status_code == 200, response.text
        assert response.json() == body
        assert response.headers["x-asgi-middleware"] == "1"
    pair.check(check)


def test_lifespan_state_reaches_requests(pair: Pair) -> None:
    """The dict the lifespan yields is on request.state, set up in the worker that serves."""
    def check(server: GunicornServer) -> None:
        state = get_json(server, "/lifespan")
        assert state["greeting"] == GREETING
        assert state["lifespan_pid"] == state["pid"]
    pair.check(check)


# -- background tasks -------------------------------------------------------------------------------

def _wait_done(client: httpx.Client, token: str, count: int) -> List[Dict[str, Any]]:
    def done() -> List[Dict[str, Any]]:
        records = [record for record in client.get("/bg/done").json() if record["token"] == token]
        return records if len(records) >= count else []
    return wait_for(done, timeout=TIMEOUT)


@pytest.mark.parametrize("path", ["/bg", "/mw/bg"])
def test_background_tasks_sync_and_async(pair: Pair, path: str) -> None:
    """Both tasks of a response's BackgroundTasks run, in order, once: the sync one in a worker
    thread, the async one on the loop; also behind BaseHTTPMiddleware (``/mw``)."""
    def check(server: GunicornServer) -> None:
        token = uuid.uuid4().hex
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            response = client.get(path, params={"token": token})
            assert response.status_code == 200, response.text
            assert response.json() == {"scheduled": token}
            records = _wait_done(client, token, 2)
        assert records == [{"token": token, "task": "sync", "in_worker_thread": True},
                           {"token": token, "task": "async", "in_worker_thread": False}]
    pair.check(check)


def test_background_task_from_a_sync_route(pair: Pair) -> None:
    """A single BackgroundTask on a sync route's response: the route and the task each in a thread."""
    def check(server: GunicornServer) -> None:
        token = uuid.uuid4().hex
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            response = client.get("/bg-sync", params={"token": token})
            assert response.status_code == 200, response.text
            records = _wait_done(client, token, 1)
        assert records == [{"token": token, "task": "sync", "in_worker_thread": True}]
    pair.check(check)


# -- streaming and files ----------------------------------------------------------------------------

def _stream(server: GunicornServer, path: str) -> Tuple[httpx.Response, bytes]:
    """The response and its body, read chunk by chunk as it arrives."""
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("GET", server.url + path) as response:
        body = b"".join(response.iter_bytes())
    return response, body


@pytest.mark.parametrize("path, expected", [
    ("/stream/sync?n=6", "".join(f"sync chunk {i} in_worker_thread=True\n" for i in range(6))),
    ("/stream/async?n=6", "".join(f"async chunk {i}\n" for i in range(6))),
    ("/mw/stream", "".join(f"async chunk {i}\n" for i in range(3))),
])
def test_streaming_response(pair: Pair, path: str, expected: str) -> None:
    """Over a sync iterator (iterated in a worker thread), an async one, and an async one behind
    BaseHTTPMiddleware: every chunk arrives, chunked (no length known in advance)."""
    def check(server: GunicornServer) -> None:
        response, body = _stream(server, path)
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        assert body.decode() == expected
    pair.check(check)


def test_file_response_with_ranges(pair: Pair) -> None:
    """Whole file, one range, a suffix range and one past the end (416). (No multipart/byteranges:
    Starlette 0.49 gets its content-length wrong, under any server.)"""
    data = NUMBERS.read_bytes()
    size = len(data)

    def check(server: GunicornServer) -> None:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            whole = client.get("/file")
            assert whole.status_code == 200
            assert whole.headers["accept-ranges"] == "bytes"
            assert whole.headers["content-length"] == str(size)
            assert whole.content == data

            part = client.get("/file", headers={"range": "bytes=1000-1099"})
            assert part.status_code == 206
            assert part.headers["content-range"] == f"bytes 1000-1099/{size}"
            assert part.content == data[1000:1100]

            tail = client.get("/file", headers={"range": "bytes=-7"})
            assert tail.status_code == 206
            assert tail.headers["content-range"] == f"bytes {size - 7}-{size - 1}/{size}"
            assert tail.content == data[-7:]

            beyond = client.get("/file", headers={"range": f"bytes={size}-"})
            assert beyond.status_code == 416
            # (older Starlette, 0.49 for one, leaves the unit out: "*/size", so only the end is checked.)
            assert beyond.headers["content-range"].endswith(f"*/{size}")
    pair.check(check)


# -- StaticFiles ------------------------------------------------------------------------------------

def test_static_file_served(pair: Pair) -> None:
    """StaticFiles serves the file as on disk, with its validators; HEAD gives the headers alone."""
    def check(server: GunicornServer) -> None:
        response = get(server, "/static/style.css")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/css")
        assert response.headers["content-length"] == str(len(STYLE))
        assert response.content == STYLE
        assert response.headers["etag"]
        assert email.utils.parsedate(response.headers["last-modified"]) is not None

        head = httpx.head(server.url + "/static/style.css", timeout=TIMEOUT)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(STYLE))
        assert head.content == b""
    pair.check(check)


def test_static_missing_file_is_404(pair: Pair) -> None:
    """A missing file is StaticFiles' own 404 (its lookup runs in a thread), not a 500."""
    def check(server: GunicornServer) -> None:
        response = get(server, "/static/no-such-file.css")
        assert response.status_code == 404
        assert response.text == "Not Found"
    pair.check(check)


def test_static_conditional_requests(pair: Pair) -> None:
    """If-None-Match with the ETag and If-Modified-Since with Last-Modified each give 304 with no
    body; a stale ETag gives the file again."""
    def check(server: GunicornServer) -> None:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            first = client.get("/static/style.css")
            assert first.status_code == 200
            etag, last_modified = first.headers["etag"], first.headers["last-modified"]

            by_etag = client.get("/static/style.css", headers={"if-none-match": etag})
            assert by_etag.status_code == 304
            assert by_etag.content == b""
            assert by_etag.headers["etag"] == etag

            by_date = client.get("/static/style.css", headers={"if-modified-since": last_modified})
            assert by_date.status_code == 304
            assert by_date.content == b""

            stale = client.get("/static/style.css", headers={"if-none-match": '"not-the-etag"'})
            assert stale.status_code == 200
            assert stale.content == STYLE
    pair.check(check)


# -- BaseHTTPMiddleware and errors ------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    ("/mw/hello", {"hello": "world"}),
    ("/mw/sync", {"endpoint": "sync", "in_worker_thread": True}),
])
def test_base_http_middleware(pair: Pair, path: str, body: Dict[str, Any]) -> None:
    """BaseHTTPMiddleware sees the request and stamps the response, around both kinds of route
    (and the app-wide pure ASGI middleware still stamps it too)."""
    def check(server: GunicornServer) -> None:
        trace = uuid.uuid4().hex
        response = get(server, path, headers={"x-trace": trace})
        assert response.status_code == 200, response.text
        assert response.json() == body
        assert response.headers["x-base-middleware"] == "stamped"
        assert response.headers["x-trace-echo"] == trace
        assert response.headers["x-asgi-middleware"] == "1"
    pair.check(check)


@pytest.mark.parametrize("path, status, detail, behind_base", [
    ("/missing", 404, "no such page", False),
    ("/mw/missing", 404, "not behind here either", True),
    ("/mw/forbidden", 403, "not you", True),
])
def test_http_exception(pair: Pair, path: str, status: int, detail: str, behind_base: bool) -> None:
    """An HTTPException gives its own status and detail (not a 500), also behind BaseHTTPMiddleware."""
    def check(server: GunicornServer) -> None:
        response = get(server, path)
        assert response.status_code == status, response.text
        assert response.text == detail
        assert response.headers["x-asgi-middleware"] == "1"
        if behind_base:
            assert response.headers["x-base-middleware"] == "stamped"
        else:
            assert response.headers["x-why"] == "missing"
    pair.check(check)


def test_custom_exception_handler(pair: Pair) -> None:
    """An app exception reaches the app's own handler (418, its body), not the server's 500."""
    def check(server: GunicornServer) -> None:
        response = get(server, "/teapot", params={"what": "oolong"})
        assert response.status_code == 418, response.text
        assert response.json() == {"error": "teapot", "what": "oolong"}
    pair.check(check)


# -- server-sent events -----------------------------------------------------------------------------

def _read_event(lines: Iterator[str]) -> Dict[str, str]:
    """The next event's fields, from the lines up to its blank line."""
    event: Dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                return event
            continue
        field, _, value = line.partition(":")
        event[field] = value[1:] if value.startswith(" ") else value
    raise AssertionError(f"the stream ended in the middle of an event: {event}")


def test_server_sent_events_arrive_one_by_one(pair: Pair) -> None:
    """Each event is read while the response is still open: the app produces the next one only
    after the test acknowledges this one on another connection."""
    def check(server: GunicornServer) -> None:
        stream = uuid.uuid4().hex
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client, \
                httpx.Client(base_url=server.url, timeout=TIMEOUT) as acks:
            with client.stream("GET", "/sse", params={"stream": stream, "n": 3}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["cache-control"] == "no-cache"
                lines = response.iter_lines()
                for i in range(3):
                    assert _read_event(lines) == {"id": str(i), "event": "tick", "data": f"tick {i}"}
                    ack = acks.get("/sse/ack", params={"stream": stream})
                    assert ack.status_code == 200, ack.text
                assert _read_event(lines) == {"event": "done", "data": "bye"}
                assert [line for line in lines if line] == []
    pair.check(check)


# -- WebSocket --------------------------------------------------------------------------------------

def test_websocket_echo(pair: Pair) -> None:
    """Text, bytes and JSON echoed; ``bye`` makes the app close with its own code and reason."""
    def check(server: GunicornServer) -> None:
        with connect(server.ws_url("/ws"), open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            ws.send("hello")
            assert ws.recv(timeout=TIMEOUT) == "echo: hello"
            ws.send(b"\x00\xff")
            assert ws.recv(timeout=TIMEOUT) == b"echo: \x00\xff"
            ws.send(json.dumps({"json": [1, "two", None]}))
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"echo": [1, "two", None]}
            ws.send("bye")
            try:
                unexpected = ws.recv(timeout=TIMEOUT)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (4001, "bye")
            else:
                raise AssertionError(f"expected the server to close, got {unexpected!r}")
    pair.check(check)


def test_websocket_client_close(pair: Pair) -> None:
    """The client closes first: the app sees the disconnect and returns cleanly (no traceback)."""
    def check(server: GunicornServer) -> None:
        with connect(server.ws_url("/ws"), open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            ws.send("once")
            assert ws.recv(timeout=TIMEOUT) == "echo: once"
        assert ws.protocol.close_code == 1000  # the close handshake completed normally
    pair.check(check)


def test_no_extra_tracebacks(pair: Pair) -> None:
    """Last in the module: nothing above made our worker log a traceback the reference did not."""
    pair.assert_no_extra_tracebacks()
