"""The client side of tests/apps/conformance_apps.py: asking its counters and event lists, and the
"rejected, closed, canary never ran" check shared by test_conformance, test_smuggling and
test_flow_control. The wire itself (sockets, the response parser) is tests/wire.py.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, List, Optional

from tests.apps.conformance_apps import _rss_kb
from tests.targets import Target, exchange
from tests.wire import Response, parse_all, parse_one


def get(server: Target, target: str, headers: bytes = b"") -> Response:
    """One simple request on its own connection."""
    data, _ = exchange(server, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n" % (target.encode(), headers))
    resp, _ = parse_one(data)
    return resp


def hits(server: Target, key: str) -> int:
    """How many times /count?key=K reached the app (asked on a separate connection)."""
    resp = get(server, f"/hits?key={key}")
    assert resp.status == 200, resp
    return int(resp.body)


def events(server: Target, key: str, want=None, timeout: float = 5.0) -> List[Any]:
    """The app's event list for key, polled until want(events) is true (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        evs = json.loads(get(server, f"/events?key={key}").body)
        if want is None or want(evs) or time.monotonic() > deadline:
            return evs
        time.sleep(0.05)


def rss_kb(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (the worker's, for the memory bounds)."""
    return _rss_kb(str(pid))


def log_since(server, offset: int, want: Optional[str] = None, timeout: float = 3.0) -> str:
    """The server log written after offset (waiting up to timeout for want to show up)."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.log()[offset:]
        if want is None or want in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def new_key() -> str:
    """A fresh key for the app's counters, so that tests sharing one server never see each other."""
    return os.urandom(8).hex()


# A request pipelined after a bad one: if the app ever counts it, the bad one was not cut off.
CANARY = b"GET /count?key=%s HTTP/1.1\r\nHost: a\r\n\r\n"


def assert_rejected(server: Target, bad: bytes, status: int):
    """bad + a pipelined canary: exactly one response (the rejection), a close, canary never run."""
    key = new_key()
    data, closed = exchange(server, bad + CANARY % key.encode(), timeout=5)
    responses, rest = parse_all(data)
    assert responses, f"no response to {bad!r}: got {data!r} (closed={closed})"
    assert len(responses) == 1, f"{len(responses)} responses to {bad!r}: {data!r}"
    r = responses[0]
    assert r.status == status, f"{bad!r}: expected {status}, got {r.status}: {data!r}"
    assert rest == b"", f"bytes after the rejection: {rest!r}"
    assert r.get(b"connection") == b"close", r.headers
    assert r.get(b"content-type") == b"text/plain; charset=utf-8", r.headers
    assert r.get(b"content-length") is not None and 0 < len(r.body) < 1000, r.raw
    assert closed, f"server kept the connection open after rejecting {bad!r}"
    assert hits(server, key) == 0, f"the request pipelined after {bad!r} reached the app"
    return r
