"""HTTP/1.1 basics against a real Gunicorn master running our worker.

Keep-alive, pipelining, request body framings, HEAD, Expect: 100-continue, Date/Server, malformed
requests, app failures before and after the response started, streaming framings, app-given
Content-Length, response header injection and clients that go away mid-stream.

Requests are written as raw bytes (the framing is what is under test) and responses are parsed
by the strict parser of tests/wire.py, or inspected raw where the exact bytes matter.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import List, Tuple

import httpx
import pytest

from tests.apps.http_apps import RECORD_DIR_ENV
from tests.conftest import GunicornServer, wait_for
from tests.wire import connect, parse_head, read_responses, read_until_close


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("http-records")


@pytest.fixture(scope="module")
def server(record_dir):
    s = GunicornServer("tests.apps.http_apps:app", env={RECORD_DIR_ENV: str(record_dir)})
    yield s
    s.stop()


# -- client helpers ---------------------------------------------------------------------------------


def get(path: str, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"GET %s HTTP/%s\r\nHost: test\r\n%s\r\n" % (path.encode(), version, extra)


def worker_pid(server: GunicornServer) -> int:
    r = httpx.get(server.url + "/pid", timeout=5)
    assert r.status_code == 200
    return int(r.text)


# -- keep-alive ---------------------------------------------------------------------------------------


def test_many_requests_on_one_keep_alive_connection(server):
    with connect(server.port) as s:
        local_port = s.getsockname()[1]
        for i in range(20):
            s.sendall(get(f"/info/{i}"))
            (r,) = read_responses(s, [b"GET"])
            assert r.status == 200
            info = json.loads(r.body)
            assert info["path"] == f"/info/{i}"
            # The app saw every request come from this very socket.
            assert info["client"] == ["127.0.0.1", local_port]
            assert r.get(b"connection") is None  # HTTP/1.1 keep-alive is the default, not announced
        # Still open: one more request, then a polite close.
        s.sendall(get("/info/last", b"Connection: close\r\n"))
        data, closed = read_until_close(s)
    assert closed
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in data.lower()


def test_http10_keep_alive_is_honoured(server):
    with connect(server.port) as s:
        port = s.getsockname()[1]
        for i in range(3):
            s.sendall(get(f"/info/{i}", b"Connection: keep-alive\r\n", version=b"1.0"))
            (r,) = read_responses(s, [b"GET"])
            assert r.status == 200
            assert r.get(b"connection").lower() == b"keep-alive"
            assert r.get(b"content-length") == b"%d" % len(r.body)
            info = json.loads(r.body)
            assert info["http_version"] == "1.0"
            assert info["path"] == f"/info/{i}"
            assert info["client"][1] == port
        # The connection is still usable: the server has not closed it after three responses.
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(1)


def test_http10_without_keep_alive_closes(server):
    with connect(server.port) as s:
        s.sendall(get("/info/x", version=b"1.0"))
        data, closed = read_until_close(s)
    assert closed, "an HTTP/1.0 connection without keep-alive must be closed after the response"
    resp, body = parse_head(data)
    assert data.startswith(b"HTTP/1.1 200")
    assert resp.get_all(b"connection") == [b"close"]
    assert json.loads(body)["http_version"] == "1.0"


def test_http11_connection_close_request_closes(server):
    with connect(server.port) as s:
        s.sendall(get("/info/x", b"Connection: close\r\n") + get("/info/never"))
        data, closed = read_until_close(s)
    assert closed
    assert data.count(b"HTTP/1.1 ") == 1, "nothing after a request with Connection: close may be answered"
    assert b"/info/never" not in data


# -- pipelining ---------------------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(server):
    reqs = []
    methods = []
    for i in range(10):
        if i % 3 == 1:
            body = b"body-%d" % i
            reqs.append(b"POST /info/p%d?i=%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                        % (i, i, len(body), body))
            methods.append("POST")
        elif i == 5:
            reqs.append(b"HEAD /info/h5?i=5 HTTP/1.1\r\nHost: t\r\n\r\n")
            methods.append("HEAD")
        else:
            reqs.append(get(f"/info/g{i}?i={i}"))
            methods.append("GET")
    with connect(server.port) as s:
        s.sendall(b"".join(reqs))  # one write, ten requests
        responses = read_responses(s, [m.encode() for m in methods])
        # Nothing more than the ten responses was sent.
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(1)
    assert [r.status for r in responses] == [200] * 10
    for i, (method, r) in enumerate(zip(methods, responses)):
        if method == "HEAD":
            assert r.body == b""
            continue
        info = json.loads(r.body)
        assert info["method"] == method
        assert info["query_string"] == f"i={i}"
        assert info["path"].endswith(str(i)) and info["path"].startswith("/info/")
        if method == "POST":
            assert info["body"] == f"body-{i}"
        else:
            assert info["body"] == ""


def test_pipelined_valid_request_then_garbage(server):
    with connect(server.port) as s:
        s.sendall(get("/info/ok") + b"THIS IS NOT HTTP\r\n\r\n")
        data, closed = read_until_close(s)
    assert closed
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert b"/info/ok" in rest
    assert data.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 400 " in rest


# -- request bodies -----------------------------------------------------------------------------------


def test_content_length_body(server):
    with connect(server.port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world" + get("/info/after"))
        r1, r2 = read_responses(s, [b"POST", b"GET"])
    assert r1.status == 200 and r1.body == b"hello world"
    assert json.loads(r2.body)["path"] == "/info/after"


def test_chunked_body_with_extensions_and_trailers(server):
    body = (b"5;ext=1\r\nhello\r\n"
            b"6;name=\"quoted value\";other\r\n world\r\n"
            b"A\r\n0123456789\r\n"
            b"0\r\nX-Trailer: trailer-value\r\nX-Other: 2\r\n\r\n")
    req = b"POST /info/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with connect(server.port) as s:
        s.sendall(req + get("/info/after"))
        r1, r2 = read_responses(s, [b"POST", b"GET"])
    assert r1.status == 200
    info = json.loads(r1.body)
    assert info["body"] == "hello world0123456789"
    # Trailer fields are not request headers (RFC 9110 6.5.1): they must not be merged into them.
    names = [n for n, _ in info["headers"]]
    assert names == ["host", "transfer-encoding"], info["headers"]
    # The connection stayed in sync: the next request was parsed after the trailers.
    assert r2.status == 200 and json.loads(r2.body)["path"] == "/info/after"


def test_chunked_body_split_in_many_writes(server):
    pieces = [b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer", b"-Encoding: chunked\r\n\r\n3", b"\r\nabc", b"\r\n",
              b"4\r\nde", b"fg\r\n0", b"\r\n", b"\r\n"]
    with connect(server.port) as s:
        for p in pieces:
            s.sendall(p)
            time.sleep(0.01)
        (r,) = read_responses(s, [b"POST"])
    assert r.body == b"abcdefg"


def test_big_content_length_body(server):
    payload = bytes(range(256)) * (5 * 1024 * 4)  # 5 MiB
    r = httpx.post(server.url + "/echo", content=payload, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(payload))
    assert r.content == payload


def test_big_chunked_body(server):
    block = bytes(range(256)) * 256  # 64 KiB

    def gen():
        for i in range(120):  # > 5 MB in chunks of varying size
            yield block[: 1000 + (i * 7919) % len(block)] if i % 2 else block

    expected = b"".join(gen())
    r = httpx.post(server.url + "/echo", content=gen(), timeout=30)
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 200
    assert r.content == expected
    assert len(expected) > 5_000_000


# -- HEAD ----------------------------------------------------------------------------------------------


def _drop_date(headers: List[Tuple[bytes, bytes]]) -> List[Tuple[bytes, bytes]]:
    return [(n, v) for n, v in headers if n != b"date"]


@pytest.mark.parametrize("path", ["/", "/cl-stream", "/stream"])
def test_head_has_get_headers_and_no_body(server, path):
    with connect(server.port) as s:
        # HEAD, GET, HEAD, GET on one connection: any stray body byte after a HEAD answer would
        # corrupt the parsing of the next response.
        req_get = get(path)
        req_head = b"HEAD %s HTTP/1.1\r\nHost: test\r\n\r\n" % path.encode()
        s.sendall(req_head + req_get + req_head + get("/info/after"))
        head, got, head2, after = read_responses(s, [b"HEAD", b"GET", b"HEAD", b"GET"])
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(1)
    assert head.status == got.status == 200
    assert _drop_date(head.headers) == _drop_date(got.headers)
    assert head.body == b"" and head2.body == b""
    assert got.body != b""
    if path != "/stream":
        assert head.get(b"content-length") == b"%d" % len(got.body)
    assert json.loads(after.body)["path"] == "/info/after"


def test_head_response_bytes_are_head_only(server):
    """Raw check: the bytes of a HEAD answer end with the blank line of its head."""
    for path in ("/", "/stream", "/cl-stream"):
        with connect(server.port) as s:
            s.sendall(b"HEAD %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n" % path.encode())
            data, closed = read_until_close(s)
        assert closed
        assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1, (path, data)


# -- Expect: 100-continue -------------------------------------------------------------------------------


def test_expect_100_continue_sent_when_app_reads(server):
    with connect(server.port) as s:
        s.sendall(b"POST /slow-echo?delay=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        # The app sleeps 1 s before reading: nothing may arrive before that.
        s.settimeout(0.4)
        with pytest.raises(socket.timeout):
            s.recv(100)
        s.settimeout(5)
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = s.recv(100)
            assert chunk, "closed before 100 Continue"
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        (r,) = read_responses(s, [b"POST"])
    assert r.status == 200 and r.body == b"hello"


def test_expect_100_continue_not_sent_when_app_does_not_read(server):
    with connect(server.port) as s:
        s.sendall(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        data = b""
        s.settimeout(5)
        while b"answered without reading" not in data:
            chunk = s.recv(65536)
            assert chunk, f"closed before the response: {data!r}"
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"100 Continue" not in data


def test_expect_100_continue_not_sent_for_http10(server):
    with connect(server.port) as s:
        s.sendall(b"POST /echo HTTP/1.0\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
        data, closed = read_until_close(s)
    assert closed
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\nhello")


# -- Date and Server ------------------------------------------------------------------------------------

IMF_FIXDATE = re.compile(rb"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         rb"\d{4} \d\d:\d\d:\d\d GMT$")


def test_date_and_server_headers(server):
    with connect(server.port) as s:
        s.sendall(get("/", b"Connection: close\r\n"))
        data, _ = read_until_close(s)
    resp, _ = parse_head(data)
    assert len(resp.get_all(b"date")) == 1
    date = resp.get_all(b"date")[0]
    assert IMF_FIXDATE.match(date), date
    assert abs(parsedate_to_datetime(date.decode()).timestamp() - time.time()) < 5
    assert resp.get_all(b"server") == [b"asgiworker"]


def test_date_header_advances(server):
    with connect(server.port) as s:
        s.sendall(get("/"))
        (r1,) = read_responses(s, [b"GET"])
        time.sleep(2.2)  # the keep-alive timeout is 2 s: use a new connection
    with connect(server.port) as s:
        s.sendall(get("/"))
        (r2,) = read_responses(s, [b"GET"])
    d1 = parsedate_to_datetime(r1.get(b"date").decode())
    d2 = parsedate_to_datetime(r2.get(b"date").decode())
    assert 1 <= (d2 - d1).total_seconds() <= 6


# -- malformed requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03hello",  # a TLS ClientHello sent to plain HTTP
    b"GET / HTTP/1.1\r\nHost: t\r\nThis is not a header line\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: value\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
], ids=["garbage-request-line", "tls", "header-without-colon", "space-in-name", "bad-content-length",
        "bad-chunk-size"])
def test_malformed_request_gets_400_and_close(server, request_bytes):
    with connect(server.port) as s:
        s.sendall(request_bytes)
        data, closed = read_until_close(s)
    assert closed, f"connection left open after {data!r}"
    resp, body = parse_head(data)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert resp.get_all(b"connection") == [b"close"]
    assert resp.get_all(b"content-length") == [b"%d" % len(body)]
    assert data.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("pieces", [
    [b"FOO /x HTTP/1.1\r\nHost: t\r\n\r\n"],
    [b"FOO /x HT", b"TP/1.1\r\nHost: t\r\n\r\n"],
    [b"GET /info/ok HTTP/1.1\r\nHost: t\r\n\r\n", b"FOO /x HT", b"TP/1.1\r\nHost: t\r\n\r\n"],
], ids=["one-write", "split-request-line", "after-a-valid-request"])
def test_unknown_method_gets_501_however_it_arrives(server, pieces):
    """A well-formed request with a method we do not implement: 501 (RFC 9110 9.1), whatever
    the TCP segmentation."""
    with connect(server.port) as s:
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.05)  # separate reads on the server side
        data, closed = read_until_close(s)
    assert closed
    statuses = re.findall(rb"HTTP/1\.1 (\d\d\d) ", data)
    assert statuses[-1] == b"501", data
    assert statuses[:-1] == [b"200"] * (len(pieces) - 2 if len(pieces) > 2 else 0)


# -- application failures ------------------------------------------------------------------------------


def test_app_exception_gives_500_and_traceback_in_log(server):
    marker = "kaboom-" + uuid.uuid4().hex
    with connect(server.port) as s:
        s.sendall(get(f"/error?msg={marker}"))
        data, closed = read_until_close(s)
    resp, body = parse_head(data)
    assert data.startswith(b"HTTP/1.1 500 ")
    assert resp.get_all(b"content-length") == [b"%d" % len(body)]
    assert marker.encode() not in data, "the exception text must not be shown to the client"
    assert closed
    log = wait_for(lambda: marker in server.log() and server.log(), timeout=5)
    assert log, "the exception message is not in gunicorn's log"
    tail = log[log.rfind("Traceback", 0, log.index(marker)):]
    assert tail.startswith("Traceback (most recent call last):")
    assert f"RuntimeError: {marker}" in tail
    assert "http_apps.py" in tail  # the frame that raised


def test_app_exception_after_response_started_cuts_connection(server):
    marker = "midstream-" + uuid.uuid4().hex
    with connect(server.port) as s:
        # A pipelined second request: it must not be answered on a connection whose last
        # response is broken.
        s.sendall(get(f"/stream-error?msg={marker}") + get("/info/second"))
        data, closed = read_until_close(s)
    assert closed
    resp, rest = parse_head(data)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert resp.get_all(b"transfer-encoding") == [b"chunked"]
    assert b"first part;" in rest
    assert data.count(b"HTTP/1.") == 1, "no second response (500 or other) after a started one"
    assert not rest.endswith(b"0\r\n\r\n"), "the broken response must not look complete"
    assert wait_for(lambda: marker in server.log(), timeout=5)


# -- streaming responses ---------------------------------------------------------------------------------

STREAM_BODY = b"".join(b"chunk-%d;" % i for i in range(5))


def test_streaming_response_is_chunked_for_http11(server):
    with connect(server.port) as s:
        s.sendall(get("/stream?n=5") + get("/info/after"))
        r, after = read_responses(s, [b"GET", b"GET"])
    assert r.get(b"transfer-encoding") == b"chunked"
    assert r.get(b"content-length") is None
    assert r.body == STREAM_BODY
    assert json.loads(after.body)["path"] == "/info/after"
    # And the chunk framing on the wire is the plain one.
    with connect(server.port) as s:
        s.sendall(get("/stream?n=2", b"Connection: close\r\n"))
        data, _ = read_until_close(s)
    assert parse_head(data)[1] == b"8\r\nchunk-0;\r\n8\r\nchunk-1;\r\n0\r\n\r\n"


@pytest.mark.parametrize("extra", [b"", b"Connection: keep-alive\r\n"])
def test_streaming_response_is_close_delimited_for_http10(server, extra):
    with connect(server.port) as s:
        s.sendall(get("/stream?n=5", extra, version=b"1.0"))
        data, closed = read_until_close(s)
    assert closed, "without a length, the end of an HTTP/1.0 body is the close"
    resp, body = parse_head(data)
    assert data.startswith(b"HTTP/1.1 200")
    assert not resp.get_all(b"transfer-encoding")
    assert not resp.get_all(b"content-length")
    assert resp.get_all(b"connection") == [b"close"]
    assert body == STREAM_BODY


def test_app_content_length_is_respected(server):
    with connect(server.port) as s:
        s.sendall(get("/cl-stream") + get("/info/after"))
        r, after = read_responses(s, [b"GET", b"GET"])
    assert r.get_all(b"content-length") == [b"30"]
    assert r.get(b"transfer-encoding") is None
    assert r.body == b"0123456789abcdefghijKLMNOPQRST"
    assert json.loads(after.body)["path"] == "/info/after"  # kept alive


def test_app_content_length_keeps_http10_alive(server):
    with connect(server.port) as s:
        s.sendall(get("/cl-stream", b"Connection: keep-alive\r\n", version=b"1.0"))
        (r,) = read_responses(s, [b"GET"])
        assert r.get(b"connection").lower() == b"keep-alive"
        assert r.body == b"0123456789abcdefghijKLMNOPQRST"
        s.sendall(get("/info/after", b"Connection: keep-alive\r\n", version=b"1.0"))
        (after,) = read_responses(s, [b"GET"])
    assert json.loads(after.body)["path"] == "/info/after"


# -- response header injection ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["crlf", "lf", "cr", "name"])
def test_response_header_injection_never_reaches_the_wire(server, kind):
    with connect(server.port) as s:
        s.sendall(get(f"/inject?kind={kind}"))
        data, closed = read_until_close(s)
    assert b"x-injected" not in data.lower()
    assert b"should never be sent" not in data
    assert data.startswith(b"HTTP/1.1 500 ")
    assert closed


# -- client disconnects ---------------------------------------------------------------------------------


def test_client_disconnect_while_streaming_raises_oserror_in_app(server, record_dir):
    pid_before = worker_pid(server)
    workers_before = server.worker_pids()
    rec = "disconnect-" + uuid.uuid4().hex
    with connect(server.port) as s:
        s.sendall(get(f"/forever?rec={rec}"))
        got = b""
        while len(got) < 8192:
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    # The socket is closed: the app's next sends must fail with an OSError.
    path = record_dir / rec
    assert wait_for(path.exists, timeout=10), "the app never saw its send fail"
    record = json.loads(path.read_text())
    assert record["is_oserror"] is True, record
    assert "OSError" in record["mro"]
    # The worker survived and still answers.
    assert worker_pid(server) == pid_before
    assert server.worker_pids() == workers_before
