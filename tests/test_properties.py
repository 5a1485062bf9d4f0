"""Property tests: however a stream of pipelined requests is cut into reads, the app sees the same
requests and the client gets the same bytes.

(a) in-process, many examples: ``HttpConnection`` over a fake transport (tests/protocol_harness.py);
(b) over a real Gunicorn, fewer examples: the same kind of stream sent in random pieces over a socket.

The app (tests/apps/http_apps.py: make_reflect_app) answers each request with a JSON description of
what it saw, framed as the request's ``x-resp`` header asks (app content-length, chunked, chunked
ending with an empty message, or server-counted), so every response depends on the request.
"""

from __future__ import annotations

import json
import re
import string
import time
from dataclasses import dataclass
from typing import List, Sequence, Tuple
from urllib.parse import quote, unquote

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.apps.http_apps import describe_request, make_reflect_app
from tests.conftest import GunicornServer
from tests.protocol_harness import Harness
from tests.wire import Incomplete, Response, connect, parse_one, read_to_close

# -- generated requests -----------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
# Header names that change framing or connection handling are set by the generator, not drawn.
RESERVED = {"content-length", "transfer-encoding", "connection", "expect", "upgrade", "host", "x-resp",
            "keep-alive", "proxy-connection", "te", "trailer"}
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " \t"
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD"]
RESPONSE_MODES = ["cl", "chunked", "chunked-empty-end", "single"]


@dataclass
class Req:
    method: str
    target: str
    headers: List[Tuple[str, str]]  # as sent (framing headers included)
    body: bytes
    wire: bytes

    def expected(self) -> dict:
        path, _, query = self.target.partition("?")
        return describe_request(self.method, unquote(path), query.encode("ascii"),
                                [[n.lower().encode("latin-1"), v.encode("latin-1")] for n, v in self.headers],
                                self.body)


# Names with "_" are valid tokens but Gunicorn's header_map (default "drop") keeps them from the
# app, so that `X_Forwarded_For` cannot pose as `X-Forwarded-For`: tests/test_conformance.py
# covers that rule; the streams generated here carry only names that reach the app.
header_names = st.text(TOKEN_CHARS.replace("_", ""), min_size=1, max_size=12).filter(
    lambda n: n.lower() not in RESERVED)
header_values = st.text(VALUE_CHARS, max_size=24).map(lambda v: v.strip(" \t"))
path_segments = st.one_of(
    st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@", max_size=8),
    st.text(max_size=4).map(lambda t: quote(t, safe="")),  # percent-encoded UTF-8, even "/"
)
queries = st.one_of(
    st.none(),
    st.text(string.ascii_letters + string.digits + "-._~=&+,;:@/?", max_size=16),
    st.text(max_size=6).map(lambda t: quote(t, safe="=&")),
)


@st.composite
def requests(draw) -> Req:
    method = draw(st.sampled_from(METHODS))
    path = "/" + "/".join(draw(st.lists(path_segments, max_size=4)))
    query = draw(queries)
    target = path if query is None else path + "?" + query
    headers = [(draw(header_names), draw(header_values)) for _ in range(draw(st.integers(0, 5)))]
    # Host and x-resp go anywhere among them, in any letter case.
    for name, value in (("Host", "example.test"), ("X-Resp", draw(st.sampled_from(RESPONSE_MODES)))):
        name = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)
        headers.insert(draw(st.integers(0, len(headers))), (name, value))
    framing = draw(st.sampled_from(["none", "content-length", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=300))
    if framing == "content-length":
        headers.append(("Content-Length", str(len(body))))
        encoded = body
    elif framing == "chunked":
        headers.append((draw(st.sampled_from(["Transfer-Encoding", "transfer-encoding"])), "chunked"))
        parts = []
        rest = body
        while rest:
            n = draw(st.integers(1, len(rest)))
            size = ("%x" if draw(st.booleans()) else "%X") % n
            ext = draw(st.sampled_from(["", ";ext", ";a=b", ';n="v v"']))
            parts.append(size.encode() + ext.encode() + b"\r\n" + rest[:n] + b"\r\n")
            rest = rest[n:]
        encoded = b"".join(parts) + b"0\r\n\r\n"
    else:
        encoded = b""
    # Optional whitespace around field values is not part of them (RFC 9110 5.5). (llhttp refuses a
    # tab after "chunked" in Transfer-Encoding, an accepted strictness: no tabs around that one.)
    def ows(name: str, choices: List[str]) -> str:
        if name.lower() == "transfer-encoding":
            choices = [c for c in choices if "\t" not in c]
        return draw(st.sampled_from(choices))

    lines = "".join("%s:%s%s%s\r\n" % (n, ows(n, ["", " ", "  ", "\t"]), v, ows(n, ["", "", " ", " \t"]))
                    for n, v in headers)
    head = "%s %s HTTP/1.1\r\n" % (method, target) + lines + "\r\n"
    return Req(method, target, headers, body, head.encode("latin-1") + encoded)


@st.composite
def split_streams(draw, max_requests: int = 12, max_pieces: int = 30):
    reqs = draw(st.lists(requests(), min_size=1, max_size=max_requests))
    stream = b"".join(r.wire for r in reqs)
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=max_pieces - 1))))
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    return reqs, stream, pieces


def parse_responses(data: bytes, reqs: Sequence[Req]) -> List[Response]:
    """The responses to ``reqs`` at the start of ``data``, in order; each must be complete."""
    out = []
    rest = data
    for i, req in enumerate(reqs):
        try:
            resp, rest = parse_one(rest, req.method.encode(), eof=False)
        except Incomplete:
            raise AssertionError(f"response {i + 1} of {len(reqs)} incomplete") from None
        out.append(resp)
    return out


def check_responses(data: bytes, reqs: Sequence[Req]) -> None:
    for req, resp in zip(reqs, parse_responses(data, reqs)):
        assert resp.status == 200
        if req.method == "HEAD":
            assert resp.body == b""
        else:
            assert json.loads(resp.body) == req.expected()


# -- (a) in-process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def run_harness(loop, pieces, yields=(), expect_close=False):
    records: list = []
    harness = Harness(make_reflect_app(records), loop)
    loop.run_until_complete(harness.feed(pieces, yields))
    out = harness.output()
    assert not harness.transport.writes_after_close
    if expect_close:
        assert harness.transport.closing, "the server kept a connection open after a bad request"
    else:
        assert not harness.transport.lost, "the server closed a healthy keep-alive connection"
    loop.run_until_complete(harness.close())
    return records, out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=split_streams(), yields=st.lists(st.integers(0, 3), max_size=30))
def test_split_stream_in_process(loop, data, yields):
    reqs, stream, pieces = data
    expected = [r.expected() for r in reqs]

    whole_records, whole_out = run_harness(loop, [stream])
    assert whole_records == expected
    check_responses(whole_out, reqs)

    split_records, split_out = run_harness(loop, pieces, yields)
    assert split_records == expected
    assert split_out == whole_out


# Requests the server must refuse, each answered with an error response and a close.
BAD_TAILS = [
    b"FOO / HTTP/1.1\r\nHost: t\r\n\r\n",                                   # unknown method
    b"XYZZY /x?y HTTP/1.1\r\nHost: t\r\n\r\n",                               # unknown method
    b"THIS IS NOT HTTP\r\n\r\n",                                             # garbage request line
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",                            # TLS hello
    b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",                    # bad header line
    b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: v\r\n\r\n",                      # space in a name
    b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",                                     # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                          # two Hosts
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",               # bad length
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    b"GET / HTTP/3.7\r\nHost: t\r\n\r\n",                                    # unknown version
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(requests(), max_size=4), tail=st.sampled_from(BAD_TAILS), data=st.data())
def test_split_stream_with_bad_tail_in_process(loop, reqs, tail, data):
    """Valid requests then a bad one: the valid ones are served, then one error response and a
    close - the same bytes however the stream is cut (the error must not depend on the reads)."""
    stream = b"".join(r.wire for r in reqs) + tail
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12), label="cuts")))
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    expected = [r.expected() for r in reqs]

    whole_records, whole_out = run_harness(loop, [stream], expect_close=True)
    assert whole_records == expected
    check_responses(whole_out, reqs)
    error = whole_out[sum(len(r.raw) for r in parse_responses(whole_out, reqs)):]
    assert re.match(rb"HTTP/1\.1 (4\d\d|5\d\d) ", error), error
    assert b"\r\nconnection: close\r\n" in error.split(b"\r\n\r\n")[0] + b"\r\n"

    split_records, split_out = run_harness(loop, pieces, expect_close=True)
    assert split_records == expected
    assert split_out == whole_out


def test_harness_honours_pause_reading(loop):
    """More pipelined requests than the server queues: it pauses reading, the harness holds the
    remaining pieces back until it resumes, and everything is answered in order."""
    reqs = [b"GET /r%d HTTP/1.1\r\nHost: x\r\nX-Resp: cl\r\n\r\n" % i for i in range(40)]
    records: list = []
    harness = Harness(make_reflect_app(records), loop)
    loop.run_until_complete(harness.feed([b"".join(reqs[:30]), *reqs[30:]]))
    assert harness.transport.pause_count >= 1
    assert [r["path"] for r in records] == ["/r%d" % i for i in range(40)]
    assert harness.output().count(b"HTTP/1.1 200 OK\r\n") == 40
    loop.run_until_complete(harness.close())


# -- (b) over a real Gunicorn -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    s = GunicornServer("tests.apps.http_apps:reflect_app")
    yield s
    s.stop()


LAST = b"GET /last HTTP/1.1\r\nHost: t\r\nX-Resp: cl\r\nConnection: close\r\n\r\n"
DATE = re.compile(rb"\r\ndate: [^\r\n]*\r\n", re.IGNORECASE)


def send_pieces(server: GunicornServer, pieces: Sequence[bytes], timeout: float = 10.0) -> bytes:
    """Send ``pieces`` a millisecond apart (so that they tend to arrive as separate reads) and
    read until the server closes, as the last request asks."""
    with connect(server.port, timeout) as s:
        for i, piece in enumerate(pieces):
            s.sendall(piece)
            if i < len(pieces) - 1:
                time.sleep(0.001)
        data, how = read_to_close(s, timeout)
    assert how == "eof", f"the server did not close after Connection: close ({how})"
    return data


def normalise(data: bytes) -> bytes:
    return DATE.sub(b"\r\ndate: <date>\r\n", data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=split_streams(max_requests=5, max_pieces=15))
def test_split_stream_over_gunicorn(server, data):
    reqs, stream, pieces = data
    last = Req("GET", "/last", [("Host", "t"), ("X-Resp", "cl"), ("Connection", "close")], b"", LAST)
    whole = send_pieces(server, [stream + LAST])
    check_responses(whole, [*reqs, last])
    split = send_pieces(server, [*pieces[:-1], pieces[-1] + LAST])
    assert normalise(split) == normalise(whole)
