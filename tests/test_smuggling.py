"""Request smuggling: message framing (Content-Length, Transfer-Encoding, chunked) per RFC 9112
section 6 and 7, tested with exact bytes, plus a Hypothesis property over mutated requests.

Every rejection is checked by ``assert_rejected``: one complete response with the status and
``connection: close``, then the close, and the valid request pipelined after the bad one
(``GET /count?key=K``) never reaches the app.

These are rules of pure protocol: each test takes a ``target`` (tests/targets.py), in-process on
the protocol harness by default; those marked ``@end_to_end`` run through a real Gunicorn too, and
the worker's survival is checked on that Gunicorn.
"""

from __future__ import annotations

import json
import os

import pytest
import uvloop
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from asgiworker.config import Settings
from tests.apps.conformance_apps import app
from tests.conformance_client import assert_rejected, get, hits, new_key
from tests.conftest import GunicornServer
from tests.targets import InProcess, chosen_target, end_to_end, exchange
from tests.wire import parse_all, parse_one

APP = "tests.apps.conformance_apps:app"


@pytest.fixture(scope="module")
def gunicorn_server():
    s = GunicornServer(APP, "--keep-alive", "5")
    s.first_pids = s.worker_pids()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def in_process():
    loop = uvloop.new_event_loop()
    yield InProcess(app, loop, Settings(keepalive=5.0))
    loop.close()


@pytest.fixture(scope="module")
def target(request, in_process):
    return chosen_target(request, in_process, "gunicorn_server")


def post(headers: bytes, body: bytes = b"", path: bytes = b"/echo", version: bytes = b"HTTP/1.1") -> bytes:
    host = b"Host: a\r\n" if version == b"HTTP/1.1" else b""
    return b"POST " + path + b" " + version + b"\r\n" + host + headers + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"


# -- Content-Length -----------------------------------------------------------------------------

@end_to_end
def test_content_length_with_transfer_encoding_400(target):
    assert_rejected(target, post(b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n"), 400)
    assert_rejected(target, post(CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\n"), 400)
    assert_rejected(target, post(CHUNKED + b"Content-Length: 0\r\n", b"0\r\n\r\n"), 400)


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 1, 2\r\n",
    b"Content-Length: 6\r\nContent-Length: 5\r\n",
], ids=["two-lines", "list", "two-lines-reversed"])
def test_differing_content_lengths_400(target, headers):
    assert_rejected(target, post(headers, b"hello"), 400)


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: 5,5\r\n",
], ids=["two-lines", "list", "list-no-space"])
def test_repeated_identical_content_length_400(target, headers):
    assert_rejected(target, post(headers, b"hello"), 400)


@pytest.mark.parametrize("value", [
    b"+5", b"-1", b"0x5", b"5 5", b"", b"99999999999999999999999", b"5.0", b"5a", b"1_0", b"5,",
    b"\xd9\xa5",  # ARABIC-INDIC DIGIT FIVE
    b"\xef\xbc\x95",  # FULLWIDTH DIGIT FIVE
    b"5\x00",
])
def test_malformed_content_length_400(target, value):
    assert_rejected(target, post(b"Content-Length: " + value + b"\r\n", b"hello"), 400)


@pytest.mark.parametrize("line", [
    b"Content-Length : 5",
    b"Content-Length\t: 5",
    b" Content-Length: 5",
    b"Content-Length:\x0b5",
    b"Content-Length: 1\r\n 4",
])
def test_obfuscated_content_length_400(target, line):
    # (the header rules of test_conformance.py, at their most dangerous)
    req = b"POST /echo HTTP/1.1\r\nHost: a\r\nX-A: b\r\n" + line + b"\r\n\r\nhello"
    assert_rejected(target, req, 400)


@pytest.mark.parametrize("value", [b"005", b"  5  ", b"5\t"])
def test_valid_content_length_forms_accepted(target, value):
    data, closed = exchange(target, post(b"Content-Length: " + value + b"\r\nConnection: close\r\n", b"hello"))
    resp, rest = parse_one(data)
    assert resp.status == 200 and resp.body == b"hello" and rest == b""


# -- Transfer-Encoding --------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    b"Transfer-Encoding: chunked, gzip\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
], ids=["chunked-gzip", "chunked-identity", "chunked-twice-list", "chunked-twice-lines", "chunked-then-gzip-lines"])
def test_chunked_not_once_and_final_400(target, headers):
    assert_rejected(target, post(headers, b"5\r\nhello\r\n0\r\n\r\n"), 400)


@end_to_end
@pytest.mark.parametrize("headers", [
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
], ids=["gzip-chunked", "identity"])
def test_unknown_transfer_coding_501(target, headers):
    assert_rejected(target, post(headers, b"5\r\nhello\r\n0\r\n\r\n"), 501)


@pytest.mark.parametrize("line", [
    b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\x0bchunked",
    b"Transfer-Encoding:\r\n chunked",
    b" Transfer-Encoding: chunked",
])
def test_obfuscated_transfer_encoding_400(target, line):
    req = b"POST /echo HTTP/1.1\r\nHost: a\r\nX-A: b\r\n" + line + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert_rejected(target, req, 400)


def test_transfer_encoding_in_http10_400(target):
    assert_rejected(target, post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n", version=b"HTTP/1.0"), 400)
    assert_rejected(target, post(CHUNKED + b"Content-Length: 5\r\n", b"hello", version=b"HTTP/1.0"), 400)


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b" chunked "])
def test_chunked_accepted_case_insensitive(target, value):
    data, closed = exchange(target, post(b"Transfer-Encoding: " + value + b"\r\nConnection: close\r\n",
                                              b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
    resp, rest = parse_one(data)
    assert resp.status == 200 and resp.body == b"hello world" and rest == b""


# -- chunked framing ----------------------------------------------------------------------------

BAD_CHUNKED_BODIES = {
    "size-not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "size-negative": b"-1\r\nhello\r\n0\r\n\r\n",
    "size-0x": b"0x5\r\nhello\r\n0\r\n\r\n",
    "size-20-hex-digits": b"1" + b"0" * 19 + b"\r\nhello\r\n0\r\n\r\n",
    "size-overflow-ffff": b"f" * 20 + b"\r\nhello\r\n0\r\n\r\n",
    "size-empty": b"\r\nhello\r\n0\r\n\r\n",
    "size-leading-space": b" 5\r\nhello\r\n0\r\n\r\n",
    "ext-bare-semicolon": b"5;\r\nhello\r\n0\r\n\r\n",
    "ext-ctl": b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
    "ext-nul": b"5;a\x00\r\nhello\r\n0\r\n\r\n",
    "ext-bare-cr": b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    "data-not-followed-by-crlf": b"5\r\nhelloXX\r\n0\r\n\r\n",
    "data-crlf-missing": b"5\r\nhello0\r\n\r\n",
    "data-bare-lf-after": b"5\r\nhello\n0\r\n\r\n",
    "size-line-bare-lf": b"5\nhello\r\n0\r\n\r\n",
}


@end_to_end
@pytest.mark.parametrize("name", list(BAD_CHUNKED_BODIES))
def test_bad_chunked_body_400(target, name):
    assert_rejected(target, post(CHUNKED, BAD_CHUNKED_BODIES[name]), 400)


def test_missing_final_crlf_400(target):
    # "0\r\n" then the pipelined request line is read as a trailer line without a colon
    assert_rejected(target, post(CHUNKED, b"5\r\nhello\r\n0\r\n"), 400)


@pytest.mark.parametrize("body", [
    b"5;name=value\r\nhello\r\n0\r\n\r\n",
    b"5;name=\"quoted value\"\r\nhello\r\n0;last\r\n\r\n",
    b"5;a;b=c\r\nhello\r\n0\r\n\r\n",
    b"00005\r\nhello\r\n000\r\n\r\n",
    b"1\r\nh\r\n4\r\nello\r\n0\r\n\r\n",
])
def test_valid_chunked_bodies_accepted(target, body):
    data, closed = exchange(target, post(CHUNKED + b"Connection: close\r\n", body))
    resp, rest = parse_one(data)
    assert resp.status == 200 and resp.body == b"hello" and rest == b""


@end_to_end
def test_trailers_never_merged_into_scope_headers(target):
    req = (b"POST /scope HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
           b"GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data, closed = exchange(target, req)
    responses, rest = parse_all(data)
    assert len(responses) == 2 and rest == b"", data
    d = json.loads(responses[0].body)
    assert d["body"] == "hello"
    assert d["headers"] == [["host", "a"], ["transfer-encoding", "chunked"]]
    assert responses[1].body == b"hello"


@end_to_end
def test_content_length_body_not_reparsed(target):
    # a body that looks like a request is only ever a body
    key = new_key()
    inner = b"GET /count?key=%s HTTP/1.1\r\nHost: a\r\n\r\n" % key.encode()
    req = post(b"Content-Length: %d\r\n" % len(inner), inner) + b"GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    data, closed = exchange(target, req)
    responses, rest = parse_all(data)
    assert [r.body for r in responses] == [inner, b"hello"] and rest == b""
    assert hits(target, key) == 0


# -- the property: mutations of valid requests --------------------------------------------------

BASES = [
    b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
    b"3;e=v\r\nhel\r\n2\r\nlo\r\n0\r\nX-T: t\r\n\r\n",
]

SMUGGLE_LINES = [
    b"Content-Length: 0", b"Content-Length: 3", b"Content-Length: 5", b"Content-Length: 500",
    b"Content-Length: 5, 5", b"Content-Length: 1, 2", b"Content-Length: +5", b"Content-Length: -1",
    b"Content-Length: 0x5", b"Content-Length: 99999999999999999999999", b"Content-Length : 5",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, gzip", b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked, chunked", b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\x0bchunked", b"Transfer-Encoding: xchunked", b" Transfer-Encoding: chunked",
    b"Transfer-Encoding:\tchunked", b"Host: b", b"Host: a b", b"Expect: 100-continue", b"Connection: close",
    b"X-Fold: a\r\n b", b"X-Nul: a\x00b", b"X-Cr: a\rb",
]

MUTATION_BYTES = st.sampled_from(list(b" \t\r\n\x00\x0b\x7f\xff:;,=-+/?#%\"'0159afxzACHZ"))


@st.composite
def mutated_requests(draw):
    request = bytearray(draw(st.sampled_from(BASES)))
    n = draw(st.integers(1, 3))
    for _ in range(n):
        kind = draw(st.sampled_from(["line", "replace", "insert", "delete", "line"]))
        head_end = request.find(b"\r\n\r\n")
        head_end = len(request) if head_end < 0 else head_end + 4
        if kind == "line":
            first_eol = request.find(b"\r\n")
            if first_eol < 0:
                continue
            # insert a smuggling header line at a random line boundary of the head
            boundaries = [i + 2 for i in range(first_eol, head_end - 2) if request[i:i + 2] == b"\r\n"]
            at = draw(st.sampled_from(boundaries))
            request[at:at] = draw(st.sampled_from(SMUGGLE_LINES)) + b"\r\n"
        else:
            # byte edits mostly in the head, sometimes in the body
            limit = len(request) if draw(st.integers(0, 4)) == 0 else head_end
            if limit == 0:
                continue
            at = draw(st.integers(0, limit - 1))
            if kind == "replace":
                request[at] = draw(MUTATION_BYTES)
            elif kind == "insert":
                request[at:at] = bytes(draw(st.lists(MUTATION_BYTES, min_size=1, max_size=3)))
            else:
                del request[at:at + draw(st.integers(1, 3))]
    return bytes(request)


# No shrinking: a failing example may cost seconds of timeout each, and the generated requests are
# a base request plus one to three edits, small enough to read as they are.
@end_to_end
@settings(max_examples=100, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated=mutated_requests())
@example(mutated=b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\nX-A: b\r\n\r\n")
@example(mutated=b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-A: b\r\n\r\n")
@example(mutated=b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n")
@example(mutated=b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\nhello")
@example(mutated=b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")
def test_mutated_requests_never_smuggle(target, mutated):
    key = new_key()
    canary = b"GET /count?key=%s HTTP/1.1\r\nHost: a\r\n\r\n" % key.encode()
    # half-close after sending: whatever the target waits for will never come, so it has to end
    data, closed = exchange(target, mutated + canary, timeout=4, shut_wr=True)
    assert closed, f"neither answered nor closed within 4 s: {mutated!r} -> {data!r}"
    responses, rest = parse_all(data)
    assert rest == b"", f"unparseable bytes from the target: {rest!r} (all: {data!r})"
    finals = [r for r in responses if not 100 <= r.status < 200]
    assert len(finals) <= 2, data
    statuses = [r.status for r in finals]
    if isinstance(target, GunicornServer):
        assert os.path.exists(f"/proc/{target.first_pids[0]}"), "the worker died"
    ran = hits(target, key)
    canary_seen = sum(1 for r in finals if r.body == b"canary:" + key.encode())
    assert ran == canary_seen, f"canary ran {ran}x but {canary_seen} canary responses: {data!r}"
    errors = [r for r in finals if r.status >= 400]
    if errors:
        # a rejection is the last thing on the connection and nothing after it ran
        assert finals[-1] is errors[0] and len(errors) == 1, statuses
        assert errors[0].get(b"connection") == b"close", errors[0].headers
        assert ran == 0, f"{mutated!r} was rejected ({statuses}) but the pipelined request ran"


def test_worker_survived_everything(gunicorn_server):
    assert gunicorn_server.worker_pids() == gunicorn_server.first_pids
    assert get(gunicorn_server, "/cl").body == b"hello"
