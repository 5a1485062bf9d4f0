"""A WebSocket client flooding an app that has not accepted yet, and the worker's memory (issue 13).

The client sends the upgrade request and, without waiting for the 101 (which comes only when the
app accepts), streams masked binary frames as fast as the socket takes them for ``--duration``
seconds, while the app sleeps ``--accept-after`` seconds before it accepts (then echoes every
message). Meanwhile the worker's VmRSS is sampled every 100 ms. It reports the bytes pushed, the
RSS before / at its peak / after the connection ended, and what the server answered: the 101 and
how many of the early frames came back in order, or an error status (an app too slow for
``ASGIWORKER_WS_HANDSHAKE_TIMEOUT``), and how the connection ended.

    bench/ws_flood.py                                  # this checkout, app accepting after 8 s
    bench/ws_flood.py --code /tmp/base                 # another checkout
    bench/ws_flood.py --handshake-timeout 10           # -e ASGIWORKER_WS_HANDSHAKE_TIMEOUT=10

tests/test_clean_close.py runs ``flood`` and ``RssSampler`` shortened against our worker.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):
    # Run as a script: import bench/ as a package, as the tests do, from the checkout's root
    # (from bench/ itself, `bench` would be bench/bench.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
from bench.resets import ROOT, Gunicorn  # noqa: E402  # the same launcher as the reset benchmark

MASK = b"\x5a\xa5\x3c\xc3"
SEQ = struct.Struct("!Q")


def upgrade_request(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET %s HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key))


class FrameMaker:
    """Masked binary client frames of ``size`` payload bytes, each starting with its sequence
    number (8 bytes, big-endian): the echoes then tell which frames came back, in what order."""

    def __init__(self, size: int) -> None:
        assert size >= SEQ.size
        if size < 126:
            self.head = bytes([0x82, 0x80 | size]) + MASK
        elif size < 65536:
            self.head = bytes([0x82, 0x80 | 126]) + struct.pack("!H", size) + MASK
        else:
            self.head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", size) + MASK
        padding = bytes(range(256)) * (size // 256 + 1)
        # SEQ.size is a multiple of 4: the padding's mask starts at the key's first byte.
        self.masked_padding = _mask(padding[: size - SEQ.size])
        self.size = size

    def frame(self, seq: int) -> bytes:
        return self.head + _mask(SEQ.pack(seq)) + self.masked_padding


def _mask(data: bytes) -> bytes:
    key = (MASK * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def close_frame() -> bytes:
    return bytes([0x88, 0x80 | 2]) + MASK + _mask(struct.pack("!H", 1000))


def parse_server_frames(data: bytes) -> "tuple[List[tuple[int, bytes]], bytes]":
    """The whole unmasked frames at the start of ``data`` as (opcode, payload), and the rest."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        at = 2
        if length == 126:
            if len(data) < 4:
                break
            length, at = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                break
            length, at = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < at + length:
            break
        frames.append((opcode, data[at:at + length]))
        data = data[at + length:]
    return frames, data


@dataclass
class FloodResult:
    bytes_pushed: int = 0
    frames_sent: int = 0  # complete frames
    push_seconds: float = 0.0
    status: Optional[int] = None  # of the server's answer to the upgrade (101 once accepted)
    answer_after: Optional[float] = None  # seconds from the upgrade request to the answer's head
    echoed: int = 0
    echoes_in_order: bool = True  # the echoed sequence numbers are 0, 1, 2 ... with no gap
    send_error: Optional[str] = None
    send_error_after: Optional[float] = None
    end: str = ""  # how the connection ended: eof, reset, timeout
    head: str = ""  # the answer's head, for the report

    def describe(self) -> str:
        answer = f"{self.status} after {self.answer_after:.2f} s" if self.status is not None else "no answer"
        text = (f"pushed {self.bytes_pushed / 2**20:.1f} MiB ({self.frames_sent} frames) in {self.push_seconds:.1f} s;"
                f" answer {answer}; {self.echoed} frames echoed{' in order' if self.echoes_in_order else ' OUT OF ORDER'};"
                f" ended {self.end}")
        if self.send_error:
            text += f"; sending failed after {self.send_error_after:.2f} s: {self.send_error}"
        return text


def flood(port: int, path: str, seconds: float, frame_size: int = 4096, read_timeout: float = 15.0,
          host: str = "127.0.0.1") -> FloodResult:
    """Upgrade on ``path`` and push frames for ``seconds`` without waiting for the answer, then
    read the answer (up to ``read_timeout`` s) and, after a 101, every echo until the server goes
    quiet, then close. Never raises for what the server does: it is all in the result."""
    maker = FrameMaker(frame_size)
    result = FloodResult()
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    started = time.monotonic()
    pending = upgrade_request(path)
    upgrade_len = len(pending)
    received = bytearray()
    seq = 0
    sending = True
    stop_at = started + seconds
    try:
        # Push while reading whatever comes; at the deadline, finish the frame under way.
        while sending:
            now = time.monotonic()
            if now >= stop_at and not pending:
                break
            if not pending:
                pending = maker.frame(seq)
                seq += 1
            readable, writable, _ = select.select([sock], [sock], [], 0.05)
            if readable:
                chunk = _recv_nowait(sock, result)
                if chunk is None:
                    break
                received += chunk
                if result.answer_after is None:
                    result.answer_after = time.monotonic() - started
            if writable:
                try:
                    sent = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    result.send_error = type(exc).__name__
                    result.send_error_after = time.monotonic() - started
                    sending = False
                    break
                except BlockingIOError:
                    continue
                pending = pending[sent:]
                result.bytes_pushed += sent
                if not pending:
                    result.frames_sent = seq
        result.push_seconds = time.monotonic() - started
        result.bytes_pushed = max(0, result.bytes_pushed - upgrade_len)
        if pending and seq:
            result.frames_sent = seq - 1
        _read_answer(sock, result, bytes(received), started, read_timeout, result.frames_sent)
    finally:
        sock.close()
    return result


def _recv_nowait(sock: socket.socket, result: FloodResult) -> Optional[bytes]:
    """What the socket has (None once it ended, with ``result.end`` set)."""
    try:
        chunk = sock.recv(262144)
    except BlockingIOError:
        return b""
    except ConnectionResetError:
        result.end = "reset"
        return None
    if not chunk:
        result.end = "eof"
        return None
    return chunk


def _read_answer(sock: socket.socket, result: FloodResult, received: bytes, started: float,
                 read_timeout: float, expected: int) -> None:
    deadline = time.monotonic() + read_timeout
    quiet = 2.0  # after the last echo: the server has no more of our frames
    last_progress = time.monotonic()
    frames_data = b""
    closing = False
    while True:
        if result.status is None and b"\r\n\r\n" in received:
            head, _, frames_data = received.partition(b"\r\n\r\n")
            result.head = head.decode("latin-1")
            parts = head.split(b" ", 2)
            result.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
            received = b""
        elif result.status is not None:
            frames_data += received
            received = b""
        if result.status == 101:
            frames, frames_data = parse_server_frames(frames_data)
            for opcode, payload in frames:
                if opcode == 0x2:
                    if SEQ.unpack(payload[: SEQ.size])[0] != result.echoed:
                        result.echoes_in_order = False
                    result.echoed += 1
                    last_progress = time.monotonic()
                elif opcode == 0x8:
                    closing = True
            if not closing and (result.echoed >= expected or time.monotonic() - last_progress > quiet):
                _send_blocking(sock, close_frame())
                closing = True
                deadline = min(deadline, time.monotonic() + 5)
        if result.end:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            result.end = "timeout"
            return
        readable, _, _ = select.select([sock], [], [], min(left, 0.2))
        if readable:
            chunk = _recv_nowait(sock, result)
            if chunk is None:
                continue  # (result.end is set: what was received is read, then we return)
            if chunk and result.answer_after is None:
                result.answer_after = time.monotonic() - started
            received += chunk
            last_progress = time.monotonic()


def _send_blocking(sock: socket.socket, data: bytes) -> None:
    try:
        sock.setblocking(True)
        sock.settimeout(5)
        sock.sendall(data)
    except OSError:
        pass
    finally:
        sock.setblocking(False)


# -- the worker's memory --------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class RssSampler:
    """VmRSS of ``pid`` every ``interval`` seconds in a thread, from ``start()`` to ``stop()``."""

    pid: int
    interval: float = 0.1
    samples: List[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RssSampler":
        self.samples.append(rss_kib(self.pid))
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(rss_kib(self.pid))
            except (OSError, RuntimeError):
                return  # the worker is gone

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def before(self) -> int:
        return self.samples[0]

    @property
    def peak(self) -> int:
        return max(self.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose asgiworker is served")
    parser.add_argument("--accept-after", type=float, default=8.0, help="seconds the app sleeps before accepting")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds the client pushes frames")
    parser.add_argument("--frame-size", type=int, default=4096)
    parser.add_argument("--handshake-timeout", type=float, help="ASGIWORKER_WS_HANDSHAKE_TIMEOUT for the worker")
    parser.add_argument("--never", action="store_true", help="an app that never accepts (/never)")
    opts = parser.parse_args()
    env = {} if opts.handshake_timeout is None else {"ASGIWORKER_WS_HANDSHAKE_TIMEOUT": f"{opts.handshake_timeout:g}"}
    path = "/never?token=bench" if opts.never else f"/slow?delay={opts.accept_after:g}"
    gunicorn = Gunicorn("asgiworker.ASGIWorker", [], code=opts.code.resolve(), env=env)
    try:
        where = gunicorn.package_file()
        pid = gunicorn.worker_pids()[0]
        time.sleep(0.5)  # the boot's own allocations settle
        sampler = RssSampler(pid).start()
        result = flood(gunicorn.port, path, opts.duration, opts.frame_size)
        time.sleep(1.0)
        sampler.stop()
        after = rss_kib(pid)
    finally:
        gunicorn.stop()
    command = " ".join(gunicorn.command)
    if env:
        command = " ".join(f"{k}={v}" for k, v in env.items()) + " " + command
    print(f"# asgiworker from {where}; app path {path}; {command}")
    print(f"# {result.describe()}")
    print(f"# worker VmRSS: before {sampler.before / 1024:.1f} MiB, peak {sampler.peak / 1024:.1f} MiB"
          f" (+{(sampler.peak - sampler.before) / 1024:.1f}), after {after / 1024:.1f} MiB")
    print(json.dumps({**asdict(result), "rss_before_kib": sampler.before, "rss_peak_kib": sampler.peak,
                      "rss_after_kib": after, "path": path, "asgiworker": where, "command": command}))


if __name__ == "__main__":
    main()
