"""ASGI lifespan under a real Gunicorn: modes, state, startup failure halting Gunicorn, shutdown order."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import List

import pytest

from tests.apps.drop_in_apps import RECORD_ENV, SHUTDOWN_DELAY_ENV, STARTUP_DELAY_ENV, names, read_events
from tests.conftest import GunicornServer, wait_for
from tests.wire import Response, http_request, read_response, request_bytes

APP = "tests.apps.drop_in_apps:lifespan_app"
NO_LIFESPAN_APP = "tests.apps.drop_in_apps:no_lifespan_app"
FAILED_APP = "tests.apps.drop_in_apps:startup_failed_app"




# -- startup and state ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lifespan_server(tmp_path_factory):
    rec = tmp_path_factory.mktemp("lifespan") / "events"
    # Startup takes 1.5 s: whatever arrives meanwhile must wait for it, not be served without state.
    server = GunicornServer(APP, env={RECORD_ENV: str(rec), STARTUP_DELAY_ENV: "1.5"}, wait=False)
    try:
        assert wait_for(lambda: "Booting worker" in server.log(), 20), server.log()
        sent_at = time.time()
        first = http_request(server.port, "/state", timeout=20)
        server.wait_ready()
        yield server, rec, first, sent_at
    finally:
        server.stop()


def test_startup_completes_in_the_worker_before_the_first_request(lifespan_server):
    server, rec, first, sent_at = lifespan_server
    assert first.status == 200, first
    state = first.json()
    assert state["has_state"] is True, state
    assert state["greeting"] == "hello from startup"
    events = read_events(rec)
    starts = [e for e in events if e[2] == "startup"]
    assert len(starts) == 1, events
    # Startup ran in the worker that serves (not in the master), once.
    assert starts[0][1] == state["pid"] == state["startup_pid"]
    assert server.worker_pids() == [state["pid"]]
    # The request was sent while startup was still sleeping, and was held until it completed.
    begin = [e for e in events if e[2] == "startup-begin"][0]
    assert sent_at < starts[0][0], "the first request was sent after startup already ended: test is moot"
    assert begin[0] < starts[0][0] - 1.0


def test_state_reaches_every_request_as_a_shallow_copy(lifespan_server):
    server = lifespan_server[0]
    first = http_request(server.port, "/state?mutate=one").json()
    assert first["greeting"] == "hello from startup"
    assert "leaked" not in first["keys"]
    second = http_request(server.port, "/state?mutate=two").json()
    # Rebinding keys in one request's state does not reach the next request...
    assert second["greeting"] == "hello from startup", second
    assert "leaked" not in second["keys"], second
    # ...but it is a shallow copy: the objects in it are the startup's own.
    assert second["shared"][-1:] == ["one"], second
    # Also over one keep-alive connection, request after request.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for n in range(3):
            s.sendall(request_bytes("/state?mutate=ka%d" % n))
            state = read_response(s, timeout=None)[0].json()
            assert state["greeting"] == "hello from startup"
            assert "leaked" not in state["keys"]


# -- modes ------------------------------------------------------------------------------------------

def test_asgi_lifespan_off_from_the_gunicorn_command_line(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(APP, "--asgi-lifespan", "off", env={RECORD_ENV: str(rec)})
    response = http_request(server.port, "/state")
    assert response.status == 200
    assert response.json() == {"has_state": False}
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0
    assert [e for e in names(read_events(rec)) if e.startswith(("startup", "shutdown"))] == []


def test_environment_variable_wins_over_the_gunicorn_setting(gunicorn, tmp_path):
    rec = tmp_path / "events"
    # "on" would halt Gunicorn with this app; the variable turns lifespan off.
    server = gunicorn(NO_LIFESPAN_APP, "--asgi-lifespan", "on",
                      env={RECORD_ENV: str(rec), "ASGIWORKER_LIFESPAN": "off"})
    response = http_request(server.port, "/state")
    assert response.status == 200, response
    assert "lifespan-refused" not in names(read_events(rec))


def test_auto_mode_serves_an_app_that_refuses_lifespan(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(NO_LIFESPAN_APP, env={RECORD_ENV: str(rec)})
    response = http_request(server.port, "/state")
    assert response.status == 200, response
    assert response.json() == {"has_state": False}
    log = server.log()
    assert log.count("ASGI lifespan not supported") == 1, log
    # An info line, not an error with a traceback.
    assert "Traceback" not in log, log
    assert names(read_events(rec)).count("lifespan-refused") == 1
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0


def assert_gunicorn_halted(server: GunicornServer, message: str) -> None:
    try:
        code = server.wait_exit(20)
    except Exception:
        pytest.fail("gunicorn kept running after the worker failed to boot:\n" + server.log()[-3000:])
    log = server.log()
    assert code != 0, log
    assert "Worker failed to boot" in log, log
    assert message in log, log
    # Halted instead of respawning: exactly one worker was ever booted.
    assert log.count("Booting worker") == 1, log


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_halts_gunicorn_with_the_apps_message(gunicorn, tmp_path, mode):
    rec = tmp_path / "events"
    server = gunicorn(FAILED_APP, "--asgi-lifespan", mode, env={RECORD_ENV: str(rec)}, wait=False)
    assert_gunicorn_halted(server, "database unreachable: dropin-42")
    assert names(read_events(rec)) == ["startup-attempt"]


def test_on_mode_halts_gunicorn_when_the_app_refuses_lifespan(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(NO_LIFESPAN_APP, "--asgi-lifespan", "on", env={RECORD_ENV: str(rec)}, wait=False)
    assert_gunicorn_halted(server, "dropin-77")
    assert names(read_events(rec)) == ["lifespan-refused"]


def test_an_unknown_mode_stops_the_boot_with_a_message(gunicorn):
    server = gunicorn(APP, env={"ASGIWORKER_LIFESPAN": "sometimes"}, wait=False)
    assert_gunicorn_halted(server, "'sometimes'")
    assert "ASGIWORKER_LIFESPAN" in server.log()


# -- shutdown ---------------------------------------------------------------------------------------

def test_shutdown_runs_after_the_in_flight_request_finished(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(APP, env={RECORD_ENV: str(rec)})
    result: List[Response] = []
    t = threading.Thread(target=lambda: result.append(http_request(server.port, "/slow?seconds=1.5&tag=inflight",
                                                                   timeout=15)))
    t.start()
    try:
        assert wait_for(lambda: "slow-start inflight" in names(read_events(rec)), 10)
        server.signal(signal.SIGTERM)
        assert server.wait_exit(15) == 0, server.log()[-3000:]
    finally:
        t.join(20)
    assert result and result[0].status == 200, result
    assert result[0].body == b"slow done inflight"
    order = [e for e in names(read_events(rec)) if e != "startup-begin"]
    assert order == ["startup", "slow-start inflight", "slow-end inflight", "shutdown-begin", "shutdown"], order


def test_shutdown_is_bounded_by_graceful_timeout(gunicorn, tmp_path):
    rec = tmp_path / "events"
    server = gunicorn(APP, "--graceful-timeout", "2", env={RECORD_ENV: str(rec), SHUTDOWN_DELAY_ENV: "60"})
    [pid] = server.worker_pids()
    # SIGTERM to the worker alone: the master is not stopping, so it cannot be the one that ends it.
    os.kill(pid, signal.SIGTERM)
    sent = time.monotonic()
    gone = wait_for(lambda: pid not in server.worker_pids(), 10)
    elapsed = time.monotonic() - sent
    assert gone, "the worker waited for a shutdown that never completes:\n" + server.log()[-3000:]
    assert 1.5 <= elapsed <= 4.5, elapsed
    assert "ASGI lifespan shutdown did not complete in" in server.log()
    events = names(read_events(rec))
    assert "shutdown-begin" in events and "shutdown" not in events, events
    # The master replaced it; the new worker ran its own startup and serves.
    assert wait_for(lambda: _state_of(server).get("has_state"), 10)


def _state_of(server: GunicornServer) -> dict:
    try:
        return http_request(server.port, "/state").json()
    except (OSError, ValueError):
        return {}


def test_a_slow_shutdown_keeps_the_heartbeat(gunicorn, tmp_path):
    # The app's shutdown awaits for 3.5 s, longer than --timeout: the loop is not blocked, so the
    # worker must keep beating and the master must not kill it in the middle of its shutdown.
    rec = tmp_path / "events"
    server = gunicorn(APP, "--timeout", "2", "--graceful-timeout", "10", "--max-requests", "3",
                      env={RECORD_ENV: str(rec), SHUTDOWN_DELAY_ENV: "3.5"})
    [pid] = server.worker_pids()
    for _ in range(3):  # with the readiness probe, reaches --max-requests
        _state_of(server)
    assert wait_for(lambda: (pid, "shutdown-begin") in [(e[1], e[2]) for e in read_events(rec)], 5)
    assert wait_for(lambda: pid not in server.worker_pids(), 10)
    assert "WORKER TIMEOUT (pid:%d)" % pid not in server.log(), server.log()[-2000:]
    assert (pid, "shutdown") in [(e[1], e[2]) for e in read_events(rec)], read_events(rec)
