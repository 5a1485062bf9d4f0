"""What an application can rely on (docs/http.md, "What an application can rely on"):

- every call runs in a real ``asyncio.Task`` of the worker's loop, from its first line;
- each request gets its own copy of a clean context;
- the next pipelined request starts from the loop, never inside the previous ``send()``, and at
  most ``MAX_PIPELINED`` requests wait parsed, however many arrive in one read;
- once the client has shut down its side, an app waiting in ``receive()`` after its body gets
  ``http.disconnect`` and may still send its response;
- the lifespan, and what it started, outlive the requests at a shutdown.

In-process on the protocol harness (exact, fast) and through a real gunicorn (the process).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import socket
import sys
import time

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgiworker.http import MAX_PIPELINED
from tests.conftest import wait_for
from tests.protocol_harness import Harness

REQUEST_ID: "contextvars.ContextVar[str]" = contextvars.ContextVar("request_id", default="unset")


@pytest.fixture
def loop():
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode("ascii")


def bodies(output: bytes) -> "list[bytes]":
    """The bodies of the content-length framed responses in ``output``, in order."""
    found = []
    for match in re.finditer(rb"content-length: (\d+)\r\n.*?\r\n\r\n", output, re.S):
        start = match.end()
        found.append(output[start:start + int(match.group(1))])
    return found


async def answer(send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


# -- the Task -----------------------------------------------------------------------------------


def test_app_runs_in_a_real_task_of_the_loop_from_its_first_line(loop):
    seen = {}

    async def app(scope, receive, send):
        task = asyncio.current_task()
        seen["task"] = task
        seen["loop"] = task.get_loop() if task is not None else None
        seen["registered"] = task in asyncio.all_tasks()
        await answer(send, b"ok")

    harness = Harness(app, loop)
    loop.run_until_complete(harness.feed([get("/")]))
    assert isinstance(seen["task"], asyncio.Task)
    assert seen["loop"] is loop
    assert seen["registered"]
    assert bodies(harness.output()) == [b"ok"]


def test_timeouts_task_groups_and_cancellation_work(loop):
    async def app(scope, receive, send):
        results = []
        if sys.version_info >= (3, 11):
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(1)
            except TimeoutError:
                results.append("timeout")
            async with asyncio.TaskGroup() as group:
                a = group.create_task(asyncio.sleep(0, "a"))
                b = group.create_task(asyncio.sleep(0, "b"))
            results += [a.result(), b.result()]
        else:
            try:
                await asyncio.wait_for(asyncio.sleep(1), 0.01)
            except asyncio.TimeoutError:
                results.append("timeout")
            results += await asyncio.gather(asyncio.sleep(0, "a"), asyncio.sleep(0, "b"))
        await answer(send, ",".join(results).encode())

    harness = Harness(app, loop)
    loop.run_until_complete(harness.feed([get("/")]))
    assert bodies(harness.output()) == [b"timeout,a,b"]


def test_an_app_answering_without_waiting_still_runs_in_its_task(loop):
    """The fast case (no await that suspends): the task is current and then done."""
    tasks = []

    async def app(scope, receive, send):
        tasks.append(asyncio.current_task())
        await answer(send, b"quick")

    harness = Harness(app, loop)
    loop.run_until_complete(harness.feed([get("/a") + get("/b")]))
    assert len(tasks) == 2 and all(isinstance(t, asyncio.Task) for t in tasks)
    assert tasks[0] is not tasks[1]
    assert all(t.done() for t in tasks)


# -- the context ---------------------------------------------------------------------------------


def test_a_context_variable_set_by_one_request_is_not_seen_by_the_next(loop):
    seen = []

    async def app(scope, receive, send):
        seen.append(REQUEST_ID.get())
        REQUEST_ID.set(scope["path"])
        await asyncio.sleep(0)  # one suspends, so both the eager and the queued paths are run
        await answer(send, REQUEST_ID.get().encode())

    harness = Harness(app, loop)
    # Pipelined in one read, then one more on the same connection later.
    loop.run_until_complete(harness.feed([get("/one") + get("/two") + get("/three"), get("/four")]))
    assert seen == ["unset"] * 4
    assert bodies(harness.output()) == [b"/one", b"/two", b"/three", b"/four"]


def test_the_base_context_is_the_servers_not_the_callers(loop):
    """What was set where the connection's bytes happen to be delivered never reaches the app."""
    seen = []

    async def app(scope, receive, send):
        seen.append(REQUEST_ID.get())
        await answer(send, b"")

    harness = Harness(app, loop)

    async def deliver():
        REQUEST_ID.set("leaked from the caller")
        harness.conn.data_received(get("/"))
        await harness.settle(loop.time() + 2)

    loop.run_until_complete(deliver())
    assert seen == ["unset"]


# -- pipelining ----------------------------------------------------------------------------------


def make_counting_app(conn_of, record):
    async def app(scope, receive, send):
        # How deep the stack is, and how many requests wait parsed behind this one.
        record.append((len(_stack()), len(conn_of()._pipeline)))
        await answer(send, scope["path"].encode())
    return app


def _stack() -> "list[object]":
    frames = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def test_ten_thousand_pipelined_requests_in_one_read_are_answered_in_order_with_a_bounded_queue(loop):
    record = []
    holder = {}
    harness = Harness(make_counting_app(lambda: holder["conn"], record), loop)
    holder["conn"] = harness.conn
    wire = b"".join(get("/%d" % i) for i in range(10_000))
    loop.run_until_complete(harness.feed([wire], timeout=60))
    assert bodies(harness.output()) == [b"/%d" % i for i in range(10_000)]
    # The first request starts from data_received, every later one from the loop (_start_next):
    # all of those at the same depth, however deep the pipeline.
    depths = {depth for depth, _ in record[1:]}
    queued = max(waiting for _, waiting in record)
    assert len(depths) == 1, f"the stack grows with the pipeline: depths {sorted(depths)[:3]}..{sorted(depths)[-3:]}"
    assert queued <= MAX_PIPELINED
    assert harness.transport.pause_count >= 1  # reading paused while the queue was full


def test_pipelined_requests_start_from_the_loop_not_inside_send(loop):
    order = []

    async def app(scope, receive, send):
        order.append("start " + scope["path"])
        await answer(send, b"")
        order.append("sent " + scope["path"])

    harness = Harness(app, loop)
    loop.run_until_complete(harness.feed([get("/a") + get("/b")]))
    # /b starts only after /a's send() returned: /a's task was not the one to run /b.
    assert order == ["start /a", "sent /a", "start /b", "sent /b"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 120), cuts=st.lists(st.integers(0, 10_000), max_size=12),
       suspend=st.booleans(), with_body=st.booleans())
def test_any_depth_any_split_in_order_and_bounded(loop, depth, cuts, suspend, with_body):
    record = []

    async def app(scope, receive, send):
        record.append(len(harness.conn._pipeline))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if suspend:
            await asyncio.sleep(0)
        await answer(send, scope["path"].encode() + b":" + body)

    harness = Harness(app, loop)
    requests = []
    for i in range(depth):
        if with_body and i % 3 == 0:
            payload = b"\r\n\r\n" * (i % 5)  # bodies that look like head terminators
            requests.append(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (i, len(payload), payload))
        else:
            requests.append(get("/%d" % i))
    wire = b"".join(requests)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    pieces = [wire[a:b] for a, b in zip(points, points[1:]) if b > a]
    loop.run_until_complete(harness.feed(pieces, timeout=30))
    expected = []
    for i in range(depth):
        payload = b"\r\n\r\n" * (i % 5) if with_body and i % 3 == 0 else b""
        expected.append(b"/%d:" % i + payload)
    assert bodies(harness.output()) == expected
    assert max(record) <= MAX_PIPELINED


def test_header_timeout_applies_behind_answered_pipelined_requests(loop):
    async def app(scope, receive, send):
        await answer(send, b"ok")

    harness = Harness(app, loop)
    # Two whole requests, then the start of a head that never ends.
    loop.run_until_complete(harness.feed([get("/a") + get("/b") + b"GET /c HTTP/1.1\r\nHo"]))
    assert bodies(harness.output()) == [b"ok", b"ok"]
    harness.conn.check_timeouts(loop.time() + harness.state.settings.header_timeout + 1)
    loop.run_until_complete(harness.settle(loop.time() + 2))
    assert b"408 Request Timeout" in harness.output()
    assert harness.transport.closing


def test_a_running_app_is_not_timed_out_while_requests_wait_behind_it(loop):
    release = asyncio.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            await release.wait()
        await answer(send, scope["path"].encode())

    harness = Harness(app, loop)

    async def scenario():
        harness.conn.data_received(get("/slow") + get("/next"))
        for _ in range(5):
            await asyncio.sleep(0)
        harness.conn.check_timeouts(loop.time() + 3600)
        assert not harness.transport.closing
        release.set()
        await harness.settle(loop.time() + 2)

    loop.run_until_complete(scenario())
    assert bodies(harness.output()) == [b"/slow", b"/next"]


# -- the client's end of the connection -------------------------------------------------------


def test_disconnect_after_the_body_and_the_response_still_goes_out(loop):
    events = []

    async def app(scope, receive, send):
        events.append((await receive())["type"])
        events.append((await receive())["type"])  # waits: the client shuts down its side
        await answer(send, b"still answered")

    harness = Harness(app, loop)

    async def scenario():
        harness.conn.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        for _ in range(5):
            await asyncio.sleep(0)
        assert events == ["http.request"]
        assert harness.conn.eof_received() is True  # kept open: there is a response to write
        await harness.settle(loop.time() + 2)

    loop.run_until_complete(scenario())
    assert events == ["http.request", "http.disconnect"]
    assert bodies(harness.output()) == [b"still answered"]
    assert harness.transport.closing  # and then closed: nothing more can come


def test_disconnect_after_the_body_reaches_an_app_waiting_before_the_eof(loop):
    """An app that asks again later (after the EOF came) gets the disconnect at once."""
    events = []

    async def app(scope, receive, send):
        events.append((await receive())["type"])
        await asyncio.sleep(0.01)
        events.append((await receive())["type"])
        await answer(send, b"ok")

    harness = Harness(app, loop)

    async def scenario():
        harness.conn.data_received(get("/"))
        await asyncio.sleep(0)
        harness.conn.eof_received()
        await harness.settle(loop.time() + 2)

    loop.run_until_complete(scenario())
    assert events == ["http.request", "http.disconnect"]
    assert bodies(harness.output()) == [b"ok"]


# -- through a real gunicorn ------------------------------------------------------------------

CONTRACT_APP = "tests.apps.contract_apps:app"


@pytest.fixture(scope="module")
def server():
    from tests.conftest import GunicornServer

    server = GunicornServer(CONTRACT_APP, "--keep-alive", "5")
    yield server
    server.stop()


def _read_responses(sock: socket.socket, count: int, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"HTTP/1.1 200") < count and time.monotonic() < deadline:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return data


def test_served_app_sees_its_task_sniffio_and_a_clean_context(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(get("/contract") + get("/contract"))
        data = _read_responses(sock, 2)
    first, second = (json.loads(b) for b in bodies(data))
    for seen in (first, second):
        assert seen["task"] is True
        assert seen["sniffio"] == "asyncio"
        assert seen["context"] == "unset"  # the first request set it: the second never sees it
        assert seen["timeout"] == "timed out"


def test_served_ten_thousand_pipelined_requests_in_one_write(server):
    wire = b"".join(get("/n/%d" % i) for i in range(10_000))
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(wire)
        data = _read_responses(sock, 10_000, timeout=60)
    assert bodies(data) == [b"/n/%d" % i for i in range(10_000)]
    assert "RecursionError" not in server.log()


def test_served_half_closed_client_gets_disconnect_and_its_answer(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"POST /wait-disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        time.sleep(0.1)
        sock.shutdown(socket.SHUT_WR)
        data = _read_responses(sock, 1, timeout=5)
    assert bodies(data) == [b"saw http.disconnect"]


def test_served_lifespan_task_outlives_the_requests_at_shutdown(gunicorn):
    server = gunicorn(CONTRACT_APP)
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(get("/contract"))
        _read_responses(sock, 1)
    import signal

    server.signal(signal.SIGTERM)
    server.wait_exit()
    log = server.log()
    assert wait_for(lambda: "lifespan background task stopped by the shutdown" in server.log(), 5), log
    assert "lifespan shutdown failed" not in log and "CancelledError" not in log, log
