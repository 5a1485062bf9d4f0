"""Property: whatever valid frame sequence a client sends, the app sees exactly its messages.

Hypothesis builds sequences of text and binary messages, fragments each at random byte offsets
(text is cut anywhere, even inside a UTF-8 character; empty fragments included), puts ping frames
between fragments and between messages, and cuts the whole byte stream into random TCP writes.
The frames are serialized and masked by websockets' sans-I/O ``Frame`` and sent over a raw socket
to ``/record`` (tests/apps/ws_apps.py), which records every message and, on the text ``DONE``,
sends them back as one JSON list. Checked: that list equals the messages sent, in order; every
ping got its pong, in order, with its payload; the close handshake completes.
"""

from __future__ import annotations

import base64
import json
import time
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from tests.apps.ws_apps import DONE
from tests.conftest import GunicornServer
from tests.test_websocket import APP, RawWebSocket

PING_PAYLOADS = st.binary(max_size=125)


@pytest.fixture(scope="module")
def server():
    s = GunicornServer(APP)
    yield s
    s.stop()


@st.composite
def messages(draw) -> Tuple[List[Tuple[str, bytes]], List[bytes], bytes]:
    """([(kind, payload)], [ping payloads in send order], the byte stream of frames)."""
    count = draw(st.integers(min_value=0, max_value=8))
    sent: List[Tuple[str, bytes]] = []
    pings: List[bytes] = []
    stream = b""

    def maybe_ping() -> bytes:
        if draw(st.integers(0, 3)) == 0:
            payload = draw(PING_PAYLOADS)
            pings.append(payload)
            return Frame(Opcode.PING, payload).serialize(mask=True)
        return b""

    for _ in range(count):
        if draw(st.booleans()):
            text = draw(st.text(max_size=200).filter(lambda t: t != DONE))
            kind, payload = "text", text.encode("utf-8")
        else:
            kind, payload = "bytes", draw(st.binary(max_size=3000))
        sent.append((kind, payload))
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=5)))
        pieces = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        stream += maybe_ping()
        for i, piece in enumerate(pieces):
            opcode = (Opcode.TEXT if kind == "text" else Opcode.BINARY) if i == 0 else Opcode.CONT
            stream += Frame(opcode, piece, fin=i == len(pieces) - 1).serialize(mask=True)
            if i < len(pieces) - 1:
                stream += maybe_ping()  # control frames may come between fragments
    stream += maybe_ping()
    return sent, pings, stream


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=messages(), writes=st.lists(st.integers(1, 4000), max_size=6))
def test_app_sees_exactly_the_messages_sent(server, case, writes):
    sent, pings, stream = case
    raw = RawWebSocket(server.port, "/record")
    try:
        # the stream in random TCP writes (cut points need not fall on frame boundaries)
        position = 0
        for size in writes:
            if position >= len(stream):
                break
            raw.sock.sendall(stream[position:position + size])
            position += size
            time.sleep(0.001)
        raw.sock.sendall(stream[position:])
        raw.send_frame(Opcode.TEXT, DONE.encode())
        pongs = []
        while True:
            frame = raw.recv_frame(timeout=5, skip_pings=False)
            if frame.opcode == Opcode.PONG.value:
                pongs.append(frame.data)
                continue
            assert frame.opcode == Opcode.TEXT.value and frame.fin, frame
            break
        seen = [(kind, base64.b64decode(data) if kind == "bytes" else data.encode("utf-8"))
                for kind, data in json.loads(frame.data)]
        assert seen == sent
        assert pongs == pings
        raw.send_close(1000)
        assert raw.recv_close() == (1000, "")
    finally:
        raw.close()
