"""Django under our worker and under uvicorn-worker, through a real Gunicorn each.

The app is ``django.core.asgi.get_asgi_application()`` over the project in
apps/django_project/ (views.py says what each view reports). Besides Django's session, common
and CSRF middlewares it runs two custom ones (middleware.py): a MiddlewareMixin with a sync
process_response hook, which Django calls in a thread through asgiref, and an async-capable one
that runs as a coroutine.

One Pair for the module; each check runs against the reference first (a failure there means the
test is wrong), then against ours.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Tuple

import django
import httpx
import pytest

from tests.conftest import GunicornServer, wait_for
from tests.frameworks.apps.django_project import views
from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.django_project.asgi:application"
SETTINGS = "tests.frameworks.apps.django_project.settings"
PAYLOAD = random.Random(20240).randbytes(300_000)  # several of Django's 64 KiB ASGI chunks


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:
    payload = tmp_path_factory.mktemp("django") / "payload.bin"
    payload.write_bytes(PAYLOAD)
    with Pair(APP, env={"DJANGO_SETTINGS_MODULE": SETTINGS, "DJANGO_TEST_PAYLOAD": str(payload)}) as p:
        yield p


def client(server: GunicornServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=10)


# -- views ------------------------------------------------------------------------------------


def test_sync_view(pair):
    """A sync view runs in a thread Django borrows from asgiref, not on the event loop."""
    def check(server):
        r = httpx.get(server.url + "/sync/", params={"q": "x y"}, timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"kind": "sync", "main_thread": False, "q": "x y"}
    pair.check(check)


def test_async_view(pair):
    """An async view runs as a coroutine in a Task on the loop's thread."""
    def check(server):
        r = httpx.get(server.url + "/async/", params={"q": "é"}, timeout=10)
        assert r.status_code == 200
        assert r.json() == {"kind": "async", "main_thread": True, "in_task": True, "q": "é"}
    pair.check(check)


def test_sync_view_calls_async_to_sync(pair):
    """async_to_sync from a sync view runs the coroutine back on the server's loop, in a Task."""
    def check(server):
        r = httpx.get(server.url + "/sync-calls-async/", params={"word": "loop"}, timeout=10)
        assert r.status_code == 200
        assert r.json() == {"view_main_thread": False,
                            "inner": {"word": "LOOP", "main_thread": True, "in_task": True}}
    pair.check(check)


def test_async_view_calls_sync_to_async(pair):
    """sync_to_async from an async view, thread-sensitive and pooled, both off the loop's thread."""
    def check(server):
        r = httpx.get(server.url + "/async-calls-sync/", params={"word": "thread"}, timeout=10)
        assert r.status_code == 200
        assert r.json() == {"view_main_thread": True, "view_in_task": True,
                            "sensitive": {"word": "daerht", "main_thread": False},
                            "pooled": {"word": "daerht", "main_thread": False}}
    pair.check(check)


def test_request_meta_from_scope(pair):
    """What Django builds from the scope: decoded path, repeated query keys, headers, addresses."""
    def check(server):
        r = httpx.get(server.url + "/meta/caf%C3%A9/?a=1&b=%C3%A9&b=2", headers={"X-Custom": "yes"},
                      timeout=10)
        assert r.status_code == 200
        host = f"127.0.0.1:{server.port}"
        assert r.json() == {
            "word": "café",
            "path": "/meta/café/",
            "get": {"a": ["1"], "b": ["é", "2"]},
            "meta": {
                "REQUEST_METHOD": "GET", "PATH_INFO": "/meta/café/", "SCRIPT_NAME": "",
                "QUERY_STRING": "a=1&b=%C3%A9&b=2", "REMOTE_ADDR": "127.0.0.1",
                "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(server.port),
                "HTTP_X_CUSTOM": "yes", "HTTP_HOST": host,
            },
            "host": host,
            "scheme": "http",
            "absolute": f"http://{host}/meta/caf%C3%A9/?a=1&b=%C3%A9&b=2",
        }
    pair.check(check)


def test_post_json_echo(pair):
    """The request body reaches the view whole: a small JSON body and a 1 MiB one."""
    small = {"name": "Zoë", "items": [1, 2, 3], "nested": {"ok": True}}
    large = {"blob": "x" * (1 << 20)}

    def check(server):
        with client(server) as c:
            for data in (small, large):
                body = json.dumps(data).encode()
                r = c.post("/echo/", content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 200
                got = r.json()
                assert got["method"] == "POST"
                assert got["content_type"] == "application/json"
                assert got["length"] == len(body)
                assert got["echo"] == data
    pair.check(check)


# -- streaming and files ----------------------------------------------------------------------


def read_chunks(response: httpx.Response) -> List[Tuple[float, bytes]]:
    """(arrival time, bytes) for each piece of the body, as it comes off the socket."""
    return [(time.monotonic(), chunk) for chunk in response.iter_raw() if chunk]


def test_streaming_sync_iterator(pair):
    """StreamingHttpResponse over a sync generator: chunked, every chunk there, in order."""
    expected = b"".join(f"sync-{i:03d}\n".encode() for i in range(views.SYNC_CHUNKS))

    def check(server):
        with client(server) as c, c.stream("GET", "/stream/sync/") as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/plain"
            assert r.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.headers
            body = b"".join(chunk for _, chunk in read_chunks(r))
        assert body == expected
    pair.check(check)


def test_streaming_async_iterator(pair):
    """StreamingHttpResponse over an async generator that pauses between chunks: the content is
    exact, and the first chunk arrives well before the last one (streamed, not buffered)."""
    expected = b"".join(f"async-{i}\n".encode() for i in range(views.ASYNC_CHUNKS))
    spread = (views.ASYNC_CHUNKS - 1) * views.ASYNC_GAP

    def check(server):
        with client(server) as c, c.stream("GET", "/stream/async/") as r:
            assert r.status_code == 200
            assert r.headers.get("transfer-encoding") == "chunked"
            chunks = read_chunks(r)
        assert b"".join(chunk for _, chunk in chunks) == expected
        assert chunks[0][1].startswith(b"async-0\n")
        assert chunks[-1][0] - chunks[0][0] >= spread * 0.6, chunks
    pair.check(check)


def test_streaming_stops_when_client_leaves(pair):
    """A client that leaves an endless async stream: Django (5.0+, which listens for
    http.disconnect while streaming) cancels the response and the generator is closed."""
    if django.VERSION < (5, 0):
        pytest.skip("Django < 5.0 does not watch for http.disconnect during a streaming response")

    def check(server):
        token = uuid.uuid4().hex
        with client(server) as c:
            with c.stream("GET", "/stream/forever/", params={"token": token}) as r:
                assert r.status_code == 200
                first = next(r.iter_raw())
                assert first.startswith(b"tick-0\n")
        # The connection is closed now; ask on a fresh one.
        def state():
            return httpx.get(server.url + "/stream/state/", params={"token": token}, timeout=5).json()["state"]
        assert wait_for(lambda: state() == "closed", timeout=5), state()
    pair.check(check)


def test_file_response(pair):
    """FileResponse of a 300 kB file: exact bytes, length, type and attachment name."""
    def check(server):
        with client(server) as c:
            r = c.get("/file/")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-length"] == str(len(PAYLOAD))
        assert r.headers["content-disposition"] == 'attachment; filename="payload.bin"'
        assert r.content == PAYLOAD
    pair.check(check)


# -- sessions, CSRF, middleware -----------------------------------------------------------------


def test_session_counter(pair):
    """A signed-cookie session survives across requests of one client, and only that client's."""
    def check(server):
        with client(server) as c:
            assert [c.get("/counter/").json()["count"] for _ in range(3)] == [1, 2, 3]
            assert "sessionid" in c.cookies
        with client(server) as other:
            assert other.get("/counter/").json()["count"] == 1
    pair.check(check)


def test_csrf(pair):
    """The form page sets csrftoken; a POST without the token is refused, with it accepted."""
    def check(server):
        with client(server) as c:
            page = c.get("/form/")
            assert page.status_code == 200
            assert "csrftoken" in c.cookies
            match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert match, page.text
            token = match.group(1)

            refused = c.post("/form/", data={"name": "no token"})
            assert refused.status_code == 403
            assert "CSRF" in refused.text

            wrong = c.post("/form/", data={"name": "bad", "csrfmiddlewaretoken": "x" * 64})
            assert wrong.status_code == 403

            accepted = c.post("/form/", data={"name": "Ada", "csrfmiddlewaretoken": token})
            assert accepted.status_code == 200
            assert accepted.json() == {"name": "Ada"}

            by_header = c.post("/form/", data={"name": "Grace"}, headers={"X-CSRFToken": c.cookies["csrftoken"]})
            assert by_header.status_code == 200
            assert by_header.json() == {"name": "Grace"}
        with client(server) as stranger:  # the token without its cookie is worth nothing
            assert stranger.post("/form/", data={"name": "x", "csrfmiddlewaretoken": token}).status_code == 403
    pair.check(check)


def test_middleware_headers(pair):
    """Both custom middlewares ran, each the way Django had to run it, on every kind of answer."""
    def check(server):
        with client(server) as c:
            for path, status in (("/sync/", 200), ("/async/", 200), ("/no/such/page/", 404)):
                r = c.get(path)
                assert r.status_code == status, path
                assert r.headers.get("x-sync-middleware") == "worker-thread", path
                assert r.headers.get("x-async-middleware") == "async", path
    pair.check(check)


def test_concurrent_slow_sync_views(pair):
    """Eight requests to a view that blocks 0.5 s finish together (each in its own thread), and
    the event loop stays free meanwhile: an async view answers while all eight still sleep."""
    def check(server):
        # Clients made (and connected) up front: building eight of them inside the timed part
        # costs more than the views themselves.
        clients = [client(server) for _ in range(9)]
        try:
            for c in clients:
                assert c.get("/sync/").status_code == 200
            quick_client, slow_clients = clients[0], clients[1:]
            with ThreadPoolExecutor(len(slow_clients)) as pool:
                start = time.monotonic()
                futures = [pool.submit(c.get, "/slow/") for c in slow_clients]
                time.sleep(0.15)  # all eight are in their views by now
                quick = quick_client.get("/async/")
                quick_elapsed = time.monotonic() - start
                slow_pending = sum(not f.done() for f in futures)
                responses = [f.result() for f in futures]
                elapsed = time.monotonic() - start
        finally:
            for c in clients:
                c.close()
        assert [r.status_code for r in responses] == [200] * 8
        assert len({r.json()["thread"] for r in responses}) == 8  # eight threads at once
        assert elapsed < 2.0, f"8 x 0.5 s took {elapsed:.2f} s"
        assert quick.status_code == 200
        assert slow_pending == 8, (f"the async view answered at {quick_elapsed:.2f} s, after "
                                   f"{8 - slow_pending} of the slow views")
    pair.check(check)


# -- errors -----------------------------------------------------------------------------------


def test_not_found(pair):
    def check(server):
        r = httpx.get(server.url + "/no/such/page/", timeout=10)
        assert r.status_code == 404
        assert "Not Found" in r.text
    pair.check(check)


def test_view_exception_is_500(pair):
    """Django turns the exception into its 500 page (logged once); the server goes on serving."""
    def check(server):
        with client(server) as c:
            r = c.get("/boom/")
            assert r.status_code == 500
            assert "Server Error (500)" in r.text
            assert "deliberate failure" not in r.text  # DEBUG is off: no traceback to the client
            assert c.get("/sync/").status_code == 200
        assert wait_for(lambda: "deliberate failure for the 500 test" in server.log(), timeout=5)
    pair.check(check)


def test_no_extra_tracebacks(pair):
    """Last: nothing in the module made our worker log a traceback the reference did not."""
    pair.assert_no_extra_tracebacks()
