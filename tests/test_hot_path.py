"""What the per-request and per-connection shortcuts must never change.

- Response header blocks are cached by the app's header set: a set given as a generator is read
  once and still sent whole, a list changed between responses is sent as it is now, a cached
  `connection: close` still closes, an invalid set is refused every time.
- The listener hands each connection its addresses: bound to all addresses, the scope's `server`
  is the address the client actually reached, not 0.0.0.0.
- Proxy trust verdicts are cached per peer and the cache stays bounded.
"""

from __future__ import annotations

import json

import pytest
import uvloop

from asgiworker.proxy import ProxyPolicy
from tests.conftest import GunicornServer, free_port
from tests.protocol_harness import Harness
from tests.wire import connect, parse_all, read_response

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def serve(loop, app, requests: bytes = GET + GET):
    harness = Harness(app, loop)
    loop.run_until_complete(harness.feed([requests]))
    out, closed = harness.output(), harness.transport.closing
    loop.run_until_complete(harness.close())
    return parse_all(out)[0], closed


def test_header_generator_is_sent_whole_every_time(loop):
    async def app(scope, receive, send):
        headers = ((name, b"v") for name in (b"x-one", b"x-two"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    responses, _ = serve(loop, app)
    assert len(responses) == 2
    for response in responses:
        assert response.get(b"x-one") == b"v" and response.get(b"x-two") == b"v"


def test_header_list_changed_between_responses_is_sent_as_it_is_now(loop):
    as_lists = [[b"x-count", b"0"]]
    as_tuples = [(b"x-count", b"0")]

    async def lists_app(scope, receive, send):
        as_lists[0][1] = b"%d" % (int(as_lists[0][1]) + 1)  # changed in place
        await send({"type": "http.response.start", "status": 200, "headers": as_lists})
        await send({"type": "http.response.body", "body": b"ok"})

    async def tuples_app(scope, receive, send):
        as_tuples[0] = (b"x-count", b"%d" % (int(as_tuples[0][1]) + 1))  # a new item
        await send({"type": "http.response.start", "status": 200, "headers": as_tuples})
        await send({"type": "http.response.body", "body": b"ok"})

    for app in (lists_app, tuples_app):
        responses, _ = serve(loop, app)
        assert [r.get(b"x-count") for r in responses] == [b"1", b"2"]


def test_cached_connection_close_still_closes(loop):
    headers = ((b"connection", b"close"), (b"x-a", b"b"))

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"bye"})

    for _ in range(2):  # the second time from the cache
        responses, closed = serve(loop, app)
        assert closed and len(responses) == 1
        assert responses[0].get(b"connection") == b"close" and responses[0].get(b"x-a") == b"b"


def test_invalid_header_set_is_refused_every_time(loop):
    headers = ((b"x-evil", b"a\r\nset-cookie: injected"),)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"never"})

    for _ in range(2):
        responses, closed = serve(loop, app, GET)
        assert closed and [r.status for r in responses] == [500]
        assert responses[0].get(b"set-cookie") is None


def test_wildcard_bind_reports_the_address_reached():
    wildcard_port = free_port()
    server = GunicornServer("tests.apps.conformance_apps:app", "--bind", f"0.0.0.0:{wildcard_port}")
    try:
        with connect(wildcard_port) as s:
            s.sendall(b"GET /scope HTTP/1.1\r\nHost: t\r\n\r\n")
            response, _ = read_response(s)
            local_port = s.getsockname()[1]
        d = json.loads(response.body)
        assert d["server"] == ["127.0.0.1", wildcard_port]
        assert d["client"] == ["127.0.0.1", local_port]
    finally:
        server.stop()


def test_proxy_verdicts_are_cached_and_bounded(monkeypatch):
    policy = ProxyPolicy(["127.0.0.1", "10.0.0.0/8"], {})
    for _ in range(2):
        assert policy.trusts("127.0.0.1") and policy.trusts("10.1.2.3")
        assert not policy.trusts("192.168.0.1") and not policy.trusts("not an address")
    monkeypatch.setattr(policy._verdicts, "limit", 16)
    for i in range(100):
        assert policy.trusts(f"10.0.0.{i}") and not policy.trusts(f"11.0.0.{i}")
    assert len(policy._verdicts) <= 16


def test_consumer_headers_go_out_as_they_were_when_sent(loop):
    from asgiworker.adapters import load

    def consumer(message):
        headers = [[b"x-state", b"as-sent"]]
        message["reply_channel"].send({"status": 200, "headers": headers, "content": b"a", "more_content": True})
        headers[0][1] = b"changed-later"  # the consumer reuses its list before the reply goes out
        headers.append([b"x-added", b"later"])
        message["reply_channel"].send({"content": b"b"})

    responses, _ = serve(loop, load(consumer, "consumer"), GET)
    assert responses[0].get(b"x-state") == b"as-sent" and responses[0].get(b"x-added") is None
    assert responses[0].body == b"ab"


@pytest.mark.parametrize("host", [b"good.example", b"bad host", b"bad\x01host", b"[::1"])
def test_host_verdicts_hold_on_every_request(loop, host):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * len(scope["path"])})

    want = 200 if host == b"good.example" else 400
    for _ in range(3):  # the first time checked, later times maybe from the cache
        request = b"GET /abc HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        responses, _ = serve(loop, app, request)
        assert [r.status for r in responses] == [want]
        if want == 200:
            assert responses[0].body == b"xxxx" and responses[0].get(b"content-length") == b"4"


def test_request_header_names_lowered_and_underscores_dropped_every_time(loop):
    seen = []

    async def app(scope, receive, send):
        seen.append([name for name, _ in scope["headers"]])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    request = b"GET / HTTP/1.1\r\nHost: t\r\nX-Mixed-Case: 1\r\nX_Under_Score: 2\r\n\r\n"
    for _ in range(2):  # the second time the names come from the cache
        serve(loop, app, request * 2)
    assert seen == [[b"host", b"x-mixed-case"]] * 4


def test_header_block_cache_stays_bounded(loop, monkeypatch):
    from asgiworker.wire.headers import HEAD_BLOCKS

    monkeypatch.setattr(HEAD_BLOCKS, "limit", 8)
    count = [0]

    async def app(scope, receive, send):
        count[0] += 1  # a new header set every response, as a per-response cookie would make
        await send({"type": "http.response.start", "status": 200, "headers": ((b"x-n", b"%d" % count[0]),)})
        await send({"type": "http.response.body", "body": b"ok"})

    responses, _ = serve(loop, app, GET * 30)
    assert [r.get(b"x-n") for r in responses] == [b"%d" % i for i in range(1, 31)]
    assert len(HEAD_BLOCKS) <= 8
