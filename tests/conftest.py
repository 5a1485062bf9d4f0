"""Fixtures that run the real thing: a Gunicorn master with our worker on a loopback port.

    def test_x(gunicorn):
        server = gunicorn("tests.apps.basic:app", "--max-requests", "10")
        httpx.get(server.url + "/")
        server.log()          # everything master and worker wrote so far
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import gunicorn.config
import pytest

ROOT = Path(__file__).resolve().parent.parent
_HAS_CONTROL_SOCKET = any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS)


_handed_out: set = set()


def free_port() -> int:
    """A free loopback port, never the same twice in this process: servers booting side by side
    must not be told the same port between our probe and their bind."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class GunicornServer:
    """A running `gunicorn --worker-class asgiworker.ASGIWorker` master."""

    def __init__(self, app: str, *args: str, env: Optional[dict] = None, wait: bool = True,
                 cwd: Optional[Path] = None, worker_class: str = "asgiworker.ASGIWorker") -> None:
        self.worker_class = worker_class
        # Ready means every worker has booted (a test that counts pids must find them all).
        self.workers = _worker_count(args)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self._logfile = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)
        cmd: List[str] = [
            sys.executable, "-m", "gunicorn", app,
            "--bind", f"{self.host}:{self.port}",
            "--worker-class", worker_class,
            "--workers", "1",
            "--graceful-timeout", "5",
            "--log-level", "debug",
            *args,
        ]
        if _HAS_CONTROL_SOCKET:
            cmd.append("--no-control-socket")
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self._logfile, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=str(cwd or ROOT), start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            # The master binds before the workers boot: wait for each to say it booted.
            # (getattr: subclasses that build their own command line wait for one.)
            if self.log().count("Booting worker") >= getattr(self, "workers", 1):
                try:
                    with socket.create_connection((self.host, self.port), timeout=1) as s:
                        s.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        s.settimeout(2)
                        if s.recv(1):
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not become ready in {timeout}s:\n{self.log()}")

    def ws_url(self, path: str) -> str:
        """The WebSocket URL of ``path`` on this server."""
        return f"ws://{self.host}:{self.port}{path}"

    def log(self) -> str:
        return Path(self._logfile.name).read_text(errors="replace")

    def worker_pids(self) -> List[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._logfile.close()
        try:
            os.unlink(self._logfile.name)
        except OSError:
            pass


@pytest.fixture
def gunicorn() -> Iterator[Callable[..., GunicornServer]]:
    servers: List[GunicornServer] = []

    def start(app: str, *args: str, **kwargs) -> GunicornServer:
        server = GunicornServer(app, *args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class BootedServers:
    """Gunicorns started together, in parallel; ``servers[key]`` waits for that one.

    One that fails to boot fails only the tests that use it. One that lost its port to another
    process between conftest's free_port() and Gunicorn's bind is started again on a new port.
    """

    def __init__(self, specs: Dict[str, Tuple[str, tuple, dict]]) -> None:
        self._specs = specs
        self._servers: Dict[str, GunicornServer] = {}
        self._errors: Dict[str, str] = {}
        try:
            for key, (app, args, kwargs) in specs.items():
                self._servers[key] = GunicornServer(app, *args, wait=False, **kwargs)
        except BaseException:
            self.stop()
            raise

    def __getitem__(self, key: str) -> GunicornServer:
        if key not in self._errors:
            self._errors[key] = ""
            for attempt in range(3):
                try:
                    self._servers[key].wait_ready()
                    break
                except RuntimeError as exc:
                    self._errors[key] = str(exc)
                    if "in use" not in str(exc) or attempt == 2:
                        break
                    self.restart(key)
                    self._errors[key] = ""
        if self._errors[key]:
            pytest.fail(f"gunicorn for {key!r} did not start: {self._errors[key][-3000:]}")
        return self._servers[key]

    def restart(self, key: str) -> GunicornServer:
        """Stop that server and start it again, on a new port."""
        self._servers[key].stop()
        app, args, kwargs = self._specs[key]
        self._servers[key] = GunicornServer(app, *args, wait=False, **kwargs)
        return self._servers[key]

    def raw(self, key: str) -> GunicornServer:
        """The server as started, without waiting for it to be ready."""
        return self._servers[key]

    def stop(self) -> None:
        for server in self._servers.values():
            if server.proc.poll() is None:
                server.signal(signal.SIGTERM)
        for server in self._servers.values():
            server.stop()


def _worker_count(args: "tuple[str, ...]") -> int:
    """How many workers gunicorn's arguments ask for (the last --workers/-w wins; 1 if none)."""
    count = 1
    for i, arg in enumerate(args):
        if arg in ("--workers", "-w") and i + 1 < len(args):
            count = int(args[i + 1])
        elif arg.startswith("--workers="):
            count = int(arg.split("=", 1)[1])
    return count


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# -- Redis, for the channel layer's tests (tests/redis_server.py) ------------------------------------


def _redis_server():
    """A started redis-server, closed when the fixture ends; the test is skipped where there is
    none and none can be installed."""
    from tests.redis_server import RedisServer, RedisUnavailable

    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the whole session (stopped at the end)."""
    yield from _redis_server()


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture
def fresh_redis(redis_server):
    """The session's redis-server, emptied before the test."""
    if not redis_server.running():  # a test that broke it must not break the next ones
        redis_server.start()
    redis_server.flushall()
    return redis_server


@pytest.fixture
def own_redis():
    """A private redis-server for tests that kill, stall or restart it."""
    yield from _redis_server()
