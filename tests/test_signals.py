"""Signals, reloads and restarts under a real Gunicorn: graceful SIGTERM, quick SIGINT/SIGQUIT,
SIGUSR1 log reopening, zero request loss across SIGHUP and --max-requests restarts under load,
--reload, and the heartbeat of a busy worker."""

from __future__ import annotations

import collections
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.apps.drop_in_apps import RECORD_ENV, names, read_events, reloadable_source
from tests.conftest import GunicornServer, wait_for
from tests.wire import CleanClose, Response, http_request, read_response, read_to_close, request_bytes

APP = "tests.apps.drop_in_apps:lifespan_app"




def try_get(server: GunicornServer, path: str) -> Optional[Response]:
    try:
        return http_request(server.port, path, timeout=5)
    except (OSError, CleanClose):
        return None


# -- SIGTERM ----------------------------------------------------------------------------------------

def test_sigterm_drains_gracefully(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(APP, "--graceful-timeout", "5", "--keep-alive", "30", env={RECORD_ENV: str(rec)})
    connect = lambda: socket.create_connection(("127.0.0.1", server.port), timeout=10)  # noqa: E731

    # Two idle keep-alive connections; one sends its next request just after the SIGTERM.
    idle = connect()
    idle.sendall(request_bytes("/pid"))
    assert read_response(idle, timeout=None)[0].status == 200
    reused = connect()
    reused.sendall(request_bytes("/pid"))
    assert read_response(reused, timeout=None)[0].status == 200
    # A kept-alive connection on which the next request's head has only partly arrived.
    late = connect()
    late.sendall(request_bytes("/pid"))
    assert read_response(late, timeout=None)[0].status == 200
    late.sendall(b"GET /state HTTP/1.1\r\nHost: t\r\n")
    # A request in flight on a keep-alive connection.
    busy = connect()
    busy.sendall(request_bytes("/slow?seconds=1.5&tag=inflight"))
    assert wait_for(lambda: "slow-start inflight" in names(read_events(rec)), 10)
    time.sleep(0.2)

    try:
        server.signal(signal.SIGTERM)
        t0 = time.monotonic()

        # An idle keep-alive connection is not closed under its client: a request sent on it
        # in the grace after the stop is answered, with `connection: close`.
        time.sleep(0.3)
        reused.sendall(request_bytes("/pid"))
        response = read_response(reused, timeout=None)[0]
        assert response.status == 200 and response.get(b"connection") == b"close", response
        assert read_to_close(reused, 5) == (b"", "eof")
        reused.close()  # (as clients do at our FIN: the worker's lingering close ends there)
        # One that stays idle is closed cleanly (a FIN, no reset) after the grace.
        data, how = read_to_close(idle, 5)
        idle_closed = time.monotonic() - t0
        assert (data, how) == (b"", "eof"), (data, how)
        assert 0.9 < idle_closed < 2.6, "idle keep-alive connection closed after %.2fs" % idle_closed
        idle.close()

        # No new connections are accepted.
        def refused() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
                    s.sendall(request_bytes("/pid", close=True))
                    return read_to_close(s, 2)[0] == b""
            except OSError:
                return True
        assert wait_for(refused, 2), "still accepting connections after SIGTERM"

        # The rest of the half-received request is answered, with Connection: close.
        late.sendall(b"\r\n")
        response = read_response(late, timeout=None)[0]
        assert response.status == 200, response
        assert response.get(b"connection") == b"close", response
        assert read_to_close(late, 5) == (b"", "eof")
        late.close()  # (as clients do at our FIN: the worker's lingering close ends there)

        # The in-flight request finishes, told that the connection closes after it.
        response = read_response(busy, timeout=None)[0]
        assert response.status == 200 and response.body == b"slow done inflight", response
        assert response.get(b"connection") == b"close", response
        assert read_to_close(busy, 5) == (b"", "eof")
        busy.close()  # (as clients do at our FIN: the worker's lingering close ends there)

        assert server.wait_exit(15) == 0, server.log()[-3000:]
        # Done as soon as the last connection was: graceful_timeout is a bound, not a wait.
        assert time.monotonic() - t0 < 4.0
    finally:
        for s in (idle, reused, late, busy):
            s.close()

    events = [e for e in names(read_events(rec)) if e != "startup-begin"]
    # Lifespan shutdown after every connection is done, and it completes.
    assert events == ["startup", "slow-start inflight", "slow-end inflight", "shutdown-begin", "shutdown"], events


def test_sigterm_cuts_streams_at_graceful_timeout_then_runs_shutdown(gunicorn, tmp_path):
    rec = tmp_path / "events"
    graceful = 3.0
    server = gunicorn(APP, "--graceful-timeout", "3", env={RECORD_ENV: str(rec)})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stream:
        # A streaming response that never ends by itself; the app only learns of a cut from send().
        stream.sendall(request_bytes("/stream?tag=sse"))
        assert stream.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert wait_for(lambda: "stream-start sse" in names(read_events(rec)), 10)
        server.signal(signal.SIGTERM)
        t0 = time.monotonic()
        data, how = read_to_close(stream, 10)
        stream_cut = time.monotonic() - t0
    assert how in ("eof", "reset"), how
    assert data.count(b"tick ") > 10, data[-200:]
    assert not data.endswith(b"0\r\n\r\n"), "the stream was ended cleanly instead of being cut"
    assert graceful - 0.6 <= stream_cut <= graceful + 1.5, stream_cut
    assert server.wait_exit(15) == 0, server.log()[-3000:]
    events = [e for e in names(read_events(rec)) if e != "startup-begin"]
    problems = []
    # At the deadline the app is told (its next send() raises OSError), not just cancelled...
    if "stream-send-error sse ClientDisconnected" not in events:
        problems.append("the streaming app was not told its connection was cut")
    # ...and the lifespan shutdown still runs, before Gunicorn's master SIGKILLs the worker (the
    # master gives up at graceful_timeout too, counted from its own SIGTERM).
    if events[-2:] != ["shutdown-begin", "shutdown"]:
        problems.append("the lifespan shutdown did not complete after the stream was cut")
    assert problems == [], "%s\nevents: %s\n%s" % ("; ".join(problems), events, server.log()[-1500:])


def test_a_stream_waiting_on_receive_for_its_disconnect(gunicorn, tmp_path):
    # Starlette's StreamingResponse (before ASGI 2.4) and sse-starlette run a task that loops on
    # receive() until http.disconnect. Once the request body is in, receive() must wait for that
    # disconnect, not return at once (a task looping on it would never yield to the event loop).
    rec = tmp_path / "events"
    server = gunicorn(APP, "--graceful-timeout", "2", env={RECORD_ENV: str(rec)})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as watch:
        watch.sendall(request_bytes("/watch?tag=w1"))
        assert watch.recv(65536).startswith(b"HTTP/1.1 200 ")
        # The worker still serves others while the stream runs.
        response = try_get(server, "/pid")
        assert response is not None and response.status == 200, \
            "the worker stopped serving while a stream waits on receive()"
        time.sleep(0.5)
        # The stream never ends by itself: read what arrives during half a second.
        data, deadline = b"", time.monotonic() + 0.5
        watch.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                data += watch.recv(65536)
            except socket.timeout:
                pass
        assert data.count(b"tick ") >= 3, data
    # The client left: receive() says so.
    assert wait_for(lambda: "stream-disconnect w1" in names(read_events(rec)), 3), names(read_events(rec))
    # And at the graceful_timeout deadline of a SIGTERM, receive() says so too.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as watch:
        watch.sendall(request_bytes("/watch?tag=w2"))
        assert wait_for(lambda: "stream-start w2" in names(read_events(rec)), 5)
        server.signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, how = read_to_close(watch, 6)
        assert how in ("eof", "reset") and 1.4 <= time.monotonic() - t0 <= 3.5, how
    assert server.wait_exit(10) == 0
    assert "stream-disconnect w2" in names(read_events(rec))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["SIGINT", "SIGQUIT"])
def test_sigint_and_sigquit_exit_quickly(gunicorn, tmp_path, sig):
    rec = tmp_path / "events"
    server = gunicorn(APP, "--graceful-timeout", "10", env={RECORD_ENV: str(rec)})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request_bytes("/slow?seconds=8&tag=cut", close=True))
        assert wait_for(lambda: "slow-start cut" in names(read_events(rec)), 10)
        server.signal(sig)
        t0 = time.monotonic()
        data, how = read_to_close(s, 8)
        # The request is abandoned at once, not drained for graceful_timeout.
        assert data == b"" and how in ("eof", "reset"), (data, how)
        assert time.monotonic() - t0 < 3.0
    server.wait_exit(10)
    assert time.monotonic() - t0 < 4.0, "gunicorn took %.1fs to quit" % (time.monotonic() - t0)
    assert "slow-end cut" not in names(read_events(rec))


# -- SIGUSR1 --------------------------------------------------------------------------------------

class LogFileServer(GunicornServer):
    """A GunicornServer whose own log goes to --error-logfile (the readiness check reads it too)."""

    def __init__(self, app: str, error_log: Path, *args: str, **kwargs) -> None:
        self.error_log = error_log
        super().__init__(app, "--error-logfile", str(error_log), *args, **kwargs)

    def log(self) -> str:
        text = super().log()
        for path in sorted(self.error_log.parent.glob(self.error_log.name + "*")):
            text += path.read_text(errors="replace")
        return text


def test_sigusr1_reopens_log_files(tmp_path):
    error_log = tmp_path / "error.log"
    access_log = tmp_path / "access.log"
    server = LogFileServer(APP, error_log, "--access-logfile", str(access_log))
    try:
        assert http_request(server.port, "/before-rotation").status == 200
        assert wait_for(lambda: access_log.exists() and "/before-rotation" in access_log.read_text(), 5)
        error_log.rename(tmp_path / "error.log.1")
        access_log.rename(tmp_path / "access.log.1")
        server.signal(signal.SIGUSR1)  # the master reopens its files and forwards it to the workers
        # The master reopens at once; the worker when its loop runs the handler.
        assert wait_for(error_log.exists, 5), "the error log was not reopened"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert http_request(server.port, "/after-rotation").status == 200
            if access_log.exists() and "/after-rotation" in access_log.read_text():
                break
            time.sleep(0.2)
        assert access_log.exists() and "/after-rotation" in access_log.read_text(), \
            "the worker kept writing its access log to the renamed file"
        assert "/after-rotation" not in (tmp_path / "access.log.1").read_text()
        # The worker's error log is reopened too: its next line goes to the new file.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            read_to_close(s, 5)
        assert wait_for(lambda: "Invalid request" in error_log.read_text(), 5), error_log.read_text()
        assert "Invalid request" not in (tmp_path / "error.log.1").read_text()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(15) == 0
    finally:
        server.stop()


# -- zero loss under load ---------------------------------------------------------------------------

class LoadClient(threading.Thread):
    """Sequential numbered requests, over fresh connections or one keep-alive connection at a time.

    A request is retried only when a *reused* keep-alive connection closes before a single byte of
    its response (the server closed it between requests); those retries are counted apart."""

    def __init__(self, port: int, name: str, keepalive: bool, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.name_ = name
        self.keepalive = keepalive
        self.stop_event = stop
        self.sent = 0
        self.answered = 0
        self.clean_retries: List[int] = []
        self.failures: List[str] = []
        self.pids: "collections.Counter[str]" = collections.Counter()

    def run(self) -> None:
        conn: Optional[socket.socket] = None
        while not self.stop_event.is_set() and len(self.failures) < 5:
            self.sent += 1
            n = self.sent
            attempt = 0
            while attempt < 5:
                reused = conn is not None
                try:
                    if conn is None:
                        conn = socket.create_connection(("127.0.0.1", self.port), timeout=15)
                    try:
                        conn.sendall(request_bytes("/count?c=%s&n=%d&a=%d" % (self.name_, n, attempt),
                                                   close=not self.keepalive))
                    except (BrokenPipeError, ConnectionResetError) as exc:
                        raise CleanClose("closed before the request was sent: %r" % exc) from None
                    response = read_response(conn, timeout=None)[0]
                except CleanClose as exc:
                    conn.close()  # type: ignore[union-attr]
                    conn = None
                    if reused:  # the server closed a kept-alive connection between two requests
                        self.clean_retries.append(n)
                        attempt += 1
                        continue
                    self.failures.append("request %d on a fresh connection: %r" % (n, exc))
                    break
                except OSError as exc:  # refused, timed out, or cut in the middle of the response
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.failures.append("request %d (reused=%s): %r" % (n, reused, exc))
                    break
                if response.status != 200 or response.body != b"%s %d" % (self.name_.encode(), n):
                    self.failures.append("request %d: %r" % (n, response))
                else:
                    self.answered += 1
                    self.pids[(response.get(b"x-pid") or b"?").decode()] += 1
                if not self.keepalive or response.get(b"connection") == b"close":
                    conn.close()
                    conn = None
                break
            else:
                self.failures.append("request %d: closed before its response on 5 attempts" % n)
        if conn is not None:
            conn.close()


def run_load(server: GunicornServer, rec: Path, seconds: float, during=None) -> Dict[str, int]:
    stop = threading.Event()
    clients = [LoadClient(server.port, "f%d" % i, False, stop) for i in range(2)]
    clients += [LoadClient(server.port, "k%d" % i, True, stop) for i in range(2)]
    for c in clients:
        c.start()
    try:
        if during is not None:
            during()
        else:
            time.sleep(seconds)
    finally:
        stop.set()
        for c in clients:
            c.join(30)
    assert not any(c.is_alive() for c in clients), "a load client hung"
    failures = [f"{c.name_}: {f}" for c in clients for f in c.failures]
    sent = sum(c.sent for c in clients)
    answered = sum(c.answered for c in clients)
    retries = sum(len(c.clean_retries) for c in clients)
    assert failures == [], "lost requests (sent %d, answered %d):\n%s\n%s" % (
        sent, answered, "\n".join(failures[:20]), server.log()[-4000:])
    assert sent == answered, (sent, answered)
    # A retried request never reached the app the first time: the close really was between requests.
    seen = collections.Counter(tuple(e[2].split()[1:3]) for e in read_events(rec) if e[2].startswith("count "))
    first_attempts = {tuple(e[2].split()[1:4]) for e in read_events(rec) if e[2].startswith("count ")}
    for c in clients:
        for n in c.clean_retries:
            assert (c.name_, str(n), "0") not in first_attempts, \
                f"{c.name_} request {n} reached the app but its answer was lost"
    duplicates = {k: v for k, v in seen.items() if v > 1}
    assert duplicates == {}, duplicates
    assert sum(seen.values()) == sent
    per_pid: "collections.Counter[str]" = collections.Counter()
    for c in clients:
        per_pid.update(c.pids)
    return {"sent": sent, "answered": answered, "clean_close_retries": retries,
            "keepalive_requests": sum(c.sent for c in clients if c.keepalive),
            "pids": len(per_pid), "most_by_one_pid": max(per_pid.values())}


def test_rolling_reloads_under_load_lose_no_request(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(APP, "--workers", "2", "--graceful-timeout", "5", env={RECORD_ENV: str(rec)})
    first_pids = set(server.worker_pids())

    def hup_three_times() -> None:
        for n in range(1, 4):
            time.sleep(0.8)
            server.signal(signal.SIGHUP)
            # One reload at a time: a master still busy with the previous one may fold a second
            # SIGHUP into it, and then three signals make fewer than three reloads.
            wait_for(lambda n=n: server.log().count("Hang up") >= n, 10)
        time.sleep(1.5)

    stats = run_load(server, rec, 0, during=hup_three_times)
    print("SIGHUP x3 under load:", stats)
    assert stats["sent"] > 200, stats
    assert stats["pids"] >= 4, "the reloads did not replace the workers under load: %s" % stats
    assert server.log().count("Hang up") == 3
    assert not first_pids & set(server.worker_pids())
    assert "WORKER TIMEOUT" not in server.log()


def test_max_requests_restarts_under_load_lose_no_request(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(APP, "--workers", "2", "--max-requests", "50", "--max-requests-jitter", "10",
                      env={RECORD_ENV: str(rec)})
    stats = run_load(server, rec, 3.5)
    print("--max-requests 50 under load:", stats)
    assert stats["sent"] > 200, stats
    # Every worker serves at most 50 + 10 (jitter) requests, plus the few the load's other
    # connections get in while it stops: many restarts happened during the run.
    assert stats["most_by_one_pid"] <= 90, stats
    assert stats["pids"] >= stats["sent"] // 90, stats
    assert server.log().count("Autorestarting worker after current request.") >= 3


# -- --reload ---------------------------------------------------------------------------------------

def test_reload_restarts_the_worker_on_a_code_change(gunicorn, tmp_path):
    module = tmp_path / "dropin_reloadable.py"
    module.write_text(reloadable_source("v1"))
    # No bytecode cache: v1 and v2 have the same size and may share a modification second, and
    # Python would then take v1's cached bytecode for v2.
    server = gunicorn("dropin_reloadable:app", "--reload", cwd=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1"})
    version, pid = http_request(server.port, "/").body.decode().split()
    assert version == "v1"
    time.sleep(0.1)
    changed = time.monotonic()
    module.write_text(reloadable_source("v2"))
    body = wait_for(lambda: (r := try_get(server, "/")) is not None and r.body.startswith(b"v2") and r.body, 10)
    assert body, "the worker never served the new code:\n" + server.log()[-3000:]
    assert time.monotonic() - changed < 6
    new_pid = body.decode().split()[1]
    assert new_pid != pid, "the same worker process served the new code: it was not restarted"
    assert int(new_pid) in server.worker_pids() and int(pid) not in server.worker_pids()
    assert "Worker reloading" in server.log()
    assert "Booting worker" in server.log()


def test_reload_serves_a_syntax_error_as_500_until_fixed(gunicorn, tmp_path):
    module = tmp_path / "dropin_typo.py"
    module.write_text(reloadable_source("good"))
    server = gunicorn("dropin_typo:app", "--reload", cwd=tmp_path)
    assert http_request(server.port, "/").body.startswith(b"good ")
    time.sleep(0.1)
    module.write_text(reloadable_source("broken") + "\ndef oops(:\n    pass\n")

    def broken() -> Optional[Response]:
        r = try_get(server, "/")
        return r if r is not None and r.status == 500 else None

    response = wait_for(broken, 10)
    assert response is not None, "no 500 for the syntax error:\n" + server.log()[-3000:]
    assert b"SyntaxError" in response.body and b"dropin_typo.py" in response.body, response.body
    assert server.proc.poll() is None, "gunicorn died on the syntax error"
    time.sleep(0.1)
    module.write_text(reloadable_source("fixed"))
    fixed = wait_for(lambda: (r := try_get(server, "/")) is not None and r.body.startswith(b"fixed ") and r, 10)
    assert fixed, "the fix was not picked up:\n" + server.log()[-3000:]
    assert fixed.status == 200


# -- heartbeat ------------------------------------------------------------------------------------

def test_busy_worker_is_not_killed_by_timeout(gunicorn, tmp_path):
    # --timeout is a heartbeat, not a request timeout: requests running for longer than it (while
    # the loop keeps turning) are not cut, and the worker is not replaced.
    rec = tmp_path / "events"
    server = gunicorn(APP, "--timeout", "2", env={RECORD_ENV: str(rec)})
    [pid] = server.worker_pids()
    results: List[Response] = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        http_request(server.port, "/slow?seconds=5&tag=busy%d" % i, timeout=20))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(r.status for r in results) == [200] * 4, results
    assert server.worker_pids() == [pid]
    assert "WORKER TIMEOUT" not in server.log()
