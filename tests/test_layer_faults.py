"""The Redis channel layer when Redis misbehaves: down at boot, killed and restarted under
traffic, full channels, a stalled server. Everything through a real gunicorn with asgiworker
serving tests/apps/interop/ours.py, whose ``/call`` route makes one layer call and reports its
outcome (exception class and text, or success) and how long it took.

What the layer promises here (asgiworker/channels/redis.py): the worker never dies of its Redis,
no layer call hangs (a down server fails at once, a stalled one within the command timeout of
2 s), the errors are ``ChannelLayerUnavailable`` naming the server, and once Redis is back the
worker's readers reconnect by themselves and put its live sockets back in their groups.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from typing import Dict, Iterator, List

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from tests.conftest import GunicornServer, free_port, wait_for
from tests.test_channels_redis_interop import OURS_APP, RoomClient, call, open_on_both_workers

COMMAND_TIMEOUT = 2.0  # asgiworker.channels.redis.COMMAND_TIMEOUT
UNREACHABLE = "The channel layer's Redis at {url} is unreachable"
BACK = "The channel layer's Redis is reachable again"


EXPECTED_WARNING = re.compile(r"\] \[WARNING\] The channel layer's Redis (at .* is unreachable|is reachable again)")


def ours(gunicorn, url: str, *args: str) -> GunicornServer:
    return gunicorn(OURS_APP, *args, env={"ASGIWORKER_CHANNEL_LAYER": url})


def unexpected_log_lines(server: GunicornServer) -> List[str]:
    """Tracebacks, errors and warnings other than the layer's own unreachable/reachable again."""
    bad = []
    for line in server.log().splitlines():
        if "Traceback" in line or "[ERROR]" in line or "[CRITICAL]" in line:
            bad.append(line)
        elif "[WARNING]" in line and not EXPECTED_WARNING.search(line):
            bad.append(line)
    return bad


# -- Redis down at boot ------------------------------------------------------------------------------


def test_redis_down_at_boot_then_up(gunicorn, own_redis):
    """Nothing listening where the layer points: the worker boots anyway and serves HTTP, its
    boot log says the layer's Redis is unreachable (naming it), and layer calls fail at once
    with ChannelLayerUnavailable naming the server. Once a Redis appears there, the worker says
    so and the same calls succeed, without a restart."""
    own_redis.stop()
    server = ours(gunicorn, own_redis.url)
    assert httpx.get(server.url + "/plain", timeout=5).text == "ok"
    down = UNREACHABLE.format(url=own_redis.url)
    assert wait_for(lambda: down in server.log(), timeout=5), server.log()[-3000:]

    for op, params in (("send", {"channel": "nobody"}), ("send", {"channel": "specific.abc!1"}),
                       ("group_send", {"group": "g"}), ("group_add", {"group": "g", "channel": "c"}),
                       ("group_discard", {"group": "g", "channel": "c"}), ("receive", {"channel": "c"}),
                       ("flush", {})):
        report = call(server, op, **params)
        assert report["error"] == "ChannelLayerUnavailable", (op, report)
        assert down in report["text"] and "Connection refused" in report["text"], report
        assert report["elapsed"] < 1.0, report
    assert httpx.get(server.url + "/plain", timeout=5).text == "ok"

    own_redis.start()
    assert wait_for(lambda: call(server, "group_send", group="g")["ok"], timeout=8), server.log()[-3000:]
    assert BACK in server.log()
    assert call(server, "send", channel=f"up.{uuid.uuid4().hex[:6]}")["ok"]
    assert unexpected_log_lines(server) == []


# -- Redis killed and restarted under traffic --------------------------------------------------------


class Listener(threading.Thread):
    """Reads one RoomClient's socket until told to stop: every text with when it came."""

    def __init__(self, client: RoomClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.got: List[tuple] = []
        self.closed: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                text = self.client.ws.recv(timeout=0.1)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                self.closed = exc
                return
            self.got.append((time.monotonic(), text))

    def texts(self) -> List[str]:
        return [text for _, text in self.got]


class Sender(threading.Thread):
    """``group_send`` through ``/call`` in a loop, each numbered; every report kept, with its
    wall time (HTTP included) and when it started."""

    def __init__(self, server: GunicornServer, group: str) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.group = group
        self.reports: List[Dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    report = client.get("/call", params={"op": "group_send", "group": self.group,
                                                          "text": f"m{n}"}).json()
                except httpx.HTTPError as exc:
                    report = {"ok": False, "error": f"HTTP {exc!r}", "text": ""}
                report.update(n=n, started=started, wall=time.monotonic() - started)
                self.reports.append(report)
                n += 1
                time.sleep(0.01)


def test_redis_killed_and_restarted_under_traffic(gunicorn, own_redis):
    """SIGKILL the Redis under two workers with sockets in a group and a sender looping
    ``group_send``, then start it again on the same port.

    Promised: no worker dies (same pids), the log has nothing but the layer's own warnings (no
    traceback), no call hangs (each returns within 3 s, error or not: the errors are
    ChannelLayerUnavailable naming the server), each worker's reader reconnects by itself and
    says so, and the memberships are re-established *without the sockets rejoining* (they never
    reconnect): group messages reach the same open sockets again within a few seconds, and the
    group in Redis lists them again. Nobody gets a message twice.

    Lost while Redis is down, by design (delivery is at most once, with no persistence here):
    every ``send``/``group_send`` made during the outage fails (the caller is told, nothing is
    queued for later), and the messages in flight at the kill (written to Redis, not yet read by
    a worker's reader) are gone with the server. So is everything else Redis held: only this
    process's live memberships are put back, by the worker itself.
    """
    server = ours(gunicorn, own_redis.url, "--workers", "2")
    pids = sorted(server.worker_pids())
    assert len(pids) == 2
    group = f"k{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        clients = open_on_both_workers(server, group, stack, at_least=4)
        names = sorted(c.name for c in clients)
        listeners = [Listener(c) for c in clients]
        sender = Sender(server, group)
        try:
            for thread in (*listeners, sender):
                thread.start()

            def all_got_one_sent_after(moment: float) -> bool:
                wanted = {f"m{r['n']}" for r in sender.reports if r["ok"] and r["started"] > moment}
                return bool(wanted) and all(wanted & set(li.texts()) for li in listeners)

            start = time.monotonic()
            assert wait_for(lambda: all_got_one_sent_after(start), timeout=5), sender.reports[-3:]

            killed = time.monotonic()
            own_redis.kill()
            assert wait_for(lambda: any(r["started"] > killed and not r["ok"] for r in sender.reports),
                            timeout=5), sender.reports[-3:]
            time.sleep(0.5)  # an outage, not a blip
            own_redis.start()
            restarted = time.monotonic()

            assert wait_for(lambda: all_got_one_sent_after(restarted), timeout=8), (
                [li.texts()[-3:] for li in listeners], sender.reports[-3:], server.log()[-4000:])
            recovered = time.monotonic() - restarted
        finally:
            sender.stop.set()
            sender.join(15)
            for listener in listeners:
                listener.stop.set()
                listener.join(5)

        assert recovered < 6, recovered
        members = sorted(m.decode() for m in redis.Redis.from_url(own_redis.url).zrange(f"asgi:group:{group}", 0, -1))
        assert members == names

    reports = sender.reports
    assert max(r["wall"] for r in reports) < 3.0, max(reports, key=lambda r: r["wall"])
    failures = [r for r in reports if not r["ok"]]
    assert failures, "no call failed: was Redis killed at all?"
    for report in failures:
        assert report["error"] == "ChannelLayerUnavailable", report
        assert UNREACHABLE.format(url=own_redis.url) in report["text"], report
    assert all(r["started"] > killed - 0.1 for r in failures), "a call failed before the kill"
    for listener in listeners:
        assert listener.closed is None, f"{listener.client} was closed: {listener.closed!r}"
        texts = listener.texts()
        assert len(texts) == len(set(texts)), f"{listener.client} got a message twice"
    assert sorted(server.worker_pids()) == pids
    log = server.log()
    for pid in pids:
        assert re.search(rf"\[{pid}\] \[WARNING\] The channel layer's Redis at .* is unreachable", log), log[-4000:]
        assert re.search(rf"\[{pid}\] \[WARNING\] {BACK}", log), log[-4000:]
    assert unexpected_log_lines(server) == []


# -- full channels -----------------------------------------------------------------------------------

CAPACITY = 3


@pytest.fixture(scope="module")
def small(redis_url) -> Iterator[GunicornServer]:
    """One worker whose layer holds at most CAPACITY messages per channel."""
    server = GunicornServer(OURS_APP, env={"ASGIWORKER_CHANNEL_LAYER": redis_url,
                                          "ASGIWORKER_CHANNEL_CAPACITY": str(CAPACITY)})
    yield server
    server.stop()


def test_send_to_full_channel_raises_channel_full(small, fresh_redis):
    """A general channel nobody reads takes CAPACITY messages; the next sends raise ChannelFull
    (and are not stored); once one message is read, there is room for one more."""
    channel = f"nobody.{uuid.uuid4().hex[:8]}"
    for n in range(CAPACITY):
        assert call(small, "send", channel=channel, text=f"f{n}")["ok"]
    for _ in range(2):
        report = call(small, "send", channel=channel, text="too many")
        assert report["error"] == "ChannelFull", report
        assert channel in report["text"] and str(CAPACITY) in report["text"], report
    assert redis.Redis.from_url(fresh_redis.url).zcard(f"asgi{channel}") == CAPACITY

    received = call(small, "receive", channel=channel)
    assert received["ok"] and received["result"]["text"] == "f0", received
    assert call(small, "send", channel=channel, text="room again")["ok"]
    assert call(small, "send", channel=channel, text="full again")["error"] == "ChannelFull"


def test_group_send_skips_a_full_member(small, fresh_redis):
    """A group of a full general channel, a general channel with room and an open socket:
    ``group_send`` succeeds, the socket and the channel with room get the message, the full one
    silently misses it (it still holds exactly its old messages)."""
    group = f"g{uuid.uuid4().hex[:8]}"
    full, free = f"full.{uuid.uuid4().hex[:8]}", f"free.{uuid.uuid4().hex[:8]}"
    for n in range(CAPACITY):
        assert call(small, "send", channel=full, text=f"old{n}")["ok"]
    for channel in (full, free):
        assert call(small, "group_add", group=group, channel=channel)["ok"]
    with contextlib.ExitStack() as stack:
        socket = RoomClient(small, group, stack)

        report = call(small, "group_send", group=group, text="to everyone")
        assert report["ok"], report
        socket.expect("to everyone")
        received = call(small, "receive", channel=free)
        assert received["ok"] and received["result"]["text"] == "to everyone", received
        for n in range(CAPACITY):
            received = call(small, "receive", channel=full, wait="1")
            assert received["ok"] and received["result"]["text"] == f"old{n}", received
        assert call(small, "receive", channel=full, wait="0.5")["error"] == "Nothing"
        socket.silent()


# -- Redis stalled -----------------------------------------------------------------------------------


def test_redis_stalled(gunicorn, own_redis):
    """SIGSTOP the Redis (it keeps its sockets and answers nothing): layer calls fail within the
    command timeout (2 s) with ChannelLayerUnavailable naming the server, instead of hanging;
    meanwhile the worker serves plain HTTP at once (its loop is not blocked by the stalled
    calls). After SIGCONT the same calls succeed again.

    Note the outcome of a call that timed out is *unknown*, not "nothing done": the command may
    already sit in the stalled server's socket buffer and run once it resumes (a ``send`` that
    raised can still deliver its message, once). What holds is at most once: it is never
    delivered twice (the layer does not retry).
    """
    server = ours(gunicorn, own_redis.url)
    pids = server.worker_pids()
    channel = f"stall.{uuid.uuid4().hex[:8]}"
    assert call(server, "send", channel=f"warm.{uuid.uuid4().hex[:8]}")["ok"]  # connections, scripts
    assert call(server, "group_add", group="s", channel=channel)["ok"]
    unreachable = UNREACHABLE.format(url=own_redis.url)
    reports: List[Dict] = []

    def stalled_call(op: str) -> None:
        started = time.monotonic()
        report = call(server, op, channel=channel, group="s")
        report["wall"] = time.monotonic() - started
        reports.append(report)

    own_redis.pause()
    try:
        callers = [threading.Thread(target=stalled_call, args=(op,)) for op in ("send", "group_send", "group_add")]
        for caller in callers:
            caller.start()
        plain = []
        while any(caller.is_alive() for caller in callers) and len(plain) < 50:
            started = time.monotonic()
            assert httpx.get(server.url + "/plain", timeout=5).text == "ok"
            plain.append(time.monotonic() - started)
            time.sleep(0.05)
        for caller in callers:
            caller.join(15)
    finally:
        own_redis.resume()

    assert len(reports) == 3, reports
    for report in reports:
        assert report["error"] == "ChannelLayerUnavailable", report
        assert unreachable in report["text"], report
        assert report["elapsed"] < COMMAND_TIMEOUT + 1.0 and report["wall"] < COMMAND_TIMEOUT + 1.5, report
    assert len(plain) >= 10 and max(plain) < 0.5, plain

    assert wait_for(lambda: call(server, "send", channel=f"after.{uuid.uuid4().hex[:8]}")["ok"], timeout=10)
    client = redis.Redis.from_url(own_redis.url)
    assert client.zcard(f"asgi{channel}") <= 1  # the stalled send: once at most, maybe not at all
    assert call(server, "group_send", group="s")["ok"]
    assert server.worker_pids() == pids
    assert unexpected_log_lines(server) == []


def test_free_port_with_nothing_fails_fast(gunicorn):
    """The same with a port nothing ever listened on (no own_redis at all), two workers: both
    boot and say so, and a layer call fails in well under a second."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    server = ours(gunicorn, url, "--workers", "2")
    down = UNREACHABLE.format(url=url)
    assert wait_for(lambda: server.log().count(down) >= 2, timeout=5), server.log()[-3000:]
    for _ in range(4):
        report = call(server, "group_send", group="g")
        assert report["error"] == "ChannelLayerUnavailable" and down in report["text"], report
        assert report["elapsed"] < 1.0, report
    assert len(server.worker_pids()) == 2
