"""The HTTP/1.1 behaviour contract (docs/http.md), tested on the wire with exact bytes.

Every rule in docs/http.md names its test here (or in test_smuggling.py / test_flow_control.py).
Rejections are checked the same way everywhere (``assert_rejected``): the bad request is followed,
on the same connection, by a valid pipelined ``GET /count?key=K`` and we require exactly one
response (the rejection: status, ``connection: close``, ``content-type: text/plain;
charset=utf-8``, a short body, correct framing), then the server's close, and, through a separate
connection, that the app never saw ``/count?key=K``.

Rules of pure protocol take a ``target`` (tests/targets.py): in-process on the protocol harness, with
the same app and limits as the Gunicorn below, and, for those marked ``@end_to_end``, through that
Gunicorn too. Rules that need the process (real-clock timeouts, its log, the worker surviving, the
socket's addresses, what arrives while the connection is still open) take the Gunicorn ``server``.
"""

from __future__ import annotations

import json
import time

import gunicorn.config
import pytest
import uvloop

from asgiworker.config import Settings
from tests.apps.conformance_apps import BAD_HEADER_CASES, app
from tests.conformance_client import CANARY, assert_rejected, hits, log_since, new_key
from tests.conftest import GunicornServer
from tests.targets import InProcess, Target, chosen_target, end_to_end, exchange
from tests.wire import Response, connect, nothing_within, parse_all, parse_one, read_response, read_until_close

APP = "tests.apps.conformance_apps:app"
HAS_ROOT_PATH = any(s.name == "root_path" for s in gunicorn.config.KNOWN_SETTINGS)
ROOT_PATH = "/mnt"
LIMIT_LINE = 512
LIMIT_FIELDS = 30
LIMIT_FIELD_SIZE = 1024
HEADER_TIMEOUT = 2
KEEPALIVE_SHORT = 1


@pytest.fixture(scope="module")
def server():
    args = ["--keep-alive", "5",
            "--limit-request-line", str(LIMIT_LINE),
            "--limit-request-fields", str(LIMIT_FIELDS),
            "--limit-request-field_size", str(LIMIT_FIELD_SIZE)]
    if HAS_ROOT_PATH:
        args += ["--root-path", ROOT_PATH]
    s = GunicornServer(APP, *args)
    s.first_pids = s.worker_pids()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def in_process():
    """The same app and limits as ``server``, served in-process by the protocol harness."""
    loop = uvloop.new_event_loop()
    yield InProcess(app, loop, Settings(keepalive=5.0, limit_request_line=LIMIT_LINE,
                                        limit_request_fields=LIMIT_FIELDS,
                                        limit_request_field_size=LIMIT_FIELD_SIZE,
                                        root_path=ROOT_PATH if HAS_ROOT_PATH else ""))
    loop.close()


@pytest.fixture(scope="module")
def target(request, in_process):
    return chosen_target(request, in_process, "server")


@pytest.fixture(scope="module")
def timeout_server():
    s = GunicornServer(APP, "--keep-alive", str(KEEPALIVE_SHORT),
                       env={"ASGIWORKER_HEADER_TIMEOUT": str(HEADER_TIMEOUT)})
    yield s
    s.stop()


def request(target: Target, data: bytes, method: bytes = b"GET") -> Response:
    """Send ``data`` (one request the server closes after: Connection: close, or HTTP/1.0) and
    return the response."""
    data, _ = exchange(target, data)
    resp, _ = parse_one(data, method)
    return resp


def scope_of(target: Target, data: bytes) -> dict:
    """The scope the app saw for the request in ``data`` (sent to /scope)."""
    resp = request(target, data)
    assert resp.status == 200, resp
    return json.loads(resp.body)


# -- request line -------------------------------------------------------------------------------

MALFORMED_REQUEST_LINES = {
    "extra-token": b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    "leading-space": b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "trailing-space": b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    "htab-separator": b"GET /\tHTTP/1.1\r\nHost: a\r\n\r\n",
    "lowercase-http-name": b"GET / http/1.1\r\nHost: a\r\n\r\n",
    "version-no-minor": b"GET / HTTP/1\r\nHost: a\r\n\r\n",
    "version-three-parts": b"GET / HTTP/1.1.1\r\nHost: a\r\n\r\n",
    "version-two-digit-major": b"GET / HTTP/11.1\r\nHost: a\r\n\r\n",
    "no-method": b"/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "method-only": b"GET\r\nHost: a\r\n\r\n",
    "bare-cr-in-line": b"GET / HTTP/1.1\rHost: a\r\n\r\n",
    "nul-first": b"\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
}


@end_to_end
@pytest.mark.parametrize("name", list(MALFORMED_REQUEST_LINES))
def test_malformed_request_line_400(target, name):
    assert_rejected(target, MALFORMED_REQUEST_LINES[name], 400)


@pytest.mark.parametrize("method", [b"G(T", b"G\x01T", b"GE\x7fT", b"G\xc3\x89T", b"G,T", b"{GET}", b"G:T"])
def test_invalid_method_token_400(target, method):
    assert_rejected(target, method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", 400)


@pytest.mark.parametrize("method", [b"FROB", b"X-MY_METHOD.1~"])
def test_unknown_but_valid_method_501(target, method):
    # RFC 9110 9.1: a syntactically valid method the target does not implement is a 501, not a 400
    assert_rejected(target, method + b" / HTTP/1.1\r\nHost: a\r\n\r\n", 501)


def test_connect_not_supported_501(target):
    assert_rejected(target, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501)


INVALID_TARGETS = {
    "space": b"GET /a b HTTP/1.1",
    "ctl": b"GET /a\x01b HTTP/1.1",
    "del": b"GET /a\x7fb HTTP/1.1",
    "nul": b"GET /a\x00b HTTP/1.1",
    "relative": b"GET a/b HTTP/1.1",
    "query-only": b"GET ?a=1 HTTP/1.1",
    "fragment-only": b"GET #f HTTP/1.1",
    "asterisk-not-options": b"GET * HTTP/1.1",
    "authority-not-connect": b"GET example.com:80 HTTP/1.1",
    "connect-origin-form": b"CONNECT /path HTTP/1.1",
    "absolute-empty-host": b"GET http:///p HTTP/1.1",
    "absolute-bad-ip-literal": b"GET http://[::1/p HTTP/1.1",
}


@pytest.mark.parametrize("name", list(INVALID_TARGETS))
def test_invalid_request_target_400(target, name):
    assert_rejected(target, INVALID_TARGETS[name] + b"\r\nHost: a\r\n\r\n", 400)


def test_http09_request_line_400(target):
    assert_rejected(target, b"GET /\r\n", 400)


@end_to_end
@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/1.2", b"HTTP/0.9"])
def test_unsupported_version_505(target, version):
    assert_rejected(target, b"GET / " + version + b"\r\nHost: a\r\n\r\n", 505)


@end_to_end
def test_request_line_limit_414(target):
    assert_rejected(target, b"GET /" + b"a" * (LIMIT_LINE * 2) + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414)
    # and below the limit it is served
    resp = request(target, b"GET /" + b"a" * (LIMIT_LINE // 2) + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert resp.status == 200


def test_leading_empty_line_ignored(target):
    # RFC 9112 2.2: a target SHOULD ignore at least one empty line before the request-line.
    resp = request(target, b"\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert resp.status == 200 and resp.body == b"ok"


def test_repeated_spaces_in_request_line_tolerated(target):
    # RFC 9112 3: a recipient MAY parse the request-line on whitespace-delimited word boundaries.
    # llhttp does so for runs of SP (never for HTAB or other whitespace, which stay a 400): the
    # request is read as the single-SP form, with the same method, target and version.
    d = scope_of(target, b"GET  /scope?x=1  HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert d["method"] == "GET" and d["path"] == "/scope" and d["query_string"] == "x=1"


def test_asterisk_form_options_accepted(target):
    resp = request(target, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert resp.status == 200


# -- header fields ------------------------------------------------------------------------------

BAD_HEADER_LINES = {
    "name-paren": b"Fo(o: x",
    "name-space": b"Fo o: x",
    "name-slash": b"X/Y: x",
    "name-empty": b": x",
    "name-nul": b"X\x00Y: x",
    "name-non-ascii": b"X-\xc3\xa9: x",
    "no-colon": b"NoColon",
    "value-nul": b"X: a\x00b",
    "value-ctl": b"X: a\x01b",
    "value-del": b"X: a\x7fb",
    "value-vt": b"X: a\x0bb",
    "value-bare-cr": b"X: a\rb",
    "space-before-colon": b"X-Foo : x",
    "htab-before-colon": b"X-Foo\t: x",
    "obs-fold-sp": b"X-Foo: a\r\n b",
    "obs-fold-htab": b"X-Foo: a\r\n\tb",
}


@pytest.mark.parametrize("name", list(BAD_HEADER_LINES))
def test_invalid_header_line_400(target, name):
    assert_rejected(target, b"GET / HTTP/1.1\r\nHost: a\r\n" + BAD_HEADER_LINES[name] + b"\r\n\r\n", 400)


def test_underscore_header_names_follow_gunicorn_header_map(server):
    # Gunicorn's header_map (default "drop"): a name with "_" could pose as its "-" twin in
    # frameworks that fold both into one key (X_Forwarded_For vs X-Forwarded-For), so it never
    # reaches the app; "refuse" answers 400; "dangerous" passes it through.
    request_bytes = (b"GET /scope HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n"
                     b"X-Kept: yes\r\nConnection: close\r\n\r\n")
    names = [h[0] for h in scope_of(server, request_bytes)["headers"]]
    assert "x-kept" in names and "x_forwarded_for" not in names, names
    refusing = GunicornServer(APP, "--header-map", "refuse")
    passing = GunicornServer(APP, "--header-map", "dangerous")
    try:
        assert_rejected(refusing, b"GET / HTTP/1.1\r\nHost: a\r\nX_Y: z\r\n\r\n", 400)
        names = [h[0] for h in scope_of(passing, request_bytes)["headers"]]
        assert "x_forwarded_for" in names, names
    finally:
        refusing.stop()
        passing.stop()


def test_whitespace_before_first_header_400(target):
    # RFC 9112 2.2: whitespace between the start-line and the first field line
    assert_rejected(target, b"GET / HTTP/1.1\r\n X: y\r\nHost: a\r\n\r\n", 400)


@end_to_end
def test_too_many_header_fields_431(target):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(LIMIT_FIELDS + 10))
    assert_rejected(target, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", 431)
    few = b"".join(b"X-H%d: v\r\n" % i for i in range(LIMIT_FIELDS - 10))
    resp = request(target, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + few + b"\r\n")
    assert resp.status == 200


def test_header_field_too_large_431(target):
    big = b"X-Big: " + b"v" * (LIMIT_FIELD_SIZE * 2) + b"\r\n"
    assert_rejected(target, b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n", 431)
    ok = b"X-Big: " + b"v" * (LIMIT_FIELD_SIZE // 2) + b"\r\n"
    resp = request(target, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + ok + b"\r\n")
    assert resp.status == 200


# -- Host ---------------------------------------------------------------------------------------

BAD_HOSTS = {
    "missing": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two-lines": b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "two-differing": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "slash": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "userinfo": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "bad-port": b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n",
    "http10-two-lines": b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
}


@end_to_end
@pytest.mark.parametrize("name", list(BAD_HOSTS))
def test_host_missing_duplicate_or_invalid_400(target, name):
    assert_rejected(target, BAD_HOSTS[name], 400)


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8080", b"127.0.0.1:80", b"[::1]:8080", b"a"])
def test_valid_host_accepted(target, host):
    resp = request(target, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert resp.status == 200


def test_http10_without_host_accepted(target):
    resp = request(target, b"GET / HTTP/1.0\r\n\r\n")
    assert resp.status == 200 and resp.body == b"ok"


# -- the scope ----------------------------------------------------------------------------------


def test_scope_keys_and_types(server):
    with connect(server.port) as s:
        s.sendall(b"GET /scope?x=1&y=%20z HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        resp, _ = read_response(s)
        local_port = s.getsockname()[1]
    d = json.loads(resp.body)
    assert d["type"] == "http"
    assert d["asgi"]["version"] == "3.0"
    # send() raising OSError on a closed connection is spec 2.4; 2.5 only adds a WebSocket key
    assert d["asgi"]["spec_version"] in ("2.4", "2.5")
    assert d["http_version"] == "1.1"
    assert d["method"] == "GET"
    assert d["scheme"] == "http"
    assert d["path"] == "/scope" and d["path_type"] == "str"
    assert d["raw_path"] == "/scope" and d["raw_path_type"] == "bytes"
    assert d["query_string"] == "x=1&y=%20z" and d["query_string_type"] == "bytes"
    assert d["client"] == ["127.0.0.1", local_port] and d["client_types"] == ["str", "int"]
    assert d["server"] == ["127.0.0.1", server.port] and d["server_types"] == ["str", "int"]
    assert d["header_types"] == ["bytes"]


def test_scope_http_version_10(target):
    d = scope_of(target, b"GET /scope HTTP/1.0\r\n\r\n")
    assert d["http_version"] == "1.0"


@end_to_end
@pytest.mark.skipif(not HAS_ROOT_PATH, reason="this gunicorn has no --root-path")
def test_scope_root_path(target):
    d = scope_of(target, b"GET /mnt/scope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert d["root_path"] == ROOT_PATH
    # the path is what the client sent: the target neither strips nor adds the root path
    assert d["path"] == "/mnt/scope" and d["raw_path"] == "/mnt/scope"


def test_scope_path_percent_decoded_raw_path_as_sent(target):
    d = scope_of(target, b"GET /caf%C3%A9/a%20b%2Fc/%25/scope?q=%C3%A9 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert d["path"] == "/caf\u00e9/a b/c/%/scope"
    assert d["raw_path"] == "/caf%C3%A9/a%20b%2Fc/%25/scope"
    assert d["query_string"] == "q=%C3%A9"


@pytest.mark.parametrize("uri,path,query", [
    (b"/scope?q=1#frag", "/scope", "q=1"),
    (b"/scope#frag?not=query", "/scope", ""),
])
def test_scope_fragment_dropped(target, uri, path, query):
    d = scope_of(target, b"GET " + uri + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert d["path"] == path and d["raw_path"] == path and d["query_string"] == query


@end_to_end
def test_scope_headers_lowercased_ordered_duplicates_trimmed(target):
    d = scope_of(target, b"GET /scope HTTP/1.1\r\nHost: a\r\nX-Foo:   bar  \r\nx-foo: baz\r\n"
                              b"ACCEPT: */*\r\nX-Tab:\tv\t\r\nX-In: a  \t b\r\nX-Empty:\r\nX-Obs: caf\xe9\r\n"
                              b"X-Foo: third\r\nCONNECTION: close\r\n\r\n")
    assert d["headers"] == [
        ["host", "a"], ["x-foo", "bar"], ["x-foo", "baz"], ["accept", "*/*"], ["x-tab", "v"],
        ["x-in", "a  \t b"], ["x-empty", ""], ["x-obs", "caf\xe9"], ["x-foo", "third"], ["connection", "close"],
    ]


@pytest.mark.parametrize("uri,path,raw_path,query", [
    (b"http://example.com/p/scope?q", "/p/scope", "/p/scope", "q"),
    (b"http://example.com:8080/scope", "/scope", "/scope", ""),
    (b"http://example.com/a%20b/scope?x=%20", "/a b/scope", "/a%20b/scope", "x=%20"),
])
def test_scope_absolute_form(target, uri, path, raw_path, query):
    d = scope_of(target, b"GET " + uri + b" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    assert d["path"] == path and d["raw_path"] == raw_path and d["query_string"] == query


@pytest.mark.parametrize("uri", [b"/%FF", b"/%C3", b"/%C3%28", b"/%ED%A0%80", b"/%C0%AF", b"/ok/%E2%82"])
def test_path_not_utf8_after_decoding_400(target, uri):
    assert_rejected(target, b"GET " + uri + b" HTTP/1.1\r\nHost: a\r\n\r\n", 400)


# -- responses ----------------------------------------------------------------------------------


def test_content_length_response_as_given(target):
    resp = request(target, b"GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert resp.status == 200
    assert resp.get(b"content-length") == b"5" and resp.get(b"transfer-encoding") is None
    assert resp.get(b"x-custom") == b"yes"
    assert resp.body == b"hello"


@end_to_end
def test_streamed_response_chunked_for_http11(target):
    data, closed = exchange(target, b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    responses, rest = parse_all(data)
    assert len(responses) == 2 and rest == b"" and closed, data
    for r in responses:
        assert r.get(b"transfer-encoding") == b"chunked" and r.get(b"content-length") is None
        assert r.chunked and r.body == b"one,two,three"


@pytest.mark.parametrize("extra", [b"", b"Connection: keep-alive\r\n"])
def test_streamed_response_close_delimited_for_http10(target, extra):
    data, closed = exchange(target, b"GET /stream HTTP/1.0\r\n" + extra + b"\r\n")
    assert closed, "an HTTP/1.0 response without a length must end with the close"
    resp, rest = parse_one(data, eof=True)
    assert resp.version == b"HTTP/1.1" and resp.status == 200
    assert resp.get(b"transfer-encoding") is None and resp.get(b"content-length") is None
    assert (resp.get(b"connection") or b"").lower() != b"keep-alive"
    assert resp.body == b"one,two,three"


@pytest.mark.parametrize("stream", ["0", "1"])
def test_app_transfer_encoding_not_passed_through(target, stream):
    # HTTP/1.1: whatever framing the target picks, it is the target's (one TE or a CL, not both)
    data, closed = exchange(target, b"GET /app-te?stream=%s HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % stream.encode())
    responses, rest = parse_all(data)
    assert len(responses) == 2 and rest == b"", data
    assert responses[0].body == b"hello world"
    assert len(responses[0].get_all(b"transfer-encoding")) <= 1
    assert responses[1].body == b"hello"
    # HTTP/1.0: never chunked, so the app's header cannot be there at all
    data, closed = exchange(target, b"GET /app-te?stream=%s HTTP/1.0\r\n\r\n" % stream.encode())
    resp, _ = parse_one(data, eof=closed)
    assert resp.get(b"transfer-encoding") is None
    assert resp.body == b"hello world"


@end_to_end
@pytest.mark.parametrize("uri", [b"/cl", b"/stream"])
def test_head_gets_get_headers_and_no_body(target, uri):
    get_resp = request(target, b"GET " + uri + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data, closed = exchange(target, b"HEAD " + uri + b" HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    responses, rest = parse_all(data, methods=[b"HEAD", b"GET"])
    assert len(responses) == 2 and rest == b"", f"HEAD response carried body bytes? {data!r}"
    head = responses[0]
    assert head.status == 200 and head.body == b""
    strip = lambda r: [h for h in r.headers if h[0] not in (b"date", b"connection")]  # noqa: E731
    assert strip(head) == strip(get_resp)
    if uri == b"/cl":
        assert head.get(b"content-length") == b"5"
    assert responses[1].body == b"hello"


@end_to_end
@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(target, code):
    data, closed = exchange(target, b"GET /status?code=%d HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % code)
    responses, rest = parse_all(data)
    assert len(responses) == 2 and rest == b"", f"{code} response carried body bytes? {data!r}"
    r = responses[0]
    assert r.status == code and r.get(b"x-custom") == b"yes"
    assert r.get(b"transfer-encoding") is None
    if code == 204:
        assert r.get(b"content-length") is None  # RFC 9110 8.6: MUST NOT for 1xx and 204
    assert b"must-not" not in data
    assert responses[1].body == b"hello"


def test_informational_status_has_no_body(target):
    data, closed = exchange(target, b"GET /status?code=103 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp, rest = parse_one(data)
    assert resp.status == 103
    assert resp.get(b"transfer-encoding") is None and resp.get(b"content-length") is None
    assert rest == b"" and b"must-not" not in data, data


def test_http10_keepalive_only_when_asked(server):
    # not asked: the server closes after the response
    with connect(server.port) as s:
        s.sendall(b"GET /cl HTTP/1.0\r\n\r\n")
        data, closed = read_until_close(s, timeout=3)
    assert closed
    resp, rest = parse_one(data)
    assert resp.body == b"hello" and rest == b""
    assert (resp.get(b"connection") or b"close").lower() == b"close"
    # asked: said in the response, and the connection carries a second request
    with connect(server.port) as s:
        s.sendall(b"GET /cl HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp, extra = read_response(s)
        assert resp.body == b"hello" and extra == b""
        assert (resp.get(b"connection") or b"").lower() == b"keep-alive"
        s.sendall(b"GET /cl HTTP/1.0\r\n\r\n")
        data, closed = read_until_close(s, timeout=3)
    resp2, rest = parse_one(data)
    assert resp2.body == b"hello" and closed


def test_http11_connection_close_honoured(server):
    with connect(server.port) as s:
        s.sendall(b"GET /cl HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data, closed = read_until_close(s, timeout=3)
    resp, rest = parse_one(data)
    assert closed and rest == b""
    assert resp.get(b"connection") == b"close"


@pytest.mark.parametrize("case", sorted(BAD_HEADER_CASES))
def test_invalid_response_header_500(server, case):
    offset = len(server.log())
    data, closed = exchange(server, b"GET /badhdr?case=%s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                            % case.encode())
    assert b"x-injected" not in data.lower() and b"x-bad" not in data.lower(), data
    resp, rest = parse_one(data)
    assert resp.status == 500 and rest == b""
    log = log_since(server, offset, "eader")
    assert "header" in log.lower(), f"nothing in the log names the bad header:\n{log}"


@pytest.mark.parametrize("parts", ["1", "2"])
def test_body_longer_than_content_length_cut(server, parts):
    offset = len(server.log())
    with connect(server.port) as s:
        s.sendall(b"GET /cl-long?parts=%s HTTP/1.1\r\nHost: a\r\n\r\n" % parts.encode())
        data, closed = read_until_close(s, timeout=3)
    assert closed, "the connection must close after a response longer than its Content-Length"
    resp, rest = parse_one(data)
    assert resp.get(b"content-length") == b"5" and resp.body == b"hello"
    assert rest == b"" and b"world" not in data, data
    log = log_since(server, offset, "ontent-")
    assert "content-length" in log.lower(), log


def test_body_shorter_than_content_length_closes(server):
    offset = len(server.log())
    with connect(server.port) as s:
        s.sendall(b"GET /cl-short HTTP/1.1\r\nHost: a\r\n\r\n")
        data, closed = read_until_close(s, timeout=3)
    assert closed, "the connection must close after a response shorter than its Content-Length"
    assert data.endswith(b"\r\n\r\nhello") and b"content-length: 10\r\n" in data.lower(), data
    log = log_since(server, offset, "ontent-")
    assert "content-length" in log.lower(), log


# -- Expect: 100-continue -----------------------------------------------------------------------


def test_100_continue_only_when_app_reads(server):
    with connect(server.port) as s:
        s.sendall(b"POST /expect-slow?delay=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        # the app sleeps 1 s before its first receive(): nothing may come before that
        early = nothing_within(s, 0.6)
        assert early == b"", f"sent before the app asked for the body: {early!r}"
        interim, extra = read_response(s, timeout=5)
        assert interim.status == 100 and extra == b""
        s.sendall(b"hello")
        final, extra = read_response(s)
    assert final.status == 200 and final.body == b"hello" and extra == b""


def test_no_100_continue_when_body_already_there(target):
    data, closed = exchange(target, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                         b"Expect: 100-continue\r\nConnection: close\r\n\r\nhello")
    responses, rest = parse_all(data)
    assert [r.status for r in responses] == [200] and responses[0].body == b"hello", data


def test_no_100_continue_to_http10(server):
    with connect(server.port) as s:
        s.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        early = nothing_within(s, 0.7)  # /echo calls receive() at once
        assert early == b"", f"sent to an HTTP/1.0 client: {early!r}"
        s.sendall(b"hello")
        data, closed = read_until_close(s)
    responses, rest = parse_all(data)
    assert [r.status for r in responses] == [200] and responses[0].body == b"hello", data


def test_expect_app_answers_without_reading(server):
    key = new_key()
    smuggled = CANARY % key.encode()
    with connect(server.port) as s:
        s.sendall(b"POST /noread HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\n\r\n" % len(smuggled))
        resp, extra = read_response(s)
        assert resp.status == 200 and resp.body == b"answered without reading", resp
        try:
            s.sendall(smuggled)  # the body the client was holding back looks like a request
        except OSError:
            pass
        data, closed = read_until_close(s, timeout=3)
    assert closed, "the connection must close after answering without reading the announced body"
    assert extra + data == b"", f"more was sent: {extra + data!r}"
    assert hits(server, key) == 0


# -- application errors -------------------------------------------------------------------------


@pytest.fixture
def bystander(server):
    """A keep-alive connection opened before the misbehaving requests and used after them."""
    s = connect(server.port)
    s.sendall(b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n")
    resp, _ = read_response(s)
    assert resp.body == b"hello"
    pids = server.worker_pids()
    yield s
    s.sendall(b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n")
    resp, _ = read_response(s)
    assert resp.body == b"hello", "a misbehaving app broke another connection"
    s.close()
    assert server.worker_pids() == pids, "the worker was replaced"


def test_exception_before_start_500(server, bystander):
    key = new_key()
    offset = len(server.log())
    data, closed = exchange(server, b"GET /error?when=before&key=%s HTTP/1.1\r\nHost: a\r\n\r\n" % key.encode())
    resp, rest = parse_one(data)
    assert resp.status == 500 and rest == b""
    assert key in log_since(server, offset, key)


def test_exception_after_start_closes_without_second_response(server, bystander):
    with connect(server.port) as s:
        s.sendall(b"GET /error?when=after HTTP/1.1\r\nHost: a\r\n\r\nGET /cl HTTP/1.1\r\nHost: a\r\n\r\n")
        data, closed = read_until_close(s, timeout=3)
    assert closed
    assert data.count(b"HTTP/1.1 ") == 1, data
    assert data.startswith(b"HTTP/1.1 200 ") and b"partial" in data
    # the response is visibly incomplete (no terminating chunk), not a clean end
    assert not data.endswith(b"0\r\n\r\n"), data


def test_exception_after_start_message_only(server, bystander):
    # start sent, no body yet: ASGI lets the server replace it with a 500; either way one response
    data, closed = exchange(server, b"GET /error?when=start HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n", timeout=3)
    assert closed and data.count(b"HTTP/1.1 ") == 1, data


def test_app_returns_without_response_500(server, bystander):
    data, closed = exchange(server, b"GET /noresponse HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp, rest = parse_one(data)
    assert resp.status == 500 and rest == b""


def test_app_returns_mid_response_closes(server, bystander):
    data, closed = exchange(server, b"GET /noresponse?partial=1 HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n", timeout=3)
    assert closed and data.count(b"HTTP/1.1 ") == 1 and b"partial" in data, data
    assert not data.endswith(b"0\r\n\r\n"), data


def test_system_exit_in_app_does_not_kill_worker(server, bystander):
    data, closed = exchange(server, b"GET /error?when=exit HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp, rest = parse_one(data)
    assert resp.status == 500


INVALID_MESSAGE_WORDS = {
    "1": "http.response.zork",   # unknown type
    "2": "http.response.body",   # body before start
    "3": "http.response.start",  # start twice
    "4": "status",               # status not an int
    "5": "body",                 # body not bytes
    "6": "header",               # headers not bytes
}


@pytest.mark.parametrize("case", sorted(INVALID_MESSAGE_WORDS))
def test_invalid_app_message_500_and_logged(server, bystander, case):
    offset = len(server.log())
    data, closed = exchange(server, b"GET /invalid?case=%s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                            % case.encode())
    resp, rest = parse_one(data)
    assert resp.status == 500 and rest == b"", data
    word = INVALID_MESSAGE_WORDS[case]
    log = log_since(server, offset, word)
    assert word in log, f"the log does not name the problem ({word!r}):\n{log}"


def test_invalid_app_message_after_start_closes(server, bystander):
    offset = len(server.log())
    data, closed = exchange(server, b"GET /invalid?case=7 HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n", timeout=3)
    assert closed and data.count(b"HTTP/1.1 ") == 1 and b"partial" in data, data
    assert not data.endswith(b"0\r\n\r\n")
    assert "body" in log_since(server, offset, "body")


def test_worker_never_replaced(server):
    assert server.worker_pids() == server.first_pids


# -- timeouts -----------------------------------------------------------------------------------


def test_slowloris_head_timeout_408(timeout_server):
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    with connect(timeout_server.port) as s:
        start = time.monotonic()
        got = b""
        for byte in head:  # one byte every 0.25 s: each arrives well within any idle timeout
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            got = nothing_within(s, 0.25)
            if got or time.monotonic() - start > HEADER_TIMEOUT + 4:
                break
        elapsed = time.monotonic() - start
        rest, closed = read_until_close(s, timeout=3)
    data = b"" if got in (b"<closed>", b"<reset>") else got + rest
    assert HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + 1.5, f"cut after {elapsed:.2f}s"
    resp, tail = parse_one(data)
    assert resp.status == 408 and resp.get(b"connection") == b"close" and tail == b""
    assert resp.get(b"content-type") == b"text/plain; charset=utf-8"
    assert closed


def test_idle_keepalive_connection_closed_silently(timeout_server):
    with connect(timeout_server.port) as s:
        s.sendall(b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n")
        resp, extra = read_response(s)
        assert resp.body == b"hello"
        idle_from = time.monotonic()
        data, closed = read_until_close(s, timeout=KEEPALIVE_SHORT + 3)
        idle = time.monotonic() - idle_from
    assert closed and data == b"", f"idle connection: closed={closed} data={data!r}"
    assert KEEPALIVE_SHORT - 0.1 <= idle <= KEEPALIVE_SHORT + 1.5, f"closed after {idle:.2f}s"


def test_connection_without_any_request_closed_silently(timeout_server):
    with connect(timeout_server.port) as s:
        start = time.monotonic()
        data, closed = read_until_close(s, timeout=KEEPALIVE_SHORT + 3)
        idle = time.monotonic() - start
    assert closed and data == b""
    assert KEEPALIVE_SHORT - 0.1 <= idle <= KEEPALIVE_SHORT + 1.5, f"closed after {idle:.2f}s"
