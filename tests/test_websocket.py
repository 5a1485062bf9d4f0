"""WebSocket for ASGI applications, against a real Gunicorn with the `websockets` client library
(and raw sockets where a client library would refuse to misbehave).

Apps: tests/apps/ws_apps.py (``app`` dispatches on the first path segment; what an app sees from
the inside is read back with ``GET /report?token=T``). Servers of this module boot in parallel,
once:

- ``main``:  default settings;
- ``tuned``: ASGIWORKER_WS_MAX_SIZE=1000, ASGIWORKER_WS_PING_INTERVAL=1, ASGIWORKER_WS_PING_TIMEOUT=1,
             ASGIWORKER_WS_PER_MESSAGE_DEFLATE=1;
- ``gflag``: Gunicorn's own ``--websocket-max-message-size 2000``;
- ``gzero``: ``--websocket-max-message-size 0`` (Gunicorn documents 0 as "no limit");
- ``queue``: ASGIWORKER_WS_MAX_QUEUE=4.

The helpers at the top (RawWebSocket, ...) are shared with the other WebSocket
test modules.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import signal
import socket
import threading
import time
import uuid
import zlib
from typing import Dict, List, Optional, Tuple

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

from tests.conftest import BootedServers, GunicornServer
from tests.wire import parse_head, raw_request, read_response, read_until

APP = "tests.apps.ws_apps:app"
MIB = 1 << 20
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- helpers shared with the other WebSocket test modules ---------------------------------------


def ws_connect(server: GunicornServer, path: str, **kwargs):
    """The websockets client, never through a proxy from the environment; no client pings."""
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", 5)
    kwargs.setdefault("close_timeout", 5)
    return connect(server.ws_url(path), **kwargs)


def report(server: GunicornServer, token: str, want: Optional[str] = None, timeout: float = 5.0):
    """What the app recorded under token (waiting up to timeout for the key ``want``)."""
    deadline = time.monotonic() + timeout
    while True:
        data = httpx.get(f"{server.url}/report", params={"token": token}, timeout=5).json()
        if (data is not None and (want is None or want in data)) or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def closed_by_server(ws, timeout: float = 5.0) -> ConnectionClosed:
    """Read until the server closes; return the ConnectionClosed (rcvd = its close frame)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            return exc
        except TimeoutError:
            break
    raise AssertionError("the server did not close the WebSocket")


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


class ServerFrame:
    __slots__ = ("fin", "rsv1", "opcode", "data")

    def __init__(self, fin: bool, rsv1: bool, opcode: int, data: bytes) -> None:
        self.fin, self.rsv1, self.opcode, self.data = fin, rsv1, opcode, data

    def __repr__(self) -> str:
        return f"<ServerFrame fin={self.fin} rsv1={self.rsv1} opcode={self.opcode} {self.data[:40]!r}>"


class RawWebSocket:
    """A WebSocket client on a plain socket: our own handshake bytes, frames serialized (and
    masked) by websockets' sans-I/O Frame, server frames read header by header so that reserved
    bits (permessage-deflate's RSV1) stay visible."""

    def __init__(self, port: int, path: str, extra: bytes = b"", timeout: float = 5.0,
                 first: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.key = base64.b64encode(os.urandom(16))
        self.sock.sendall(first + b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                          b"%s\r\n" % (path.encode(), port, self.key, extra))
        if first:
            self.before, self.buffer = read_response(self.sock, timeout=timeout)
        # The frames that follow the 101 stay in the buffer.
        self.handshake, self.buffer = read_response(self.sock, timeout=timeout, buffered=self.buffer)
        assert self.handshake.raw.startswith(b"HTTP/1.1 101 "), self.handshake.raw
        assert self.handshake.get(b"sec-websocket-accept") == accept_value(self.key), self.handshake.raw

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer += chunk
        return True

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buffer:
            if time.monotonic() > deadline or not self._fill(max(0.01, deadline - time.monotonic())):
                raise TimeoutError(f"no {marker!r} from the server; got {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(marker, 1)
        return head + marker

    def _read_exact(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < n:
            if time.monotonic() > deadline or not self._fill(max(0.01, deadline - time.monotonic())):
                raise TimeoutError(f"wanted {n} bytes from the server, have {len(self.buffer)}")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_frame(self, opcode: Opcode, data: bytes = b"", fin: bool = True) -> None:
        self.sock.sendall(Frame(opcode, data, fin=fin).serialize(mask=True))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self.send_frame(Opcode.CLOSE, code.to_bytes(2, "big") + reason.encode())

    def recv_frame(self, timeout: float = 5.0, skip_pings: bool = True) -> ServerFrame:
        """The next frame from the server (EOFError if it closed the TCP connection)."""
        while True:
            first, second = self._read_exact(2, timeout)
            assert not second & 0x80, "server frames must not be masked"
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(self._read_exact(2, timeout), "big")
            elif length == 127:
                length = int.from_bytes(self._read_exact(8, timeout), "big")
            frame = ServerFrame(bool(first & 0x80), bool(first & 0x40), first & 0x0F,
                                self._read_exact(length, timeout))
            if skip_pings and frame.opcode == Opcode.PING.value:
                self.send_frame(Opcode.PONG, frame.data)
                continue
            return frame

    def recv_close(self, timeout: float = 5.0) -> Tuple[int, str]:
        """Skip data frames until the server's close frame: (code, reason)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if frame.opcode == Opcode.CLOSE.value:
                return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode()

    def wait_eof(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the TCP connection (within timeout)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._fill(max(0.01, deadline - time.monotonic()))
                self.buffer = b""
        except (EOFError, ConnectionResetError):
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def handshake(port: int, headers: bytes, path: bytes = b"/echo") -> bytes:
    """Send one upgrade request with exactly these header lines; all the server answered."""
    return raw_request(port, b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (path, headers), timeout=3)


def token() -> str:
    return uuid.uuid4().hex


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise OSError("no VmRSS")


# -- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers():
    booted = BootedServers({
        "main": (APP, (), {}),
        "tuned": (APP, (), {"env": {"ASGIWORKER_WS_MAX_SIZE": "1000", "ASGIWORKER_WS_PING_INTERVAL": "1",
                                    "ASGIWORKER_WS_PING_TIMEOUT": "1", "ASGIWORKER_WS_PER_MESSAGE_DEFLATE": "1"}}),
        "gflag": (APP, ("--websocket-max-message-size", "2000"), {}),
        "gzero": (APP, ("--websocket-max-message-size", "0"), {}),
        "queue": (APP, (), {"env": {"ASGIWORKER_WS_MAX_QUEUE": "4"}}),
    })
    yield booted
    booted.stop()


@pytest.fixture(scope="module")
def main(servers):
    return servers["main"]


@pytest.fixture(scope="module")
def tuned(servers):
    return servers["tuned"]


# -- the upgrade and the scope --------------------------------------------------------------------


def test_scope(main):
    with ws_connect(main, "/scope/caf%C3%A9/x%2Fy?q=1%202&r", subprotocols=["chat.v1", "chat.v2"],
                    additional_headers={"X-Custom": "Some Value"}) as ws:
        scope = json.loads(ws.recv(timeout=5))
        local = ws.local_address
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["asgi"]["spec_version"] in ("2.3", "2.4", "2.5")
    assert scope["http_version"] == "1.1"
    assert scope["path"] == "/scope/café/x/y"
    assert scope["raw_path"] == "/scope/caf%C3%A9/x%2Fy"
    assert scope["query_string"] == "q=1%202&r"
    assert scope["root_path"] == ""
    assert scope["types"]["raw_path"] == "bytes" and scope["types"]["query_string"] == "bytes"
    assert scope["types"]["path"] == "str"
    assert scope["subprotocols"] == ["chat.v1", "chat.v2"]
    assert scope["client"] == ["127.0.0.1", local[1]]
    assert scope["server"] == ["127.0.0.1", main.port]
    headers = scope["headers"]
    assert scope["header_types"] == ["bytes"]
    assert ["x-custom", "Some Value"] in headers
    assert ["sec-websocket-protocol", "chat.v1, chat.v2"] in headers
    assert ["upgrade", "websocket"] in headers
    assert ["host", f"127.0.0.1:{main.port}"] in headers
    assert "websocket.http.response" in scope["extensions"]


def test_echo_text_and_bytes(main):
    with ws_connect(main, "/echo") as ws:
        for message in ["hello", "", "ünïcødé ✓ 🎉", "x" * 70000]:
            ws.send(message)
            assert ws.recv(timeout=5) == message
        for message in [b"\x00\x01\xff", b"", os.urandom(70000)]:
            ws.send(message)
            got = ws.recv(timeout=5)
            assert isinstance(got, bytes) and got == message


def test_accept_with_subprotocol_and_headers(main):
    with ws_connect(main, "/echo?subprotocol=chat.v2&header=x-extra:yes&header=x-other:two",
                    subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "chat.v2"
        assert ws.response.headers["x-extra"] == "yes"
        assert ws.response.headers["x-other"] == "two"
        ws.send("still works")
        assert ws.recv(timeout=5) == "still works"


def test_no_subprotocol_unless_the_app_picks_one(main):
    with ws_connect(main, "/echo", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers


def test_app_closes_with_code_and_reason(main):
    t = token()
    with ws_connect(main, f"/echo?token={t}") as ws:
        ws.send("!close 4100 the app says bye")
        exc = closed_by_server(ws)
    assert exc.rcvd is not None
    assert (exc.rcvd.code, exc.rcvd.reason) == (4100, "the app says bye")
    # ... and after the client's answer the app sees the disconnect with the same code.
    assert report(main, t, "after_close")["after_close"] == {"type": "websocket.disconnect", "code": 4100}


def test_client_close_gives_disconnect_with_code_and_reason(main):
    t = token()
    with ws_connect(main, f"/echo?token={t}") as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
        ws.close(4002, "client leaves")
    data = report(main, t, "send_after_disconnect")
    assert data["messages"] == 1
    assert data["disconnect"] == {"type": "websocket.disconnect", "code": 4002, "reason": "client leaves"}
    # send() after the peer left raises an OSError subclass (ASGI 2.4)
    assert data["send_after_disconnect"] is not None and data["send_after_disconnect"]["is_oserror"], data


def test_client_vanishing_gives_disconnect_1006(main):
    t = token()
    raw = RawWebSocket(main.port, f"/echo?token={t}")
    raw.send_frame(Opcode.TEXT, b"hi")
    assert raw.recv_frame().data == b"hi"
    raw.close()  # no close frame: the TCP connection just ends
    data = report(main, t, "send_after_disconnect")
    assert data["disconnect"]["code"] == 1006
    assert data["send_after_disconnect"]["is_oserror"], data


def test_close_before_accept_is_403(main):
    with pytest.raises(InvalidStatus) as info:
        ws_connect(main, "/refuse")
    assert info.value.response.status_code == 403


def test_denial_response(main):
    with pytest.raises(InvalidStatus) as info:
        ws_connect(main, "/denial?status=401")
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["x-denied"] == "because"
    assert response.headers["content-type"] == "text/plain"
    assert bytes(response.body) == b"go away"
    with pytest.raises(InvalidStatus) as info:
        ws_connect(main, "/denial?status=429")
    assert info.value.response.status_code == 429


def test_app_error_before_accept_is_500_after_accept_is_1011(main):
    with pytest.raises(InvalidStatus) as info:
        ws_connect(main, "/crash?when=before")
    assert info.value.response.status_code == 500
    with ws_connect(main, "/crash?when=after") as ws:
        ws.send("boom")
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 1011


def test_app_returning_without_accepting_is_500_after_accepting_closes(main):
    for when in ("return", "bad_subprotocol"):  # bad_subprotocol: accept() with one not offered
        with pytest.raises(InvalidStatus) as info:
            ws_connect(main, f"/crash?when={when}", subprotocols=["offered"])
        assert info.value.response.status_code == 500, when
    with ws_connect(main, "/crash?when=return_after_accept") as ws:
        ws.send("bye")
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code in (1000, 1011), exc


def test_upgrade_after_a_keepalive_request_and_frames_with_the_handshake(main):
    # An HTTP request first, then the upgrade on the same connection, pipelined in one write.
    raw = RawWebSocket(main.port, "/echo", first=b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert raw.before.raw.startswith(b"HTTP/1.1 200 ") and raw.before.body.endswith(b"websocket test app")
    raw.send_frame(Opcode.TEXT, b"after http")
    assert raw.recv_frame().data == b"after http"
    raw.close()
    # Frames sent in the same write as the handshake are not lost.
    sock = socket.create_connection(("127.0.0.1", main.port), timeout=5)
    try:
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
                     b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key
                     + Frame(Opcode.TEXT, b"early bird").serialize(mask=True))
        data = b""
        deadline = time.monotonic() + 5
        while b"early bird" not in data and time.monotonic() < deadline:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 101 ")
        assert accept_value(key) in data
        assert data.endswith(b"\x81\x0aearly bird")
    finally:
        sock.close()


# -- invalid handshakes (raw sockets) --------------------------------------------------------------

UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.mark.parametrize("version", [None, b"8", b"12", b"14", b"", b"13, 8", b"thirteen"])
def test_bad_or_missing_version_426(main, version):
    t = token()
    line = b"" if version is None else b"Sec-WebSocket-Version: %s\r\n" % version
    response, _ = parse_head(handshake(main.port, UPGRADE + KEY + line, b"/echo?token=" + t.encode()))
    assert response.status == 426, response
    assert response.get(b"sec-websocket-version") == b"13"
    assert report(main, t, timeout=0.3) is None  # the app never ran


@pytest.mark.parametrize("key", [None, b"", b"abc", b"dGhlIHNhbXBsZSBub25jZQ", b"AAAAAAAAAAAAAAAAAAAAAAAA",
                                 b"!!!!!!!!!!!!!!!!!!!!!!==", b"dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ=="])
def test_missing_or_invalid_key_400(main, key):
    t = token()
    line = b"" if key is None else b"Sec-WebSocket-Key: %s\r\n" % key
    response, _ = parse_head(
        handshake(main.port, UPGRADE + line + b"Sec-WebSocket-Version: 13\r\n", b"/echo?token=" + t.encode()))
    assert response.status == 400, response
    assert report(main, t, timeout=0.3) is None


def test_valid_raw_handshake_101(main):
    with socket.create_connection(("127.0.0.1", main.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n" + UPGRADE + KEY + b"Sec-WebSocket-Version: 13\r\n\r\n")
        response, _ = parse_head(read_until(sock, b"\r\n\r\n"))
    assert response.status == 101
    assert response.get(b"sec-websocket-accept") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example
    assert response.get(b"upgrade").lower() == b"websocket"


# -- framing: fragmentation, control frames, UTF-8 ---------------------------------------------------


def test_fragmented_messages_are_assembled(main):
    with ws_connect(main, "/echo") as ws:
        ws.send(iter(["frag", "ment", "ed ✓"]))
        assert ws.recv(timeout=5) == "fragmented ✓"
        ws.send(iter([b"\x00", b"\x01\x02", b"", b"\x03"]))
        assert ws.recv(timeout=5) == b"\x00\x01\x02\x03"


def test_text_split_inside_a_utf8_character(main):
    raw = RawWebSocket(main.port, "/echo")
    data = "é🎉".encode()
    raw.send_frame(Opcode.TEXT, data[:1], fin=False)
    raw.send_frame(Opcode.PING, b"between")
    raw.send_frame(Opcode.CONT, data[1:4], fin=False)
    raw.send_frame(Opcode.CONT, data[4:], fin=True)
    pong = raw.recv_frame(skip_pings=False)
    assert (pong.opcode, pong.data) == (Opcode.PONG.value, b"between")
    echo = raw.recv_frame()
    assert (echo.opcode, echo.data) == (Opcode.TEXT.value, data)
    raw.close()


def test_client_ping_gets_pong(main):
    with ws_connect(main, "/echo") as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(5)
        ws.send("after ping")
        assert ws.recv(timeout=5) == "after ping"


def test_invalid_utf8_closes_1007(main):
    raw = RawWebSocket(main.port, "/echo")
    raw.send_frame(Opcode.TEXT, b"\xff\xfe")
    assert raw.recv_close()[0] == 1007
    raw.close()


def test_unmasked_client_frame_closes_1002(main):
    raw = RawWebSocket(main.port, "/echo")
    raw.sock.sendall(Frame(Opcode.TEXT, b"naked").serialize(mask=False))
    assert raw.recv_close()[0] == 1002
    raw.close()


# -- settings: message size ------------------------------------------------------------------------


def test_max_size_env(tuned):
    t = token()
    with ws_connect(tuned, f"/sizes?token={t}", max_size=None, compression=None) as ws:
        ws.send(b"x" * 1000)
        assert ws.recv(timeout=5) == "bytes 1000"
        ws.send("y" * 1000)
        assert ws.recv(timeout=5) == "text 1000"
        ws.send(iter([b"x" * 500, b"x" * 500]))
        assert ws.recv(timeout=5) == "bytes 1000"
        ws.send(b"x" * 1001)
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 1009
    # The app is told. (RFC 6455 7.1.5: 1006 if the server closed TCP before the client's close
    # frame arrived, else the code of that frame, 1009.)
    assert report(tuned, t, "disconnect")["disconnect"]["code"] in (1006, 1009)


def test_max_size_fragmented_total(tuned):
    # Every fragment is small; their sum is over the limit.
    with ws_connect(tuned, "/sizes", max_size=None, compression=None) as ws:
        ws.send(iter([b"x" * 400, b"x" * 400, b"x" * 400]))
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 1009
    raw = RawWebSocket(tuned.port, "/sizes")
    for _ in range(11):
        raw.send_frame(Opcode.TEXT if _ == 0 else Opcode.CONT, b"z" * 100, fin=False)
    assert raw.recv_close()[0] == 1009
    raw.close()


def test_max_size_applies_to_the_inflated_message(tuned):
    # With permessage-deflate the limit is on what the app would get, not on the wire bytes:
    # 100 kB of 'a' compresses to ~100 bytes and is still refused.
    for size, answer in [(1000, "bytes 1000"), (1001, None), (1002, None), (100_000, None)]:
        with ws_connect(tuned, "/sizes", max_size=None, compression="deflate") as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            ws.send(b"\x01" * size)
            if answer is not None:
                assert ws.recv(timeout=5) == answer
            else:
                exc = closed_by_server(ws)
                assert exc.rcvd is not None and exc.rcvd.code == 1009, (size, exc)


def deflate_frames(pieces: List[bytes], opcode: Opcode = Opcode.BINARY) -> bytes:
    """One message compressed (permessage-deflate, no context takeover) into len(pieces) frames."""
    compressor = zlib.compressobj(wbits=-15)
    out = b""
    for i, piece in enumerate(pieces):
        data = compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)
        last = i == len(pieces) - 1
        if last:
            assert data.endswith(b"\x00\x00\xff\xff")
            data = data[:-4]
        frame = bytearray(Frame(opcode if i == 0 else Opcode.CONT, data, fin=last).serialize(mask=True))
        if i == 0:
            frame[0] |= 0x40  # RSV1: this message is compressed
        out += bytes(frame)
    return out


@pytest.mark.parametrize("pieces", [
    [b"x" * 500, b"x" * 500, b""],   # what `websockets` sends for send(iter([...])): an empty last frame
    [b"x" * 1000, b""],
    "random",                        # 600 + 399 incompressible bytes: the last frame is ~405 bytes
])
def test_max_size_with_deflate_fragmented_message_under_the_limit(tuned, pieces):
    if pieces == "random":
        pieces = [os.urandom(600), os.urandom(399)]
    raw = RawWebSocket(tuned.port, "/sizes",
                       b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n")
    assert b"permessage-deflate" in raw.handshake.get(b"sec-websocket-extensions")
    raw.sock.sendall(deflate_frames(pieces))
    frame = raw.recv_frame()
    raw.close()
    total = sum(map(len, pieces))
    assert total <= 1000
    assert frame.opcode != Opcode.CLOSE.value, (
        f"a {total}-byte message (limit 1000) was refused: close "
        f"{int.from_bytes(frame.data[:2], 'big')} {frame.data[2:]!r}")


def test_gunicorn_websocket_max_message_size(servers):
    gflag = servers["gflag"]
    with ws_connect(gflag, "/sizes") as ws:
        ws.send(b"x" * 2000)
        assert ws.recv(timeout=5) == "bytes 2000"
        ws.send(b"x" * 2001)
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 1009


def test_default_max_size_16mib(main):
    with ws_connect(main, "/sizes", max_size=None, compression=None) as ws:
        ws.send(b"x" * (16 * MIB))
        assert ws.recv(timeout=20) == f"bytes {16 * MIB}"
        ws.send(iter([b"x" * (8 * MIB), b"x" * (8 * MIB), b"x"]))
        exc = closed_by_server(ws, timeout=20)
    assert exc.rcvd is not None and exc.rcvd.code == 1009


def test_gunicorn_max_message_size_zero_means_no_limit(servers):
    # Gunicorn's own docs for --websocket-max-message-size: "Set to 0 for no limit."
    gzero = servers["gzero"]
    with ws_connect(gzero, "/sizes", max_size=None, compression=None) as ws:
        ws.send(b"x" * (16 * MIB + 1))
        try:
            answer = ws.recv(timeout=20)
        except ConnectionClosed as exc:
            pytest.fail(f"--websocket-max-message-size 0 still limited the message: closed with {exc.rcvd}")
        assert answer == f"bytes {16 * MIB + 1}"


# -- settings: permessage-deflate ------------------------------------------------------------------


def test_permessage_deflate_off_by_default(main):
    with ws_connect(main, "/echo", compression="deflate") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("a" * 500)
        assert ws.recv(timeout=5) == "a" * 500


def test_permessage_deflate_on(tuned):
    with ws_connect(tuned, "/echo", compression="deflate") as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        for message in ["a" * 900, "ünïcødé " * 50, b"\x00" * 900, os.urandom(900)]:
            ws.send(message)
            assert ws.recv(timeout=5) == message
    with ws_connect(tuned, "/echo", compression=None) as ws:  # a client without the extension
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=5) == "plain"
    # On the wire: the server's frame is compressed (RSV1 set, far smaller than the message).
    raw = RawWebSocket(tuned.port, "/echo", b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    assert b"permessage-deflate" in raw.handshake.get(b"sec-websocket-extensions")
    raw.send_frame(Opcode.TEXT, b"a" * 900)  # RSV1 clear: an uncompressed message is allowed
    frame = raw.recv_frame()
    assert frame.opcode == Opcode.TEXT.value and frame.rsv1 and len(frame.data) < 100, frame
    raw.close()


# -- settings: server pings ----------------------------------------------------------------------


def test_server_pings_keep_live_peers_and_drop_dead_ones(tuned):
    results: Dict[str, object] = {}

    def answering() -> None:
        raw = RawWebSocket(tuned.port, "/echo")
        pings = 0
        deadline = time.monotonic() + 4.5
        try:
            while time.monotonic() < deadline:
                try:
                    frame = raw.recv_frame(timeout=max(0.01, deadline - time.monotonic()), skip_pings=False)
                except TimeoutError:
                    break
                if frame.opcode == Opcode.PING.value:
                    pings += 1
                    raw.send_frame(Opcode.PONG, frame.data)
            raw.send_frame(Opcode.TEXT, b"still here")
            results["answering_echo"] = raw.recv_frame().data
        except (EOFError, OSError) as exc:
            results["answering_echo"] = exc
        results["pings"] = pings
        raw.close()

    def silent() -> None:
        raw = RawWebSocket(tuned.port, "/echo")
        started = time.monotonic()
        frames = []
        try:
            while time.monotonic() - started < 8:
                frames.append(raw.recv_frame(timeout=8, skip_pings=False).opcode)
        except (EOFError, ConnectionResetError):
            results["silent_dropped_after"] = time.monotonic() - started
        except TimeoutError:
            results["silent_dropped_after"] = None
        results["silent_frames"] = frames
        raw.close()

    threads = [threading.Thread(target=answering), threading.Thread(target=silent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results["answering_echo"] == b"still here", results
    assert results["pings"] >= 2, results
    dropped = results["silent_dropped_after"]
    # interval 1 s + timeout 1 s, on a once-a-second check: between ~2 and ~4 s
    assert dropped is not None and 1.5 <= dropped <= 5.5, results
    assert Opcode.PING.value in results["silent_frames"], results


def test_websockets_client_answers_pings_and_stays(tuned):
    with ws_connect(tuned, "/echo") as ws:
        time.sleep(3.2)
        ws.send("alive")
        assert ws.recv(timeout=5) == "alive"


# -- settings: bounded receive queue with backpressure -------------------------------------------


def test_max_queue_backpressure_bounds_memory(servers):
    queue = servers["queue"]
    [pid] = queue.worker_pids()
    t = token()
    raw = RawWebSocket(queue.port, f"/hold?token={t}")
    baseline = rss_kb(pid)
    peak = baseline
    target = 200  # messages of 1 MiB: 200 MiB if nothing pushed back
    sent_messages = 0
    pending = b""
    blocked = False
    started = time.monotonic()
    raw.sock.setblocking(False)
    try:
        while sent_messages < target and time.monotonic() - started < 15:
            if not pending:
                pending = Frame(Opcode.BINARY, bytes([sent_messages % 251]) * MIB).serialize(mask=True)
            _, writable, _ = select.select([], [raw.sock], [], 1.5)
            peak = max(peak, rss_kb(pid))
            if not writable:
                blocked = True
                break
            n = raw.sock.send(pending)
            pending = pending[n:]
            if not pending:
                sent_messages += 1
        for _ in range(10):  # a last look at the worker while the client is stuck
            peak = max(peak, rss_kb(pid))
            time.sleep(0.05)
    finally:
        raw.sock.setblocking(True)
    growth_mb = (peak - baseline) / 1000
    print(f"max_queue=4: pushed {sent_messages} MiB before blocking, worker RSS +{growth_mb:.1f} MB")
    assert blocked, "the client pushed 200 MiB into an app that reads nothing"
    assert growth_mb < 25, f"worker RSS grew {growth_mb:.0f} MB"  # measured ~6 MB (queue 32: ~35 MB)
    # 4 queued messages + what the library and the kernel buffer; the default queue (32) would
    # let more than 32 MiB in.
    assert sent_messages < 30, sent_messages
    # Release the app: every message that went out arrives intact and in order.
    httpx.get(f"{queue.url}/release", params={"token": t}, timeout=5)
    raw.sock.settimeout(10)
    if pending:
        raw.sock.sendall(pending)
        sent_messages += 1
    raw.send_close(1000)
    assert raw.recv_close(timeout=10)[0] == 1000
    raw.close()
    data = report(queue, t, "messages")
    assert data == {"messages": sent_messages, "bytes": sent_messages * MIB, "intact": True, "disconnect": 1000}


# -- graceful shutdown -----------------------------------------------------------------------------


def test_graceful_shutdown_closes_1001_at_deadline(gunicorn, tmp_path):
    server = gunicorn(APP, "--graceful-timeout", "2")
    report_file = tmp_path / "report.json"
    with ws_connect(server, f"/shutdown?report={report_file}") as ws:
        assert ws.recv(timeout=5) == "ready"
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        exc = closed_by_server(ws, timeout=10)
        elapsed = time.monotonic() - started
    # Gunicorn's master SIGKILLs the worker at --graceful-timeout: the 1001 must go out before.
    assert exc.rcvd is not None and exc.rcvd.code == 1001, (
        f"no close frame {elapsed:.2f}s after SIGTERM (--graceful-timeout 2): {exc!r}")
    assert 1.0 <= elapsed <= 6, elapsed
    assert server.wait_exit(15) == 0
    data = json.loads(report_file.read_text())
    assert data["type"] == "websocket.disconnect" and data["code"] == 1001, data
    assert data["send_error"] is not None and data["send_error"]["is_oserror"], data
