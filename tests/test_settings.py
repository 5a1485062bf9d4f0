"""Gunicorn settings under a real Gunicorn: the access log and every access_log_format atom, a
custom logger_class, statsd, worker_connections, backlog, root_path, threads, and every kind of
listening socket (TCP, UNIX, fd://, systemd socket activation)."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.apps.drop_in_apps import LOGGER_RECORD_ENV, read_events
from tests.conftest import _HAS_CONTROL_SOCKET, ROOT, GunicornServer, wait_for
from tests.wire import CleanClose, http_request, read_response, request_bytes

APP = "tests.apps.drop_in_apps:lifespan_app"



def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


# -- the access log ---------------------------------------------------------------------------------

ATOMS = "h l u t r s m U q H b B f a T D M L p".split()
ACCESS_FORMAT = "|".join("%s=%%(%s)s" % (a, a) for a in ATOMS) + \
    "|in=%({x-req}i)s|out=%({x-resp}o)s|env=%({raw_uri}e)s|ctype=%({content-type}o)s|missing=%({x-none}i)s"


@pytest.fixture(scope="module")
def access_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("access")
    access_log = d / "access.log"
    calls = d / "logger-calls"
    server = GunicornServer(APP, "--access-logfile", str(access_log), "--access-logformat", ACCESS_FORMAT,
                            "--logger-class", "tests.apps.drop_in_apps.RecordingLogger",
                            env={LOGGER_RECORD_ENV: str(calls)})
    yield server, access_log, calls
    server.stop()


def access_line(access_log: Path, marker: str) -> Dict[str, str]:
    line = wait_for(lambda: next((entry for entry in read_text(access_log).splitlines() if marker in entry), None), 5)
    assert line, "no access log line for %s in:\n%s" % (marker, read_text(access_log))
    return dict(field.split("=", 1) for field in line.split("|"))


def test_every_access_log_format_atom(access_server):
    server, access_log, _ = access_server
    [pid] = server.worker_pids()
    auth = base64.b64encode(b"alice:secret").decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request_bytes("/log/some%20path?a=1&b=two&size=17&status=201", headers=[
            ("Referer", "http://ref.example/page"), ("User-Agent", "dropin-agent/1.0"),
            ("Authorization", "Basic " + auth), ("X-Req", "req-value-7")]))
        response = read_response(s, timeout=None)[0]
    assert response.status == 201 and response.body == b"x" * 17
    f = access_line(access_log, "/log/some%20path")
    assert f["h"] == "127.0.0.1"
    assert f["l"] == "-"
    assert f["u"] == "alice"
    assert re.fullmatch(r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", f["t"]), f["t"]
    assert f["r"] == "GET /log/some%20path?a=1&b=two&size=17&status=201 HTTP/1.1"
    assert f["s"] == "201"
    assert f["m"] == "GET"
    assert f["U"] == "/log/some path"
    assert f["q"] == "a=1&b=two&size=17&status=201"
    assert f["H"] == "HTTP/1.1"
    assert f["b"] == "17" and f["B"] == "17"
    assert f["f"] == "http://ref.example/page"
    assert f["a"] == "dropin-agent/1.0"
    assert f["T"] == "0"
    micros = int(f["D"])
    assert 0 < micros < 5_000_000, f["D"]
    assert int(f["M"]) == micros // 1000
    assert f["L"] == "0.%06d" % micros
    assert f["p"] == "<%d>" % pid
    assert f["in"] == "req-value-7"
    assert f["out"] == "resp-value-42"
    assert f["env"] == "/log/some%20path?a=1&b=two&size=17&status=201"
    assert f["ctype"] == "text/plain"
    assert f["missing"] == "-"


def test_access_log_for_http_1_0_head_and_a_slow_request(access_server):
    server, access_log, _ = access_server
    response = http_request(server.port, "/log/head-request?status=202&size=5", method="HEAD", version="1.0")
    assert response.status == 202
    f = access_line(access_log, "/log/head-request")
    assert f["r"] == "HEAD /log/head-request?status=202&size=5 HTTP/1.0"
    assert f["H"] == "HTTP/1.0" and f["m"] == "HEAD" and f["s"] == "202"
    assert f["b"] == "0", "a HEAD response sends no body bytes"
    assert f["u"] == "-" and f["f"] == "-" and f["a"] == "-"
    # T, D, M, L measure the request: a 1.2 s request is logged as such.
    assert http_request(server.port, "/slow?seconds=1.2&tag=timed").status == 200
    f = access_line(access_log, "/slow?seconds=1.2")
    assert f["T"] == "1" and 1_150_000 <= int(f["D"]) < 3_000_000, f
    assert f["L"].startswith("1.")


def test_access_lines_go_through_the_custom_logger_class(access_server):
    server, access_log, calls = access_server
    assert http_request(server.port, "/log/through-logger?status=203&size=3").status == 203
    assert wait_for(lambda: any("/log/through-logger" in e[2] for e in read_events(calls)), 5), read_events(calls)
    [event] = [e for e in read_events(calls) if "/log/through-logger" in e[2]]
    assert event[2] == "access 203 GET /log/through-logger?status=203&size=3 3"
    assert event[1] in server.worker_pids()
    # The class's own output (Gunicorn's access line) is what reached the file.
    assert access_line(access_log, "/log/through-logger")["s"] == "203"


# -- a server with no access log: threads, root_path, backlog, statsd, a UNIX socket ---------------

@pytest.fixture(scope="module")
def misc_server(tmp_path_factory):
    d = Path(tempfile.mkdtemp(prefix="dropin-", dir="/tmp"))  # short: UNIX socket paths are limited
    sock_path = d / "g.sock"
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    statsd.bind(("127.0.0.1", 0))
    statsd.settimeout(0.2)
    server = GunicornServer(APP, "--threads", "4", "--root-path", "/api", "--backlog", "37",
                            "--bind", "unix:%s" % sock_path,
                            "--statsd-host", "127.0.0.1:%d" % statsd.getsockname()[1])
    yield server, sock_path, statsd
    server.stop()
    statsd.close()
    try:
        os.unlink(sock_path)
    except OSError:
        pass
    os.rmdir(d)


def test_no_access_log_without_accesslog(misc_server):
    server = misc_server[0]
    assert http_request(server.port, "/log/never-logged-5f3a").status == 201
    time.sleep(0.3)
    assert "never-logged-5f3a" not in server.log()


def test_threads_get_a_warning_naming_worker_connections(misc_server):
    log = misc_server[0].log()
    warning = [line for line in log.splitlines() if "--threads" in line and "[WARNING]" in line]
    assert warning and "worker-connections" in warning[0].replace("_", "-"), log[-3000:]


def test_root_path_from_the_gunicorn_setting(misc_server):
    info = http_request(misc_server[0].port, "/info/x").json()
    assert info["root_path"] == "/api"
    assert info["path"] == "/info/x"


def test_backlog_reaches_the_listening_socket(misc_server):
    server = misc_server[0]
    out = subprocess.run(["ss", "-ltnH", "sport = :%d" % server.port], capture_output=True, text=True).stdout
    # For a listening socket, ss shows the backlog as Send-Q.
    assert out.split()[2] == "37", out
    assert http_request(server.port, "/pid").status == 200


def test_unix_socket_scope(misc_server):
    server, sock_path, _ = misc_server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(request_bytes("/info/unix", close=True))
        info = read_response(s, timeout=None)[0].json()
    assert info["server"] == [str(sock_path), None]
    assert info["client"] is None
    assert info["scheme"] == "http"
    assert info["root_path"] == "/api"


def test_statsd_request_metrics(misc_server):
    server, _, statsd = misc_server
    while True:  # drop what came before
        try:
            statsd.recv(65536)
        except socket.timeout:
            break
    for _ in range(3):
        assert http_request(server.port, "/pid").status == 200
    packets: List[str] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and sum(p.count("gunicorn.requests:1|c") for p in packets) < 3:
        try:
            packets.append(statsd.recv(65536).decode())
        except socket.timeout:
            pass
    # Gunicorn's statsd logger counts requests in Logger.access(): with the default settings (no
    # access log file) every request must still be counted and timed.
    metrics = "\n".join(packets)
    assert metrics.count("gunicorn.requests:1|c") == 3, metrics
    assert metrics.count("gunicorn.request.duration:") == 3, metrics


# -- worker_connections -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited_server():
    server = GunicornServer(APP, "--worker-connections", "2", "--keep-alive", "30",
                            env={"ASGIWORKER_ROOT_PATH": "/from-env"})
    yield server
    server.stop()


def test_worker_connections_answers_503_over_the_limit(limited_server):
    server = limited_server
    a = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    b = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        for s in (a, b):
            s.sendall(request_bytes("/pid"))
            assert read_response(s, timeout=None)[0].status == 200
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
            c.sendall(request_bytes("/pid"))
            response = read_response(c, timeout=None)[0]
            assert response.status == 503, response
            assert response.get(b"connection") == b"close"
            try:
                assert c.recv(1) == b""
            except ConnectionResetError:
                pass  # closed with our request unread: a reset after the 503 is fine
        # The two connections are still served.
        for s in (a, b):
            s.sendall(request_bytes("/pid"))
            assert read_response(s, timeout=None)[0].status == 200
        a.close()

        def served() -> bool:
            try:
                return http_request(server.port, "/pid").status == 200
            except (OSError, CleanClose):
                return False
        # Once one closed, a new connection is served again.
        assert wait_for(served, 3)
    finally:
        a.close()
        b.close()
    assert "worker_connections (2) reached" in server.log()


def test_root_path_from_the_environment(limited_server):
    info = http_request(limited_server.port, "/info").json()
    assert info["root_path"] == "/from-env"


# -- fd:// and systemd socket activation ------------------------------------------------------------

class InheritedSocketServer(GunicornServer):
    """Gunicorn started on a listening socket the test made (for --bind fd://N or systemd)."""

    def __init__(self, app: str, *args: str, systemd: bool = False) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.host = "127.0.0.1"
        self.port = listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._logfile = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)
        gunicorn = [sys.executable, "-m", "gunicorn", app, "--worker-class", "asgiworker.ASGIWorker",
                    "--workers", "1", "--graceful-timeout", "5", "--log-level", "debug", *args]
        if _HAS_CONTROL_SOCKET:
            gunicorn.append("--no-control-socket")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        fd = listener.fileno()
        try:
            if systemd:
                # As systemd does it: the socket is fd 3, LISTEN_PID is the pid that runs gunicorn.
                cmd = ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh", *gunicorn]
                self.proc = subprocess.Popen(cmd, stdout=self._logfile, stderr=subprocess.STDOUT, env=env,
                                             cwd=str(ROOT), start_new_session=True, close_fds=False,
                                             preexec_fn=lambda: os.dup2(fd, 3))
            else:
                cmd = gunicorn + ["--bind", "fd://%d" % fd]
                self.proc = subprocess.Popen(cmd, stdout=self._logfile, stderr=subprocess.STDOUT, env=env,
                                             cwd=str(ROOT), start_new_session=True, pass_fds=(fd,))
        finally:
            listener.close()
        self.wait_ready()


@pytest.mark.parametrize("systemd", [False, True], ids=["fd", "systemd"])
def test_inherited_listening_socket(systemd):
    server = InheritedSocketServer(APP, systemd=systemd)
    try:
        info = http_request(server.port, "/info/inherited").json()
        assert info["server"] == ["127.0.0.1", server.port]
        assert info["client"][0] == "127.0.0.1"
        assert info["pid"] in server.worker_pids()
        # Gunicorn listens on the inherited socket only (with systemd, instead of its default bind).
        listening = [line for line in server.log().splitlines() if "Listening at:" in line]
        assert len(listening) == 1 and "Listening at: http://127.0.0.1:%d " % server.port in listening[0], listening
        server.signal(signal.SIGTERM)
        assert server.wait_exit(10) == 0
    finally:
        server.stop()


# -- the settings table -----------------------------------------------------------------------------

def test_the_settings_table_lists_every_gunicorn_setting():
    import gunicorn.config

    rows = {}
    for line in (ROOT / "docs" / "gunicorn-settings.md").read_text().splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \| ([^|]*) \| ([^|]*) \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3).strip(), m.group(4))
    known = [s for s in gunicorn.config.KNOWN_SETTINGS]
    assert sorted(rows) == sorted(s.name for s in known), \
        "missing: %s; not a setting: %s" % (sorted({s.name for s in known} - set(rows)),
                                            sorted(set(rows) - {s.name for s in known}))
    for s in known:
        flags, status, _ = rows[s.name]
        for flag in s.cli or ():
            assert "`%s`" % flag in flags, (s.name, flags)
        assert status in ("honoured", "honoured, differs", "master", "no meaning", "**not honoured**"), (s.name, status)
