"""A worker killed with SIGKILL under load: the master replaces it, nothing fails on the other
workers, and no more requests fail than the killed worker had in flight.

What the killed worker "had in flight" is measured, not guessed. Just before the kill the worker is
frozen with SIGSTOP: from then on it reads, answers, accepts and closes nothing. While it is frozen
the test reads its open sockets (``/proc/PID/fd`` and ``/proc/net/tcp``: the client port of every
connection it holds) and waits until each load client on one of those connections has sent its
request (a client between two requests sends the next one into the frozen worker's socket; one
that had its answer before the freeze reads it and sends the next). Then every connection the
worker owns has exactly one request on it that it will never answer, and those are its requests in
flight: sent to it and not answered. Fresh connections still queued in the listening socket are not
the worker's (the master holds that socket; the live workers take them). Then SIGKILL.

Every request's raw outcome is kept (no client retries): its client port, the pid that answered
it or that had answered earlier requests on its connection, and the error if it failed. A failure
is allowed only on a connection the killed worker owned at the kill, and there can be no more of
them than its requests in flight.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

from tests.conftest import GunicornServer, wait_for
from tests.wire import CleanClose, Malformed, read_response, request_bytes

APP = "tests.apps.crash_app:app"


@dataclass
class Outcome:
    """One request as its client saw it."""

    client: str
    rid: str
    port: Optional[int]       # the client's local port (None: the connection could not be made)
    conn_pid: Optional[int]   # the pid that answered earlier requests on this connection
    sent_at: float
    pid: Optional[int] = None     # who answered it (None: it failed)
    error: Optional[str] = None


class LoadClient(threading.Thread):
    """Requests one after the other, half of them slow, over one keep-alive connection at a time
    or a fresh ``Connection: close`` connection each. A failed request is recorded as it is and
    the client goes on with the next request on a new connection: nothing is retried."""

    def __init__(self, port: int, name: str, keepalive: bool, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server_port = port
        self.client_name = name
        self.keepalive = keepalive
        self.stop_event = stop
        self.rng = random.Random(name)
        self.outcomes: List[Outcome] = []
        # (client port of the current connection, whether its request has been sent), one tuple
        # so that the test reads both at once.
        self.now: Tuple[Optional[int], bool] = (None, False)
        self.conn_pid: Optional[int] = None

    def run(self) -> None:
        conn: Optional[socket.socket] = None
        port: Optional[int] = None
        n = 0
        while not self.stop_event.is_set():
            n += 1
            rid = "%s-%d" % (self.client_name, n)
            path = "/slow?ms=150&id=%s" % rid if self.rng.random() < 0.5 else "/?id=%s" % rid
            outcome = Outcome(self.client_name, rid, port, self.conn_pid, time.monotonic())
            self.outcomes.append(outcome)
            try:
                if conn is None:
                    conn = socket.create_connection(("127.0.0.1", self.server_port), timeout=5)
                    port = outcome.port = conn.getsockname()[1]
                self.now = (port, False)
                conn.sendall(request_bytes(path, close=not self.keepalive))
                self.now = (port, True)
                response = read_response(conn, timeout=None)[0]
                pid = int(response.get(b"x-pid") or b"0")
                if response.status != 200 or response.body != b"%s %d" % (rid.encode(), pid):
                    raise Malformed("not the answer to %s: %r" % (rid, response))
            except (OSError, CleanClose, Malformed) as exc:
                outcome.error = repr(exc)
                if conn is not None:
                    conn.close()
                conn, port, self.conn_pid = None, None, None
                self.now = (None, False)
                continue
            outcome.pid = self.conn_pid = pid
            if not self.keepalive or response.get(b"connection") == b"close":
                conn.close()
                conn, port, self.conn_pid = None, None, None
                self.now = (None, False)
        if conn is not None:
            conn.close()


def client_ports_of(pid: int, server_port: int) -> Set[int]:
    """The client ports of the TCP connections process ``pid`` holds to ``server_port``."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    with open("/proc/%d/net/tcp" % pid) as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode in inodes and state != "0A" and int(local.split(":")[1], 16) == server_port:
                ports.add(int(remote.split(":")[1], 16))
    return ports


@dataclass
class Kill:
    victim: int
    owned: Set[int]                     # client ports of the victim's connections at the kill
    in_flight: List[Tuple[str, int]]    # (client, port): requests sent to the victim, unanswered
    at: float


def freeze_measure_kill(server: GunicornServer, clients: List[LoadClient], victim: int) -> Kill:
    """SIGSTOP ``victim``, read what it has in flight, SIGKILL it (see the module's docstring)."""
    os.kill(victim, signal.SIGSTOP)
    try:
        owned = client_ports_of(victim, server.port)

        def settled() -> bool:
            return all(c.now[1] for c in clients if c.now[0] in owned)

        # Twice, a moment apart: a client may still have been reading an answer the worker had
        # written before it froze.
        assert wait_for(settled, 10), "clients did not all send into the frozen worker"
        time.sleep(0.1)
        assert wait_for(settled, 10), "clients did not all send into the frozen worker"
        in_flight = [(c.client_name, port) for c in clients for port, sent in [c.now] if port in owned and sent]
        at = time.monotonic()
    finally:
        os.kill(victim, signal.SIGKILL)
    return Kill(victim, owned, in_flight, at)


KillFunction = Callable[[GunicornServer, List["LoadClient"], int], Kill]


def run_crash(server: GunicornServer, kill: Optional[KillFunction] = None) -> Dict[str, object]:
    """Load ``server`` (3 workers), kill one of its workers (``kill(server, clients, victim)``,
    default ``freeze_measure_kill``), wait for its replacement to serve, and check every outcome."""
    kill = kill or freeze_measure_kill
    stop = threading.Event()
    clients = [LoadClient(server.port, "k%d" % i, True, stop) for i in range(6)]
    clients += [LoadClient(server.port, "f%d" % i, False, stop) for i in range(3)]
    before = set(server.worker_pids())
    assert len(before) == 3, before
    for c in clients:
        c.start()
    try:
        # Warm up until every worker has answered, then pick the one with the most keep-alive
        # connections (at least 2 of the 6, by pigeonhole).
        def answered_by() -> Set[Optional[int]]:
            return {o.pid for c in clients for o in list(c.outcomes) if o.pid}
        assert wait_for(lambda: answered_by() >= before, 10), (answered_by(), before)
        time.sleep(0.5)
        held = collections.Counter(c.conn_pid for c in clients if c.keepalive and c.conn_pid)
        assert held, "no keep-alive connection has been answered yet"
        victim = held.most_common(1)[0][0]
        killed = kill(server, clients, victim)

        # (a) the master replaces it (``new`` holds every worker not there before: one, unless
        # something else died too).
        def replaced() -> Set[int]:
            pids = set(server.worker_pids())
            return pids - before if len(pids) == 3 and victim not in pids else set()
        new = wait_for(replaced, 10)
        replaced_after = time.monotonic() - killed.at
        assert new, "no replacement for %d within 10 s: %s\n%s" % (victim, server.worker_pids(), server.log()[-3000:])
        booted = wait_for(lambda: all("Booting worker with pid: %d" % p in server.log() for p in new), 10)
        assert booted, server.log()[-3000:]
        booted_at = time.monotonic()

        # (d) ... and the replacement serves.
        def served_by_replacement() -> int:
            return sum(1 for c in clients for o in list(c.outcomes) if o.pid in new)
        assert wait_for(lambda: served_by_replacement() >= 10, 10), "the replacement served %d" % (
            served_by_replacement())
        time.sleep(0.5)
    finally:
        stop.set()
        for c in clients:
            c.join(15)
    assert not any(c.is_alive() for c in clients), "a load client hung"

    outcomes = [o for c in clients for o in c.outcomes]
    failures = [o for o in outcomes if o.error]
    report = {
        "victim": victim, "replacement": sorted(new), "replaced_after_s": round(replaced_after, 2),
        "requests": len(outcomes), "failures": len(failures), "in_flight": len(killed.in_flight),
        "victim_connections": len(killed.owned),
        "by_pid": dict(collections.Counter(o.pid for o in outcomes if o.pid)),
    }
    detail = "%s\nfailures:\n%s" % (report, "\n".join(map(repr, failures[:20])))
    assert "(pid:%d) was sent SIGKILL" % victim in server.log(), server.log()[-3000:]
    # The measure is meaningful only if the victim did have requests in flight.
    assert killed.in_flight, "the killed worker had nothing in flight: %s" % detail
    # (b) a failure is only ever on a connection the killed worker held: never on one another
    # worker had answered on, nor on a fresh connection another worker took (or none took).
    assert all(o.port in killed.owned for o in failures), "a failure elsewhere than on the killed worker: " + detail
    assert all(o.conn_pid in (None, victim) for o in failures), detail
    # (c) no more failures than requests in flight at the kill, one at most per connection.
    assert len(failures) <= len(killed.in_flight), "more failures than requests in flight: " + detail
    assert len({o.port for o in failures}) == len(failures), detail
    # (a) one replacement, soon.
    assert len(new) == 1 and replaced_after < 5, detail
    # (d) everything sent once the replacement was up succeeded, and the other workers kept
    # answering meanwhile.
    assert not [o for o in outcomes if o.sent_at >= booted_at and o.error], detail
    survivors = before - {victim}
    assert sum(1 for o in outcomes if o.sent_at > killed.at and o.pid in survivors) >= 20, detail
    return report


def test_sigkilled_worker_is_replaced_and_only_its_requests_in_flight_fail(gunicorn: Callable[..., GunicornServer]) -> None:
    server = gunicorn(APP, "--workers", "3", "--keep-alive", "30")
    report = run_crash(server)
    print("SIGKILL of one worker of 3 under load:", report)
