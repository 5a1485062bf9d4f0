"""Clean closes (issue 13): through a real Gunicorn with our worker, a connection ends with a FIN the
client can read to, never a reset under a request it sent, and a WebSocket app slow to accept
cannot make a flooding client cost the worker memory.

- the load of bench/resets.py (its own clients: ``resets.run_load``), shortened, while workers
  restart at ``--max-requests``, while the master reloads on SIGHUP, and racing the idle
  keep-alive timeout: no ECONNRESET, no request lost (a clean close before the answer, then a
  resend on a new connection, is allowed and reported);
- a ``Connection: close`` request or a rejected one followed by more bytes than the server read
  (an unread body, a pipelined tail, the rest of an overlong request line): the whole response,
  then EOF, never ECONNRESET;
- bench/ws_flood.py's client (``ws_flood.flood``), shortened: frames streamed at an app that
  accepts after 3 s grow the worker's RSS by a few MiB at most and all come back in order once
  it accepts; an app that never accepts gets its client a 503 after
  ``ASGIWORKER_WS_HANDSHAKE_TIMEOUT`` and its ``receive()`` a ``websocket.disconnect``.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from bench import resets, ws_flood
from tests.conftest import BootedServers, GunicornServer, wait_for
from tests.wire import Response, connect, http_request, parse_all, read_to_close

APP = "tests.apps.restart_apps:app"
QUIET = ("--log-level", "info")  # (debug logs every connection: noise in a load test)

SPECS = {
    "max_requests": (APP, ("--workers", "2", "--max-requests", "50", "--max-requests-jitter", "10", *QUIET), {}),
    "sighup": (APP, ("--workers", "2", *QUIET), {}),
    "idle": (APP, ("--keep-alive", "1", *QUIET), {}),
    "plain": (APP, (), {}),
    "ws": (APP, (), {}),  # its own: the flood's RSS is measured from a fresh worker's
    "ws_timeout": (APP, (), {"env": {"ASGIWORKER_WS_HANDSHAKE_TIMEOUT": "1"}}),
}


@pytest.fixture(scope="module")
def servers() -> Iterator[BootedServers]:
    booted = BootedServers(SPECS)  # all booting at once; each test waits for its own
    yield booted
    booted.stop()


def _boots(log: str) -> int:
    return log.count("Booting worker")


def _assert_no_reset_nor_loss(result: Dict[str, resets.Tally], what: str) -> None:
    summary = {kind: {k: v for k, v in tally.counts.items() if v} for kind, tally in result.items()}
    message = f"{what}: {summary}"
    for tally in result.values():
        counts = tally.counts
        assert counts["ok"] > 0, message
        assert counts["reset"] == 0, message
        assert counts["eof_mid"] == 0, message
        assert counts["lost"] == 0, message
        assert set(tally.statuses) == {200}, f"{message}; statuses {tally.statuses}"


# -- (a) (b) (c): the reset benchmark's load, shortened -------------------------------------------


def test_worker_restarts_at_max_requests_reset_nothing(servers: BootedServers) -> None:
    server = servers["max_requests"]
    booted = _boots(server.log())
    result = resets.run_load(server.port, 3.0, keepalive_clients=4, fresh_clients=4)
    restarts = _boots(server.log()) - booted
    assert restarts >= 4, f"only {restarts} worker restarts: the load did not reach --max-requests"
    _assert_no_reset_nor_loss(result, f"--max-requests 50, {restarts} restarts in 3 s")


def test_sighup_reloads_reset_nothing(servers: BootedServers) -> None:
    server = servers["sighup"]
    booted = _boots(server.log())
    result = resets.run_load(server.port, 3.0, keepalive_clients=4, fresh_clients=4,
                             tick=lambda: server.signal(signal.SIGHUP))
    wait_for(lambda: _boots(server.log()) - booted >= 4)  # (a loaded machine may boot them late)
    reloaded = _boots(server.log()) - booted
    assert reloaded >= 4, f"only {reloaded} workers booted by two SIGHUPs"
    _assert_no_reset_nor_loss(result, f"two SIGHUPs, {reloaded} new workers")


def test_idle_keepalive_timeout_race_resets_nothing(servers: BootedServers) -> None:
    # The worker closes a connection idle for over --keep-alive 1 s at its once-a-second tick:
    # a client idling 1.1-1.7 s sends into that close about 40% of the time.
    server = servers["idle"]
    result = resets.run_load(server.port, 4.0, keepalive_clients=10, fresh_clients=0, pause=(1.1, 1.7))
    closed = result["keepalive"].counts["clean_close"] + result["keepalive"].counts["reset"]
    assert closed >= 2, f"the clients never raced the idle timeout: {result['keepalive'].counts}"
    del result["fresh"]
    _assert_no_reset_nor_loss(result, "keep-alive 1 s, clients idling 1.1-1.7 s")


# -- (d) (e): a close with bytes still coming -----------------------------------------------------


def _send_in_thread(sock: socket.socket, data: bytes) -> Tuple[threading.Thread, List[BaseException]]:
    """sendall ``data`` from a thread (the server may stop reading before it is all in); the
    error it met, if any, lands in the list."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            sock.sendall(data)
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _read_all_then_fin(port: int, head: bytes, more: bytes) -> Tuple[bytes, str, List[BaseException]]:
    """Send ``head`` then ``more`` (from a thread) on one connection, read until the server
    closes: what came, how it ended (eof / reset / timeout), the sender's errors."""
    with connect(port, timeout=10) as sock:
        sock.sendall(head)
        thread, errors = _send_in_thread(sock, more)
        data, how = read_to_close(sock, timeout=10)
        thread.join(10)
    return data, how, errors


def _one_response(data: bytes, how: str, errors: List[BaseException], what: str) -> Response:
    responses, rest = parse_all(data)
    assert how == "eof", f"{what}: the connection ended with {how} after {data[:200]!r}"
    assert not errors, f"{what}: the client's sending failed: {errors!r}"
    assert len(responses) == 1 and not rest, f"{what}: {data[:300]!r}"
    return responses[0]


def test_connection_close_with_an_unread_body_ends_with_a_fin(servers: BootedServers) -> None:
    # /noread answers at once, without reading any of the 4 MiB body still arriving.
    body = b"x" * (4 << 20)
    head = b"POST /noread HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    data, how, errors = _read_all_then_fin(servers["plain"].port, head, body)
    response = _one_response(data, how, errors, "POST /noread with Connection: close and a 4 MiB body")
    assert (response.status, response.body) == (200, b"Hello, world!")
    assert response.get(b"connection") == b"close"


def test_connection_close_with_pipelined_requests_behind_ends_with_a_fin(servers: BootedServers) -> None:
    # 1 MiB of pipelined requests behind a `Connection: close` one, the first of them in the same
    # write: only the first is answered, and what the server never read is discarded, not
    # answered with a reset. (A client that sends nothing after its own `Connection: close`
    # until it has the answer, and then more, breaks RFC 9112 9.6's MUST NOT: closed at once,
    # as nginx does; docs/http.md.)
    first = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    tail = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * ((1 << 20) // 28)
    data, how, errors = _read_all_then_fin(servers["plain"].port, first + tail[:4096], tail[4096:])
    response = _one_response(data, how, errors, "a Connection: close request with 1 MiB pipelined behind it")
    assert (response.status, response.get(b"connection")) == (200, b"close")


@pytest.mark.parametrize("status, head", [
    (400, b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n"),
    (414, b"GET /" + b"a" * 8192),
])
def test_error_response_with_more_data_behind_is_read_whole(servers: BootedServers, status: int, head: bytes) -> None:
    # A rejected request, then 1 MiB more (the rest of an overlong request line, or bytes after
    # a bad head): the error response is read whole, then EOF.
    data, how, errors = _read_all_then_fin(servers["plain"].port, head, b"a" * (1 << 20))
    response = _one_response(data, how, errors, f"a {status} with 1 MiB behind")
    assert response.status == status
    assert response.get(b"connection") == b"close"
    assert len(response.body) == int(response.get(b"content-length") or b"-1")


# -- (f): the pre-accept WebSocket flood ---------------------------------------------------------


def _flood_with_rss(server: GunicornServer, path: str, seconds: float) -> Tuple[ws_flood.FloodResult, ws_flood.RssSampler]:
    [pid] = server.worker_pids()
    sampler = ws_flood.RssSampler(pid).start()
    try:
        result = ws_flood.flood(server.port, path, seconds, read_timeout=10)
    finally:
        sampler.stop()
    return result, sampler


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def test_frames_before_accept_are_bounded_and_served_in_order(servers: BootedServers) -> None:
    server = servers["ws"]
    result, rss = _flood_with_rss(server, "/slow?delay=3", 3.0)
    growth = rss.peak - rss.before
    what = f"{result.describe()}; worker RSS {_mib(rss.before)} -> peak {_mib(rss.peak)}"
    assert growth < 8 * 1024, what
    assert result.status == 101, what
    assert result.frames_sent > 0 and result.echoed == result.frames_sent and result.echoes_in_order, what


def test_app_that_never_accepts_gets_503_after_the_handshake_timeout(servers: BootedServers) -> None:
    server = servers["ws_timeout"]
    token = uuid.uuid4().hex
    result, rss = _flood_with_rss(server, f"/never?token={token}", 3.0)
    what = f"{result.describe()}; worker RSS {_mib(rss.before)} -> peak {_mib(rss.peak)}"
    assert result.status == 503, what
    assert result.answer_after is not None and 0.9 < result.answer_after < 3.5, what
    assert rss.peak - rss.before < 8 * 1024, what

    def report() -> Optional[Dict[str, Any]]:
        found = json.loads(http_request(server.port, f"/report?token={token}").body)
        return found or None

    deadline = time.monotonic() + 5
    seen = report()
    while not seen and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = report()
    assert seen and seen["message"]["type"] == "websocket.disconnect", f"the app's receive() gave {seen}"
