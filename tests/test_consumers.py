"""Channel-style consumers over a real Gunicorn: the two original examples, consumers of every
shape, the message a consumer gets, and the reply channel contract (framing, threads, malformed
replies, consumers that raise or never answer).

Consumers live in tests/apps/consumers.py (``router`` serves most tests, dispatching on the
path; what only the consumer can see is read back with ``GET /report?token=``). All servers of
this module boot in parallel, once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Dict, Iterator, List, Tuple

import httpx
import pytest

from tests.apps.consumers import BAD_FIRST_REPLIES, stream_chunks
from tests.conftest import ROOT, BootedServers, GunicornServer
from tests.wire import (
    Incomplete,
    KeepAliveClient,
    Malformed,
    parse_head,
    parse_one,
    raw_request,
    read_response,
    read_until,
)

SHAPES = ["plain", "async_consumer", "callable_object", "async_callable_object", "partial_consumer",
          "future_consumer", "task_consumer"]


@pytest.fixture(scope="module")
def servers() -> Iterator[BootedServers]:
    specs: Dict[str, Tuple[str, tuple, dict]] = {
        # The examples exactly as documented: cwd=examples, `gunicorn hello:hello_world`.
        "hello": ("hello:hello_world", (), {"cwd": ROOT / "examples"}),
        "sleepy": ("hello:sleepy", (), {"cwd": ROOT / "examples"}),
        "router": ("tests.apps.consumers:router", (), {}),
    }
    for name in SHAPES:
        specs[name] = (f"tests.apps.consumers:{name}", (), {})
    booted = BootedServers(specs)
    try:
        yield booted
    finally:
        booted.stop()


@pytest.fixture
def router(servers) -> GunicornServer:
    return servers["router"]


def token() -> str:
    return uuid.uuid4().hex[:12]


# -- asking the consumers ------------------------------------------------------------------------


def get_report(server: GunicornServer, tok: str, timeout: float = 3.0) -> dict:
    """What the consumer recorded under ``tok`` (it may record just after the response went out)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{server.url}/report", params={"token": tok}, timeout=5)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 404, r.text
        if time.monotonic() > deadline:
            raise AssertionError(f"the consumer recorded nothing under {tok}")
        time.sleep(0.05)


def error_record(log: str, marker: str) -> str:
    """The (last) log record containing ``marker``, with its traceback: from the line that starts
    the record to the next record."""
    pos = log.rfind(marker)
    assert pos != -1, f"{marker!r} not in the log:\n{log[-3000:]}"
    start = log.rfind("\n[", 0, pos) + 1
    end = log.find("\n[", pos)
    return log[start:] if end == -1 else log[start:end]


def wait_for_log(server: GunicornServer, text: str, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = server.log()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


# -- the original examples ------------------------------------------------------------------------


def test_hello_world_example_exact_response(servers):
    server = servers["hello"]
    with KeepAliveClient(server.port) as client:
        for _ in range(2):  # and the connection is kept alive
            response = client.request("GET", "/")
            assert response.status == 200
            assert response.reason == b"OK"
            assert response.version == b"HTTP/1.1"
            assert response.body == b"Hello, world!"
            headers = dict(response.headers)
            assert len(response.headers) == 4, response.headers
            assert headers[b"content-type"] == b"text/html"
            assert headers[b"content-length"] == b"13"
            assert headers[b"server"] == b"asgiworker"
            assert abs(parsedate_to_datetime(headers[b"date"].decode()).timestamp() - time.time()) < 60
    first = client.raw.split(b"\r\n", 1)[0]
    assert first == b"HTTP/1.1 200 OK"
    assert client.raw.count(b"HTTP/1.1 200 OK\r\n") == 2


def test_sleepy_example_requests_are_not_serialized(servers):
    server = servers["sleepy"]
    n = 24

    async def fire():
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=20) as client:
            return await asyncio.gather(*(client.get(f"/{i}") for i in range(n)))

    started = time.monotonic()
    responses = asyncio.run(fire())
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * n
    assert {r.text for r in responses} == {"Hello after a second!"}
    assert elapsed >= 0.95  # each one really waited its second
    assert elapsed < 3.0, f"{n} one-second requests took {elapsed:.1f}s: they were serialized"


# -- consumers of every shape -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_consumer_shapes_are_detected_and_served(servers, shape):
    server = servers[shape]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(3):
            r = client.post(f"/shape/{i}", content=b"body %d" % i)
            assert r.status_code == 200, server.log()[-3000:]
            data = r.json()
            assert data["shape"] == shape
            assert data["path"] == f"/shape/{i}"
            assert data["body"] == f"body {i}"
            assert data["loop_ok"] is True
            assert data["loop_type"].startswith("uvloop")


@pytest.mark.parametrize("shape", ["future_consumer", "task_consumer"])
def test_awaitable_returned_by_consumer_is_awaited_and_its_failure_reported(servers, shape):
    """The future/task a consumer returns is awaited: its exception reaches the worker, which
    answers 500 and logs the traceback for this request."""
    server = servers[shape]
    tok = "awaited-failure-" + token()
    r = httpx.get(server.url + f"/fails/{tok}", params={"fail": tok}, timeout=10)
    assert r.status_code == 500
    log = wait_for_log(server, f"Error handling request GET /fails/{tok}")
    record = error_record(log, f"Error handling request GET /fails/{tok}")
    # The consumer's own exception, not a mere "never replied".
    assert f"RuntimeError: {tok}" in record
    assert "ConsumerDidNotReply" not in record


# -- the message ------------------------------------------------------------------------------------

MESSAGE_KEYS = sorted(["type", "reply_channel", "channel_layer", "http_version", "method", "scheme", "path",
                       "raw_path", "query_string", "root_path", "headers", "body", "client", "server"])


def _pairs(described_headers: dict) -> List[Tuple[str, str]]:
    """Headers as described by the consumer -> [(name, value)], checking they are byte pairs."""
    assert list(described_headers) == ["list"], described_headers
    pairs = []
    for item in described_headers["list"]:
        (container, values), = item.items()
        assert container in ("list", "tuple"), item
        assert len(values) == 2 and all(list(v) == ["bytes"] for v in values), item
        pairs.append((values[0]["bytes"], values[1]["bytes"]))
    return pairs


def _address(described: dict) -> Tuple[str, int]:
    (container, values), = described.items()
    assert container in ("list", "tuple"), described
    assert [list(v)[0] for v in values] == ["str", "int"], described
    return values[0]["str"], values[1]["int"]


def test_message_is_a_plain_dict_with_the_documented_keys(router):
    request = (b"POST /caf%C3%A9/x?a=1&b=%20x&c=%C3%A9 HTTP/1.1\r\n"
               b"Host: example.org\r\n"
               b"X-Dup: one\r\n"
               b"Content-Type: Text/Plain\r\n"
               b"x-DUP: Two\r\n"
               b"Content-Length: 5\r\n"
               b"\r\n"
               b"hello")
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(request)
        response, _ = read_response(sock, b"POST")
    assert response.status == 200, response.raw
    data = json.loads(response.body)
    assert data["message_type"] == "dict"
    assert data["keys"] == MESSAGE_KEYS
    v = data["values"]
    assert v["type"] == {"str": "http.request"}
    assert v["http_version"] == {"str": "1.1"}
    assert v["method"] == {"str": "POST"}
    assert v["scheme"] == {"str": "http"}
    assert v["path"] == {"str": "/café/x"}
    assert v["raw_path"] == {"bytes": "/caf%C3%A9/x"}
    assert v["query_string"] == {"bytes": "a=1&b=%20x&c=%C3%A9"}
    assert v["root_path"] == {"str": ""}
    assert _pairs(v["headers"]) == [
        ("host", "example.org"),
        ("x-dup", "one"),
        ("content-type", "Text/Plain"),
        ("x-dup", "Two"),
        ("content-length", "5"),
    ]
    assert _address(v["client"]) == ("127.0.0.1", client_port)
    assert _address(v["server"]) == ("127.0.0.1", router.port)
    assert data["body_type"] == "bytes"
    assert data["body_head"] == "hello"
    assert data["body_len"] == 5
    assert data["reply_channel_has_send"] is True


def test_message_of_http10_get_without_body(router):
    raw = raw_request(router.port, b"GET /plain HTTP/1.0\r\n\r\n")
    response, _ = parse_one(raw)
    assert response.status == 200
    data = json.loads(response.body)
    assert data["keys"] == MESSAGE_KEYS
    assert data["values"]["http_version"] == {"str": "1.0"}
    assert data["values"]["method"] == {"str": "GET"}
    assert data["values"]["query_string"] == {"bytes": ""}
    assert data["values"]["headers"] == {"list": []}
    assert data["body_type"] == "bytes" and data["body_len"] == 0


def test_message_body_of_chunked_request(router):
    request = (b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n1;ext=1\r\n!\r\n0\r\n\r\n")
    response, _ = parse_one(raw_request(router.port, request), b"POST")
    assert response.status == 200
    data = json.loads(response.body)
    assert data["body_head"] == "hello world!"
    assert data["body_len"] == 12


@pytest.mark.parametrize("chunked", [False, True])
def test_message_body_of_one_megabyte(router, chunked):
    payload = os.urandom(1 << 20)
    if chunked:
        # httpx sends an iterator of unknown length with Transfer-Encoding: chunked
        content = (payload[i:i + 50000] for i in range(0, len(payload), 50000))
    else:
        content = payload
    r = httpx.post(router.url + "/big", content=content, timeout=20)
    assert r.status_code == 200
    data = r.json()
    assert data["body_len"] == len(payload)
    assert data["body_sha256"] == hashlib.sha256(payload).hexdigest()
    header_names = [name for name, _ in _pairs(data["values"]["headers"])]
    assert ("transfer-encoding" in header_names) is chunked


def test_channel_layer_loop_is_the_running_loop(router):
    r = httpx.get(router.url + "/loop", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"sync": True, "task": True, "same_layer_loop": True}


# -- the reply channel ---------------------------------------------------------------------------------


def test_single_reply_gets_a_content_length(router):
    raw = raw_request(router.port, b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                   b"Connection: close\r\n\r\nabcde")
    response, after = parse_one(raw, b"POST")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.get_all(b"content-length") == [b"5"]
    assert response.get_all(b"transfer-encoding") == []
    assert response.get_all(b"content-type") == [b"application/octet-stream"]
    assert response.body == b"abcde" and after == b""


def test_first_reply_with_only_a_status(router):
    raw = raw_request(router.port, b"GET /minimal HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response, after = parse_one(raw)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.get_all(b"content-length") == [b"0"]
    assert response.get_all(b"transfer-encoding") == []
    assert response.body == b"" and after == b""


@pytest.mark.parametrize("last", ["absent", "false"])
def test_streaming_without_length_is_chunked_on_http11(router, last):
    n = 5
    request = b"GET /stream?n=%d&last=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (n, last.encode())
    raw = raw_request(router.port, request)
    response, after = parse_one(raw)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.get_all(b"transfer-encoding") == [b"chunked"]
    assert response.get_all(b"content-length") == []
    assert b"\r\ntransfer-encoding: chunked\r\n" in raw.lower()
    assert response.chunked and response.body == b"".join(stream_chunks(n))
    assert after == b""


def test_streamed_chunks_leave_before_the_response_ends(router):
    """The first chunk reaches the client while the consumer is still holding the rest back."""
    tok = token()
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"GET /stream?n=3&gate=1&token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % tok.encode())
        early = read_until(sock, b"chunk-0-;\r\n")
        assert b"chunk-0-;" in early, early
        assert b"chunk-1" not in early and not early.endswith(b"0\r\n\r\n")
        assert httpx.get(router.url + "/release", params={"token": tok}, timeout=5).status_code == 200
        raw = early + read_until(sock, b"\r\n0\r\n\r\n")
    response, after = parse_one(raw)
    assert response.chunked and response.body == b"".join(stream_chunks(3))
    assert after == b""


@pytest.mark.parametrize("connection_header", [b"", b"Connection: keep-alive\r\n"])
def test_streaming_without_length_is_close_delimited_on_http10(router, connection_header):
    n = 4
    started = time.monotonic()
    raw = raw_request(router.port, b"GET /stream?n=%d HTTP/1.0\r\n%s\r\n" % (n, connection_header), timeout=8)
    elapsed = time.monotonic() - started
    response, _ = parse_one(raw)  # close-delimited: the body runs to the end
    assert response.version.startswith(b"HTTP/1.") and response.status == 200
    assert response.get_all(b"transfer-encoding") == []
    assert response.get_all(b"content-length") == []
    assert response.get_all(b"connection") == [b"close"]
    assert response.body == b"".join(stream_chunks(n))  # raw bytes, no chunk framing
    assert elapsed < 5, "the server did not close the connection to end the body"


def test_streaming_with_content_length_is_not_chunked(router):
    n = 4
    total = sum(map(len, stream_chunks(n)))
    with KeepAliveClient(router.port) as client:
        response = client.request("GET", f"/stream?n={n}&cl=1")
        assert response.status == 200
        assert response.body == b"".join(stream_chunks(n))
        assert response.get(b"content-length") == str(total).encode()
        assert b"transfer-encoding" not in client.raw.lower()
        # The length ended the response, so the connection is still good for another.
        response = client.request("GET", "/minimal")
        assert response.status == 200 and response.body == b""


def test_send_from_another_thread(router):
    raw = raw_request(router.port, b"GET /thread-stream?n=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response, after = parse_one(raw)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.get_all(b"transfer-encoding") == [b"chunked"]
    body = response.body
    assert after == b""
    parts = body.split(b";")[:-1]
    assert parts[0].startswith(b"start:consumer-pool")
    thread = parts[0][len(b"start:"):]
    assert parts[1:-1] == [b"%d:%s" % (i, thread) for i in range(5)]
    assert parts[-1] == b"end"


def test_many_sequential_requests_on_one_keep_alive_connection(router):
    with httpx.Client(base_url=router.url, timeout=10) as client:
        ports = set()
        for i in range(40):
            body = b"request %d " % i + b"y" * i
            r = client.post(f"/seq/{i}", content=body)
            assert r.status_code == 200
            data = r.json()
            assert data["values"]["path"] == {"str": f"/seq/{i}"}
            assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
            ports.add(_address(data["values"]["client"]))
    assert len(ports) == 1, ports


def test_expect_100_continue(router):
    body = b"sent only after 100 Continue"
    head = (b"POST /echo-body HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(head)
        interim = read_until(sock, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        response, _ = read_response(sock, b"POST")
    assert response.status == 200
    assert response.body == body
    assert response.raw.startswith(b"HTTP/1.1 200 OK\r\n")


# -- malformed replies -------------------------------------------------------------------------------

BAD_REPLY_WORDS = {
    "no-status": "status",
    "str-content": "bytes",
    "str-header-name": "bytes",
    "str-header-value": "bytes",
    "headers-not-pairs": "headers",
    "unknown-key": "body",
    "str-status": "status",
    "not-a-dict": "dict",
}


@pytest.mark.parametrize("case", sorted(BAD_FIRST_REPLIES))
def test_malformed_first_reply_raises_in_the_consumer_and_the_client_gets_500(router, case):
    tok = token()
    r = httpx.get(f"{router.url}/bad/{case}", params={"token": tok}, timeout=10)
    assert r.status_code == 500
    report = get_report(router, tok)
    assert report["type"] == "InvalidReply", report
    assert "ValueError" in report["mro"]
    assert BAD_REPLY_WORDS[case] in report["message"]
    assert report["thread"] == "MainThread"  # raised right in the consumer's call
    # After a refused reply the response cannot be completed by a proper one either.
    assert report["second"] == "ResponseAlreadySent"
    marker = f"Error handling request GET /bad/{case}\n"
    record = error_record(wait_for_log(router, marker), marker)
    assert "sent an invalid reply" in record and report["message"] in record


def test_malformed_reply_from_a_thread_raises_there(router):
    tok = token()
    r = httpx.get(f"{router.url}/bad/in-thread", params={"token": tok}, timeout=10)
    assert r.status_code == 500
    report = get_report(router, tok)
    assert report["type"] == "InvalidReply"
    assert "bytes" in report["message"]
    assert report["thread"].startswith("consumer-pool")


@pytest.mark.parametrize("case,word", [("status-later", "status"), ("headers-later", "headers")])
def test_first_reply_keys_in_a_later_reply(router, case, word):
    """The head already went out: the exception reaches the consumer and the connection is cut."""
    tok = token()
    started = time.monotonic()
    raw = raw_request(router.port, b"GET /bad/%s?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (case.encode(), tok.encode()),
                      timeout=8)
    assert time.monotonic() - started < 5, "the connection was left hanging"
    _, rest = parse_head(raw)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"partial;" in rest
    assert b"more;" not in rest
    assert not rest.endswith(b"0\r\n\r\n")
    with pytest.raises((Malformed, Incomplete)):
        parse_one(raw)
    report = get_report(router, tok)
    assert report["type"] == "InvalidReply"
    assert word in report["message"] and "first reply" in report["message"]


def test_send_after_the_final_reply(router):
    tok = token()
    with KeepAliveClient(router.port) as client:
        response = client.request("GET", f"/bad/after-final?token={tok}")
        assert response.status == 200
        assert response.body == b"complete"
        report = get_report(router, tok)
        assert report["type"] == "ResponseAlreadySent"
        assert "RuntimeError" in report["mro"]
        assert "already ended" in report["message"]
        # The response was complete and well framed: the connection carries on.
        response = client.request("GET", "/minimal")
        assert response.status == 200
    assert b"again" not in client.raw


# -- consumers that fail or never answer -------------------------------------------------------------


def test_consumer_that_raises_gives_500_and_a_traceback(router):
    tok = token()
    r = httpx.get(router.url + "/raise", params={"token": tok}, timeout=10)
    assert r.status_code == 500
    log = wait_for_log(router, f"consumer failed on purpose {tok}")
    record = error_record(log, f"consumer failed on purpose {tok}")
    assert "Error handling request GET /raise\n" in record
    assert "Traceback (most recent call last)" in record
    assert f"RuntimeError: consumer failed on purpose {tok}" in record


def test_consumer_that_raises_mid_stream_gets_the_connection_closed(router):
    tok = token()
    started = time.monotonic()
    raw = raw_request(router.port, b"GET /raise-mid-stream?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % tok.encode(),
                      timeout=6)
    assert time.monotonic() - started < 3, "the connection was left open"
    _, rest = parse_head(raw)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"started;" in rest and not rest.endswith(b"0\r\n\r\n")
    assert b"500 Internal Server Error" not in raw  # never a second response
    record = error_record(wait_for_log(router, f"consumer failed mid-stream {tok}"),
                          f"consumer failed mid-stream {tok}")
    assert "Error handling request GET /raise-mid-stream\n" in record
    assert f"RuntimeError: consumer failed mid-stream {tok}" in record


def test_send_raises_oserror_once_the_client_is_gone(router):
    tok = token()
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"GET /stream-until-gone?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % tok.encode())
        assert b"first;" in read_until(sock, b"first;")
    report = get_report(router, tok, timeout=6)
    assert "OSError" in report["mro"], report
    assert report["sent"] < 300, "the consumer went on streaming long after the client left"


def test_consumer_keeping_its_message_keeps_the_request_open(router):
    """Long-polling: a kept message is not "dropped", however long it waits (the worker's
    garbage collection of dropped messages must leave it alone)."""
    tok = token()
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"GET /poll?token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % tok.encode())
        sock.settimeout(2.6)
        with pytest.raises(socket.timeout):
            sock.recv(1)
        r = httpx.get(router.url + "/answer", params={"token": tok}, timeout=5)
        assert r.json() == {"answered": True}
        response, _ = read_response(sock)
    assert response.status == 200
    assert response.body == b"answered " + tok.encode()


@pytest.mark.parametrize("path,limit", [
    ("/drop", 1.5),        # freed as the consumer returns: at once
    ("/drop-later", 1.5),  # freed as its task ends, 0.2 s later
    ("/drop-cycle", 3.5),  # freed only by the cyclic GC, which the worker runs after ~1-2 s
])
def test_consumer_dropping_its_message_gives_500_promptly(router, path, limit):
    started = time.monotonic()
    try:
        r = httpx.get(router.url + path, timeout=5)
    except httpx.ReadTimeout:
        pytest.fail(f"GET {path}: no answer in 5 s from a consumer that dropped its message")
    elapsed = time.monotonic() - started
    assert r.status_code == 500
    assert elapsed < limit, f"the 500 took {elapsed:.1f}s"
    record = error_record(wait_for_log(router, f"Error handling request GET {path}\n"),
                          f"Error handling request GET {path}\n")
    assert "dropped its message" in record
    assert "router" in record  # names the consumer


@pytest.mark.parametrize("path", ["/stream-drop", "/stream-drop-later"])
def test_streaming_consumer_dropping_its_channel_closes_the_connection(router, path):
    started = time.monotonic()
    raw = raw_request(router.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode(), timeout=6)
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"the connection stayed open {elapsed:.1f}s after the consumer let go"
    response, rest = parse_head(raw)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.get_all(b"transfer-encoding") == [b"chunked"]
    assert b"partial-body;" in rest or b"first;" in rest
    assert not rest.endswith(b"0\r\n\r\n"), "an abandoned response must not look complete"
    with pytest.raises((Malformed, Incomplete)):
        parse_one(raw)


def test_worker_still_serves_after_failures(router):
    # Runs after the failure tests of this module: the same worker keeps answering.
    r = httpx.get(router.url + "/after", timeout=5)
    assert r.status_code == 200
    assert r.json()["values"]["path"] == {"str": "/after"}
    assert len(router.worker_pids()) == 1
