"""Channel-style consumers over WebSocket, against a real Gunicorn with the `websockets` client.

The same consumer callable that answers HTTP gets 'websocket.connect', 'websocket.receive' and
'websocket.disconnect' messages and replies on ``message['reply_channel']`` with ``{'accept'}``,
``{'text'}``, ``{'bytes'}``, ``{'close'}`` (combinable, applied in that order). Consumers:
``tests.apps.ws_apps:consumer`` (plain function, dispatching on the path; it also returns
awaitables on /awaitable) and ``tests.apps.ws_apps:async_consumer`` (``async def``). What a
consumer saw from the inside is read back with ``GET /report?token=T``.
"""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus

from tests.apps.ws_apps import INVALID_REPLIES
from tests.conftest import BootedServers
from tests.test_websocket import closed_by_server, report, token, ws_connect


@pytest.fixture(scope="module")
def servers():
    booted = BootedServers({
        "sync": ("tests.apps.ws_apps:consumer", (), {}),
        "async": ("tests.apps.ws_apps:async_consumer", (), {}),
    })
    yield booted
    booted.stop()


@pytest.fixture(scope="module")
def sync(servers):
    return servers["sync"]


def test_connect_and_receive_messages(sync):
    t = token()
    with ws_connect(sync, f"/info?token={t}&a=%20b", subprotocols=["one", "two"],
                    additional_headers={"X-Custom": "Value"}) as ws:
        local = ws.local_address
        connect = json.loads(ws.recv(timeout=5))
        ws.send("hello")
        text = json.loads(ws.recv(timeout=5))
        ws.send(b"\x00\xff")
        binary = json.loads(ws.recv(timeout=5))
    assert connect["type"] == "websocket.connect"
    for message in (connect, text, binary):
        assert message["reply_channel"] == "WebSocketReplyChannel"
        assert message["channel_layer"] == "InMemoryChannelLayer"
        assert message["loop_is_running_loop"] is True
        assert message["path"] == "/info"
        assert message["query_string"] == f"token={t}&a=%20b"
        assert message["types"]["query_string"] == "bytes"
        assert ["x-custom", "Value"] in message["headers"]
        assert ["sec-websocket-protocol", "one, two"] in message["headers"]
        assert message["types"]["headers"] == "list"
        assert message["client"] == ["127.0.0.1", local[1]]
        assert message["server"] == ["127.0.0.1", sync.port]
        assert message["subprotocols"] == ["one", "two"]
    assert text["type"] == "websocket.receive"
    assert text["text"] == "hello" and text["types"]["text"] == "str" and "bytes" not in text
    assert binary["type"] == "websocket.receive"
    assert binary["bytes"] == "\x00\xff" and binary["types"]["bytes"] == "bytes" and "text" not in binary


def test_echo_text_and_bytes_in_order(sync):
    with ws_connect(sync, "/echo") as ws:
        for i in range(100):
            ws.send(f"message {i}")
            ws.send(bytes([i]) * i)
        for i in range(100):
            assert ws.recv(timeout=5) == f"message {i}"
            assert ws.recv(timeout=5) == bytes([i]) * i


def test_accept_with_subprotocol(sync):
    with ws_connect(sync, "/echo?subprotocol=two", subprotocols=["one", "two"]) as ws:
        assert ws.subprotocol == "two"
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
    with ws_connect(sync, "/echo", subprotocols=["one", "two"]) as ws:
        assert ws.subprotocol is None


@pytest.mark.parametrize("command, code", [("close", 1000), ("close 4321", 4321)])
def test_close_reply(sync, command, code):
    with ws_connect(sync, "/echo") as ws:
        ws.send(command)
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == code


def test_client_close_gives_disconnect_code_and_later_sends_raise(sync):
    t = token()
    with ws_connect(sync, f"/echo?token={t}") as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        ws.close(4005, "bye")
    data = report(sync, t, "late_send")
    assert data["disconnect"]["code"] == 4005
    assert "reply_channel" in data["disconnect"]["keys"]
    # a thread replying after the disconnect gets an OSError subclass
    assert data["late_send"] is not None and data["late_send"]["is_oserror"], data


def test_combined_reply_applies_accept_text_bytes_close_in_order(sync):
    with ws_connect(sync, "/combined") as ws:
        assert ws.recv(timeout=5) == "hi"
        assert ws.recv(timeout=5) == b"\x00\x01"
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 4001


@pytest.mark.parametrize("how", ["true", "false"])
def test_close_before_accept_is_403(sync, how):
    with pytest.raises(InvalidStatus) as info:
        ws_connect(sync, f"/refuse?how={how}")
    assert info.value.response.status_code == 403


def test_replies_from_a_thread(sync):
    with ws_connect(sync, "/thread") as ws:
        assert ws.recv(timeout=5) == "hello from reply-thread"
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping from reply-thread"


def test_awaitable_returning_consumer(sync):
    with ws_connect(sync, "/awaitable") as ws:  # accepted by the awaited coroutine
        ws.send("task")
        assert ws.recv(timeout=5) == "via task"
        ws.send("future")
        assert ws.recv(timeout=5) == "via future"


def test_invalid_replies_raise_in_the_consumer(sync):
    t = token()
    with ws_connect(sync, f"/invalid?token={t}") as ws:  # accepted after the invalid replies
        ws.send("try")
        after_accept = json.loads(ws.recv(timeout=5))
        ws.send("again")  # the connection is still fine after all that
        assert len(json.loads(ws.recv(timeout=5))) == len(INVALID_REPLIES)
    before_accept = report(sync, t, "before_accept")["before_accept"]
    for results in (before_accept, after_accept):
        assert len(results) == len(INVALID_REPLIES)
        for result in results:
            assert result["type"] == "InvalidReply", result
            assert "ValueError" in result["mro"], result
            assert result["message"], result


def test_send_after_close_reply_raises(sync):
    t = token()
    with ws_connect(sync, f"/close_twice?token={t}") as ws:
        ws.send("close please")
        exc = closed_by_server(ws)
    assert exc.rcvd is not None and exc.rcvd.code == 4003
    assert report(sync, t, "second")["second"]["type"] == "ResponseAlreadySent"


def test_async_def_consumer(servers):
    server = servers["async"]
    t = token()
    with ws_connect(server, f"/anything?token={t}") as ws:
        assert ws.recv(timeout=5) == "async hello"
        ws.send("text")
        assert ws.recv(timeout=5) == "async text"
        ws.send(b"bytes")
        assert ws.recv(timeout=5) == b"async bytes"
        ws.close(4006)
    assert report(server, t, "disconnect")["disconnect"] == {"code": 4006}
