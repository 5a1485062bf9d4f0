"""Before the app accepts a WebSocket: bounded buffering and the handshake timeout, through a
real Gunicorn (docs/websocket.md, "Before the accept").

The client streams frames right behind its upgrade request, as a hostile or eager client does;
the worker keeps at most EARLY_DATA_LIMIT of them (then stops reading: the client's send blocks),
hands them to the app in order once it accepts, and answers 503 for an app that neither accepts
nor refuses within ASGIWORKER_WS_HANDSHAKE_TIMEOUT.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from tests.conftest import BootedServers, wait_for
from tests.wire import read_response

APP = "tests.apps.ws_bounds_app:app"


@pytest.fixture(scope="module")
def servers():
    booted = BootedServers({"main": (APP, (), {}),
                            "hasty": (APP, (), {"env": {"ASGIWORKER_WS_HANDSHAKE_TIMEOUT": "1"}})})
    yield booted
    booted.stop()


def upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key))


def text_frame(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_frames_sent_before_the_accept_reach_the_app_in_order(servers):
    server = servers["main"]
    texts = ["%04d:" % i + "x" * 4000 for i in range(256)]  # 1 MiB, far past the early limit
    # The upgrade request from the websockets client's sans-I/O core, which then reads the 101
    # and the echoes; the frames go out right behind the request, before any answer.
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{server.port}/late?delay=0.5"))
    client.send_request(client.connect())
    request = b"".join(client.data_to_send())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request + b"".join(text_frame(t) for t in texts))
        got = []
        deadline = time.monotonic() + 10
        while len(got) < len(texts) and time.monotonic() < deadline:
            data = s.recv(1 << 16)
            if not data:
                break
            client.receive_data(data)
            got += [e.data.decode() for e in client.events_received() if isinstance(e, Frame)]
    assert got == texts, f"{len(got)} of {len(texts)} echoed, first difference at " \
        f"{next((i for i, (a, b) in enumerate(zip(got, texts)) if a != b), len(got))}"


def test_a_client_streaming_before_the_accept_is_held_back_and_memory_stays_flat(servers):
    server = servers["main"]
    pid = server.worker_pids()[0]
    before = rss_kb(pid)
    chunk = text_frame("y" * 60000)
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(upgrade("/late?delay=2.5"))
        s.setblocking(False)
        end = time.monotonic() + 2.0  # all before the accept
        while time.monotonic() < end:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        grown = rss_kb(pid) - before
    # Without the bound the worker read (and held) all of it: ~90 MiB in 8 s (issue 13).
    # Loopback's socket buffers take a few MiB; the worker keeps at most 64 KiB + one read.
    assert sent < 24 * 1024 * 1024, f"the client pushed {sent >> 20} MiB before the accept: the worker kept reading"
    assert grown < 8 * 1024, f"worker RSS grew by {grown} KiB while a client streamed before the accept"


def test_an_app_that_never_accepts_gets_the_handshake_timed_out(servers, tmp_path):
    server = servers["hasty"]
    report = tmp_path / "never.json"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(upgrade(f"/never?report={report}"))
        response, _ = read_response(s, timeout=5)
        waited = time.monotonic() - started
        assert s.recv(100) == b""  # then the server closes
    assert response.status == 503, response
    # ASGIWORKER_WS_HANDSHAKE_TIMEOUT=1; the check runs once a second.
    assert 0.9 < waited < 3.0, f"503 after {waited:.2f}s"
    assert wait_for(report.exists, 5)
    told = json.loads(report.read_text())
    assert told["message"]["type"] == "websocket.disconnect", told
    assert told["send_error"] == "ClientDisconnected", told
    assert "neither accepted nor refused" in server.log()


def test_a_client_streaming_at_an_app_that_never_accepts_reads_the_503_without_a_reset(servers, tmp_path):
    server = servers["hasty"]
    chunk = text_frame("z" * 60000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(upgrade(f"/never?report={tmp_path / 'r.json'}"))
        s.setblocking(False)
        answer = b""
        end = time.monotonic() + 4
        while time.monotonic() < end:
            try:
                s.send(chunk)
            except BlockingIOError:
                pass
            try:
                data = s.recv(65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not data:
                break  # the server's FIN, after its answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
