"""Slow clients from a real attack tool: Debian's ``slowhttptest`` against one gunicorn worker.

Three attacks, each 200 connections opened at 100 a second against ``--worker-connections 150``
(so the limit is reached, and the connections past it get a 503), with the worker's timeouts at
2 s (``ASGIWORKER_HEADER_TIMEOUT``, ``_BODY_TIMEOUT``, ``_SEND_TIMEOUT``; the linger after a 408
at 1 s):

- slowloris (``-H``): request heads that never end, a header line every second (so only the
  whole-head deadline can end them, not an idle timeout);
- slow body (``-B``): a POST whose body gets a few bytes every 4 s (longer than the body timeout);
- slow read (``-X``): a GET of an 8 MiB streamed response with a 1-byte receive window, read 32
  bytes every 5 s (the worker's writes stall at once).

During each, while slowhttptest still holds its connections open:

- a well-behaved client on a kept-alive connection (opened before the attack) asks for /ping
  every 200 ms and gets every answer, each in under a second; another opens a fresh connection
  every 200 ms and gets an answer (200, or the 503 of a full worker) in under a second; and
  slowhttptest's own probe connection finds the service available every second;
- the worker's resident memory (VmRSS) stays within a bound;
- the worker lets go of the attacker's connections: its socket count, above 100 at the peak, comes
  back to its baseline while slowhttptest is still running (so it is the worker's timeouts that
  freed them, not the attacker leaving). slowhttptest's report counts those closes for slowloris
  and slow body; a slow reader only learns of the close when it reads that far, long after the
  test, so for slow read the worker's log line for each cut counts them instead.

slowhttptest is installed from Debian (tests/debian.py) when missing; the tests are skipped
where that is impossible.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.conformance_client import rss_kb
from tests.conftest import GunicornServer, wait_for
from tests.debian import DebianUnavailable, ensure_debian_binary
from tests.wire import KeepAliveClient, connect, read_response, request_bytes

WORKER_CONNECTIONS = 150
CONNECTIONS = 200  # more than the worker takes: the 503 path is part of every attack
RATE = 100  # connections a second: all open within 2 s
TIMEOUT = 2  # every worker timeout under attack, in seconds (the check runs once a second)
TIMEOUTS = {
    "ASGIWORKER_HEADER_TIMEOUT": str(TIMEOUT),
    "ASGIWORKER_BODY_TIMEOUT": str(TIMEOUT),
    "ASGIWORKER_SEND_TIMEOUT": str(TIMEOUT),
    "ASGIWORKER_LINGER_TIMEOUT": "1",  # a 408'd slowloris keeps sending: the linger ends it
}
# slowhttptest's own limit on the attack. Reclaiming takes about 2 s of ramp + timeout + 1 s
# tick (+ linger): measured 4.1 s. The test stops the attack as soon as the worker is back to its
# baseline; only a worker that never reclaims (the test failing) waits this long. Near the limit
# slowhttptest closes its own connections: a reclaim seen then would not be the worker's doing.
ATTACK_LIMIT = 14
PROMPT = 1.0  # seconds the well-behaved client may wait for any answer
PROBE_EVERY = 0.2
# Sockets beyond the baseline that are not the attacker's: a fresh probe's connection, or
# slowhttptest's probe connection, caught open at the moment of a sample.
SOCKET_SLACK = 5
PEAK_AT_LEAST = 100  # the attack really held the worker's slots (not refused before it began)


@pytest.fixture(scope="module")
def slowhttptest() -> str:
    try:
        return ensure_debian_binary("slowhttptest", "slowhttptest")
    except DebianUnavailable as exc:
        pytest.skip(str(exc))


def worker_sockets(pid: int) -> int:
    """How many sockets the worker has open (its listener and every connection it holds)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed between listdir and readlink
    return count


# FIN_WAIT1, CLOSING, LAST_ACK: closed by us with bytes maybe still queued (not TIME_WAIT: empty).
SENDING_STATES = ("04", "0B", "09")


def orphans(port: int) -> Tuple[int, int]:
    """Server-side TCP sockets on ``port`` that no process holds any more (inode 0 in
    /proc/net/tcp: closed by the worker, still sending in the kernel), and their unsent bytes."""
    count = unsent = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] == "0" and fields[3] in SENDING_STATES:
                count += 1
                unsent += int(fields[4].split(":")[0], 16)
    return count, unsent


@dataclass
class Probes:
    """The well-behaved clients, in a thread: one kept-alive connection, one fresh connection per
    request, a request on each every PROBE_EVERY seconds."""

    port: int
    kept: List[Tuple[float, str]] = field(default_factory=list)  # (seconds waited, what came back)
    fresh: List[Tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def __post_init__(self) -> None:
        self.client = KeepAliveClient(self.port, timeout=5.0)
        assert self.client.request("GET", "/ping").body == b"pong"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        self.client.sock.close()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY):
            self.kept.append(self.timed(self._kept_alive))
            self.fresh.append(self.timed(self.fresh_request))

    @staticmethod
    def timed(call: Callable[[], str]) -> Tuple[float, str]:
        started = time.monotonic()
        try:
            outcome = call()
        except (OSError, AssertionError) as exc:  # read_response's deadline is an AssertionError
            outcome = f"failed: {exc!r}"[:200]
        return time.monotonic() - started, outcome

    def _kept_alive(self) -> str:
        response = self.client.request("GET", "/ping")
        return f"{response.status} {response.body[:20]!r}"

    def fresh_request(self) -> str:
        with connect(self.port, timeout=5.0) as sock:
            sock.sendall(request_bytes("/ping", close=True))
            response, _ = read_response(sock, timeout=5.0)
        return f"{response.status} {response.body[:20]!r}"


def exit_status(output: Path) -> str:
    """slowhttptest's reason for ending, from its output (colour codes removed)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output.read_text(errors="replace"))
    found = re.search(r"Exit status:\s*(.+)", text)
    return found.group(1).strip() if found else f"(none in its output: {text[-500:]!r})"


@dataclass
class Attack:
    """What one slowhttptest run did to the worker, and what it reported."""

    sockets_before: int
    rss_before_kb: int
    peak_sockets: int = 0
    peak_rss_kb: int = 0
    reclaimed_after: Optional[float] = None  # seconds into the attack, slowhttptest still running
    sockets_last_seen: int = 0  # at the last sample while slowhttptest still ran
    orphans: Tuple[int, int] = (0, 0)  # kernel-held sockets the worker let go, unsent bytes (reported)
    report: List[Dict[str, int]] = field(default_factory=list)  # slowhttptest's per-second counts
    exit_status: str = ""  # slowhttptest's reason for ending
    fresh_after: str = ""  # a new connection's answer once the worker was back to its baseline
    kept: List[Tuple[float, str]] = field(default_factory=list)
    fresh: List[Tuple[float, str]] = field(default_factory=list)
    log: str = ""

    def summary(self) -> str:
        last = self.report[-1] if self.report else {}
        return (f"worker sockets {self.sockets_before} before, {self.peak_sockets} at the peak, "
                f"{self.sockets_last_seen} at the last sample while slowhttptest ran; reclaimed after {self.reclaimed_after} s; "
                f"RSS {self.rss_before_kb} -> {self.peak_rss_kb} KiB; orphans in the kernel {self.orphans[0]} "
                f"with {self.orphans[1]} unsent bytes; slowhttptest: {self.exit_status!r}, "
                f"last second {last}")


@pytest.fixture
def attack(gunicorn: Callable[..., GunicornServer], slowhttptest: str,
           tmp_path: Path) -> Iterator[Callable[[List[str], str], Attack]]:
    def run(mode: List[str], path: str) -> Attack:
        server = gunicorn("tests.apps.slow_apps:app", "--workers", "1",
                          "--worker-connections", str(WORKER_CONNECTIONS), "--keep-alive", str(TIMEOUT),
                          env=TIMEOUTS)
        pid = server.worker_pids()[0]
        probes = Probes(server.port)
        result = Attack(sockets_before=worker_sockets(pid), rss_before_kb=rss_kb(pid))
        output = tmp_path / "slowhttptest.out"
        with output.open("wb") as out:
            proc = subprocess.Popen(
                [slowhttptest, *mode, "-c", str(CONNECTIONS), "-r", str(RATE), "-l", str(ATTACK_LIMIT),
                 "-p", "2", "-g", "-o", str(tmp_path / "report"), "-u", server.url + path],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
            probes.start()
            started = time.monotonic()
            try:
                while proc.poll() is None:
                    sockets, rss = worker_sockets(pid), rss_kb(pid)
                    if proc.poll() is not None:
                        break  # it ended between the checks: this sample is not "while it ran"
                    result.sockets_last_seen = sockets
                    result.peak_sockets = max(result.peak_sockets, sockets)
                    result.peak_rss_kb = max(result.peak_rss_kb, rss)
                    # Before its time limit only: at the limit slowhttptest closes its own sockets.
                    if result.peak_sockets >= PEAK_AT_LEAST and sockets <= result.sockets_before + SOCKET_SLACK \
                            and time.monotonic() - started < ATTACK_LIMIT - 1:
                        result.reclaimed_after = round(time.monotonic() - started, 1)
                        result.fresh_after = probes.timed(probes.fresh_request)[1]
                        break
                    time.sleep(0.1)
                if result.reclaimed_after is None and proc.returncode is not None:
                    # It ended by itself before its time limit: every connection it held was
                    # ended by the worker (it never closes one itself before then; it does close
                    # one once it has read the 408), maybe between two samples. The worker's last
                    # ones may still be closing in stages (it reads the client's EOF first).
                    ended = time.monotonic() - started
                    if ended < ATTACK_LIMIT - 1 and exit_status(output) == "No open connections left" and wait_for(
                            lambda: worker_sockets(pid) <= result.sockets_before + SOCKET_SLACK, timeout=2.0):
                        result.reclaimed_after = round(ended, 1)
                        result.fresh_after = probes.timed(probes.fresh_request)[1]
                result.orphans = orphans(server.port)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)  # it then writes its report and exits
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                probes.stop()
        result.kept, result.fresh = probes.kept, probes.fresh
        result.exit_status = exit_status(output)
        report = tmp_path / "report.csv"
        if report.exists():
            with report.open(newline="") as f:
                result.report = [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]
        result.log = server.log()
        assert server.worker_pids() == [pid], f"the worker was replaced during the attack:\n{result.log[-3000:]}"
        print(" ".join(mode), result.summary(), "slowest answers: kept-alive %.3f s, fresh %.3f s; fresh 503s: %d/%d"
              % (max(result.kept, default=(0.0, ""))[0], max(result.fresh, default=(0.0, ""))[0],
                 sum(o.startswith("503") for _, o in result.fresh), len(result.fresh)))  # the figures, for `pytest -s`
        return result

    yield run


def assert_served_throughout(result: Attack, attack: str) -> None:
    """The well-behaved clients got every answer, promptly, all through the attack."""
    assert len(result.kept) >= 10, f"only {len(result.kept)} probe requests during {attack}: {result.summary()}"
    slowest, outcome = max(result.kept)
    assert slowest < PROMPT, f"normal client waited {slowest:.2f} s during {attack} ({outcome}); {result.summary()}"
    wrong = [o for _, o in result.kept if o != "200 b'pong'"]
    assert not wrong, f"normal client on a kept-alive connection got {wrong[:3]} during {attack}"
    slowest, outcome = max(result.fresh)
    assert slowest < PROMPT, f"a new connection waited {slowest:.2f} s for its answer during {attack} ({outcome})"
    # A full worker answers 503 at once: an answer, not a wait. Anything else is wrong.
    wrong = [o for _, o in result.fresh if o != "200 b'pong'" and not o.startswith("503 b'Service Unavailable")]
    assert not wrong, f"a new connection got {wrong[:3]} during {attack}"
    assert result.fresh_after == "200 b'pong'", \
        f"a new connection got {result.fresh_after!r} once the worker had let go of the {attack} connections"
    down = [row["Seconds"] for row in result.report if row["Service Available"] == 0]
    assert not down, f"slowhttptest's probe found the service unavailable at seconds {down} of {attack}"


def assert_bounded_and_reclaimed(result: Attack, attack: str, rss_growth_mib: int) -> None:
    assert result.peak_sockets >= PEAK_AT_LEAST, \
        f"{attack} never held the worker's slots (peak {result.peak_sockets} sockets): the test proves nothing"
    assert result.reclaimed_after is not None, \
        (f"slots not reclaimed during {attack}: the worker still held {result.sockets_last_seen} sockets "
         f"(baseline {result.sockets_before}) while slowhttptest held its connections open; {result.summary()}")
    growth = (result.peak_rss_kb - result.rss_before_kb) / 1024
    assert growth < rss_growth_mib, f"worker RSS grew {growth:.1f} MiB during {attack} (bound {rss_growth_mib})"


def closed_by_server(result: Attack) -> int:
    """Connections slowhttptest saw closed, at the end of its report."""
    return max((row["Closed"] for row in result.report), default=0)


def test_slowloris_heads_are_cut_by_the_header_timeout(attack: Callable[[List[str], str], Attack]) -> None:
    result = attack(["-H", "-i", "1"], "/ping")
    # Measured: 0.6 MiB of growth (150 heads held, each a few hundred bytes).
    assert_bounded_and_reclaimed(result, "slowloris", rss_growth_mib=16)
    assert_served_throughout(result, "slowloris")
    # The worker closed slowhttptest's connections (it never closes one itself before its time
    # limit): every slot taken by a 408, the rest by a 503.
    assert closed_by_server(result) >= PEAK_AT_LEAST, f"slowhttptest saw too few closes: {result.summary()}"
    timed_out = result.log.count("request head not received in")
    assert timed_out >= WORKER_CONNECTIONS - SOCKET_SLACK, f"only {timed_out} heads timed out: {result.summary()}"


@pytest.mark.parametrize("interval", [2 * TIMEOUT, 1], ids=["stalls", "trickles"])
def test_slow_body_is_cut_by_the_body_timeout(attack: Callable[[List[str], str], Attack], interval: int) -> None:
    # A body that stalls longer than the timeout, and one that trickles a few bytes every second
    # (faster than the timeout, far slower than ASGIWORKER_BODY_MIN_RATE).
    result = attack(["-B", "-i", str(interval), "-s", "8192"], "/upload")
    # Measured: 1.0 MiB of growth.
    assert_bounded_and_reclaimed(result, "slow body", rss_growth_mib=16)
    assert_served_throughout(result, "slow body")
    assert closed_by_server(result) >= PEAK_AT_LEAST, f"slowhttptest saw too few closes: {result.summary()}"


def test_slow_read_is_cut_by_the_send_timeout(attack: Callable[[List[str], str], Attack]) -> None:
    result = attack(["-X", "-w", "1", "-y", "1", "-n", "5", "-z", "32", "-k", "1"], "/big?mib=8")
    # Measured: 1.5 MiB of growth for 150 stalled 8 MiB responses (the app waits in send() while
    # the transport's buffer is full; without that wait it would be gigabytes).
    assert_bounded_and_reclaimed(result, "slow read", rss_growth_mib=16)
    assert_served_throughout(result, "slow read")
    # slowhttptest reads 32 bytes every 5 s from what its kernel already holds: it learns of the
    # cut long after the test. The worker's log line for each cut counts them instead.
    cuts = result.log.count("it read nothing of the response for")
    assert cuts >= WORKER_CONNECTIONS - SOCKET_SLACK, f"only {cuts} slow readers cut by the send timeout: {result.summary()}"
    # Cut with a reset: the kernel drops what it held for them, instead of keeping megabytes
    # per socket in FIN-WAIT-1 (measured before: 150 orphans holding 257 MB).
    assert result.orphans[0] <= SOCKET_SLACK, f"the kernel still holds the cut readers' data: {result.summary()}"
