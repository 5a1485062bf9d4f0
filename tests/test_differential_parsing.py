"""Differential parsing: every generated request goes to our HTTP layer (in-process, on the
protocol harness) and to h11 (``h11.Connection(h11.SERVER)``), the strict reference. Both must
accept it (the app sees the same method, target, version, headers and body as h11's events) or
both must refuse it, except where a short list of deliberate differences (``DIFFERENCES``, each
with the docs/http.md row that says so and its own example test) says otherwise. Every response
we send must also parse with h11 as a client.

The requests are built from parts (method, target, version, headers, a body framed by
Content-Length or chunked with extensions and trailers), each part spelled mostly right and
sometimes wrong (odd whitespace, obs-fold, bare LF or CR, CTLs, non-ASCII, duplicate or
conflicting framing headers, chunk-size tricks, values around our limits), then sometimes edited
byte by byte. Both sides get the bytes followed by the client's EOF, so a request that waits for
more is refused by both (h11: "peer closed"; ours: no complete request for the app).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

import h11
import pytest
import uvloop
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from asgiworker.config import Settings
from tests.protocol_harness import Harness

# Our limits in-process, small so that generated values reach them cheaply (Gunicorn's defaults
# are 4094 / 8190 / 100; the rule is the same at any size).
LINE_LIMIT = 200
FIELD_SIZE_LIMIT = 300
FIELDS_LIMIT = 12
SETTINGS = Settings(limit_request_line=LINE_LIMIT, limit_request_field_size=FIELD_SIZE_LIMIT,
                    limit_request_fields=FIELDS_LIMIT,
                    linger_timeout=0.0)  # (close at once: the stand-in transport has no half-close)
# h11 bounds the whole head instead (16 KiB by default): out of the way, our limits are ours.
H11_MAX_HEAD = 1 << 20

# The methods llhttp (through httptools) knows; any other token is answered 501, as is CONNECT.
LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    b"BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE "
    b"PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split())

# Written out from RFC 9110 / RFC 3986 here (not taken from asgiworker.wire.grammar), so that
# the predicates below are an independent statement of the rules.
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_EXTENSIONS = re.compile(rb"(?:;" + TOKEN + rb"(?:=(?:" + TOKEN + rb"|" + QUOTED_STRING + rb"))?)*")
REG_NAME_OR_IP = rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
URI_HOST_PORT = re.compile(REG_NAME_OR_IP + rb"(?::[0-9]*)?")
CTL_IN_VALUE = re.compile(rb"[\x01-\x08\x0e-\x1f\x7f]")


# -- the two verdicts ---------------------------------------------------------------------------

@dataclass
class Seen:
    """A request as one side understood it (None: refused). ``target`` is (raw_path, query)."""

    method: bytes
    target: Tuple[bytes, bytes]
    version: bytes
    headers: List[Tuple[bytes, bytes]]
    body: bytes
    trailers: List[Tuple[bytes, bytes]]


@dataclass
class Verdicts:
    data: bytes
    h11: Optional[Seen]
    h11_error: str
    ours: Optional[Seen]
    status: int  # our final status for the first request (0: none written)
    output: bytes


def asgi_target(target: bytes) -> Tuple[bytes, bytes]:
    """What ASGI shows of a request-target h11 accepted: (raw_path, query_string)."""
    if target.startswith(b"/"):
        raw_path, _, query = target.split(b"#", 1)[0].partition(b"?")
        return raw_path, query
    if target == b"*":
        return b"*", b""
    try:
        parts = urlsplit(target)
    except ValueError:  # (not a URI: `target-form` says we refuse it)
        return target, b""
    return parts.path or b"/", parts.query


def h11_verdict(data: bytes) -> Tuple[Optional[Seen], str]:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=H11_MAX_HEAD)
    conn.receive_data(data)
    conn.receive_data(b"")  # the client's EOF
    request: Optional[h11.Request] = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return Seen(request.method, asgi_target(request.target), request.http_version,
                            list(request.headers), body, list(event.headers)), ""
            else:  # ConnectionClosed before a whole request (NEED_DATA cannot follow an EOF)
                return None, repr(event)
    except h11.RemoteProtocolError as exc:
        return None, str(exc)


class Recorder:
    """The app: records each request's scope and whole body, answers 200 once it has it all."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        call: Dict[str, Any] = {"scope": scope, "body": b"", "complete": False}
        self.calls.append(call)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # (a request cut short: nobody to answer)
            call["body"] += message.get("body", b"")
            if not message.get("more_body", False):
                call["complete"] = True
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def _ours(loop: asyncio.AbstractEventLoop, data: bytes,
                settings: Settings) -> Tuple[Optional[Seen], bytes, bool]:
    app = Recorder()
    harness = Harness(app, loop, settings)
    harness.conn.data_received(data)
    if not harness.transport.closing and not harness.conn.eof_received():
        harness.transport.close()  # what a real transport does when eof_received() is falsy
    await harness.settle(loop.time() + 5.0)  # (after an EOF nothing may wait: a hang fails)
    output, closed = harness.output(), harness.transport.closing
    await harness.close()
    seen = None
    if app.calls and app.calls[0]["complete"]:
        scope = app.calls[0]["scope"]
        seen = Seen(scope["method"].encode("ascii"), (scope["raw_path"], scope["query_string"]),
                    scope["http_version"].encode("ascii"), [(n, v) for n, v in scope["headers"]],
                    app.calls[0]["body"], [])
    return seen, output, closed


def first_response(output: bytes, closed: bool, method: bytes) -> h11.Response:
    """Our first final response, read by h11 as a client (which raises if it is malformed)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a"), ("Content-Length", "0")]))
    client.send(h11.EndOfMessage())
    client.receive_data(output)
    if closed:
        client.receive_data(b"")
    response = None
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response
        elif not isinstance(event, (h11.InformationalResponse, h11.Data)):
            raise AssertionError(f"no complete response: {event!r} in {output!r}")


def verdicts(loop: asyncio.AbstractEventLoop, data: bytes, settings: Settings = SETTINGS) -> Verdicts:
    theirs, error = h11_verdict(data)
    ours, output, closed = loop.run_until_complete(_ours(loop, data, settings))
    status = 0
    if output:
        method = data.split(b" ", 1)[0].lstrip(b"\r\n")
        response = first_response(output, closed, b"HEAD" if method == b"HEAD" else b"GET")
        status = response.status_code
        if ours is None:
            # a refusal: an error status, `connection: close`, and the close
            assert status >= 400, output
            assert (b"connection", b"close") in list(response.headers), output
            assert closed, output
        else:
            assert status == 200, output
    else:
        assert ours is None, "the app ran but nothing was written"
    return Verdicts(data, theirs, error, ours, status, output)


# -- deliberate differences ---------------------------------------------------------------------

def _head(data: bytes) -> bytes:
    """The head as h11 delimits it (up to the first empty line, LF or CRLF)."""
    match = re.search(rb"\n\r?\n", data)
    return data[:match.end()] if match else data


def _chunk_lines(v: Verdicts) -> Iterator[bytes]:
    """The chunk-size lines of a chunked body h11 accepted, walked by h11's own rules."""
    data = v.data
    at = len(_head(data))
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return
        line = data[at:end]
        yield line
        match = re.match(rb"[0-9A-Fa-f]{1,20}", line)
        if match is None:
            return
        size = int(match.group(), 16)
        if size == 0:
            return
        at = end + 2 + size + 2


def _trailer_section(v: Verdicts) -> bytes:
    data = v.data
    at = len(_head(data))
    for line in _chunk_lines(v):
        at = data.find(line, at) + len(line) + 2
        match = re.match(rb"[0-9A-Fa-f]+", line)
        if match and int(match.group(), 16) > 0:
            at += int(match.group(), 16) + 2
    return _head(data[at:]) if v.h11 and _is_chunked(v.h11) else b""


def _is_chunked(seen: Seen) -> bool:
    return any(n == b"transfer-encoding" for n, _ in seen.headers)


def _fields_kept(seen: Seen) -> List[Tuple[bytes, bytes]]:
    return [(n, v) for n, v in seen.headers if b"_" not in n]


def _raw_field_lines(data: bytes) -> List[bytes]:
    return re.split(rb"\r?\n", _head(data))[1:]


@dataclass
class Difference:
    """A deliberate difference: when ``applies`` (given both verdicts), we refuse (``ours``
    "reject") what h11 accepts, or may accept (``ours`` "accept") what h11 refuses."""

    name: str
    ours: str
    applies: Callable[[Verdicts], bool]
    reason: str
    docs: str
    example: bytes


def _h11_accepted(test: Callable[[Seen, Verdicts], bool]) -> Callable[[Verdicts], bool]:
    return lambda v: v.h11 is not None and test(v.h11, v)


def _path_not_utf8(raw_path: bytes) -> bool:
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _target_form_invalid(seen: Seen, v: Verdicts) -> bool:
    target = v.data.lstrip(b"\r\n").split(b" ")[1] if b" " in v.data else b""
    target = target.strip()
    if target.startswith(b"/"):
        return _path_not_utf8(seen.target[0])
    if target == b"*":
        return seen.method != b"OPTIONS"
    try:
        parts = urlsplit(target)
    except ValueError:
        return True
    return parts.scheme not in (b"http", b"https") or not parts.netloc or _path_not_utf8(seen.target[0])


def _over_our_limits(seen: Seen, v: Verdicts) -> bool:
    raw_target = v.data.lstrip(b"\r\n").split(b"\n", 1)[0].split(b" ")
    # A field's size is its name and value as sent, less the OWS after the colon (the OWS at
    # its end counts: a value padded with whitespace is not let through).
    lines = _raw_field_lines(v.data) + re.split(rb"\r?\n", _trailer_section(v))
    sizes = [len(name) + len(rest.lstrip(b" \t")) for name, _, rest in (line.partition(b":") for line in lines)]
    return (max(len(word) for word in raw_target) > LINE_LIMIT or max(sizes) > FIELD_SIZE_LIMIT
            or _fields_over_limit(seen))


def _fields_over_limit(seen: Seen) -> bool:
    # Our reader refuses a field that arrives when FIELDS_LIMIT fields are kept already, whatever
    # that field is (one with `_` is dropped after the count): so the fields kept before the last.
    return len([n for n, _ in seen.headers[:-1] if b"_" not in n]) >= FIELDS_LIMIT


CHUNKED_POST = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"

DIFFERENCES = [
    Difference(
        "obs-fold", "reject",
        _h11_accepted(lambda s, v: re.search(rb"\n[ \t]", _head(v.data)[:-2] + _trailer_section(v)) is not None),
        "h11 unfolds a continuation line into the value; we refuse it (RFC 9112 5.2 allows either)",
        "Header fields: obs-fold (a line starting with SP or HTAB) -> 400",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
    Difference(
        "bare-lf", "reject",
        _h11_accepted(lambda s, v: re.search(rb"(?<!\r)\n", _head(v.data) + _trailer_section(v)) is not None),
        "h11 takes a bare LF as a line end (RFC 9112 2.2 MAY); llhttp, strict, does not",
        "Message framing: bare LF after the size / chunk data -> 400 (and the parser takes no bare LF "
        "anywhere: a row to add)",
        b"GET / HTTP/1.1\nHost: a\n\n"),
    Difference(
        "ctl-in-value", "reject",
        _h11_accepted(lambda s, v: any(CTL_IN_VALUE.search(value) for _, value in s.headers + s.trailers)),
        "h11 admits any byte but NUL and whitespace in a value; RFC 9110 5.5 field-vchar excludes CTLs",
        "Header fields: NUL, CTL (0x01, VT), DEL or bare CR in a field value -> 400",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n"),
    Difference(
        "repeated-content-length", "reject",
        _h11_accepted(lambda s, v: sum(len(line.split(b":", 1)[1].split(b","))
                                       for line in _raw_field_lines(v.data)
                                       if line.lower().startswith(b"content-length:")) > 1),
        "h11 folds identical Content-Length values (RFC 9112 6.3 allows it); we refuse any repeat",
        "Message framing: any repeated Content-Length, even identical -> 400",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi"),
    Difference(
        "content-length-with-transfer-encoding", "reject",
        _h11_accepted(lambda s, v: _is_chunked(s) and any(n == b"content-length" for n, _ in s.headers)),
        "h11 lets Transfer-Encoding win over Content-Length (RFC 9112 6.1 allows either); we refuse",
        "Message framing: Content-Length together with Transfer-Encoding -> 400",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    Difference(
        "transfer-encoding-in-http10", "reject",
        _h11_accepted(lambda s, v: s.version == b"1.0" and _is_chunked(s)),
        "h11 reads a chunked HTTP/1.0 request; an HTTP/1.0 peer cannot mean it (RFC 9112 6.1)",
        "Message framing: Transfer-Encoding in an HTTP/1.0 request -> 400",
        b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    Difference(
        "chunk-extension-grammar", "reject",
        _h11_accepted(lambda s, v: _is_chunked(s) and any(
            CHUNK_EXTENSIONS.fullmatch(re.sub(rb"^[0-9A-Fa-f]+", b"", line)) is None
            for line in _chunk_lines(v))),
        "h11 skips whatever follows the chunk size; llhttp holds extensions to `;name[=token|quoted]` "
        "(no BWS, no trailing whitespace)",
        "Message framing: chunk extension: bare `;`, CTL, NUL or bare CR in it -> 400",
        CHUNKED_POST + b"2;a b\r\nhi\r\n0\r\n\r\n"),
    Difference(
        "transfer-encoding-trailing-htab", "reject",
        _h11_accepted(lambda s, v: any(re.fullmatch(rb"(?i)transfer-encoding:.*[^ \t][ \t]*\t[ \t]*", line)
                                       for line in _raw_field_lines(v.data))),
        "llhttp reads a coding up to SP, `,` or CRLF: a trailing HTAB makes `chunked` another coding, "
        "and a request whose last coding is not chunked is refused (never framed otherwise)",
        "Message framing: `chunked` in any letter case, with OWS -> accepted (but not with a trailing "
        "HTAB: the row should say so)",
        CHUNKED_POST.replace(b"chunked", b"chunked\t") + b"0\r\n\r\n"),
    Difference(
        "version-not-1.0-or-1.1", "reject",
        _h11_accepted(lambda s, v: s.version not in (b"1.0", b"1.1")),
        "h11 takes any `HTTP/d.d`; we answer 505 to anything but 1.0 and 1.1",
        "Request line: version written out but not 1.0/1.1 -> 505",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
    Difference(
        "method-not-served", "reject",
        _h11_accepted(lambda s, v: s.method not in LLHTTP_METHODS or s.method == b"CONNECT"),
        "h11 takes any token; we answer 501 to a method llhttp does not know, and to CONNECT",
        "Request line: valid method token the server does not implement -> 501; CONNECT -> 501",
        b"FROB / HTTP/1.1\r\nHost: a\r\n\r\n"),
    Difference(
        "target-form", "reject",
        _h11_accepted(_target_form_invalid),
        "h11 takes any run of VCHARs as a target; we require origin-, absolute- (http/https) or "
        "asterisk-form (OPTIONS), and a path that is UTF-8 once percent-decoded (ASGI's `path`)",
        "Request line: request-target not in origin-form, ... -> 400; Scope: path that is not UTF-8 -> 400",
        b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
    Difference(
        "host-value", "reject",
        _h11_accepted(lambda s, v: any(n == b"host" and URI_HOST_PORT.fullmatch(value) is None
                                       for n, value in s.headers)),
        "h11 does not look into Host; RFC 9112 3.2 asks for 400 on an invalid one",
        "Host: invalid Host value -> 400",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
    Difference(
        "over-our-limits", "reject",
        _h11_accepted(_over_our_limits),
        "Gunicorn's per-line, per-field and field-count limits (h11 bounds only the whole head)",
        "Request line: longer than --limit-request-line -> 414; Header fields: more than "
        "--limit-request-fields, a field larger than --limit-request-field_size -> 431",
        b"GET /" + b"a" * LINE_LIMIT + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    Difference(
        "leading-empty-line", "accept",
        lambda v: v.data[:1] in (b"\r", b"\n"),
        "RFC 9112 2.2: a server SHOULD ignore empty lines before the request line; h11 refuses them",
        "Request line: empty line(s) before the request line -> ignored, request served",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    Difference(
        "runs-of-space-in-request-line", "accept",
        lambda v: b"  " in v.data.lstrip(b"\r\n").split(b"\n", 1)[0],
        "RFC 9112 3 MAY: runs of SP between the request line's words read as one (llhttp); h11 "
        "takes exactly one",
        "Request line: runs of SP between the request-line's words -> read as single SP, served",
        b"GET  /  HTTP/1.1\r\nHost: a\r\n\r\n"),
    Difference(
        "h11-digit-caps", "accept",
        lambda v: re.search(rb"(?i)\ncontent-length:[ \t]*0[0-9]{20}", _head(v.data)) is not None
        or re.search(rb"\n0[0-9A-Fa-f]{20}", v.data[len(_head(v.data)) - 1:]) is not None,
        "h11 caps Content-Length at 20 digits and chunk sizes at 20 hex digits, leading zeros "
        "included; we cap the value",
        "Message framing: leading zeros (005) in Content-Length accepted as 5; leading zeros in "
        "chunk sizes accepted",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"0" * 21 + b"2\r\n\r\nhi"),
]


def matching(v: Verdicts, ours: str) -> List[str]:
    return [d.name for d in DIFFERENCES if d.ours == ours and d.applies(v)]


def check(v: Verdicts) -> None:
    """Agreement, but for the deliberate differences."""
    note(f"h11: {v.h11!r} ({v.h11_error})")
    note(f"ours: {v.ours!r} -> {v.output[:300]!r}")
    stricter = matching(v, "reject")
    if stricter:
        # h11 accepts it, and we refuse it, whatever else is in the request
        event(f"difference: {stricter[0]}")
        assert v.ours is None, f"{stricter}: we should refuse {v.data!r}"
        return
    laxer = matching(v, "accept")
    if v.h11 is None and v.ours is not None and laxer:
        event(f"difference: {laxer[0]}")
        return
    event("both refuse" if v.h11 is None else "both accept")
    assert (v.h11 is None) == (v.ours is None), (
        f"h11 {'refuses' if v.h11 is None else 'accepts'} ({v.h11_error}), we "
        f"{'refuse' if v.ours is None else 'accept'} ({v.status}): {v.data!r}")
    if v.h11 is None or v.ours is None:
        return
    theirs, ours = v.h11, v.ours
    assert ours.method == theirs.method
    assert ours.target == theirs.target
    assert ours.version == theirs.version
    # h11 lower-cases Transfer-Encoding's value; names with `_` are dropped (header_map "drop")
    expected = [(n, value.lower() if n == b"transfer-encoding" else value) for n, value in _fields_kept(theirs)]
    assert [(n, value.lower() if n == b"transfer-encoding" else value) for n, value in ours.headers] == expected
    assert ours.body == theirs.body


# -- the generated requests ---------------------------------------------------------------------
#
# Each choice has good options and bad ones; how often the bad ones are taken (percent) is the
# request's level for that kind of choice. A third of the requests are clean, a third have one
# kind of mistake (so that each mistake is judged alone, not hidden behind another), and a third
# mix them all.

Levels = Dict[str, int]
T = TypeVar("T")
KINDS = ["target", "path", "value", "chunk", "method", "version", "host", "length", "te", "line", "field",
         "request-line", "mutation"]


@st.composite
def levels(draw: st.DrawFn) -> Levels:
    mode = draw(st.sampled_from(["clean", "one", "mixed"]))
    if mode == "clean":
        return dict.fromkeys(KINDS, 0)
    if mode == "one":
        focus = draw(st.sampled_from(KINDS))
        return {kind: 40 if kind == focus else 0 for kind in KINDS}
    return dict.fromkeys(KINDS, draw(st.sampled_from([4, 10, 25])))


def choose(draw: st.DrawFn, level: int, good: List[T], bad: List[T]) -> T:
    if bad and level and draw(st.integers(1, 100)) <= level:
        return draw(st.sampled_from(bad))
    return draw(st.sampled_from(good))


PCHAR_GOOD = [b"a", b"Z", b"0", b"-", b".", b"_", b"~", b"!", b"$", b"&", b"'", b"(", b"*", b"+", b",",
              b";", b"=", b":", b"@", b"/", b"%41", b"%2F", b"%C3%A9", b"%zz", b"%", b"\"", b"{", b"|", b"^"]
PCHAR_BAD = [b"%FF", b"%C3", b"\xc3\xa9", b"\x7f", b"\x00", b"\x01", b"\t", b" "]


@st.composite
def targets(draw: st.DrawFn, lv: Levels) -> bytes:
    kind = choose(draw, lv["target"], ["origin"] * 6 + ["absolute", "asterisk"], ["long", "odd", "absolute-odd"])
    path = b"/" + b"".join(choose(draw, lv["path"], PCHAR_GOOD, PCHAR_BAD) for _ in range(draw(st.integers(0, 6))))
    if draw(st.booleans()):
        path += b"?" + b"".join(draw(st.lists(st.sampled_from([b"a", b"=", b"&", b"?", b"/", b"%20", b"1"]),
                                              max_size=5)))
    if draw(st.integers(0, 5)) == 0:
        path += b"#f"
    if kind == "absolute":
        return draw(st.sampled_from([b"http://", b"https://"])) + draw(st.sampled_from(
            [b"a", b"a:80", b"[::1]:8080"])) + draw(st.sampled_from([path, b""]))
    if kind == "absolute-odd":
        return draw(st.sampled_from([b"ftp://a/", b"http:///p", b"http://a b/", b"http://[::1/p"]))
    if kind == "asterisk":
        return b"*"
    if kind == "long":
        return b"/" + b"a" * draw(st.integers(LINE_LIMIT - 3, LINE_LIMIT + 2))
    if kind == "odd":
        return draw(st.sampled_from([b"a/b", b"?a=1", b"//a", b"/\xc3\xa9", b"/a\x00", b"#f", b""]))
    return path


VALUE_GOOD = [b"a", b"Z", b"1", b" ", b"\t", b"\"", b",", b";", b"=", b"/", b":", b"\x80", b"\xff", b"\xc3\xa9"]
VALUE_BAD = [b"\x00", b"\x01", b"\x0b", b"\x0c", b"\x1f", b"\x7f", b"\r", b"\n"]
FIELD_NAMES = [b"X-A", b"Accept", b"User-Agent", b"Cookie", b"x-a", b"X_Under", b"Content-Type", b"ACCEPT-ENCODING"]


@st.composite
def header_fields(draw: st.DrawFn, lv: Levels) -> List[Tuple[bytes, bytes]]:
    fields = []
    for _ in range(draw(st.integers(0, 3))):
        value = b"".join(choose(draw, lv["value"], VALUE_GOOD, VALUE_BAD) for _ in range(draw(st.integers(0, 6))))
        fields.append((draw(st.sampled_from(FIELD_NAMES)), value))
    roll = draw(st.integers(0, 9))
    if roll == 0:  # a value around the field size limit
        size = draw(st.integers(FIELD_SIZE_LIMIT - 8, FIELD_SIZE_LIMIT + 2))
        fields.append((b"X-Big", b"v" * size))
    elif roll == 1:  # a field count around the limit
        fields += [(b"X-N%d" % i, b"v") for i in range(draw(st.integers(FIELDS_LIMIT - 4, FIELDS_LIMIT + 1)))]
    elif roll == 2:
        fields.append((b"Expect", b"100-continue"))
    elif roll == 3:
        fields.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    return fields


HOSTS = {
    "one": [(b"Host", b"a")], "port": [(b"Host", b"a:8000")], "ipv6": [(b"host", b"[::1]:80")],
    "empty": [(b"HOST", b"")], "ipv4": [(b"Host", b"10.0.0.1:80")],
    "missing": [], "two-same": [(b"Host", b"a"), (b"Host", b"a")],
    "two-different": [(b"Host", b"a"), (b"Host", b"b")], "userinfo": [(b"Host", b"u@a")],
    "space": [(b"Host", b"a b")], "slash": [(b"Host", b"a/b")],
}
GOOD_HOSTS = ["one"] * 6 + ["port", "ipv6", "empty", "ipv4"]
BAD_HOSTS = ["missing", "two-same", "two-different", "userinfo", "space", "slash"]

TE_GOOD = [b"chunked"] * 4 + [b"Chunked", b" chunked ", b"CHUNKED"]
TE_BAD = [b"chunked, chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"xchunked", b"chunked;q=1"]
EXT_GOOD = [b""] * 8 + [b";a", b";a=b", b";a=\"q v\"", b";a=\"x\\\"y\"", b";a=\"\xff\"", b";a;b=c"]
EXT_BAD = [b";", b"; a", b";a b", b";a=\x01", b" ", b"\t", b";a=\"b", b";a = b", b";a=b c", b";\xff"]


@st.composite
def chunked_body(draw: st.DrawFn, lv: Levels, body: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=2, unique=True)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if body[a:b]]
    out = b""
    for piece in pieces + [b""]:
        size = b"%x" % len(piece)
        spelling = choose(draw, lv["chunk"], ["plain"] * 6 + ["upper", "zeros"],
                          ["many-zeros", "plus", "overflow", "0x", "negative"])
        if spelling == "upper":
            size = size.upper()
        elif spelling == "zeros":
            size = b"00" + size
        elif spelling == "many-zeros":
            size = b"0" * draw(st.integers(18, 22)) + size
        elif spelling in ("plus", "0x", "negative"):
            size = {"plus": b"+", "0x": b"0x", "negative": b"-"}[spelling] + size
        elif spelling == "overflow":
            size = b"f" * 17
        after = b"\r\n" if piece else b""
        if after and lv["chunk"] and draw(st.integers(1, 100)) <= lv["chunk"] // 2:
            after = draw(st.sampled_from([b"\n", b"", b"XX\r\n", b"\r"]))
        out += size + choose(draw, lv["chunk"], EXT_GOOD, EXT_BAD) + b"\r\n" + piece + after
    return out


@dataclass
class Request:
    method: bytes
    target: bytes
    version: bytes
    fields: List[Tuple[bytes, bytes]]
    body: bytes  # as framed (chunked: up to the last chunk's line)
    chunked: bool
    trailers: List[Tuple[bytes, bytes]]


@st.composite
def requests(draw: st.DrawFn, lv: Levels) -> Request:
    method = choose(draw, lv["method"], [b"GET"] * 3 + [b"POST"] * 3 + [b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"],
                    [b"FROB", b"get", b"CONNECT", b"G\x01T", b"GET\xff"])
    version = choose(draw, lv["version"], [b"HTTP/1.1"] * 3 + [b"HTTP/1.0"],
                     [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1", b"HTTP/1.1.1"])
    host = choose(draw, lv["host"], GOOD_HOSTS + (["missing"] if version == b"HTTP/1.0" else []), BAD_HOSTS)
    fields = list(HOSTS[host]) + draw(header_fields(lv))
    body = draw(st.binary(max_size=12))
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked"]))
    framed, trailers = b"", []
    if framing == "length":
        n = len(body)
        value = choose(draw, lv["length"], [b"%d" % n] * 5 + [b"00%d" % n, b" %d " % n],
                       [b"0" * 21 + b"%d" % n, b"%d, %d" % (n, n), b"%d,%d" % (n, n + 1), b"+%d" % n,
                        b"%d" % (n + 3), b"%d" % max(0, n - 2), b"99999999999999999999999", b"0x%d" % n,
                        b"%d.0" % n, b""])
        fields.append((b"Content-Length", value))
        if choose(draw, lv["length"], [False], [True]):
            fields.append((b"content-length", draw(st.sampled_from([value, b"%d" % (n + 1)]))))
        framed = body
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", choose(draw, lv["te"], TE_GOOD, TE_BAD)))
        extra = choose(draw, lv["te"], ["none"], ["te", "cl"])
        if extra == "te":
            fields.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"gzip"]))))
        elif extra == "cl":
            fields.append((b"Content-Length", b"%d" % len(body)))
        framed = draw(chunked_body(lv, body))
        if draw(st.integers(0, 4)) == 0:
            trailers = [(b"X-T", b"t")]
    if draw(st.integers(0, 3)) == 0:
        fields = list(draw(st.permutations(fields)))
    return Request(method, draw(targets(lv)), version, fields, framed, framing == "chunked", trailers)


LINE_END_BAD = [b"\n", b"\r", b"\r\r\n", b"\n\r"]
FIELD_GOOD = ["plain"] * 8 + ["ows", "no-space", "htab-around"]
FIELD_BAD = ["space-before-colon", "tab-before-colon", "obs-fold", "leading-space", "nul-in-value",
             "ctl-in-value", "vt-in-value", "non-ascii-name", "bare-cr-in-value", "no-colon", "empty-name"]


@st.composite
def spelled(draw: st.DrawFn, lv: Levels, request: Request) -> bytes:
    """The request's bytes, each line spelled mostly right."""
    def line_end() -> bytes:
        return choose(draw, lv["line"], [b"\r\n"], LINE_END_BAD)

    def field_line(name: bytes, value: bytes) -> bytes:
        spelling = choose(draw, lv["field"], FIELD_GOOD, FIELD_BAD)
        line = {
            "plain": name + b": " + value,
            "ows": name + b":  \t" + value + b" \t",
            "no-space": name + b":" + value,
            "htab-around": name + b":\t" + value + b"\t",
            "space-before-colon": name + b" : " + value,
            "tab-before-colon": name + b"\t: " + value,
            "obs-fold": name + b": " + value + draw(st.sampled_from([b"\r\n ", b"\r\n\t"])) + b"folded",
            "leading-space": b" " + name + b": " + value,
            "nul-in-value": name + b": " + value + b"\x00x",
            "ctl-in-value": name + b": " + value + draw(st.sampled_from([b"\x01", b"\x1f", b"\x7f"])) + b"x",
            "vt-in-value": name + b":\x0b" + value,
            "non-ascii-name": name + b"\xc3\xa9: " + value,
            "bare-cr-in-value": name + b": " + value + b"\rx",
            "no-colon": name + b" " + value,
            "empty-name": b": " + value,
        }[spelling]
        return line + line_end()

    sep = choose(draw, lv["request-line"], [b" "], [b"  ", b"\t", b" \t"])
    out = choose(draw, lv["request-line"], [b""], [b"\r\n", b"\n", b"\r\n\r\n", b" "])
    out += request.method + sep + request.target + choose(draw, lv["request-line"], [sep], [b" "]) + request.version
    out += line_end()
    out += b"".join(field_line(name, value) for name, value in request.fields)
    out += line_end()
    body = request.body
    if request.chunked:
        body += b"".join(field_line(n, v) for n, v in request.trailers) + line_end()
    return out + body


MUTATION_BYTES = st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\x00", b"\x0b", b"\x7f", b"\xff", b":", b";",
                                  b",", b"0", b"5", b"a", b"\"", b"_"])


@st.composite
def wire_requests(draw: st.DrawFn) -> bytes:
    lv = draw(levels())
    request = draw(requests(lv))
    note(repr(request))
    data = bytearray(draw(spelled(lv, request)))
    for _ in range(choose(draw, lv["mutation"], [0], [1, 1, 2])):
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["insert", "replace", "delete"]))
        if edit == "insert":
            data[at:at] = draw(MUTATION_BYTES)
        elif edit == "replace":
            data[at:at + 1] = draw(MUTATION_BYTES)
        else:
            del data[at]
    return bytes(data)


# -- the tests ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=wire_requests())
@example(data=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
@example(data=CHUNKED_POST + b"5;a=\"q v\"\r\nhello\r\n0\r\nX-T: t\r\n\r\n")
@example(data=b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
@example(data=b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * (FIELD_SIZE_LIMIT - 6) + b" \t\r\n\r\n")
def test_we_and_h11_agree(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    check(verdicts(loop, data))


@pytest.mark.parametrize("difference", DIFFERENCES, ids=[d.name for d in DIFFERENCES])
def test_deliberate_difference(loop: asyncio.AbstractEventLoop, difference: Difference) -> None:
    v = verdicts(loop, difference.example)
    assert difference.applies(v), difference.name
    if difference.ours == "reject":
        assert v.h11 is not None, v.h11_error
        assert v.ours is None and v.status >= 400, v.output
    else:
        assert v.h11 is None
        assert v.ours is not None and v.status == 200, v.output
    # and only this difference explains it
    assert matching(v, difference.ours) == [difference.name]


def test_underscore_names_dropped_where_h11_keeps_them(loop: asyncio.AbstractEventLoop) -> None:
    # Gunicorn's header_map "drop" (the default): both accept, the app does not see the field.
    v = verdicts(loop, b"GET / HTTP/1.1\r\nHost: a\r\nX_Under: 1\r\nX-A: 2\r\n\r\n")
    assert v.h11 is not None and v.ours is not None
    assert (b"x_under", b"1") in v.h11.headers
    assert v.ours.headers == [(b"host", b"a"), (b"x-a", b"2")]


def test_limits_hold_at_the_boundary(loop: asyncio.AbstractEventLoop) -> None:
    # exactly at each limit: both serve it; one past it: only h11 does
    def at(line: int, size: int, fields: int) -> bytes:
        return (b"GET /" + b"a" * (line - 1) + b" HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * (size - 5) + b"\r\n"
                + b"".join(b"X-N%d: v\r\n" % i for i in range(fields - 2)) + b"\r\n")
    assert verdicts(loop, at(LINE_LIMIT, FIELD_SIZE_LIMIT, FIELDS_LIMIT)).ours is not None
    for over in (at(LINE_LIMIT + 1, FIELD_SIZE_LIMIT, FIELDS_LIMIT), at(LINE_LIMIT, FIELD_SIZE_LIMIT + 1, FIELDS_LIMIT),
                 at(LINE_LIMIT, FIELD_SIZE_LIMIT, FIELDS_LIMIT + 1)):
        v = verdicts(loop, over)
        assert v.h11 is not None and v.ours is None and v.status in (414, 431), over[:60]
