"""python-socketio's ASGI server under our worker and under uvicorn-worker, driven by the library's
own sync client over each transport: WebSocket alone, and long-polling alone (no upgrade).

Every transport test runs for both transports, each on both servers.

Disconnecting over long-polling is slow in python-socketio itself (see the note in the app: up to
ping_interval + ping_timeout, 3 s there): ``test_connect_call_disconnect`` waits for it and checks
it ends; the other tests start their disconnects in the background and the module joins them all,
once, before the servers stop.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import httpx
import pytest
import socketio
import socketio.exceptions

from tests.conftest import GunicornServer, wait_for
from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.socketio_app:app"
TRANSPORTS = ["websocket", "polling"]
# The app's ping_interval + ping_timeout, and a margin: the longest a clean disconnect may take.
DISCONNECT_TIMEOUT = 1 + 2 + 4

_background_disconnects: List[threading.Thread] = []


@pytest.fixture(scope="module")
def pair():
    with Pair(APP) as p:
        try:
            yield p
        finally:
            # Before the servers stop: a client still waiting on a long-poll would hold them up.
            for thread in _background_disconnects:
                thread.join(DISCONNECT_TIMEOUT)
            stuck = [t.name for t in _background_disconnects if t.is_alive()]
            _background_disconnects.clear()
            assert not stuck, f"disconnects that never finished: {stuck}"


def _disconnect(client: socketio.Client, wait: bool = True) -> threading.Thread:
    """``client.disconnect()`` once everything sent before has left, in a thread of its own;
    joined here if ``wait``, else at the end of the module.

    The client's Engine.IO write loop stops as soon as the state leaves "connected": packets still
    queued then (the Socket.IO DISCONNECT among them) are never sent if it is busy POSTing an
    earlier one, and the server would learn of the disconnect only at its ping timeout. Waiting
    for the queue to drain first makes the DISCONNECT packet go out every time.
    """
    client.eio.queue.join()
    thread = threading.Thread(target=client.disconnect, name=f"disconnect-{client.get_sid()}", daemon=True)
    thread.start()
    if wait:
        thread.join(DISCONNECT_TIMEOUT)
        assert not thread.is_alive(), f"disconnect did not finish in {DISCONNECT_TIMEOUT}s"
    else:
        _background_disconnects.append(thread)
    return thread


class _Connected:
    """A ``socketio.Client`` connected over one transport only, disconnected (in the background)
    on exit."""

    def __init__(self, server: GunicornServer, transport: str) -> None:
        self.client = socketio.Client(reconnection=False)
        self.server = server
        self.transport = transport

    def __enter__(self) -> socketio.Client:
        self.client.connect(self.server.url, transports=[self.transport], wait_timeout=5)
        return self.client

    def __exit__(self, *exc: object) -> None:
        if self.client.connected:
            _disconnect(self.client, wait=False)


def _stats(server: GunicornServer) -> Dict[str, Any]:
    r = httpx.get(server.url + "/stats")
    assert r.status_code == 200, r.text
    return r.json()


def test_lifespan_hook_and_other_app(pair):
    """ASGIApp answered the lifespan (its on_startup ran) and hands other paths to the other app."""
    def check(server):
        assert _stats(server)["started"] is True
        assert httpx.get(server.url + "/elsewhere").status_code == 404
    pair.check(check)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_call_disconnect(pair, transport):
    """Connect, an event answered through its ack, then a disconnect that the server sees and
    that ends, client threads and all."""
    def check(server):
        client = socketio.Client(reconnection=False)
        client.connect(server.url, transports=[transport], wait_timeout=5)
        try:
            assert client.transport() == transport
            sid = client.get_sid()
            assert sid in _stats(server)["connected"]
            reply = client.call("echo", {"n": 1, "s": "\u00e9"}, timeout=5)
            assert reply == {"data": {"n": 1, "s": "\u00e9"}, "transport": transport}
            # A few more in a row: the session stays usable.
            for i in range(5):
                assert client.call("echo", i, timeout=5)["data"] == i
        except BaseException:
            _disconnect(client, wait=False)
            raise
        _disconnect(client, wait=True)
        assert not client.connected
        assert wait_for(lambda: sid in _stats(server)["disconnected"], timeout=5), \
            f"the server never saw {sid} disconnect"
    pair.check(check)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_initiated_event(pair, transport):
    """An emit answered by an event the server emits to this client (not by the ack)."""
    def check(server):
        got: Dict[str, Any] = {}
        arrived = threading.Event()
        with _Connected(server, transport) as client:
            @client.on("shouted")
            def on_shouted(data: Any) -> None:
                got.update(data)
                arrived.set()

            client.emit("shout", "quiet please")
            assert arrived.wait(5), "the server's event never arrived"
            assert got == {"text": "QUIET PLEASE", "sid": client.get_sid()}
    pair.check(check)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_payload_round_trip(pair, transport):
    """About 300 KB each way: for polling, a big POST body and a big long-poll response."""
    payload = {"blob": "\u00fc" * 20000 + "x" * 150000, "list": list(range(1000))}

    def check(server):
        with _Connected(server, transport) as client:
            assert client.call("echo", payload, timeout=10)["data"] == payload
    pair.check(check)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_connection(pair, transport):
    """The connect handler refuses: the client's connect raises with the server's message, and
    nothing stays connected."""
    def check(server):
        client = socketio.Client(reconnection=False)
        errors: List[Any] = []
        client.on("connect_error", lambda *data: errors.append(data))
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(server.url, transports=[transport], auth={"token": "bad"}, wait_timeout=5)
        assert not client.connected
        assert errors and "bad token" in repr(errors), errors
    pair.check(check)


def test_no_extra_tracebacks(pair):
    """Last in the module: nothing above made our worker log a traceback the reference did not."""
    pair.assert_no_extra_tracebacks()
