"""A streamed response's parts are written together while the app keeps sending, and go out as
soon as it lets the loop run: fewer system calls, never a delayed or altered byte.

Over a real Gunicorn: a burst of 100 parts arrives whole and in order; parts separated by pauses
arrive one by one, each long before the app's next part (server-sent events depend on that); a
bytearray changed after send() goes out as it was when sent. In-process (tests/protocol_harness.py),
where the transport's writes can be counted: a burst costs a handful of writes, not one per part,
and hypothesis-generated streams (sizes around the flush threshold, bytes, bytearray and memoryview
parts, pauses anywhere) always come out byte for byte as sent.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgiworker.http import FLUSH_SIZE
from tests.apps.stream_apps import part
from tests.conftest import GunicornServer
from tests.protocol_harness import Harness
from tests.wire import connect, parse_one, read_response

APP = "tests.apps.stream_apps:app"


@pytest.fixture(scope="module")
def server():
    s = GunicornServer(APP)
    yield s
    s.stop()


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode()


def test_burst_of_parts_arrives_whole_and_in_order(server):
    with connect(server.port) as s:
        for size in (10, 1024, 5000):
            s.sendall(get(f"/burst?n=100&size={size}"))
            response, rest = read_response(s)
            assert rest == b""
            assert response.status == 200 and response.chunked
            assert response.body == b"".join(part(i, size) for i in range(100)) + b"end"


def test_parts_go_out_when_the_app_waits(server):
    delay = 0.4
    with connect(server.port) as s:
        s.sendall(get(f"/ticks?n=3&delay={delay}"))
        started = time.monotonic()
        data = b""
        arrivals = {}
        while b"0\r\n\r\n" not in data:
            s.settimeout(5)
            chunk = s.recv(65536)
            assert chunk, "closed before the end of the response"
            data += chunk
            for i in range(3):
                if i not in arrivals and b"tick-%d;" % i in data:
                    arrivals[i] = time.monotonic() - started
    # Each part leaves as the app starts to wait, not with the next part or the end.
    for i in range(3):
        assert arrivals[i] < i * delay + delay * 0.6, arrivals
    response, _ = parse_one(data)
    assert response.body == b"tick-0;tick-1;tick-2;end"


def test_buffer_changed_after_send_goes_out_as_sent(server):
    with connect(server.port) as s:
        s.sendall(get("/mutate"))
        response, _ = read_response(s)
    assert response.body == b"original;CHANGED!;end"


# -- in-process: the writes themselves ----------------------------------------------------------------


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def serve(loop, app, request: bytes = get("/")):
    harness = Harness(app, loop)
    loop.run_until_complete(harness.feed([request]))
    written = list(harness.transport.written)
    loop.run_until_complete(harness.close())
    return written


def test_burst_costs_a_few_writes_not_one_per_part(loop):
    from tests.apps.stream_apps import app

    written = serve(loop, app, get("/burst?n=100&size=1024"))
    response, _ = parse_one(b"".join(written))
    assert response.body == b"".join(part(i, 1024) for i in range(100)) + b"end"
    # ~103 KB in 64 KiB flushes: two or three writes (one per part would be 102).
    assert len(written) <= 3, [len(w) for w in written]


def test_response_in_one_message_is_one_write(loop):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 100})

    written = serve(loop, app)
    assert len(written) == 1 and written[0].endswith(b"\r\n\r\n" + b"x" * 100)


PART = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 3 * FLUSH_SIZE // 2).map(lambda n: b"p" * n),
)
KIND = st.sampled_from([bytes, bytearray, memoryview])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.tuples(PART, KIND, st.integers(0, 2)), max_size=12),
       content_length=st.booleans())
def test_streamed_parts_come_out_as_sent(loop, parts, content_length):
    total = sum(len(p) for p, _, _ in parts)
    headers = [(b"content-length", b"%d" % total)] if content_length else []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for data, kind, pauses in parts:
            await send({"type": "http.response.body", "body": kind(bytearray(data)), "more_body": True})
            for _ in range(pauses):
                await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})

    written = serve(loop, app)
    response, rest = parse_one(b"".join(written))
    assert rest == b""
    assert response.chunked == (bool(parts) and not content_length)  # no parts: one message, a length
    assert response.body == b"".join(p for p, _, _ in parts)
    # Bounded: nothing waits for more than one flush's worth (plus the part that crossed it).
    assert all(len(w) <= FLUSH_SIZE + 3 * FLUSH_SIZE // 2 + 64 for w in written)
