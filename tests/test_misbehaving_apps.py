"""Misbehaving applications (issue 13, item 6): whatever an app sends, the worker writes valid
HTTP/1.1, never crashes, and the next request on the connection is answered exactly or the
connection is closed.

Hypothesis draws scripts for the app of tests/apps/misbehaving_app.py: ASGI ``send()`` messages
valid and invalid (start twice, body before start, body after the end, wrong types, missing keys,
illegal, huge and conflicting headers, 1xx/204/304 with a body, memoryviews whose items are not
bytes), exceptions of every kind anywhere, ``receive()`` calls, early returns. The script runs for
request 1 (``/bad``) of a keep-alive connection; request 2 (``/good``, a known answer) is
pipelined behind it in the same read, the next read, or sent once the first is answered.

What the client gets is parsed by h11 as a client (the two requests sent through it first), and
compared with what an oracle (``Model``) derives from the script, from the rules of docs/http.md
("Responses", "Application errors"): the app's own response when it sent a valid one, else the
server's 500 when nothing went out, else the response cut off and the connection closed; then
request 2's exact answer, or the close. The oracle also says which of the app's sends are refused,
what each receive() returns, and whether an error is logged.

(a) in-process, many scripts, on the protocol harness; (b) a fixed sample of scripts through a real
Gunicorn, where the same oracle must hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import h11
import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.apps.misbehaving_app import decode, make_app
from tests.conftest import GunicornServer
from tests.protocol_harness import Harness
from tests.wire import connect, read_to_close

START, BODY, COMPLETE_EXT = "http.response.start", "http.response.body", "asgiworker.http.response.complete"
FRAMING_NAMES = (b"content-length", b"transfer-encoding", b"connection")
SERVER_NAMES = (b"date", b"server")
ERROR_BODY = b"Internal Server Error\n"
# Bytes never allowed in a field value (RFC 9110 5.5: VCHAR, obs-text, SP and HTAB only).
CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
H11_MAX_EVENT = 4 * 1024 * 1024  # h11's 16 KiB default is a client's choice, not HTTP's: huge heads are fine

# -- scripts ----------------------------------------------------------------------------------------
# Everything is JSON (bytes as tagged values, see misbehaving_app.decode), so that a script can be
# sent to a real Gunicorn as it is.


def b(text: str) -> Dict[str, str]:
    return {"b": text}


def d(**fields: Any) -> Dict[str, Any]:
    return {"d": fields}


def start(status: Any = 200, headers: Any = None) -> List[Any]:
    fields: Dict[str, Any] = {"type": START, "status": status}
    if headers is not None:
        fields["headers"] = headers
    return ["send", {"d": fields}]


def body(data: Any = None, more: Any = None) -> List[Any]:
    fields: Dict[str, Any] = {"type": BODY}
    if data is not None:
        fields["body"] = data
    if more is not None:
        fields["more_body"] = more
    return ["send", {"d": fields}]


VALID_STATUSES = [200, 200, 200, 201, 404, 500, 599, 600, 999, {"status": 200}, {"status": 418}]
NO_BODY_STATUSES = [204, 304]
INTERIM_STATUSES = [100, 103]
BAD_STATUSES = [99, 101, 1000, 0, -1, "200", None, True, 200.0]

written_names = st.sampled_from(["content-type", "x-a", "X-Mixed-Case", "set-cookie", "x-b"])
plain_values = st.one_of(
    st.sampled_from(["text/plain", "", " padded ", "a\tb", "caf\xe9", "x" * 40]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
)
bad_values = st.sampled_from(["a\r\nx-injected: 1", "a\nb", "a\rb", "a\r\n", "a\x00b", "a\x0bb", "a\x0cb",
                              "a\x7fb", "a\x01b", "\x1b[0m"])
good_lengths = st.sampled_from(["0", "3", "5", "10", " 5 "])
bad_lengths = st.sampled_from(["abc", "-1", "1_0", "+5", "", "0x5"])


@st.composite
def good_pairs(draw) -> Any:
    kind = draw(st.sampled_from(["plain"] * 5 + ["length", "te", "connection", "bytearray", "huge"]))
    name = draw(written_names)
    if kind == "plain":
        return [b(name), b(draw(plain_values))]
    if kind == "length":
        return [b(draw(st.sampled_from(["content-length", "Content-Length"]))), b(draw(good_lengths))]
    if kind == "te":  # the app's own Transfer-Encoding: dropped, the server frames the body
        return [b("transfer-encoding"), b(draw(st.sampled_from(["chunked", "gzip, chunked", "identity"])))]
    if kind == "connection":
        return [b(draw(st.sampled_from(["connection", "Connection"]))),
                b(draw(st.sampled_from(["close", "Close", "keep-alive", "upgrade", "close\r\nx-evil: 1"])))]
    if kind == "bytearray":
        return [b(name), {"ba": draw(plain_values)}]
    return [b(name), {"big": ["v", draw(st.sampled_from([9000, 100_000]))]}]


@st.composite
def bad_pairs(draw) -> Any:
    kind = draw(st.sampled_from(["value", "value", "value", "length", "length", "name", "name", "str-name",
                                 "str-value", "int-value", "triple", "single"]))
    name = draw(written_names)
    if kind == "value":
        return [b(name), b(draw(bad_values))]
    if kind == "length":  # not a length, or one that contradicts another
        if draw(st.booleans()):
            return [b("content-length"), b(draw(bad_lengths))]
        return {"t": [[b("content-length"), b("3")], [b("Content-Length"), b("4")]]}
    if kind == "name":
        return [b(draw(st.sampled_from(["bad name", "bad:name", "", "x\r\nx-injected", "x\x00", "\xe9t\xe9",
                                        "x-a "]))), b("v")]
    if kind == "str-name":
        return [name, b("v")]
    if kind == "str-value":
        return [b(name), "v"]
    if kind == "int-value":
        return [b(name), 5]
    if kind == "triple":
        return [b(name), b("v"), b("w")]
    return [b(name)]


@st.composite
def header_lists(draw, bad: bool = False) -> Any:
    """Good headers (``bad``: and one that is not, anywhere among them), as a list of lists or
    as tuples of tuples (the header sets the worker may remember)."""
    pairs = draw(st.lists(good_pairs(), max_size=3))
    if bad:
        wrong = draw(bad_pairs())
        at = draw(st.integers(0, len(pairs)))
        pairs[at:at] = wrong["t"] if isinstance(wrong, dict) else [wrong]
    if draw(st.booleans()):
        return {"t": [{"t": p} for p in pairs]}
    return pairs


bad_header_sets = st.sampled_from([{"none": 0}, "content-type: text/plain", 7])
good_body_data = st.one_of(
    st.binary(max_size=12).map(lambda data: b(data.decode("latin-1"))),
    st.sampled_from([b(""), b("abc"), {"ba": "bytes-array"}, {"mv": "memory-view"}, {"mvi": [1, 2, 3]},
                     {"big": ["z", 70_000]}]),
)
bad_body_data = st.sampled_from(["text", 5, {"none": 0}, [1, 2]])
good_statuses = st.integers(0, 19).flatmap(
    lambda i: st.sampled_from(NO_BODY_STATUSES if i < 2 else INTERIM_STATUSES if i == 2 else VALID_STATUSES))


@st.composite
def good_start(draw) -> List[Any]:
    fields: Dict[str, Any] = {"type": START, "status": draw(good_statuses)}
    if draw(st.integers(0, 3)):  # (else no "headers" key)
        fields["headers"] = draw(header_lists())
    if draw(st.integers(0, 5)) == 0:
        fields["trailers"] = draw(st.sampled_from([True, False, "yes"]))
    return ["send", {"d": fields}]


@st.composite
def good_body(draw, final: bool) -> List[Any]:
    fields: Dict[str, Any] = {"type": BODY}
    if draw(st.integers(0, 5)):  # (else no "body" key)
        fields["body"] = draw(good_body_data)
    more = draw(st.sampled_from([False, False, None, 0, ""]) if final
                else st.sampled_from([True, True, True, 1, "yes"]))
    if more is not None:
        fields["more_body"] = more
    return ["send", {"d": fields}]


@st.composite
def odd_messages(draw) -> List[Any]:
    """Messages that are wrong whatever the response's state."""
    kind = draw(st.sampled_from(["type", "no-type", "not-a-dict", "trailers"]))
    if kind == "type":
        return ["send", d(type=draw(st.sampled_from(["http.response.zork", "http.request", "websocket.send",
                                                     "lifespan.startup.complete", 5])), body=b("x"))]
    if kind == "no-type":
        return ["send", d(status=200, body=b("x"))]
    if kind == "not-a-dict":
        return ["send", draw(st.sampled_from(["http.response.start", 7, [START], {"t": [START, 200]}]))]
    return ["send", d(type="http.response.trailers", headers=[], more_trailers=False)]


@st.composite
def whole_responses(draw) -> List[Any]:
    """The server's own extension: a whole response in one message (valid only before a start)."""
    fields: Dict[str, Any] = {"type": COMPLETE_EXT, "status": draw(st.one_of(good_statuses, st.sampled_from(BAD_STATUSES)))}
    if draw(st.integers(0, 3)):
        fields["headers"] = draw(header_lists(bad=draw(st.integers(0, 3)) == 0))
    if draw(st.integers(0, 5)):
        fields["body"] = draw(st.one_of(good_body_data, good_body_data, bad_body_data))
    return ["send", {"d": fields}]


def is_start(action: List[Any]) -> bool:
    return action[0] == "send" and isinstance(action[1], dict) and action[1].get("d", {}).get("type") == START


def is_body(action: List[Any]) -> bool:
    return action[0] == "send" and isinstance(action[1], dict) and action[1].get("d", {}).get("type") == BODY


FAULTS = ["bad-header", "bad-header", "bad-header-set", "bad-status", "no-status", "bad-body", "odd-message",
          "extra-start", "extra-body", "raise", "raise", "raise", "receive", "sleep", "return", "cut", "drop", "whole",
          "swallow"]


@st.composite
def scripts(draw) -> Dict[str, Any]:
    """A valid response (start, some parts, the last part), then up to three faults: a bad
    header, status or body in one of its messages; a message inserted anywhere (before the start,
    mid-body, after the end: an odd one, another start or body, the server's whole-response
    message); an exception, receive(), a loop iteration or a return anywhere; the script cut
    short or missing a message; the app swallowing what send() raises."""
    actions = [draw(good_start())]
    actions += [draw(good_body(final=False)) for _ in range(draw(st.integers(0, 3)))]
    actions.append(draw(good_body(final=True)))
    swallow = False
    for fault in draw(st.lists(st.sampled_from(FAULTS), max_size=3)):
        starts = [a for a in actions if is_start(a)]
        bodies = [a for a in actions if is_body(a)]
        if fault in ("bad-header", "bad-header-set", "bad-status", "no-status") and starts:
            fields = draw(st.sampled_from(starts))[1]["d"]
            if fault == "bad-header":
                fields["headers"] = draw(header_lists(bad=True))
            elif fault == "bad-header-set":
                fields["headers"] = draw(bad_header_sets)
            elif fault == "bad-status":
                fields["status"] = draw(st.sampled_from(BAD_STATUSES))
            else:
                fields.pop("status", None)
        elif fault == "bad-body" and bodies:
            draw(st.sampled_from(bodies))[1]["d"]["body"] = draw(bad_body_data)
        elif fault in ("odd-message", "extra-start", "extra-body", "whole", "raise", "receive", "sleep", "return"):
            if fault == "odd-message":
                action = draw(odd_messages())
            elif fault == "extra-start":
                action = draw(good_start())
            elif fault == "extra-body":
                action = draw(good_body(final=draw(st.booleans())))
            elif fault == "whole":
                action = draw(whole_responses())
            elif fault == "raise":
                action = ["raise", draw(st.sampled_from(["Exception", "Exception", "SystemExit", "KeyboardInterrupt",
                                                         "CancelledError", "BaseException"]))]
            else:
                action = [fault]
            actions.insert(draw(st.integers(0, len(actions))), action)
        elif fault == "cut" and actions:
            actions = actions[:draw(st.integers(0, len(actions) - 1))]
        elif fault == "drop" and actions:
            del actions[draw(st.integers(0, len(actions) - 1))]
        elif fault == "swallow":
            swallow = True
    return {"swallow": swallow, "actions": actions}


# -- the oracle -------------------------------------------------------------------------------------
# What the rules of docs/http.md say the client must get, derived from the script alone.

AWAITING, STARTED, SENDING, COMPLETE = range(4)
NONE, LENGTH, CHUNKED = "none", "length", "chunked"


@dataclass
class Expected:
    kind: str = "response"  # the app's "response", the server's "error" (500), or an "interim" 1xx
    status: int = 0
    app_headers: List[Tuple[bytes, bytes]] = field(default_factory=list)  # as the client parses them
    framing: str = NONE
    length: Optional[int] = None
    body: bytes = b""
    complete: bool = True  # the response is whole on the wire
    keep_alive: bool = True  # request 2 is answered
    close_header: bool = False
    trace: List[Any] = field(default_factory=list)  # what the app saw
    logged: bool = False  # an error is logged
    ending: str = "completed"  # how the app ended: "completed", "raised", "refused", "returned"


def is_bytes(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview))


def valid_status(status: Any) -> bool:
    # Any int but bool (HTTPStatus members are ints), 3 digits; never 101 (only the WebSocket
    # handshake switches protocols, and the server writes that one).
    return isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 999 and status != 101


def judge_headers(headers: Any) -> Optional[Tuple[List[Tuple[bytes, bytes]], Optional[int], bool]]:
    """(headers written, Content-Length asked, close asked), or None: the set is refused."""
    if headers is None or isinstance(headers, (str, bytes, int)):
        return None
    written: List[Tuple[bytes, bytes]] = []
    lengths = set()
    close = False
    for pair in headers:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            return None
        name, value = pair
        if not isinstance(name, bytes):
            return None
        lname = name.lower()
        if lname == b"transfer-encoding":
            continue  # the server frames the body itself
        if lname == b"connection":
            close = close or b"close" in bytes(value).lower()
            continue
        if not isinstance(value, (bytes, bytearray)):
            return None
        if lname == b"content-length":
            text = bytes(value).strip(b" \t")
            if not text.isdigit():
                return None
            lengths.add(int(text))
            continue
        if not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) or CTL.search(value):
            return None
        written.append((lname, bytes(value).strip(b" \t")))  # (a client drops the whitespace around a value)
    if len(lengths) > 1:
        return None  # the app contradicts itself: which body length is meant is anyone's guess
    return written, (lengths.pop() if lengths else None), close


class Model:
    """The response to /bad as the rules make it, message by message."""

    def __init__(self, method: str, request_body: bytes, body_read: bool) -> None:
        self.method = method
        self.request_body = request_body
        self.body_read = body_read  # the app has received the request body already
        self.phase = AWAITING
        self.status: Any = None
        self.headers: Any = ()
        self.sent = 0
        self.over = False
        self.out = Expected()

    def play(self, script: Dict[str, Any]) -> Expected:
        out = self.out
        for action in script["actions"]:
            kind = action[0]
            if kind == "send":
                accepted = self.send(decode(action[1]))
                out.trace.append("sent" if accepted else "refused")
                if not accepted and not script["swallow"]:
                    self.app_failed(logged=True, ending="refused")
                    return out
            elif kind == "raise":
                self.app_failed(logged=action[1] != "CancelledError", ending="raised")
                return out
            elif kind == "receive":
                out.trace.append(self.receive())
            elif kind == "return":
                break
        if self.phase != COMPLETE:
            self.app_failed(logged=True, ending="returned")  # without (completing) a response
        return out

    def receive(self) -> Any:
        if self.phase == COMPLETE:
            return {"type": "http.disconnect"}
        if not self.body_read:
            self.body_read = True
            return {"type": "http.request", "body": self.request_body, "more_body": False}
        return "pending"  # it waits for the end of the response (or a disconnect)

    def send(self, message: Any) -> bool:
        if not isinstance(message, dict) or "type" not in message:
            return False
        kind = message["type"]
        if self.phase == AWAITING:
            if kind == COMPLETE_EXT:
                status, data = message.get("status"), message.get("body", b"")
                judged = judge_headers(message.get("headers", ()))
                if not valid_status(status) or not is_bytes(data) or judged is None:
                    return False
                self.status = int(status)
                self.head(judged, data, more=False)
                self.finish()
                return True
            if kind != START or not valid_status(message.get("status")):
                return False
            self.status = int(message["status"])
            self.headers = message.get("headers", ())
            self.phase = STARTED
            return True
        if kind != BODY or self.phase == COMPLETE:
            return False
        data = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if not is_bytes(data):
            return False
        if self.phase == STARTED:
            judged = judge_headers(self.headers)
            if judged is None:
                return False  # nothing went out: the response can still be a 500
            self.head(judged, data, more)
        else:
            self.part(bytes(data))
        if not more:
            self.finish()
        return True

    def head(self, judged: Tuple[List[Tuple[bytes, bytes]], Optional[int], bool], data: Any, more: bool) -> None:
        out = self.out
        written, length, close = judged
        data = bytes(data)
        status = self.status
        out.status, out.app_headers = status, written
        if status < 200:
            out.kind = "interim"  # not a final response: the client is left waiting, so the server closes
            out.framing, close = NONE, True
        elif status in (204, 304):
            out.framing = NONE
        elif length is not None:
            out.framing, out.length = LENGTH, length
        elif not more:
            if self.method == "HEAD" and not data:
                out.framing = NONE  # an empty body says nothing about the GET's length
            else:
                out.framing, out.length = LENGTH, len(data)
        else:
            out.framing = CHUNKED
        if close:
            out.keep_alive = False
            out.close_header = status >= 200
        self.phase = SENDING
        self.part(data)

    def part(self, data: bytes) -> None:
        out = self.out
        if self.method == "HEAD" or out.framing == NONE:
            return
        if out.framing == LENGTH:
            assert out.length is not None
            room = out.length - self.sent
            if len(data) > room:
                self.over = True  # cut at the declared length, logged, and the connection closes
                out.keep_alive, out.logged = False, True
                data = data[:room]
        out.body += data
        self.sent += len(data)

    def finish(self) -> None:
        out = self.out
        self.phase = COMPLETE
        if out.framing == LENGTH and self.method != "HEAD" and self.sent < (out.length or 0):
            out.complete, out.keep_alive, out.logged = False, False, True  # short of its length

    def app_failed(self, logged: bool, ending: str) -> None:
        out = self.out
        out.logged = out.logged or logged
        out.ending = ending
        if self.phase == COMPLETE:
            return  # the response is whole: nothing changes on the wire
        out.keep_alive = False
        if self.phase == SENDING:
            # The head went out: what was sent stays, then the close; never a second response.
            out.complete = (self.method == "HEAD" or out.framing == NONE
                            or (out.framing == LENGTH and self.sent == out.length))
            return
        # Nothing went out: the server's 500 instead.
        out.kind, out.status, out.app_headers = "error", 500, [(b"content-type", b"text/plain; charset=utf-8")]
        out.framing, out.length, out.body, out.complete = LENGTH, len(ERROR_BODY), ERROR_BODY, True
        out.close_header = True


# -- what the client sees ---------------------------------------------------------------------------


@dataclass
class Seen:
    informational: List[int] = field(default_factory=list)
    status: Optional[int] = None
    headers: List[Tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    end: str = ""  # "eom", or h11's complaint when the bytes stop short of a whole response
    then: str = ""  # "closed", "answered: <body>", or what else came


def requests(method: str, request_body: bytes) -> Tuple[h11.Connection, bytes, h11.Request, bytes]:
    """An h11 client that sent request 1 (/bad); request 2's event and bytes (from another h11
    client: this one may send it only once the first response is complete)."""
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=H11_MAX_EVENT)
    headers = [("Host", "example.test")]
    if method == "POST":
        headers.append(("Content-Length", str(len(request_body))))
    wire = client.send(h11.Request(method=method, target="/bad", headers=headers)) or b""
    if method == "POST":
        wire += client.send(h11.Data(data=request_body)) or b""
    wire += client.send(h11.EndOfMessage()) or b""
    second = h11.Request(method="GET", target="/good?n=2", headers=[("Host", "example.test"), ("Connection", "close")])
    other = h11.Connection(h11.CLIENT)
    second_wire = (other.send(second) or b"") + (other.send(h11.EndOfMessage()) or b"")
    return client, wire, second, second_wire


def observe(client: h11.Connection, second: h11.Request, output: bytes, closed: bool) -> Seen:
    seen = Seen()
    client.receive_data(output)
    if closed:
        client.receive_data(b"")
    try:
        while True:
            event = client.next_event()
            if isinstance(event, h11.InformationalResponse):
                seen.informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                seen.status, seen.headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                seen.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                seen.end = "eom"
                break
            else:
                seen.end = "stopped at %r" % (event,)
                return seen
    except h11.RemoteProtocolError as exc:
        seen.end = "h11: %s" % exc
        return seen
    seen.then = then(client, second)
    return seen


def then(client: h11.Connection, second: h11.Request) -> str:
    """What follows the first response: the close, or request 2's answer (then the close)."""
    try:
        if client.their_state is h11.DONE and client.our_state is h11.DONE:
            client.start_next_cycle()
            client.send(second)
            client.send(h11.EndOfMessage())
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            if client.their_state is h11.ERROR and client.trailing_data == (b"", True):
                # The close before a byte of request 2's answer, on a connection its last
                # response did not say would close: h11 calls that an error, a client learns
                # the connection is gone (and may retry on a new one).
                return "closed"
            raise exc
        if isinstance(event, h11.ConnectionClosed):
            return "closed"
        if not isinstance(event, h11.Response):
            return "after the response: %r" % (event,)
        status = event.status_code
        answer = b""
        while True:
            event = client.next_event()
            if isinstance(event, h11.Data):
                answer += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return "request 2 unfinished: %r" % (event,)
        closing = client.next_event()
        tail = "" if isinstance(closing, h11.ConnectionClosed) else ", then %r" % (closing,)
        return "answered %d: %r%s" % (status, answer, tail)
    except (h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
        return "h11: %s" % exc


def check(expected: Expected, seen: Seen, method: str) -> None:
    """The response the oracle expects, exactly, as h11 parsed it."""
    if expected.kind == "interim":
        assert seen.informational == [expected.status] and seen.status is None, seen
        assert seen.end == "h11: can't handle event type ConnectionClosed when role=SERVER and state=SEND_RESPONSE", seen
        return
    assert seen.informational == [], seen
    assert seen.status == expected.status, (seen, expected)
    app = [(n, v) for n, v in seen.headers if n not in FRAMING_NAMES + SERVER_NAMES]
    assert app == expected.app_headers, (seen, expected)
    framing = sorted((n, v) for n, v in seen.headers if n in FRAMING_NAMES)
    want: List[Tuple[bytes, bytes]] = []
    if expected.framing == LENGTH:
        want.append((b"content-length", b"%d" % expected.length))
    elif expected.framing == CHUNKED:
        want.append((b"transfer-encoding", b"chunked"))
    if expected.close_header:
        want.append((b"connection", b"close"))
    assert framing == sorted(want), (seen, expected)
    assert sorted(n for n, _ in seen.headers if n in SERVER_NAMES) == [b"date", b"server"], seen
    assert seen.body == (b"" if method == "HEAD" else expected.body), (seen, expected)
    if not expected.complete:
        assert seen.end.startswith("h11: peer closed connection without sending complete message body"), seen
        return
    assert seen.end == "eom", seen
    assert seen.then == ("answered 200: b'good 2'" if expected.keep_alive else "closed"), (seen, expected)


# -- (a) in-process ---------------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


LOGGER = "tests.misbehaving"


@pytest.fixture(scope="module")
def log_records():
    """The worker's log (kept out of pytest's capture: thousands of tracebacks to format)."""
    handler = Records()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.propagate = True


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@dataclass
class Run:
    output: bytes
    closed: bool
    trace: List[Any]
    errors: List[str]  # the worker's error log lines
    loop_errors: List[Dict[str, Any]]  # what reached the loop's exception handler


def serve(loop: asyncio.AbstractEventLoop, log_records: Records, script: Dict[str, Any], first: bytes,
          second: bytes, when: str, from_body: bool = False) -> Run:
    """Request 1 (the script's) and request 2 on one harness connection; ``when``: request 2 in
    the same read ("same"), the next read ("next"), or once the first is answered ("after")."""
    trace: List[Any] = []
    loop_errors: List[Dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    del log_records.records[:]
    app = make_app(None if from_body else (lambda scope: script), trace)
    harness = Harness(app, loop, logger_name=LOGGER)
    try:
        if when == "same":
            loop.run_until_complete(harness.feed([first + second]))
        elif when == "next":
            loop.run_until_complete(harness.feed([first, second]))
        else:
            loop.run_until_complete(harness.feed([first]))
            loop.run_until_complete(harness.feed([second]))
        assert not harness.transport.writes_after_close, harness.transport.writes_after_close
        output, closed = harness.output(), harness.transport.closing
        loop.run_until_complete(harness.close())
    finally:
        loop.set_exception_handler(None)
    errors = [r.getMessage() for r in log_records.records if r.levelno >= logging.ERROR]
    return Run(output, closed, trace, errors, loop_errors)


METHODS = ["GET", "GET", "POST", "HEAD"]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(script=scripts(), method=st.sampled_from(METHODS), when=st.sampled_from(["same", "next", "after"]))
def test_whatever_the_app_sends_the_wire_is_valid_http(loop, log_records, script, method, when):
    request_body = b"payload" if method == "POST" else b""
    expected = Model(method, request_body, body_read=False).play(script)
    event("%s %s, %s, %s" % (expected.ending, expected.kind, "whole" if expected.complete else "cut",
                             "then answered" if expected.keep_alive else "then closed"))
    client, first, second, second_wire = requests(method, request_body)
    run = serve(loop, log_records, script, first, second_wire, when)
    assert run.loop_errors == [], run.loop_errors
    # Request 2 asks to close: the connection ends, whatever happened to request 1.
    assert run.closed
    check(expected, observe(client, second, run.output, run.closed), method)
    assert run.trace == expected.trace, (run.trace, expected)
    assert bool(run.errors) == expected.logged, (run.errors, expected)


# -- the regressions, one by one --------------------------------------------------------------------

REGRESSIONS = {
    # A 1xx as the response: the client takes it as interim and waits; kept alive, it took the
    # answer to the next request for this one's.
    "interim-status": {"swallow": False, "actions": [start(103), body(b("x"))]},
    # 101 on plain HTTP: no client asked to switch protocols (h11: "without a pending proposal").
    "switching-protocols": {"swallow": False, "actions": [start(101), body(b("x"))]},
    # Control characters other than CR, LF, NUL in a value: not a valid field value.
    "vertical-tab": {"swallow": False, "actions": [start(200, [[b("x-a"), b("a\x0bb")]]), body(b("x"))]},
    "escape": {"swallow": False, "actions": [start(200, [[b("x-a"), b("\x1b[0m")]]), body(b("x"))]},
    "delete": {"swallow": False, "actions": [start(200, [[b("x-a"), b("a\x7fb")]]), body(b("x"))]},
    # A memoryview of 4-byte items: len() counts 3 items, the wire carries 12 bytes.
    "memoryview-items": {"swallow": False, "actions": [start(200), body({"mvi": [1, 2, 3]})]},
    "memoryview-items-streamed": {"swallow": False, "actions": [
        start(200, [[b("content-length"), b("12")]]), body({"mvi": [1, 2]}, True), body({"mvi": [3]})]},
    # Two Content-Lengths that disagree: refused rather than one picked.
    "conflicting-lengths": {"swallow": False, "actions": [
        start(200, [[b("content-length"), b("1")], [b("content-length"), b("3")]]), body(b("abc"))]},
    # Not a length at all (Python's int() would read 10).
    "length-with-underscore": {"swallow": False, "actions": [
        start(200, [[b("content-length"), b("1_0")]]), body(b("0123456789"))]},
    # HTTPStatus.OK is an int.
    "status-enum": {"swallow": False, "actions": [start({"status": 200}), body(b("x"))]},
    # The 500 to a HEAD request: its client reads no body (the text was read as the next response).
    "error-to-head": {"swallow": False, "actions": [body(b("before the start"))]},
    # A whole-response message refused for its headers starts nothing: the app may still answer.
    "whole-response-refused": {"swallow": True, "actions": [
        ["send", d(type=COMPLETE_EXT, status=200, headers=[[b("x-a"), b("a\nb")]], body=b("x"))],
        start(200), body(b("answered"))]},
}
# The method of the request each regression answers (GET unless named here).
REGRESSION_METHODS = {"error-to-head": "HEAD"}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
@pytest.mark.parametrize("when", ["same", "after"])
def test_regression(loop, log_records, name, when):
    script = REGRESSIONS[name]
    method = REGRESSION_METHODS.get(name, "GET")
    expected = Model(method, b"", body_read=False).play(script)
    client, first, second, second_wire = requests(method, b"")
    run = serve(loop, log_records, script, first, second_wire, when)
    assert run.loop_errors == []
    check(expected, observe(client, second, run.output, run.closed), method)
    assert run.trace == expected.trace
    assert bool(run.errors) == expected.logged, run.errors


# -- (b) a sample through a real Gunicorn -----------------------------------------------------------

SAMPLE = {
    "valid-streamed": {"swallow": False, "actions": [
        start(200, [[b("content-type"), b("text/plain")]]), body(b("ab"), True), ["sleep"], body(b("cd"), True),
        body(b(""))]},
    "valid-with-length": {"swallow": False, "actions": [
        start(201, {"t": [{"t": [b("content-length"), b("5")]}]}), body({"ba": "hel"}, True), body({"mv": "lo"})]},
    "raise-before-start": {"swallow": False, "actions": [["raise", "Exception"], start(200), body(b("x"))]},
    "raise-mid-body": {"swallow": False, "actions": [start(200), body(b("part"), True), ["sleep"],
                                                     ["raise", "KeyboardInterrupt"]]},
    "body-before-start": {"swallow": False, "actions": [body(b("x")), start(200), body(b("x"))]},
    "start-twice-swallowed": {"swallow": True, "actions": [start(200), start(404), body(b("first"))]},
    "send-after-end": {"swallow": False, "actions": [start(200), body(b("done")), body(b("again"))]},
    "injected-header": {"swallow": False, "actions": [
        start(200, [[b("x-a"), b("a\r\nx-injected: 1")]]), body(b("x"))]},
    "no-body-status-with-body": {"swallow": False, "actions": [start(204), body(b("dropped"), True), body(b("!"))]},
    "short-of-length": {"swallow": False, "actions": [start(200, [[b("content-length"), b("10")]]), body(b("short"))]},
    "returns-early": {"swallow": False, "actions": [start(200), body(b("x"), True), ["return"]]},
    "interim-status": REGRESSIONS["interim-status"],
    "memoryview-items": REGRESSIONS["memoryview-items"],
}


@pytest.fixture(scope="module")
def server():
    s = GunicornServer("tests.apps.misbehaving_app:app")
    yield s
    s.stop()


def over_gunicorn(server: GunicornServer, script: Dict[str, Any]) -> Tuple[h11.Connection, h11.Request, bytes, str]:
    payload = json.dumps(script).encode()
    client, first, second, second_wire = requests("POST", payload)
    with connect(server.port, timeout=10) as s:
        s.sendall(first + second_wire)
        data, how = read_to_close(s, timeout=10)
    return client, second, data, how


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_sample_over_gunicorn(server, loop, log_records, name):
    """The script runs as in-process (the app reads it from the body first), and the client gets
    what the oracle says: over a socket, from a real worker, as on the harness."""
    script = SAMPLE[name]
    payload = json.dumps(script).encode()
    expected = Model("POST", payload, body_read=True).play(script)
    client, first, second, second_wire = requests("POST", payload)
    run = serve(loop, log_records, script, first, second_wire, "same", from_body=True)
    check(expected, observe(client, second, run.output, run.closed), "POST")
    client, second, data, how = over_gunicorn(server, script)
    assert how in ("eof", "reset"), how
    check(expected, observe(client, second, data, True), "POST")


def test_worker_survived(server):
    """After every sample, the same worker still answers."""
    client, first, second, second_wire = requests("GET", b"")
    with connect(server.port, timeout=10) as s:
        s.sendall(second_wire)
        data, how = read_to_close(s, timeout=10)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"good 2"), data
    assert "Booting worker" in server.log() and server.log().count("Booting worker") == 1, server.log()[-3000:]
