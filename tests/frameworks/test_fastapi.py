"""FastAPI through a real gunicorn, under our worker and under uvicorn-worker (the reference).

FastAPI leans on everything an asyncio server must provide: `def` endpoints, sync dependencies,
sync background tasks and sync generators run in anyio's worker threads (which need a current
asyncio Task to find the loop), ``@app.middleware("http")`` and StreamingResponse use anyio task
groups, FileResponse reads through anyio's threads. Each test exercises one feature end to end.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import GunicornServer, wait_for
from tests.frameworks.apps.anyio_app import DEFAULT_VALUE, expected_asyncio_report
from tests.frameworks.apps.fastapi_app import BIG_TEXT, GREETING, NUMBERS
from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.fastapi_app:app"
TIMEOUT = 5.0


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


# -- endpoints and lifespan -------------------------------------------------------------------------

def test_def_endpoint_runs_in_a_worker_thread(pair: Pair) -> None:
    """A `def` endpoint needs anyio's thread pool, which needs a current Task to find its loop."""
    def check(server: GunicornServer) -> None:
        assert get_json(server, "/sync") == {"endpoint": "def", "in_worker_thread": True}
    pair.check(check)


def test_async_endpoint_runs_on_the_loop(pair: Pair) -> None:
    """The baseline the other tests build on: an `async def` endpoint, on the loop's thread."""
    def check(server: GunicornServer) -> None:
        assert get_json(server, "/async") == {"endpoint": "async def", "in_worker_thread": False}
    pair.check(check)


def test_lifespan_state_reaches_requests(pair: Pair) -> None:
    """The dict the lifespan yields is on request.state, set up in the worker that serves."""
    def check(server: GunicornServer) -> None:
        state = get_json(server, "/lifespan")
        assert state["greeting"] == GREETING
        assert state["lifespan_pid"] == state["pid"]
    pair.check(check)


# -- yield dependencies -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sync", "async"])
def test_yield_dependency_teardown_runs(pair: Pair, kind: str) -> None:
    """The endpoint gets the open resource; the code after ``yield`` runs once, for that resource
    (sync dependencies in a worker thread)."""
    def check(server: GunicornServer) -> None:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            resource = client.get(f"/deps/{kind}")
            assert resource.status_code == 200, resource.text
            body = resource.json()
            assert body["state"] == "open"
            assert body["opened_in_worker_thread"] is (kind == "sync")
            token = body["token"]
            closed = wait_for(lambda: token in client.get("/deps/closed").json()[kind], timeout=TIMEOUT)
            assert closed, f"the {kind} dependency's teardown never ran for {token}"
            assert client.get("/deps/closed").json()[kind].count(token) == 1
    pair.check(check)


# -- background tasks -------------------------------------------------------------------------------

def _wait_done(client: httpx.Client, token: str) -> List[Dict[str, Any]]:
    def done() -> List[Dict[str, Any]]:
        return [record for record in client.get("/bg/done").json() if record["token"] == token]
    return wait_for(done, timeout=TIMEOUT)


@pytest.mark.parametrize("task", ["sync", "async"])
@pytest.mark.parametrize("endpoint", ["def", "async"])
def test_background_task_runs(pair: Pair, endpoint: str, task: str) -> None:
    """A BackgroundTasks function (sync: in a worker thread; async: on the loop) runs once after
    the response, whichever kind of endpoint scheduled it."""
    def check(server: GunicornServer) -> None:
        token = uuid.uuid4().hex
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            response = client.get(f"/bg/{endpoint}", params={"token": token, "task": task})
            assert response.status_code == 200, response.text
            assert response.json() == {"scheduled": token}
            records = _wait_done(client, token)
        assert records == [{"token": token, "task": task, "endpoint": "def" if endpoint == "def" else "async def",
                            "in_worker_thread": task == "sync"}], "the background task did not run (once)"
    pair.check(check)


# -- streaming, uploads, files ----------------------------------------------------------------------

def _stream(server: GunicornServer, path: str) -> Tuple[httpx.Response, bytes]:
    """The response and its body, read chunk by chunk as it arrives."""
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("GET", server.url + path) as response:
        body = b"".join(response.iter_bytes())
    return response, body


def test_streaming_response_over_a_sync_generator(pair: Pair) -> None:
    """Iterated in a worker thread, sent chunked (no length known in advance)."""
    def check(server: GunicornServer) -> None:
        response, body = _stream(server, "/stream/sync?n=6")
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        assert body.decode() == "".join(f"sync chunk {i} in_worker_thread=True\n" for i in range(6))
    pair.check(check)


def test_streaming_response_over_an_async_generator(pair: Pair) -> None:
    def check(server: GunicornServer) -> None:
        response, body = _stream(server, "/stream/async?n=6")
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        assert body == b"".join(b"async chunk %d\n" % i for i in range(6))
    pair.check(check)


def _describe(name: str, content_type: str, data: bytes) -> Dict[str, Any]:
    return {"filename": name, "content_type": content_type, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def test_upload_files(pair: Pair) -> None:
    """Multipart: a form field and two files, one small, one past the 1 MiB spool (rolled over to
    disk through anyio's threads); sizes and digests come back exact."""
    small = b"hello, upload\n"
    large = os.urandom(1536 * 1024)

    def check(server: GunicornServer) -> None:
        response = httpx.post(server.url + "/upload", timeout=TIMEOUT, data={"note": "two files"}, files=[
            ("files", ("small.txt", small, "text/plain")),
            ("files", ("large.bin", large, "application/octet-stream")),
        ])
        assert response.status_code == 200, response.text
        assert response.json() == {"note": "two files", "files": [
            _describe("small.txt", "text/plain", small),
            _describe("large.bin", "application/octet-stream", large),
        ]}
    pair.check(check)


def test_upload_file_to_a_def_endpoint(pair: Pair) -> None:
    """The form is parsed on the loop, then the `def` endpoint reads the spooled file in its thread."""
    data = os.urandom(200 * 1024)

    def check(server: GunicornServer) -> None:
        response = httpx.post(server.url + "/upload-sync", timeout=TIMEOUT,
                              files={"file": ("blob.bin", data, "application/octet-stream")})
        assert response.status_code == 200, response.text
        assert response.json() == _describe("blob.bin", "application/octet-stream", data)
    pair.check(check)


def test_file_response_with_range(pair: Pair) -> None:
    """The whole file (200, accept-ranges), a byte range and a suffix range (206, exact bytes,
    content-range), and a range past the end (416)."""
    data = NUMBERS.read_bytes()
    size = len(data)

    def check(server: GunicornServer) -> None:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            whole = client.get("/file")
            assert whole.status_code == 200
            assert whole.headers["accept-ranges"] == "bytes"
            assert whole.content == data

            part = client.get("/file", headers={"range": "bytes=100-199"})
            assert part.status_code == 206
            assert part.headers["content-range"] == f"bytes 100-199/{size}"
            assert part.headers["content-length"] == "100"
            assert part.content == data[100:200]

            tail = client.get("/file", headers={"range": "bytes=-50"})
            assert tail.status_code == 206
            assert tail.headers["content-range"] == f"bytes {size - 50}-{size - 1}/{size}"
            assert tail.content == data[-50:]

            beyond = client.get("/file", headers={"range": f"bytes={size + 10}-"})
            assert beyond.status_code == 416
            # (older Starlette, 0.49 for one, leaves the unit out: "*/size", so only the end is checked.)
            assert beyond.headers["content-range"].endswith(f"*/{size}")
    pair.check(check)


# -- middleware -------------------------------------------------------------------------------------

def test_gzip_middleware(pair: Pair) -> None:
    """A large response is gzipped when asked for (and decompresses to the original), served plain
    when not; a small one is never compressed."""
    def check(server: GunicornServer) -> None:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            with client.stream("GET", "/gz/big", headers={"accept-encoding": "gzip"}) as response:
                raw = b"".join(response.iter_raw())
            assert response.status_code == 200
            assert response.headers["content-encoding"] == "gzip"
            assert "accept-encoding" in response.headers["vary"].lower()
            assert len(raw) < len(BIG_TEXT) // 10, len(raw)
            assert gzip.decompress(raw).decode() == BIG_TEXT

            plain = client.get("/gz/big", headers={"accept-encoding": "identity"})
            assert "content-encoding" not in plain.headers
            assert plain.text == BIG_TEXT

            small = client.get("/gz/small", headers={"accept-encoding": "gzip"})
            assert "content-encoding" not in small.headers
            assert small.text == "too small to compress"
    pair.check(check)


@pytest.mark.parametrize("path, body", [
    ("/mw/hello", {"hello": "world"}),
    ("/mw/sync", {"endpoint": "def", "in_worker_thread": True}),
])
def test_http_middleware_adds_headers(pair: Pair, path: str, body: Dict[str, Any]) -> None:
    """``@app.middleware("http")`` sees the request and stamps the response, around both kinds of
    endpoint."""
    def check(server: GunicornServer) -> None:
        trace = uuid.uuid4().hex
        response = get(server, path, headers={"x-trace": trace})
        assert response.status_code == 200, response.text
        assert response.json() == body
        assert response.headers["x-middleware"] == "stamped"
        assert response.headers["x-trace-echo"] == trace
    pair.check(check)


@pytest.mark.parametrize("path, status, detail", [
    ("/mw/missing", 404, "no such thing"),
    ("/mw/forbidden", 403, "not you"),
])
def test_http_exception_behind_http_middleware(pair: Pair, path: str, status: int, detail: str) -> None:
    """An HTTPException raised behind the middleware keeps its status, detail and headers (not a
    500), and the middleware still stamps the response."""
    def check(server: GunicornServer) -> None:
        response = get(server, path)
        assert response.status_code == status, response.text
        assert response.json() == {"detail": detail}
        assert response.headers["x-middleware"] == "stamped"
        if status == 404:
            assert response.headers["x-why"] == "missing"
    pair.check(check)


def test_background_task_behind_http_middleware(pair: Pair) -> None:
    """BaseHTTPMiddleware runs the endpoint in a task group of its own: the background task must
    still run, once."""
    def check(server: GunicornServer) -> None:
        token = uuid.uuid4().hex
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            response = client.get("/mw/bg", params={"token": token})
            assert response.status_code == 200, response.text
            assert response.headers["x-middleware"] == "stamped"
            records = _wait_done(client, token)
        assert records == [{"token": token, "task": "sync", "endpoint": "behind middleware",
                            "in_worker_thread": True}], "the background task did not run (once)"
    pair.check(check)


@pytest.mark.parametrize("path", ["/teapot", "/teapot-sync"])
def test_custom_exception_handler(pair: Pair, path: str) -> None:
    """An exception raised in either kind of endpoint reaches the app's own handler (418, its body),
    not the server's 500."""
    def check(server: GunicornServer) -> None:
        response = get(server, path, params={"what": "earl grey"})
        assert response.status_code == 418, response.text
        assert response.json() == {"error": "teapot", "what": "earl grey", "path": path}
    pair.check(check)


# -- the asyncio contract ---------------------------------------------------------------------------

def test_asyncio_contract_in_an_endpoint(pair: Pair) -> None:
    """Inside an ``async def`` endpoint: a current Task (the same throughout), sniffio says asyncio,
    wait_for / asyncio.timeout (3.11+) time out and leave the request usable, TaskGroup works."""
    def check(server: GunicornServer) -> None:
        assert get_json(server, "/asyncio") == expected_asyncio_report()
    pair.check(check)


@pytest.mark.parametrize("when", ["eager", "after-await"])
def test_contextvar_does_not_leak_between_requests_on_one_connection(pair: Pair, when: str) -> None:
    """A ContextVar set in an endpoint is unset again in the next request on the same connection."""
    def check(server: GunicornServer) -> None:
        ports = set()
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            for i in range(3):
                value = f"{when}-{i}-{uuid.uuid4().hex}"
                set_ = client.get("/ctx/set", params={"value": value, "when": when})
                assert set_.status_code == 200, set_.text
                assert set_.json()["before"] == DEFAULT_VALUE, set_.json()
                assert set_.json()["after"] == value
                got = client.get("/ctx/get")
                assert got.status_code == 200, got.text
                assert got.json()["value"] == DEFAULT_VALUE, f"request {i}: sees the value the /ctx/set before it set"
                ports.update({set_.json()["client_port"], got.json()["client_port"]})
        assert len(ports) == 1, f"the requests did not share one connection: {ports}"
    pair.check(check)


# -- WebSocket --------------------------------------------------------------------------------------

def test_websocket_echo(pair: Pair) -> None:
    """Text and bytes echoed; ``bye`` makes the app close with its own code and reason."""
    def check(server: GunicornServer) -> None:
        with connect(server.ws_url("/ws"), open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            ws.send("hello")
            assert ws.recv(timeout=TIMEOUT) == "echo: hello"
            ws.send(b"\x00\x01\xff")
            assert ws.recv(timeout=TIMEOUT) == b"echo: \x00\x01\xff"
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
