"""Connections reset under the client at worker restarts, reloads and idle timeouts (issue 13).

A reset is worse than a clean close: after an EOF before any byte of its response, a client knows
the server never answered and may resend on a new connection; after an ECONNRESET it cannot tell
whether its request was read. This load counts, per client kind, how each request ended, while
Gunicorn restarts its workers (``--max-requests``), reloads (SIGHUP every second) or times out idle
keep-alive connections:

    bench/resets.py --server asgiworker --mode max-requests --runs 3
    bench/resets.py --server uvicorn-worker --mode sighup
    bench/resets.py --code /tmp/base --mode idle     # another checkout of the package

Clients are threads on raw blocking sockets (what each request met is then exact, and no HTTP
library retries or hides anything): ``--keepalive-clients`` reuse one connection for request
after request (a new one after ``connection: close`` or a failure), ``--fresh-clients`` open one
connection per request (``Connection: close``). Each request ends as one of ``OUTCOMES``; a
request that did not end ``ok`` is resent once on a new connection (counted in ``retries``),
and one whose retry failed too is ``lost``. tests/test_clean_close.py runs the same load
(``run_load``) against our worker.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS_DIR = ROOT / "tests" / "apps"  # restart_apps.py: importable alone, whatever the checkout

# How a request ended. ok: a whole response. reset: ECONNRESET on send or recv, or EPIPE on send
# (which follows a reset). clean_close: EOF before any byte of the response on a reused
# connection (the server closed between requests: safe to resend). dropped: the same on a new
# connection (the server accepted it and closed it unanswered). eof_mid: EOF inside a response.
# refused: the connect failed. other: anything else (timeouts, unparsable answers).
OUTCOMES = ("ok", "reset", "clean_close", "dropped", "eof_mid", "refused", "other")
COLUMNS = OUTCOMES + ("retries", "lost")
KINDS = ("keepalive", "fresh")

KEEPALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
REQUEST_TIMEOUT = 10.0

MODES = ("max-requests", "sighup", "idle")
SERVERS = {
    "asgiworker": "asgiworker.ASGIWorker",
    "uvicorn-worker": "uvicorn_worker.UvicornWorker",
    "gunicorn-asgi": "asgi",
}


# -- one request on a raw socket ----------------------------------------------------------------


class _Ended(Exception):
    """The request ended otherwise than with a whole response; ``args[0]`` is its outcome."""


@dataclass
class Answer:
    status: int
    close: bool  # the server said `connection: close` (or the body ran to its close)


def read_answer(sock: socket.socket, reused: bool) -> Answer:
    """Read one whole response (Content-Length or close-delimited body) off ``sock``; raise
    ``_Ended(outcome)`` when it does not come whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock)
        if not chunk:
            if data:
                raise _Ended("eof_mid")
            raise _Ended("clean_close" if reused else "dropped")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _Ended("other")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    status = int(parts[1])
    close = headers.get(b"connection") == b"close" or parts[0] == b"HTTP/1.0"
    if b"transfer-encoding" in headers:
        raise _Ended("other")  # none of the benchmark's apps streams
    length = headers.get(b"content-length")
    if length is None and status not in (204, 304):
        while _recv(sock):  # close-delimited: the body runs to the server's close
            pass
        return Answer(status, True)
    need = int(length or 0)
    while len(body) < need:
        chunk = _recv(sock)
        if not chunk:
            raise _Ended("eof_mid")
        body += chunk
    return Answer(status, close)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        raise _Ended("reset") from None
    except socket.timeout:
        raise _Ended("other") from None


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=REQUEST_TIMEOUT)
    except ConnectionRefusedError:
        raise _Ended("refused") from None
    except OSError:
        raise _Ended("other") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        raise _Ended("reset") from None
    except OSError:
        raise _Ended("other") from None


# -- the clients ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of one client kind (``COLUMNS``), and the statuses of the answers."""

    counts: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    statuses: Dict[int, int] = field(default_factory=dict)

    def add(self, other: "Tally") -> None:
        for key, value in other.counts.items():
            self.counts[key] += value
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n


class _Client(threading.Thread):
    def __init__(self, port: int, keepalive: bool, deadline: float,
                 pause: Optional[Tuple[float, float]], seed: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.keepalive = keepalive
        self.deadline = deadline
        self.pause = pause
        self.random = random.Random(seed)
        self.tally = Tally()
        self.sock: Optional[socket.socket] = None
        self.reused = False

    def run(self) -> None:
        counts = self.tally.counts
        while time.monotonic() < self.deadline:
            outcome = self._attempt()
            if outcome != "ok":
                counts[outcome] += 1
                counts["retries"] += 1
                outcome = self._attempt()  # on a new connection: _attempt dropped the old one
                if outcome != "ok":
                    counts[outcome] += 1
                    counts["lost"] += 1
            counts["ok"] += outcome == "ok"
            if self.pause is not None and self.keepalive:
                time.sleep(self.random.uniform(*self.pause))
        self._drop()

    def _attempt(self) -> str:
        try:
            if self.sock is None:
                self.sock = connect(self.port)
                self.reused = False
            sock = self.sock
            send(sock, KEEPALIVE_REQUEST if self.keepalive else CLOSE_REQUEST)
            answer = read_answer(sock, self.reused)
        except _Ended as ended:
            self._drop()
            return str(ended.args[0])
        self.tally.statuses[answer.status] = self.tally.statuses.get(answer.status, 0) + 1
        if answer.close or not self.keepalive:
            self._drop()
        else:
            self.reused = True
        return "ok"

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run_load(port: int, duration: float, keepalive_clients: int = 4, fresh_clients: int = 4,
             pause: Optional[Tuple[float, float]] = None, every: float = 1.0,
             tick: Optional[Callable[[], None]] = None, seed: int = 13) -> Dict[str, Tally]:
    """Run the clients against ``port`` for ``duration`` seconds; call ``tick`` every ``every``
    seconds meanwhile (a SIGHUP, say). ``pause``: the (min, max) seconds a keep-alive client
    idles between two requests (uniformly drawn), to race an idle timeout. Returns a Tally per
    kind, once every client has finished its last request."""
    deadline = time.monotonic() + duration
    clients = [_Client(port, True, deadline, pause, seed + i) for i in range(keepalive_clients)]
    clients += [_Client(port, False, deadline, None, seed + 1000 + i) for i in range(fresh_clients)]
    for client in clients:
        client.start()
    if tick is not None:
        next_tick = time.monotonic() + every
        while next_tick < deadline:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            tick()
            next_tick += every
    for client in clients:
        client.join(duration + 4 * REQUEST_TIMEOUT)
    result = {kind: Tally() for kind in KINDS}
    for client in clients:
        result["keepalive" if client.keepalive else "fresh"].add(client.tally)
    return result


def table(rows: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    """A Markdown table of ``COLUMNS`` for each (label, counts) row."""
    lines = ["| run | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for label, counts in rows:
        lines.append(f"| {label} | " + " | ".join(f"{counts[c]:g}" for c in COLUMNS) + " |")
    return "\n".join(lines)


# -- the server -----------------------------------------------------------------------------------


class Gunicorn:
    """A Gunicorn master serving ``restart_apps:app`` (tests/apps/restart_apps.py) with
    ``worker_class``, the package imported from ``code`` (a checkout: PYTHONPATH and cwd)."""

    def __init__(self, worker_class: str, args: Sequence[str], code: Path = ROOT, workers: int = 1,
                 env: Optional[Dict[str, str]] = None, app: str = "restart_apps:app") -> None:
        self.workers = workers
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.logfile = tempfile.NamedTemporaryFile(prefix="resets-", suffix=".log", delete=False)
        self.env = dict(os.environ, PYTHONPATH=str(code), **(env or {}))
        self.cwd = str(code)
        self.command = [sys.executable, "-m", "gunicorn", app, "--pythonpath", str(APPS_DIR),
                        "-k", worker_class, "--workers", str(workers),
                        "--bind", f"127.0.0.1:{self.port}", "--log-level", "info", *args]
        self.proc = subprocess.Popen(self.command, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd, start_new_session=True)
        self._wait_ready()

    def package_file(self) -> str:
        """Where this server's Python finds asgiworker (to prove which checkout is measured)."""
        return subprocess.run([sys.executable, "-c", "import asgiworker; print(asgiworker.__file__)"],
                              env=self.env, cwd=self.cwd, capture_output=True, text=True).stdout.strip()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.log().count("Booting worker") >= self.workers:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                        s.sendall(CLOSE_REQUEST)
                        if s.recv(1):
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not become ready in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return Path(self.logfile.name).read_text(errors="replace")

    def worker_pids(self) -> List[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.logfile.close()
        os.unlink(self.logfile.name)


def mode_args(mode: str) -> List[str]:
    if mode == "max-requests":
        return ["--max-requests", "50", "--max-requests-jitter", "10"]
    if mode == "idle":
        return ["--keep-alive", "1"]
    return []


def one_run(server: str, mode: str, duration: float, keepalive_clients: int, fresh_clients: int,
            workers: int, code: Path) -> Tuple[Dict[str, Tally], Dict[str, object]]:
    gunicorn = Gunicorn(SERVERS[server], mode_args(mode), code=code, workers=workers)
    try:
        where = gunicorn.package_file()
        tick = (lambda: gunicorn.proc.send_signal(signal.SIGHUP)) if mode == "sighup" else None
        pause = (0.8, 1.2) if mode == "idle" else None
        result = run_load(gunicorn.port, duration, keepalive_clients, fresh_clients, pause=pause, tick=tick)
        boots = gunicorn.log().count("Booting worker")
    finally:
        gunicorn.stop()
    return result, {"command": " ".join(gunicorn.command), "asgiworker": where, "workers_booted": boots}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(SERVERS), default="asgiworker")
    parser.add_argument("--mode", choices=MODES, default="max-requests")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--keepalive-clients", type=int, default=4)
    parser.add_argument("--fresh-clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="runs to take the median of")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose asgiworker is served")
    opts = parser.parse_args()
    runs: List[Dict[str, Dict[str, int]]] = []
    rows: List[Tuple[str, Dict[str, float]]] = []
    info: Dict[str, object] = {}
    for i in range(opts.runs):
        result, info = one_run(opts.server, opts.mode, opts.duration, opts.keepalive_clients,
                               opts.fresh_clients, opts.workers, opts.code.resolve())
        runs.append({kind: tally.counts for kind, tally in result.items()})
        for kind in KINDS:
            rows.append((f"{i + 1} {kind}", {c: float(n) for c, n in result[kind].counts.items()}))
    if opts.runs > 1:
        for kind in KINDS:
            rows.append((f"median {kind}", {c: statistics.median(r[kind][c] for r in runs) for c in COLUMNS}))
    print(f"# {opts.server}, mode {opts.mode}, {opts.duration:g} s, {opts.workers} workers; asgiworker from {info['asgiworker']}")
    print(f"# {info['command']}")
    print(table(rows))
    median = {kind: {c: statistics.median(r[kind][c] for r in runs) for c in COLUMNS} for kind in KINDS}
    print(json.dumps({"server": opts.server, "mode": opts.mode, "duration": opts.duration,
                      "keepalive_clients": opts.keepalive_clients, "fresh_clients": opts.fresh_clients,
                      "workers": opts.workers, "runs": runs, "median": median, **info}))


if __name__ == "__main__":
    main()
