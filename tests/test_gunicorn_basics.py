"""The worker as Gunicorn's master sees it: heartbeat, timeouts, graceful SIGTERM, --max-requests."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from typing import List, Optional, Tuple

import pytest

from tests.apps.http_apps import RECORD_DIR_ENV
from tests.conftest import GunicornServer, wait_for
from tests.wire import Incomplete, Malformed, Response, parse_one, raw_request


def http_get(server: GunicornServer, path: str, timeout: float = 10.0) -> Tuple[Optional[Response], bytes]:
    """One request on a fresh connection (Connection: close): (the response, or None if no
    complete one came, and the raw bytes)."""
    data = raw_request(server.port, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode(),
                       timeout=timeout, host=server.host)
    try:
        return parse_one(data)[0], data
    except (Incomplete, Malformed):
        return None, data


def get_pid(server: GunicornServer) -> int:
    response, data = http_get(server, "/pid")
    assert response is not None and response.status == 200, data
    return int(response.body)



@pytest.fixture(scope="module")
def timeout_server():
    s = GunicornServer("tests.apps.http_apps:app", "--timeout", "2")
    yield s
    s.stop()


def test_idle_worker_keeps_its_heartbeat(timeout_server):
    server = timeout_server
    pid = get_pid(server)
    assert server.worker_pids() == [pid]
    time.sleep(6.5)  # more than three times --timeout with no request at all
    assert server.worker_pids() == [pid]
    assert get_pid(server) == pid
    assert "WORKER TIMEOUT (pid:%d)" % pid not in server.log()


def test_blocked_loop_gets_worker_killed_and_replaced(timeout_server):
    server = timeout_server
    pid = get_pid(server)
    result: List[Tuple[Optional[Response], bytes]] = []
    t = threading.Thread(target=lambda: result.append(http_get(server, "/block?seconds=10", timeout=15)))
    started = time.monotonic()
    t.start()
    try:
        new = wait_for(lambda: [p for p in server.worker_pids() if p != pid], timeout=12)
        assert new, f"worker {pid} was not replaced:\n{server.log()[-3000:]}"
        elapsed = time.monotonic() - started
        assert elapsed < 9, "killed only after the app unblocked itself: the timeout did not work"
        assert "WORKER TIMEOUT (pid:%d)" % pid in server.log()
    finally:
        t.join(20)
    # The blocked request was never answered: its worker died under it.
    assert result and result[0][0] is None, result
    # The new worker serves.
    new_pid = wait_for(lambda: get_pid(server), timeout=10)
    assert new_pid != pid
    assert server.worker_pids() == [new_pid]


def test_sigterm_lets_in_flight_request_finish(gunicorn, tmp_path):
    server = gunicorn("tests.apps.http_apps:app", env={RECORD_DIR_ENV: str(tmp_path)})
    rec = "slow-" + uuid.uuid4().hex
    result: List[Tuple[Optional[Response], bytes]] = []
    t = threading.Thread(target=lambda: result.append(http_get(server, f"/slow?seconds=2&rec={rec}", timeout=15)))
    t.start()
    try:
        assert wait_for((tmp_path / rec).exists, timeout=10), "the slow request never started"
        sent = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(15) == 0, server.log()[-3000:]
        assert time.monotonic() - sent >= 1.0, "gunicorn exited before the request could finish"
    finally:
        t.join(20)
    assert result, "the client thread did not finish"
    response, data = result[0]
    assert response is not None and response.status == 200, data
    assert response.body == b"slow done"


def test_max_requests_restarts_worker_without_failing_requests(gunicorn):
    server = gunicorn("tests.apps.http_apps:app", "--max-requests", "5")
    pids: List[int] = []
    for i in range(12):
        # A fresh connection each time, sent right after the previous answer: whichever worker
        # accepts it (the one being retired or its replacement) must answer it.
        response, data = http_get(server, "/pid")
        assert response is not None and response.status == 200, f"request {i + 1} failed: {data!r} (pids so far {pids})"
        pids.append(int(response.body))
    # Runs of the same pid: wait_ready() already sent the first worker a request (OPTIONS *), so
    # its run is shorter; every later worker serves exactly five before the master replaces it.
    runs: List[List[int]] = []
    for pid in pids:
        if runs and runs[-1][0] == pid:
            runs[-1].append(pid)
        else:
            runs.append([pid])
    assert len({r[0] for r in runs}) == len(runs), f"a pid came back: {pids}"
    assert 1 <= len(runs[0]) <= 4, str(pids)
    assert all(len(r) == 5 for r in runs[1:-1]), str(pids)
    assert len(runs) >= 3 and len(runs[-1]) <= 5, str(pids)
    assert "Autorestarting worker after current request." in server.log()
