"""A soak: a moderate mixed load on our worker for a long time, watching worker RSS and open fds.

    .venv/bin/python bench/soak.py                    # 30 minutes, 2 workers
    .venv/bin/python bench/soak.py --duration 180     # a 3-minute check that it works

It starts its own ``gunicorn soak_app:app -k asgiworker.ASGIWorker`` (bench/soak_app.py) and runs,
in one asyncio process, every kind of client at once (see ``KINDS`` and bench/README.md, "Soak"):
keep-alive requests, ``Connection: close`` requests, chunked streams, uploads (some chunked),
short and long-lived WebSocket echo sessions, slow heads and slow readers. Every answer is
checked byte for byte. Each ``--sample-every`` seconds it writes one JSON line: each worker's VmRSS
and open fd count (from /proc), its CPU time, and the requests and errors of each client kind.

At the end it prints a summary (after ``--warmup``: RSS and fds at start/end/max, the RSS slope in
MiB per 10 minutes, requests and errors per kind, CPU) and exits 1 if a client kind saw an
unexpected error, a worker was replaced, or a worker's RSS or fd count grew beyond the thresholds
after the warm-up. No --max-requests: the same worker pids are watched from start to end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Dict, List, Optional, Tuple

import websockets
from soak_app import HELLO, chunk_byte
from websockets.asyncio.client import connect as ws_connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
KEEPALIVE = 5  # gunicorn --keep-alive: far above every client's gap between two requests


# -- counting ---------------------------------------------------------------------------------------


@dataclass
class Kind:
    """One client kind's counters."""

    ok: int = 0
    errors: int = 0
    # A reused keep-alive connection the server closed after an idle of >= --keep-alive: allowed.
    idle_closes: int = 0
    first_errors: List[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 10:
            self.first_errors.append("%.1fs %s" % (time.monotonic() - START, what))


START = time.monotonic()
KINDS: Dict[str, Kind] = {name: Kind() for name in (
    "keepalive", "close", "stream", "upload", "ws_short", "ws_long", "slow_head", "slow_reader")}


class BadAnswer(Exception):
    """The server answered, but not what it should have."""


# -- a small HTTP/1.1 client on asyncio streams ---------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> Tuple[int, Dict[bytes, bytes], bytes]:
    """One response: status, headers (lower-cased names), the de-chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                if await reader.readuntil(b"\r\n") != b"\r\n":
                    raise BadAnswer("trailers after the last chunk")
                break
            chunk = await reader.readexactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise BadAnswer("chunk not followed by CRLF")
            parts.append(chunk[:-2])
        return status, headers, b"".join(parts)
    return status, headers, await reader.readexactly(int(headers.get(b"content-length", b"0")))


def request(method: str, path: str, close: bool = False, body: bytes = b"") -> bytes:
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: soak"]
    if body:
        lines.append("Content-Length: %d" % len(body))
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def expect_stream(body: bytes, n: int, size: int) -> None:
    if len(body) != n * size:
        raise BadAnswer("stream of %d bytes, not %d" % (len(body), n * size))
    for i in range(n):
        if body[i * size:(i + 1) * size] != chunk_byte(i) * size:
            raise BadAnswer("stream chunk %d wrong" % i)


async def open_http(host: str, port: int) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port), 10)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def expect_eof(reader: asyncio.StreamReader) -> None:
    rest = await asyncio.wait_for(reader.read(), 10)
    if rest:
        raise BadAnswer("bytes after a Connection: close answer: %r" % rest[:80])


# -- the client kinds -----------------------------------------------------------------------------
#
# Each runs forever (cancelled at the end), paced by ``gap`` seconds between iterations; an
# error is counted and the client starts over on a new connection.

ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
          BadAnswer, ValueError, websockets.exceptions.WebSocketException)


async def forever(kind: str, body: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except ERRORS as exc:
            KINDS[kind].error(repr(exc)[:300])
            await asyncio.sleep(0.5)


async def keepalive_client(host: str, port: int, gap: float) -> None:
    """GET / again and again on one connection."""
    stats = KINDS["keepalive"]

    async def one_connection() -> None:
        reader, writer = await open_http(host, port)
        try:
            idle_since = None
            while True:
                writer.write(request("GET", "/"))
                try:
                    status, _, body = await asyncio.wait_for(read_response(reader), 10)
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial and idle_since is not None and time.monotonic() - idle_since >= KEEPALIVE - 0.5:
                        stats.idle_closes += 1
                        return
                    raise
                if status != 200 or body != HELLO:
                    raise BadAnswer("%d %r" % (status, body[:80]))
                stats.ok += 1
                idle_since = time.monotonic()
                await asyncio.sleep(gap)
        finally:
            await close_writer(writer)

    await forever("keepalive", one_connection)


async def close_client(host: str, port: int, gap: float) -> None:
    """One GET / with Connection: close per connection; the server must then close."""
    async def one() -> None:
        reader, writer = await open_http(host, port)
        try:
            writer.write(request("GET", "/", close=True))
            status, headers, body = await asyncio.wait_for(read_response(reader), 10)
            if status != 200 or body != HELLO or headers.get(b"connection") != b"close":
                raise BadAnswer("%d %r %r" % (status, headers, body[:80]))
            await expect_eof(reader)
        finally:
            await close_writer(writer)
        KINDS["close"].ok += 1
        await asyncio.sleep(gap)

    await forever("close", one)


async def stream_client(host: str, port: int, gap: float, rng: random.Random) -> None:
    """Chunked streams of various lengths on a keep-alive connection."""
    async def one_connection() -> None:
        reader, writer = await open_http(host, port)
        try:
            for _ in range(20):
                n, size = rng.choice([(1, 10), (16, 1024), (64, 1024), (8, 65536)])
                writer.write(request("GET", "/stream?n=%d&size=%d" % (n, size)))
                status, headers, body = await asyncio.wait_for(read_response(reader), 20)
                # A one-part answer gets a Content-Length (docs/http.md); more parts are chunked.
                framing = b"chunked" if n > 1 else None
                if status != 200 or headers.get(b"transfer-encoding") != framing:
                    raise BadAnswer("%d %r" % (status, headers))
                expect_stream(body, n, size)
                KINDS["stream"].ok += 1
                await asyncio.sleep(gap)
        finally:
            await close_writer(writer)

    await forever("stream", one_connection)


async def upload_client(host: str, port: int, gap: float, rng: random.Random) -> None:
    """POST bodies of various sizes, half of them chunked in pieces of random sizes."""
    async def one_connection() -> None:
        reader, writer = await open_http(host, port)
        try:
            for _ in range(10):
                size = rng.choice([0, 1, 1024, 65536, 1 << 20, rng.randrange(1, 300_000)])
                body = rng.randbytes(size)
                if rng.random() < 0.5:
                    writer.write(request("POST", "/upload", body=body))
                else:
                    writer.write(b"POST /upload HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n")
                    at = 0
                    while at < size:
                        piece = body[at:at + rng.randrange(1, 100_000)]
                        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        at += len(piece)
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
                status, _, answer = await asyncio.wait_for(read_response(reader), 20)
                want = b"%d %s" % (size, hashlib.sha256(body).hexdigest().encode())
                if status != 200 or answer != want:
                    raise BadAnswer("%d %r, not %r" % (status, answer[:100], want))
                KINDS["upload"].ok += 1
                await asyncio.sleep(gap)
        finally:
            await close_writer(writer)

    await forever("upload", one_connection)


def ws_message(rng: random.Random) -> Any:
    size = rng.choice([1, 16, 200, 4096])
    if rng.random() < 0.5:
        return "".join(rng.choice("abcdéπ€😀") for _ in range(size))
    return rng.randbytes(size)


async def ws_short_client(url: str, gap: float, rng: random.Random) -> None:
    """Open, echo ten messages, close."""
    async def one() -> None:
        async with ws_connect(url, compression=None, open_timeout=10, close_timeout=10) as ws:
            for _ in range(10):
                message = ws_message(rng)
                await ws.send(message)
                if await asyncio.wait_for(ws.recv(), 10) != message:
                    raise BadAnswer("echo differs")
        KINDS["ws_short"].ok += 1
        await asyncio.sleep(gap)

    await forever("ws_short", one)


async def ws_long_client(url: str, gap: float, rng: random.Random) -> None:
    """One session for the whole run, a message every ``gap`` seconds (the server pings it too);
    a session that ends is an error."""
    async def session() -> None:
        async with ws_connect(url, compression=None, open_timeout=10, close_timeout=10) as ws:
            while True:
                message = ws_message(rng)
                await ws.send(message)
                if await asyncio.wait_for(ws.recv(), 10) != message:
                    raise BadAnswer("echo differs")
                KINDS["ws_long"].ok += 1
                await asyncio.sleep(gap)

    await forever("ws_long", session)


async def slow_head_client(host: str, port: int, byte_every: float) -> None:
    """A request head trickled one byte at a time (4 s or so: inside the 10 s header timeout)."""
    head = request("GET", "/?slow-head=" + "x" * 40, close=True)

    async def one() -> None:
        reader, writer = await open_http(host, port)
        try:
            for i in range(len(head)):
                writer.write(head[i:i + 1])
                await writer.drain()
                await asyncio.sleep(byte_every)
            status, _, body = await asyncio.wait_for(read_response(reader), 10)
            if status != 200 or body != HELLO:
                raise BadAnswer("%d %r" % (status, body[:80]))
            await expect_eof(reader)
        finally:
            await close_writer(writer)
        KINDS["slow_head"].ok += 1

    await forever("slow_head", one)


async def slow_reader_client(host: str, port: int, read_every: float) -> None:
    """A 2 MiB answer read 16 KiB at a time: the server's writes wait for its socket to drain."""
    n, size = 256, 8192

    async def one() -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=16384), 10)
        try:
            writer.write(request("GET", "/stream?n=%d&size=%d&length=1" % (n, size), close=True))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 200 ") or b"content-length: %d\r\n" % (n * size) not in head.lower():
                raise BadAnswer(repr(head[:200]))
            body = bytearray()
            while len(body) < n * size:
                piece = await asyncio.wait_for(reader.read(16384), 10)
                if not piece:
                    raise BadAnswer("closed after %d bytes" % len(body))
                body += piece
                await asyncio.sleep(read_every)
            expect_stream(bytes(body), n, size)
            await expect_eof(reader)
        finally:
            await close_writer(writer)
        KINDS["slow_reader"].ok += 1

    await forever("slow_reader", one)


# -- what each worker uses ----------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> List[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return sorted(kids)


def usage(pid: int) -> Optional[Dict[str, float]]:
    """VmRSS (KiB), open fds and CPU seconds of ``pid`` (None if it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        fds = len(os.listdir("/proc/%d/fd" % pid))
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, StopIteration):
        return None
    return {"rss_kib": rss, "fds": fds, "cpu_s": cpu}


async def sampler(master: int, every: float, out: Any, samples: List[Dict[str, Any]]) -> None:
    while True:
        workers = {}
        for pid in children_of(master):
            use = usage(pid)
            if use is not None:
                workers[str(pid)] = use
        own = os.times()
        sample = {
            "t": round(time.monotonic() - START, 2),
            "workers": workers,
            "master": usage(master),
            "client_cpu_s": own.user + own.system,
            "kinds": {name: {"ok": k.ok, "errors": k.errors, "idle_closes": k.idle_closes}
                      for name, k in KINDS.items()},
        }
        samples.append(sample)
        out.write(json.dumps(sample) + "\n")
        out.flush()
        await asyncio.sleep(every)


# -- the summary --------------------------------------------------------------------------------------


def slope_per_10min(points: List[Tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per 10 minutes."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 600


def summarize(samples: List[Dict[str, Any]], args: argparse.Namespace, fd_bound: int) -> Tuple[List[str], List[str]]:
    """The summary's lines, and the reasons to fail (none: the soak passed)."""
    lines: List[str] = []
    problems: List[str] = []
    pid_sets = [frozenset(s["workers"]) for s in samples]
    if len(set(pid_sets)) != 1:
        problems.append("the workers changed during the run: %s" % sorted(set().union(*pid_sets)))
    after = [s for s in samples if s["t"] >= args.warmup] or samples[-1:]
    span = after[-1]["t"] - after[0]["t"]
    lines.append("after the warm-up (t >= %ds, %d samples over %.0f s):" % (args.warmup, len(after), span))
    lines.append("| worker | RSS MiB at boot | start | end | max | slope MiB/10min | fds start | end | max | CPU % of a core |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pid in sorted(samples[0]["workers"]):
        series = [(s["t"], s["workers"][pid]) for s in after if pid in s["workers"]]
        if not series:
            continue
        rss = [u["rss_kib"] / 1024 for _, u in series]
        fds = [u["fds"] for _, u in series]
        first = next(s for s in samples if pid in s["workers"])
        cpu = (series[-1][1]["cpu_s"] - first["workers"][pid]["cpu_s"]) / max(1e-9, series[-1][0] - first["t"])
        slope = slope_per_10min([(t, u["rss_kib"] / 1024) for t, u in series])
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %+.2f | %d | %d | %d | %.1f |" % (
            pid, first["workers"][pid]["rss_kib"] / 1024, rss[0], rss[-1], max(rss), slope,
            fds[0], fds[-1], max(fds), 100 * cpu))
        if max(rss) - rss[0] > args.max_rss_growth:
            problems.append("worker %s: RSS grew %.1f MiB after the warm-up (limit %.1f)" % (
                pid, max(rss) - rss[0], args.max_rss_growth))
        if max(fds) - fds[0] > fd_bound:
            problems.append("worker %s: %d more fds than after the warm-up (the load holds at most %d connections)" % (
                pid, max(fds) - fds[0], fd_bound))
    client_cpu = (samples[-1]["client_cpu_s"] - samples[0]["client_cpu_s"]) / max(1e-9, samples[-1]["t"] - samples[0]["t"])
    lines.append("load client CPU: %.1f%% of a core" % (100 * client_cpu))
    lines.append("| kind | requests | errors | idle keep-alive closes |")
    lines.append("|---|---:|---:|---:|")
    for name, k in KINDS.items():
        lines.append("| %s | %d | %d | %d |" % (name, k.ok, k.errors, k.idle_closes))
        if k.errors:
            problems.append("%s: %d errors, first: %s" % (name, k.errors, "; ".join(k.first_errors[:3])))
        if not k.ok:
            problems.append("%s: nothing succeeded" % name)
    return lines, problems


# -- the run ------------------------------------------------------------------------------------------


def start_gunicorn(args: argparse.Namespace, log: Path) -> "subprocess.Popen[bytes]":
    cmd = [sys.executable, "-m", "gunicorn", args.app, "-k", "asgiworker.ASGIWorker",
           "--workers", str(args.workers), "--bind", args.bind, "--keep-alive", str(KEEPALIVE),
           "--log-level", "warning"]
    help_text = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True).stdout
    if "--no-control-socket" in help_text:
        cmd.append("--no-control-socket")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), str(ROOT), env.get("PYTHONPATH")]))
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: "subprocess.Popen[bytes]", host: str, port: int, workers: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("gunicorn exited with %s" % proc.returncode)
        if len(children_of(proc.pid)) >= workers:
            try:
                with socket.create_connection((host, port), timeout=2) as s:
                    s.sendall(request("GET", "/", close=True))
                    s.settimeout(5)
                    if s.recv(1):
                        return
            except OSError:
                pass
        time.sleep(0.1)
    raise SystemExit("gunicorn did not become ready in %ds" % timeout)


async def load(args: argparse.Namespace, host: str, port: int, master: int, out: Any,
               samples: List[Dict[str, Any]]) -> None:
    url = "ws://%s:%d/ws" % (host, port)
    rng = random.Random(args.seed)

    def r() -> random.Random:
        return random.Random(rng.random())

    tasks = [asyncio.ensure_future(sampler(master, args.sample_every, out, samples))]
    clients: List[Awaitable[None]] = []
    clients += [keepalive_client(host, port, 0.01) for _ in range(4)]
    clients += [close_client(host, port, 0.05) for _ in range(2)]
    clients += [stream_client(host, port, 0.2, r()) for _ in range(2)]
    clients += [upload_client(host, port, 0.3, r()) for _ in range(2)]
    clients += [ws_short_client(url, 0.5, r()) for _ in range(2)]
    clients += [ws_long_client(url, 2.0, r()) for _ in range(4)]
    clients += [slow_head_client(host, port, 0.05) for _ in range(2)]
    clients += [slow_reader_client(host, port, 0.05) for _ in range(2)]
    tasks += [asyncio.ensure_future(c) for c in clients]
    try:
        await asyncio.sleep(args.duration)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# At most this many connections are open at once (4 keep-alive, 2 close, 2 stream, 2 upload,
# 2 + 4 WebSocket, 2 + 2 slow): the fds of a worker may swing by that much without a leak.
OPEN_CONNECTIONS = 20


def run(coro: Coroutine[Any, Any, None]) -> None:
    """On uvloop when there is one (as the server is): the client should cost little CPU."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800, help="seconds of load (default 1800)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bind", default="127.0.0.1:0", help="HOST:PORT (port 0: a free one)")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=120, help="seconds before the figures count")
    parser.add_argument("--max-rss-growth", type=float, default=8.0,
                        help="MiB a worker's RSS may grow over its first sample after the warm-up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--app", default="soak_app:app",
                        help="a variant of soak_app (its routes and answers) to serve instead")
    parser.add_argument("--out", type=Path, help="JSON lines of samples (default bench/results/soak-TIME.jsonl)")
    args = parser.parse_args()

    host, _, port_text = args.bind.rpartition(":")
    port = int(port_text)
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        args.bind = "%s:%d" % (host, port)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = args.out or BENCH / "results" / ("soak-%s.jsonl" % stamp)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log = out_path.with_suffix(".log")

    proc = start_gunicorn(args, log)
    samples: List[Dict[str, Any]] = []
    try:
        wait_ready(proc, host, port, args.workers)
        print("gunicorn %d (workers %s) on %s; samples -> %s, log -> %s" % (
            proc.pid, children_of(proc.pid), args.bind, out_path, log), flush=True)
        with open(out_path, "w") as out:
            run(load(args, host, port, proc.pid, out, samples))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    lines, problems = summarize(samples, args, OPEN_CONNECTIONS)
    print("\n".join(lines))
    for problem in problems:
        print("FAIL:", problem)
    print("soak %s" % ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
