"""Closing in stages (RFC 9112 9.6), the graceful stop's grace for idle connections, and the
body and send timeouts: the exact rules, in-process on the protocol harness over a transport that
can half-close, as a TCP socket can. (Through real sockets, with the load that used to give
resets: tests/test_clean_close.py; the slow-client attacks: tests/test_slow_clients.py.)
"""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest
import uvloop

from asgiworker.config import Settings
from asgiworker.http.timeouts import SHUTDOWN_IDLE_GRACE
from tests.protocol_harness import Harness

GET = b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n"
GET_CLOSE = b"GET /%s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.fixture
def loop():
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


class Recorder:
    """An app answering each request with its path, recording the paths and what receive() gave."""

    def __init__(self) -> None:
        self.paths: List[str] = []
        self.received: List[dict] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        if scope["method"] == "POST":
            while True:
                message = await receive()
                self.received.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def harness(loop, app=None, **settings: Any) -> Harness:
    h = Harness(app or Recorder(), loop, Settings(**settings), half_close=True)
    h.app = h.state.app  # type: ignore[attr-defined]  # (the tests read the recorder's notes)
    return h


def test_a_connection_close_request_with_more_behind_it_half_closes_then_discards_input(loop):
    h = harness(loop)
    # A client that pipelined behind its own `connection: close` (it MUST NOT: RFC 9112 9.6).
    loop.run_until_complete(h.feed([GET_CLOSE % b"a" + GET % b"b"]))
    assert h.output().endswith(b"\r\n\r\nok") and b"connection: close" in h.output()
    # Our side is shut (FIN after the response); the socket stays open to read.
    assert h.transport.eof_written and not h.transport.closing
    # What the client still sends is read and discarded, never parsed as a request.
    loop.run_until_complete(h.feed([GET % b"c", b"x" * 100_000]))
    assert h.app.paths == ["/a"] and not h.transport.reading_paused
    # The client's FIN ends it: the transport closes itself (eof_received says so).
    assert not h.conn.eof_received()


def test_a_client_that_asked_for_the_close_and_sent_nothing_more_is_closed_at_once(loop):
    # It MUST NOT send more: nothing to linger for (what a proxy's HTTP/1.0 upstream requests do).
    for request in (GET_CLOSE % b"a", b"GET /a HTTP/1.0\r\nHost: t\r\n\r\n"):
        h = harness(loop)
        loop.run_until_complete(h.feed([request]))
        assert h.output().endswith(b"ok") and h.transport.closing and not h.transport.eof_written


def test_a_client_that_never_closes_is_closed_after_the_linger_timeout(loop):
    h = harness(loop, linger_timeout=2.0, keepalive=1.0)
    loop.run_until_complete(h.feed([GET % b"a"]))
    now = loop.time()  # (the linger's deadline counts from the loop's clock at the close)
    h.conn.check_timeouts(now + 1.5)  # the idle timeout: closing in stages
    assert h.transport.eof_written
    h.conn.check_timeouts(now + 1.9)
    assert not h.transport.closing
    h.conn.check_timeouts(now + 2.1)
    assert h.transport.closing and not h.transport.aborted


def test_idle_keepalive_timeout_closes_in_stages(loop):
    h = harness(loop, keepalive=1.0)
    loop.run_until_complete(h.feed([GET % b"a"]))
    h.conn.check_timeouts(loop.time() + 1.2)
    assert h.transport.eof_written and not h.transport.closing
    # A request that crossed our FIN is discarded (the client sees the close, never a reset).
    loop.run_until_complete(h.feed([GET % b"b"]))
    assert h.app.paths == ["/a"]


def test_an_error_response_lingers_so_that_the_client_can_read_it(loop):
    h = harness(loop)
    loop.run_until_complete(h.feed([b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"]))
    assert h.output().startswith(b"HTTP/1.1 400 ")
    assert h.transport.eof_written and not h.transport.closing
    loop.run_until_complete(h.feed([b"y" * 65536]))  # the rest of a body we refused
    assert not h.transport.closing


def test_no_linger_when_the_client_has_already_closed_its_side(loop):
    h = harness(loop)
    h.conn.data_received(GET_CLOSE % b"a")
    assert h.conn.eof_received()  # kept open: its request is still being answered
    loop.run_until_complete(h.settle(loop.time() + 2))
    assert h.transport.closing and not h.transport.eof_written


def test_linger_timeout_zero_closes_at_once(loop):
    h = harness(loop, linger_timeout=0.0)
    loop.run_until_complete(h.feed([GET_CLOSE % b"a"]))
    assert h.transport.closing and not h.transport.eof_written


def test_a_lingering_connection_whose_client_reads_nothing_is_cut_by_the_send_timeout(loop):
    h = harness(loop, linger_timeout=60.0, send_timeout=5.0, keepalive=1.0)
    loop.run_until_complete(h.feed([GET % b"a"]))
    h.conn.check_timeouts(loop.time() + 1.5)  # the idle timeout: closing in stages
    assert h.transport.eof_written
    h.conn.pause_writing()  # our output is stuck in the socket's buffer
    now = loop.time()
    h.conn.check_timeouts(now + 4.0)
    assert not h.transport.closing
    h.conn.check_timeouts(now + 5.5)
    assert h.transport.aborted


def test_graceful_stop_gives_idle_connections_a_grace_for_one_more_request(loop):
    h = harness(loop, keepalive=30.0)
    loop.run_until_complete(h.feed([GET % b"a"]))
    h.state.shutdown()
    assert not h.transport.eof_written and not h.transport.closing
    # The next request, sent just after the stop began, is answered and told the connection closes.
    loop.run_until_complete(h.feed([GET % b"b"]))
    assert h.app.paths == ["/a", "/b"]
    second = h.output().split(b"HTTP/1.1 200 ")[2]
    assert b"connection: close" in second
    assert h.transport.eof_written


def test_graceful_stop_closes_a_still_idle_connection_after_the_grace(loop):
    h = harness(loop, keepalive=30.0)
    loop.run_until_complete(h.feed([GET % b"a"]))
    h.state.shutdown()
    now = loop.time()
    h.conn.check_timeouts(now + SHUTDOWN_IDLE_GRACE * 0.5)
    assert not h.transport.eof_written
    h.conn.check_timeouts(now + SHUTDOWN_IDLE_GRACE + 0.1)
    assert h.transport.eof_written and h.app.paths == ["/a"]


def test_the_graceful_deadline_ends_a_lingering_close(loop):
    h = harness(loop, keepalive=1.0)
    loop.run_until_complete(h.feed([GET % b"a"]))
    h.conn.check_timeouts(loop.time() + 1.5)
    assert h.transport.eof_written and not h.transport.closing
    h.state.force_close()
    assert h.transport.closing and not h.transport.aborted  # its response was flushed: a close, not a cut


# -- the body and send timeouts ---------------------------------------------------------------------

POST_HEAD = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"


def test_a_body_that_stops_arriving_gets_408_and_the_app_a_disconnect(loop):
    h = harness(loop, body_timeout=3.0)
    h.conn.data_received(POST_HEAD + b"x" * 10)
    loop.run_until_complete(asyncio.sleep(0.01))  # the app now waits in receive() for the rest
    now = loop.time()
    h.conn.check_timeouts(now + 2.5)
    assert h.output() == b""
    h.conn.check_timeouts(now + 3.5)
    loop.run_until_complete(h.settle(loop.time() + 2))
    assert h.output().startswith(b"HTTP/1.1 408 ") and b"connection: close" in h.output()
    assert h.app.received[-1]["type"] == "http.disconnect"
    loop.run_until_complete(h.close())


def test_a_body_that_trickles_slower_than_the_minimum_rate_gets_408(loop):
    h = harness(loop, body_timeout=3.0, body_min_rate=100)
    h.conn.data_received(POST_HEAD + b"x" * 10)
    loop.run_until_complete(asyncio.sleep(0.01))
    start = loop.time()
    for second in range(1, 4):  # 10 bytes a second: never stalled for 3 s, but 10 < 100 bytes/s
        h.conn.data_received(b"x" * 10)
        h.conn._last_activity = start + second  # (as if each piece came a second apart)
        h.conn.check_timeouts(start + second)
        assert h.output() == b"", second
    h.conn.check_timeouts(start + 4)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert h.output().startswith(b"HTTP/1.1 408 "), h.output()
    assert h.app.received[-1]["type"] == "http.disconnect"
    loop.run_until_complete(h.close())


def test_a_body_at_the_minimum_rate_is_not_timed_out(loop):
    h = harness(loop, body_timeout=3.0, body_min_rate=100)
    head = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
    h.conn.data_received(head)
    loop.run_until_complete(asyncio.sleep(0.01))
    start = loop.time()
    for second in range(1, 12):
        h.conn.data_received(b"x" * 150)
        h.conn._last_activity = start + second
        h.conn.check_timeouts(start + second)
    assert h.output() == b"" and not h.transport.closing
    loop.run_until_complete(h.close())


def test_a_body_the_app_is_slow_to_read_is_not_timed_out(loop):
    # Reading is paused by us (the app has not taken the buffered body): the client is not at fault.
    gate = asyncio.Event()

    async def slow_reader(scope, receive, send):
        await gate.wait()
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    h = harness(loop, slow_reader, body_timeout=3.0)
    big = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 2_000_000
    h.conn.data_received(big)
    loop.run_until_complete(asyncio.sleep(0))
    assert h.transport.reading_paused
    h.conn.check_timeouts(loop.time() + 30)
    assert h.output() == b"" and not h.transport.closing
    gate.set()
    loop.run_until_complete(h.close())


def test_a_client_that_reads_nothing_is_cut_by_the_send_timeout(loop):
    h = harness(loop, send_timeout=5.0)
    loop.run_until_complete(h.feed([GET % b"a"]))
    h.conn.pause_writing()
    now = loop.time()
    h.conn.check_timeouts(now + 4.0)
    assert not h.transport.closing
    h.conn.check_timeouts(now + 5.5)
    assert h.transport.aborted


def test_a_stop_that_begins_during_a_keepalive_response_leaves_the_grace_for_the_next_request(loop):
    # --max-requests: the stop begins as the last counted response completes, after it went out
    # promising keep-alive. Its client's next request is answered, not met by a FIN.
    h = harness(loop, keepalive=30.0)
    h.state.max_requests = 1
    h.state.on_max_requests = h.state.shutdown
    loop.run_until_complete(h.feed([GET % b"a"]))
    assert h.conn.stopping
    assert b"connection: close" not in h.output() and not h.transport.eof_written
    loop.run_until_complete(h.feed([GET % b"b"]))
    assert h.app.paths == ["/a", "/b"]
    assert h.output().endswith(b"connection: close\r\n" + h.state.default_headers + b"\r\nok")
    assert h.transport.eof_written


def test_an_app_that_sends_to_a_client_gone_mid_body_lets_the_connection_go(loop):
    # The client half-closes in the middle of its body; the app answers anyway, and send()
    # raises ClientDisconnected out of the app: the connection must still be closed.
    async def answers_anyway(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})

    h = harness(loop, answers_anyway)
    h.conn.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
    assert h.conn.eof_received()
    for _ in range(50):
        loop.run_until_complete(asyncio.sleep(0))
    assert h.transport.closing and h.output() == b""


def test_a_read_that_is_all_body_skips_the_head_count_but_the_pipeline_stays_bounded(loop):
    # A read shorter than what is left of a Content-Length body holds no head (it is parsed
    # without counting terminators); the read that ends the body and carries 40 pipelined heads
    # is counted and cut as always: never more than MAX_PIPELINED requests wait.
    from asgiworker.http import MAX_PIPELINED

    gate = asyncio.Event()

    async def held(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await gate.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    h = harness(loop, held)
    body = b"b" * 100_000
    h.conn.data_received(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
    h.conn.data_received(body[:65536])
    assert h.conn._body_left == 100_000 - 65536
    h.conn.data_received(body[65536:] + (GET % b"g") * 40)
    assert len(h.conn._pipeline) <= MAX_PIPELINED and h.conn._held is not None
    gate.set()
    loop.run_until_complete(h.settle(loop.time() + 5))
    assert h.output().count(b"HTTP/1.1 204 ") == 41
