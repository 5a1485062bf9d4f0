"""Channel-style consumers on the channel layer, for tests/test_consumer_layer.py.

``consumer`` is a plain ``def`` (it uses the ``*_nowait`` forms and ``Group``), ``async_consumer``
an ``async def`` (it awaits the layer's coroutines). Both dispatch on the path:

WebSocket:
- ``/ws/info``: accepts and sends a JSON description of its message (reply channel name, the
  layer, the pid); an event (a layer message with another ``type``) is sent back to the client as
  JSON of what the consumer got; ``test.explode`` events and ``explode:TAG`` texts raise.
- ``/ws/group?group=G``: joins G on connect (and tells the client its name and pid); each text is
  sent to the group as ``"<pid>: <text>"``; ``leave`` leaves the group; ``group.hello`` events
  are answered with ``hello-event <x>``.
- ``/ws/deadlock?group=G`` (sync only): waits on a ``Pending`` on the loop's thread and tells the
  client what that raised.
- ``/ws/slow`` (async only): every call says ``enter <label> <overlap>`` and ``exit <label>``
  around an ``await asyncio.sleep``, so that the client sees whether two calls for the same
  socket ever overlapped.

HTTP:
- ``/sse?group=G&report=PATH``: a named streaming response (server-sent events) in group G;
  ``sse.event`` events add to the stream; its ``http.disconnect`` is written to PATH.
- ``/pid``, ``POST /send``, ``POST /group_send``, ``POST /group_add``, ``GET /members``,
  ``POST /flood``, ``POST /flush``: the test's hands on this process's layer. In a JSON body's
  ``message``, ``{"__bytes__": "latin-1 text"}`` stands for bytes.

What a consumer can only see from the inside is written to the file named by ``report=PATH``
(the Redis servers have several worker processes: no shared memory to read it back from).
"""

from __future__ import annotations

import asyncio
import json
import os
import traceback
from typing import Any, Dict
from urllib.parse import parse_qs

from asgiworker.channels import ChannelFull, Group, Pending, get_channel_layer
from tests.apps.consumers import reply_json

API = ("send", "receive", "new_channel", "group_add", "group_discard", "group_send", "flush")
NOWAIT_API = ("send_nowait", "group_add_nowait", "group_discard_nowait", "group_send_nowait", "flush_nowait")
ACTIVE: Dict[str, int] = {}  # /ws/slow: consumer calls running, by reply channel name


# -- helpers ---------------------------------------------------------------------------------------


def q(message: Dict[str, Any], name: str, default: str = "") -> str:
    return parse_qs(message["query_string"].decode("latin-1")).get(name, [default])[-1]


def write_report(message: Dict[str, Any], data: Any) -> None:
    path = q(message, "report")
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)


def from_json(value: Any) -> Any:
    """JSON back to a layer message: ``{"__bytes__": "latin-1 text"}`` is bytes."""
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return value["__bytes__"].encode("latin-1")
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def layer_message(data: Dict[str, Any]) -> Dict[str, Any]:
    """The layer message in a control request's JSON (see from_json)."""
    return from_json(data["message"])


def outcome(exc: Any) -> Dict[str, Any]:
    if exc is None:
        return {"ok": True, "pid": os.getpid()}
    return {"ok": False, "error": type(exc).__name__, "message": str(exc), "pid": os.getpid()}


def describe(message: Dict[str, Any]) -> Dict[str, Any]:
    """What a WebSocket consumer says about its connect message."""
    layer = message["channel_layer"]
    reply_channel = message["reply_channel"]
    name = reply_channel.name
    return {
        "pid": os.getpid(),
        "name": name,
        "name_again": reply_channel.name,
        "layer_type": type(layer).__name__,
        "backend": layer.backend,
        "is_process_layer": layer is get_channel_layer(),
        "loop_ok": layer.loop is asyncio.get_running_loop(),
        "async_api": {attr: asyncio.iscoroutinefunction(getattr(layer, attr, None)) for attr in API},
        "nowait_api": {attr: callable(getattr(layer, attr, None)) for attr in NOWAIT_API},
        "extensions": list(getattr(layer, "extensions", ())),
        "capacity": layer.capacity,
        "group_expiry": layer.group_expiry,
        "prefix": layer.prefix,
    }


def describe_event(message: Dict[str, Any]) -> Dict[str, Any]:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in message["headers"]}
    return {
        "event": message["type"],
        "keys": sorted(message),
        "x": message.get("x"),
        "name": message["reply_channel"].name,
        "reply_channel_type": type(message["reply_channel"]).__name__,
        "is_process_layer": message["channel_layer"] is get_channel_layer(),
        "path": message["path"],
        "query_string": message["query_string"].decode("latin-1"),
        "probe_header": headers.get("x-probe"),
        "pid": os.getpid(),
    }


async def members(layer: Any, group: str) -> list:
    """The group's members as the backend holds them (private attributes: a test's look)."""
    if layer.backend == "memory":
        return sorted(layer._groups.get(group, {}))
    from asgiworker.channels.redis import shard

    client = layer._client(shard(group, len(layer.urls)))
    return sorted(m.decode() for m in await client.zrange(layer._group_key(group), 0, -1))


async def control(message: Dict[str, Any]) -> None:
    """The HTTP control endpoints both consumers share (awaited: the sync consumer returns it)."""
    layer = message["channel_layer"]
    path = message["path"]
    data = json.loads(message["body"] or b"{}")
    if path == "/pid":
        reply_json(message, {"pid": os.getpid(), "backend": layer.backend})
    elif path == "/send":
        try:
            await layer.send(data["channel"], layer_message(data))
        except Exception as exc:
            reply_json(message, outcome(exc))
        else:
            reply_json(message, outcome(None))
    elif path == "/group_send":
        await layer.group_send(data["group"], layer_message(data))
        reply_json(message, outcome(None))
    elif path == "/group_add":
        await layer.group_add(data["group"], data["channel"])
        reply_json(message, outcome(None))
    elif path == "/members":
        reply_json(message, {"members": await members(layer, q(message, "group")), "pid": os.getpid()})
    elif path == "/flood":
        # Sends until the layer says ChannelFull (or `count` were sent), a moment apart, so that
        # the socket's task can forward what it can meanwhile.
        sent, error = 0, None
        pad = "x" * int(data.get("size", 0))
        for i in range(int(data["count"])):
            if data.get("event"):
                item = {"type": data["event"], "n": i}
            else:
                item = {"text": f"{i:06d}{pad}"}
            try:
                await layer.send(data["channel"], item)
            except ChannelFull as exc:
                error = str(exc)
                break
            sent += 1
            await asyncio.sleep(float(data.get("pause", 0.005)))
        reply_json(message, {"sent": sent, "full": error})
    elif path == "/flush":
        await layer.flush()
        reply_json(message, outcome(None))
    else:
        reply_json(message, {"error": "not found"}, 404)


# -- the sync consumer ----------------------------------------------------------------------------


def consumer(message: Dict[str, Any]) -> Any:
    kind = message["type"]
    path = message["path"]
    reply_channel = message["reply_channel"]
    layer = message["channel_layer"]
    if path == "/sse":
        return _sse(message)
    if path == "/longpoll":
        return _longpoll(message)
    if kind == "http.request":
        data = json.loads(message["body"] or b"{}")
        if path == "/send":
            # The non-blocking form, answered when the call is done (on the loop's thread).
            pending = layer.send_nowait(data["channel"], layer_message(data))
            pending.add_done_callback(lambda done: reply_json(message, outcome(done.exception())))
            return None
        if path == "/group_send":
            Group(data["group"]).send(layer_message(data)).add_done_callback(
                lambda done: reply_json(message, outcome(done.exception())))
            return None
        return control(message)  # the rest: awaited by the worker
    group = Group(q(message, "group", "default"))
    if kind == "websocket.connect":
        reply_channel.send({"accept": True})
        if path == "/ws/info":
            info = describe(message)
            pending = layer.group_add_nowait("info-probe", info["name"])
            info["nowait_returns"] = type(pending).__name__
            info["is_pending"] = isinstance(pending, Pending)
            layer.group_discard_nowait("info-probe", info["name"])
            reply_channel.send({"text": json.dumps(info)})
        elif path == "/ws/group":
            group.add(reply_channel)
            reply_channel.send({"text": json.dumps({"name": reply_channel.name, "pid": os.getpid()})})
            if q(message, "announce"):
                group.send({"text": f"joined {reply_channel.name}"})  # queued after the add
        elif path == "/ws/deadlock":
            results = {}
            for what, pending in (("group_add", group.add(reply_channel)),
                                  ("send", layer.send_nowait(reply_channel.name, {"text": "to myself"}))):
                try:
                    pending.result(timeout=1)
                    results[what] = None
                except RuntimeError as exc:
                    results[what] = str(exc)
            reply_channel.send({"text": json.dumps(results)})
            group.send({"text": "after the deadlock"})
    elif kind == "websocket.receive":
        text = message.get("text") or ""
        if text.startswith("explode:"):
            raise RuntimeError(f"boom in receive {text[8:]}")
        if path == "/ws/group":
            if text == "leave":
                group.discard(reply_channel)
                reply_channel.send({"text": "left"})
            else:
                group.send({"text": f"{os.getpid()}: {text}"})
        else:
            reply_channel.send({"text": f"echo {text}"})
    elif kind == "websocket.disconnect":
        write_report(message, {"disconnect": message.get("code")})
    else:
        _event(message)
    return None


def _event(message: Dict[str, Any]) -> None:
    kind = message["type"]
    reply_channel = message["reply_channel"]
    if kind == "test.explode":
        raise RuntimeError(f"boom in event {message.get('tag')}")
    if kind == "group.hello":
        reply_channel.send({"text": f"hello-event {message.get('x')}"})
    else:
        reply_channel.send({"text": json.dumps(describe_event(message))})


def _sse(message: Dict[str, Any]) -> Any:
    """A server-sent-events stream, named and in a group, until the client leaves."""
    kind = message["type"]
    reply_channel = message["reply_channel"]
    if kind == "http.request":
        name = reply_channel.name
        Group(q(message, "group", "default")).add(reply_channel)
        first = json.dumps({"name": name, "pid": os.getpid()})
        reply_channel.send({"status": 200, "headers": [[b"content-type", b"text/event-stream"]],
                            "content": f"data: {first}\n\n".encode(), "more_content": True})
    elif kind == "http.disconnect":
        write_report(message, {**describe_event(message), "disconnected": True})
    elif kind == "sse.event":
        reply_channel.send({"content": f"data: event {message.get('x')}\n\n".encode(), "more_content": True})
    elif kind == "test.explode":
        raise RuntimeError(f"boom in event {message.get('tag')}")
    return None


def _longpoll(message: Dict[str, Any]) -> None:
    """A request answered later, from anywhere: the consumer only names it and joins a group."""
    kind = message["type"]
    if kind == "http.request":
        Group(q(message, "group", "default")).add(message["reply_channel"])
        write_report(message, {"name": message["reply_channel"].name, "pid": os.getpid()})
    elif kind == "http.disconnect":
        write_report(message, {**describe_event(message), "disconnected": True})


# -- the async consumer ---------------------------------------------------------------------------


async def async_consumer(message: Dict[str, Any]) -> None:
    kind = message["type"]
    path = message["path"]
    reply_channel = message["reply_channel"]
    layer = message["channel_layer"]
    if kind == "http.request" and path == "/sse":
        name = reply_channel.name
        await layer.group_add(q(message, "group", "default"), name)
        first = json.dumps({"name": name, "pid": os.getpid()})
        reply_channel.send({"status": 200, "headers": [[b"content-type", b"text/event-stream"]],
                            "content": f"data: {first}\n\n".encode(), "more_content": True})
        return
    if kind == "http.request":
        await control(message)
        return
    if kind == "http.disconnect":
        write_report(message, {**describe_event(message), "disconnected": True})
        return
    if path == "/ws/slow":
        await _slow(message)
        return
    group = q(message, "group", "default")
    if kind == "websocket.connect":
        reply_channel.send({"accept": True})
        if path == "/ws/info":
            reply_channel.send({"text": json.dumps(describe(message))})
        elif path == "/ws/group":
            await layer.group_add(group, reply_channel.name)
            reply_channel.send({"text": json.dumps({"name": reply_channel.name, "pid": os.getpid()})})
            if q(message, "announce"):
                await layer.group_send(group, {"text": f"joined {reply_channel.name}"})
    elif kind == "websocket.receive":
        text = message.get("text") or ""
        if text.startswith("explode:"):
            raise RuntimeError(f"boom in receive {text[8:]}")
        if path == "/ws/group":
            if text == "leave":
                await layer.group_discard(group, reply_channel.name)
                reply_channel.send({"text": "left"})
            else:
                await layer.group_send(group, {"text": f"{os.getpid()}: {text}"})
        elif text == "api":
            reply_channel.send({"text": json.dumps(await _api_roundtrip(layer))})
        else:
            reply_channel.send({"text": f"echo {text}"})
    elif kind == "websocket.disconnect":
        write_report(message, {"disconnect": message.get("code")})
    elif kind == "sse.event":
        reply_channel.send({"content": f"data: event {message.get('x')}\n\n".encode(), "more_content": True})
    else:
        await asyncio.sleep(0.01)  # an event handler that really awaits
        _event(message)


async def _api_roundtrip(layer: Any) -> Dict[str, Any]:
    """new_channel/send/receive and a group of a new_channel name, from inside a consumer."""
    try:
        mine = await layer.new_channel()
        await layer.send(mine, {"type": "api.ping", "n": 1})
        got = await asyncio.wait_for(layer.receive(mine), 5)
        await layer.group_add("api-group", mine)
        await layer.group_send("api-group", {"type": "api.grouped", "n": 2})
        grouped = await asyncio.wait_for(layer.receive(mine), 5)
        await layer.group_discard("api-group", mine)
        await layer.group_send("api-group", {"type": "api.after_discard"})
        try:
            late = await asyncio.wait_for(layer.receive(mine), 0.3)
        except asyncio.TimeoutError:
            late = None
        return {"name": mine, "got": got, "grouped": grouped, "late": late}
    except Exception:
        return {"error": traceback.format_exc()}


async def _slow(message: Dict[str, Any]) -> None:
    kind = message["type"]
    reply_channel = message["reply_channel"]
    if kind == "websocket.connect":
        reply_channel.send({"accept": True, "text": json.dumps({"name": reply_channel.name, "pid": os.getpid()})})
        return
    if kind == "websocket.disconnect":
        return
    if kind == "websocket.receive":
        text = message.get("text") or ""
        label, _, seconds = text.partition(" ")
        delay = float(seconds or 0.05)
    else:
        label, delay = f"event{message.get('n')}", 0.05
    name = reply_channel.name
    ACTIVE[name] = ACTIVE.get(name, 0) + 1
    try:
        reply_channel.send({"text": f"enter {label} {ACTIVE[name] - 1}"})
        await asyncio.sleep(delay)
    finally:
        ACTIVE[name] -= 1
    reply_channel.send({"text": f"exit {label}"})
