"""A throwaway ``redis-server`` for the channel layer's tests.

    server = RedisServer()      # finds (or installs) redis-server, starts it on a free port
    server.url                  # redis://127.0.0.1:PORT/0
    server.kill(); server.restart()   # a crash and a comeback on the same port (fault tests)
    server.stop()

No persistence (``--save '' --appendonly no``), its own temporary directory, loopback only. If
``redis-server`` is missing and we are root with apt-get, ``find_redis_server()`` installs
Debian's ``redis-server`` package (tests/debian.py, as for Chromium and slowhttptest); the tests
that need it are skipped only when that is impossible.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from tests.conftest import free_port
from tests.debian import DebianUnavailable, ensure_debian_binary

# The program is Debian's (tests/debian.py finds or installs it); conftest skips on this error.
RedisUnavailable = DebianUnavailable


def find_redis_server() -> str:
    """The path of ``redis-server``, installing it with apt-get when missing and possible."""
    return ensure_debian_binary("redis-server", "redis-server")


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``; ``restart()`` keeps the port."""

    def __init__(self, port: Optional[int] = None, start: bool = True) -> None:
        self.executable = find_redis_server()
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.proc: Optional[subprocess.Popen] = None
        self._log = Path(self.dir) / "redis.log"
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not running"
        return self.proc.pid

    def _command(self) -> List[str]:
        return [
            self.executable, "--port", str(self.port), "--bind", self.host,
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--logfile", str(self._log), "--daemonize", "no", "--protected-mode", "no",
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (on ``self.port``) and wait until it answers PING."""
        if self.running():
            return
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            try:
                self._wait_ping(deadline)
                return
            except RuntimeError:
                # The port may still be held a moment after a kill (or grabbed by someone else
                # between free_port() and our bind): try again until the deadline.
                self._reap()
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self.log()[-2000:]}") from None
                time.sleep(0.05)

    def _wait_ping(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return
            time.sleep(0.01)
        raise RuntimeError("redis-server did not answer PING in time")

    def ping(self) -> bool:
        """True if the server answers PING right now."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _reap(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, SIGKILL if it dawdles)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped (SIGSTOP) server cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved (there is no persistence anyway)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        self.proc = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop it if running, start it again on the same port: an empty server."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing (a stalled server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def flushall(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def log(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'running' if self.running() else 'stopped'}>"
