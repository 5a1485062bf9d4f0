"""Which sans-I/O WebSocket library should the worker sit on? websockets' ServerProtocol vs wsproto.

Measured at the protocol level, without sockets or an event loop: the server object is fed the
bytes of one masked client frame at a time (what one TCP read brings in an interactive app),
every message it yields is echoed back through it, and the server's output bytes are collected.
That is exactly the work the worker hands to the library per message; the rest (transport,
ASGI queue, the app) is the same whichever library is underneath.

    .venv/bin/pip install wsproto          # for this measurement only; not a dependency
    .venv/bin/python bench/ws_protocols.py             # about a minute
    .venv/bin/python bench/ws_protocols.py --quick     # about 15 s

Cases: text (UTF-8 validated and decoded to str, then encoded again, as an ASGI app gets and
sends it) and binary; 16-byte and 4 KiB messages; permessage-deflate off (our default) and on.
The text payloads are English-like (they compress as chat does); the binary ones are random.
Reported per case: echoed messages per second (wall clock) and CPU microseconds per message, best
of N rounds. Before timing, each server's output is decoded by a websockets client to check that
it really echoes.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import sys
import time
import zlib
from importlib.metadata import version
from typing import Callable, List, Tuple

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

try:
    import wsproto
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate as WsprotoDeflate
except ImportError:  # pragma: no cover - told below
    wsproto = None

MAX_SIZE = 16 * 1024 * 1024  # the worker's default
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
WORDS = ("the quick brown fox jumps over lazy dog hello world chat message user sent some text "
         "about weather lunch meeting project deadline café naïve ✓").split()


def handshake_request(deflate: bool) -> bytes:
    extra = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else b""
    return (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


def payloads(kind: str, size: int, count: int, seed: int = 1) -> List[bytes]:
    """`count` different payloads of exactly `size` bytes (valid UTF-8 for text)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if kind == "binary":
            out.append(rng.randbytes(size))
            continue
        text = ""
        while len(text.encode()) < size:
            text += rng.choice(WORDS) + " "
        data = text.encode()[:size].decode("utf-8", "ignore").encode()  # no character cut in two
        out.append(data + b" " * (size - len(data)))
    return out


def client_frames(kind: str, messages: List[bytes], deflate: bool) -> List[bytes]:
    """The bytes a client sends for each message: masked, compressed with context takeover if
    deflate (so they must be fed in order, as a real client's would be)."""
    opcode = Opcode.TEXT if kind == "text" else Opcode.BINARY
    compressor = zlib.compressobj(wbits=-15) if deflate else None
    frames = []
    for data in messages:
        if compressor is None:
            frames.append(Frame(opcode, data).serialize(mask=True))
            continue
        compressed = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        frame = bytearray(Frame(opcode, compressed[:-4]).serialize(mask=True))
        frame[0] |= 0x40  # RSV1: compressed
        frames.append(bytes(frame))
    return frames


# -- the two servers: each returns echo(frame_bytes) -> bytes out ---------------------------------


def websockets_server(kind: str, deflate: bool) -> Callable[[bytes], bytes]:
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()] if deflate else [], max_size=MAX_SIZE)
    server.receive_data(handshake_request(deflate))
    response = server.accept(server.events_received()[0])
    assert response.status_code == 101, response
    assert ("permessage-deflate" in response.headers.get("Sec-WebSocket-Extensions", "")) == deflate
    server.send_response(response)
    server.data_to_send()
    assert server.state is State.OPEN
    receive_data, events_received, data_to_send = server.receive_data, server.events_received, server.data_to_send
    send_text, send_binary = server.send_text, server.send_binary

    if kind == "text":
        def echo(data: bytes) -> bytes:
            receive_data(data)
            for frame in events_received():
                text = frame.data.decode("utf-8")       # what the app gets: a str
                send_text(text.encode("utf-8"))         # what the app sends: a str
            return b"".join(data_to_send())
    else:
        def echo(data: bytes) -> bytes:
            receive_data(data)
            for frame in events_received():
                send_binary(bytes(frame.data))
            return b"".join(data_to_send())
    return echo


def wsproto_server(kind: str, deflate: bool) -> Callable[[bytes], bytes]:
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(handshake_request(deflate))
    [request] = list(ws.events())
    assert isinstance(request, Request)
    accepted = ws.send(AcceptConnection(extensions=[WsprotoDeflate()] if deflate else []))
    assert accepted.startswith(b"HTTP/1.1 101") and (b"permessage-deflate" in accepted) == deflate
    receive_data, events, send = ws.receive_data, ws.events, ws.send

    if kind == "text":
        def echo(data: bytes) -> bytes:
            receive_data(data)
            out = b""
            for event in events():
                assert event.message_finished
                out += send(TextMessage(data=event.data))  # event.data is already a str
            return out
    else:
        def echo(data: bytes) -> bytes:
            receive_data(data)
            out = b""
            for event in events():
                assert event.message_finished
                out += send(BytesMessage(data=bytes(event.data)))
            return out
    return echo


LIBRARIES = {"websockets": websockets_server, "wsproto": wsproto_server}


def check(library: str, kind: str, size: int, deflate: bool) -> None:
    """The server's bytes, decoded by a websockets client, are the messages sent."""
    messages = payloads(kind, size, 5, seed=7)
    echo = LIBRARIES[library](kind, deflate)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN, max_size=None)
    if deflate:
        client.extensions = [PerMessageDeflate(False, False, 15, 15)]
    for frame in client_frames(kind, messages, deflate):
        client.receive_data(echo(frame))
    got = [bytes(frame.data) for frame in client.events_received()]
    assert got == messages, f"{library} {kind} {size} deflate={deflate} did not echo"


def measure(library: str, kind: str, size: int, deflate: bool, count: int, rounds: int) -> Tuple[float, float]:
    """(messages per second, CPU microseconds per message), best of `rounds`."""
    messages = payloads(kind, size, 64)
    best_rate, best_cpu = 0.0, float("inf")
    for _ in range(rounds):
        # Compressed frames depend on all the previous ones: a fresh stream per round.
        frames = client_frames(kind, [messages[i % len(messages)] for i in range(count)], deflate)
        echo = LIBRARIES[library](kind, deflate)
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        total = 0
        for frame in frames:
            total += len(echo(frame))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert total >= count * (2 + (size if not deflate else 1))
        best_rate = max(best_rate, count / wall)
        best_cpu = min(best_cpu, cpu / count * 1e6)
    return best_rate, best_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    if wsproto is None:
        print("wsproto is not installed: .venv/bin/pip install wsproto (for this measurement only)")
        return 2
    rounds = args.rounds or (2 if args.quick else 3)
    scale = 0.3 if args.quick else 1.0
    print(f"# sans-I/O WebSocket echo: websockets {version('websockets')} vs wsproto {version('wsproto')}")
    print(f"Python {platform.python_version()} on {platform.machine()}; one frame fed per call; "
          f"best of {rounds} rounds\n")
    print("| deflate | kind | size | websockets msg/s | wsproto msg/s | websockets CPU µs/msg | "
          "wsproto CPU µs/msg | websockets faster by |")
    print("|---|---|---|---|---|---|---|---|")
    for deflate in (False, True):
        for kind in ("text", "binary"):
            for size in (16, 4096):
                count = int((40_000 if size == 16 else 20_000) * scale * (0.5 if deflate else 1))
                results = {}
                for library in LIBRARIES:
                    check(library, kind, size, deflate)
                    results[library] = measure(library, kind, size, deflate, count, rounds)
                ws_rate, ws_cpu = results["websockets"]
                wp_rate, wp_cpu = results["wsproto"]
                print(f"| {'on' if deflate else 'off'} | {kind} | {size if size < 1024 else f'{size // 1024} KiB'} "
                      f"| {ws_rate:,.0f} | {wp_rate:,.0f} | {ws_cpu:.1f} | {wp_cpu:.1f} | {wp_cpu / ws_cpu:.1f}x |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
