"""Flow control and disconnects, measured on a real worker.

Memory is the worker's RSS (VmRSS in /proc/<worker pid>/status), sampled while the traffic runs:
- read side: a 50 MiB upload to an app that reads slowly: RSS growth < 30 MB;
- write side: an app streaming 1 GiB in 1 MiB chunks to a client that reads ~1 MiB every 0.1 s
  for 5 s: RSS growth < 50 MB (the app awaits send() per chunk, which must wait for the drain).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from tests.conformance_client import events, get, new_key, rss_kb
from tests.conftest import GunicornServer, wait_for
from tests.targets import exchange
from tests.wire import connect, parse_all, parse_one, read_response

APP = "tests.apps.conformance_apps:app"
MB = 1000 * 1000
MIB = 1 << 20

READ_SIDE_BOUND_KB = 30 * MB // 1000
WRITE_SIDE_BOUND_KB = 50 * MB // 1000


@pytest.fixture(scope="module")
def server():
    s = GunicornServer(APP, "--keep-alive", "5", "--timeout", "60")
    [s.pid] = s.worker_pids()
    # warm up: the first requests allocate what every request needs
    for _ in range(3):
        assert get(s, "/cl").body == b"hello"
    data, _ = exchange(s, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n"
                               b"Connection: close\r\n\r\n" + b"w" * 100000)
    yield s
    s.stop()


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.baseline = rss_kb(pid)
        self.peak = self.baseline
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def growth_kb(self) -> int:
        self.stop_event.set()
        self.join(2)
        return self.peak - self.baseline


def test_read_side_upload_to_slow_reader_bounded(server):
    size = 50 * MIB
    piece = b"u" * MIB
    sampler = RssSampler(server.pid)
    sampler.start()
    sent = []
    with connect(server.port, timeout=30) as s:
        s.sendall(b"POST /slow-read?pause=0.02 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % size)

        def upload():
            for _ in range(size // MIB):
                s.sendall(piece)
            sent.append(time.monotonic())

        started = time.monotonic()
        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        resp, _ = read_response(s, timeout=30)
        uploader.join(5)
    growth = sampler.growth_kb()
    result = json.loads(resp.body)
    assert resp.status == 200 and result["total"] == size, result
    print(f"read side: RSS growth {growth} kB, upload took {sent[0] - started:.1f}s, "
          f"{result['messages']} messages, biggest {result['biggest']} bytes")
    assert growth < READ_SIDE_BOUND_KB, f"worker RSS grew by {growth} kB while buffering an upload"


def test_write_side_slow_reader_of_1gib_stream_bounded(server):
    key = new_key()
    sampler = RssSampler(server.pid)
    sampler.start()
    received = 0
    with connect(server.port, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        s.sendall(b"GET /big?mib=1024&key=%s HTTP/1.1\r\nHost: a\r\n\r\n" % key.encode())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = 0
            while got < MIB:
                chunk = s.recv(MIB - got)
                if not chunk:
                    break
                got += len(chunk)
            received += got
            if not got:
                break
            time.sleep(0.1)
    growth = sampler.growth_kb()
    print(f"write side: read {received / MIB:.0f} MiB in 5 s; worker RSS growth {growth} kB")
    assert growth < WRITE_SIDE_BOUND_KB, f"worker RSS grew by {growth} kB for a slow reader"
    assert 10 * MIB < received < 200 * MIB
    # and the app learnt that the client left: send() raised an OSError subclass
    evs = events(server, key, want=lambda e: bool(e), timeout=10)
    assert evs and evs[-1].get("oserror") is True, evs


def test_receive_returns_disconnect_when_client_leaves(server):
    key = new_key()
    with connect(server.port) as s:
        s.sendall(b"POST /wait-body?key=%s HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789"
                  % key.encode())
        time.sleep(0.3)
    evs = events(server, key, want=lambda e: any(x["type"] == "http.disconnect" for x in e))
    assert evs and evs[-1]["type"] == "http.disconnect", evs
    before = evs[:-1]
    assert all(x["type"] == "http.request" and x["more_body"] for x in before), evs
    assert sum(x["len"] for x in before) == 10, evs


def holds_socket_of(pid: int, client_port: int) -> bool:
    """Whether process ``pid`` still has the accepted socket of the client on ``client_port``
    (found by its inode in /proc/net/tcp*: other sockets of the worker, say one still closing
    from an earlier test, do not count)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == client_port:
                inodes.add(f"socket:[{fields[9]}]")
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            pass
    return False


def test_disconnect_mid_body_frees_the_connection(server):
    key = new_key()
    with connect(server.port) as s:
        port = s.getsockname()[1]
        s.sendall(b"POST /wait-body?key=%s HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789"
                  % key.encode())
        time.sleep(0.3)
        assert holds_socket_of(server.pid, port)
    evs = events(server, key, want=lambda e: any(x["type"] == "http.disconnect" for x in e))
    assert evs and evs[-1]["type"] == "http.disconnect", evs
    assert wait_for(lambda: not holds_socket_of(server.pid, port), timeout=3.0), \
        "the worker still holds the socket of a client that left"


def test_half_close_mid_body_ends_the_connection(server):
    key = new_key()
    data, closed = exchange(server, b"POST /wait-body?key=%s HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n"
                                         b"\r\n0123456789" % key.encode(), timeout=4, shut_wr=True)
    assert closed, "a request whose body can never arrive must end with the server's close"
    evs = events(server, key, want=lambda e: any(x["type"] == "http.disconnect" for x in e))
    assert evs and evs[-1]["type"] == "http.disconnect", evs


def test_send_raises_oserror_when_client_leaves(server):
    key = new_key()
    with connect(server.port) as s:
        s.sendall(b"GET /stream-forever?key=%s HTTP/1.1\r\nHost: a\r\n\r\n" % key.encode())
        got = b""
        while len(got) < 100000:
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 ")
    evs = events(server, key, want=lambda e: bool(e), timeout=10)
    assert evs, "the app never noticed the client had gone"
    assert evs[0]["exception"] is not None, evs
    assert evs[0]["oserror"] is True, f"send() raised {evs[0]['exception']}, not an OSError subclass"


@pytest.mark.parametrize("req,body", [
    (b"GET /sleep?s=0.5 HTTP/1.1\r\nHost: a\r\n\r\n", b"slept:"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"POST /sleep?s=0.3 HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", b"slept:hi"),
], ids=["get-slow-app", "post-cl", "post-chunked", "http10"])
def test_half_closed_client_still_gets_response(server, req, body):
    data, closed = exchange(server, req, shut_wr=True)
    resp, rest = parse_one(data)
    assert resp.status == 200 and resp.body == body and rest == b""
    assert closed


def test_half_closed_after_pipelined_requests_gets_all_responses(server):
    data, closed = exchange(server, b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: a\r\n\r\n"
                                         b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n", shut_wr=True)
    responses, rest = parse_all(data)
    assert [r.body for r in responses] == [b"slept:", b"hello"] and rest == b"" and closed, data


def test_worker_survived(server):
    assert server.worker_pids() == [server.pid]
