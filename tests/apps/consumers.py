"""Channel-style consumers for tests/test_consumers.py.

Shapes (one Gunicorn each, picked with ``tests.apps.consumers:NAME``): ``plain``, ``async_consumer``,
``callable_object``, ``async_callable_object``, ``partial_consumer``, ``future_consumer``,
``task_consumer``. Each answers with JSON saying which shape served it and what it saw.

``router`` is a plain consumer that dispatches on the path; it serves the message and reply
channel tests. What a consumer could only see from the inside (an exception raised by
``reply_channel.send()``, the running loop) is written to ``REPORTS`` and read back over HTTP
with ``GET /report?token=T``: the worker is a single process, so that state is shared.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict
from urllib.parse import parse_qs

log = logging.getLogger("tests.apps.consumers")

REPORTS: Dict[str, Any] = {}
_REPORTS_LOCK = threading.Lock()
_GATES: Dict[str, asyncio.Event] = {}
_KEPT: Dict[str, Any] = {}
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="consumer-pool")


# -- helpers ----------------------------------------------------------------------------------


def describe(value: Any) -> Any:
    """A JSON form of ``value`` that keeps its type: {"bytes": ...}, {"tuple": [...]}, ..."""
    if isinstance(value, bool):
        return {"bool": value}
    if value is None:
        return {"none": None}
    if type(value) is bytes:
        return {"bytes": value.decode("latin-1")}
    if type(value) is str:
        return {"str": value}
    if type(value) is int:
        return {"int": value}
    if type(value) is float:
        return {"float": value}
    if type(value) is list:
        return {"list": [describe(v) for v in value]}
    if type(value) is tuple:
        return {"tuple": [describe(v) for v in value]}
    if type(value) is dict:
        return {"dict": {str(k): describe(v) for k, v in value.items()}}
    return {"object": type(value).__name__}


def query(message: Dict[str, Any]) -> Dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(message["query_string"].decode("latin-1")).items()}


def reply_json(message: Dict[str, Any], data: Any, status: int = 200) -> None:
    body = json.dumps(data).encode()
    message["reply_channel"].send({
        "status": status,
        "headers": [[b"content-type", b"application/json"], [b"content-length", b"%d" % len(body)]],
        "content": body,
    })


def record(token: str, data: Any) -> None:
    with _REPORTS_LOCK:
        REPORTS[token] = data


def record_exception(token: str, exc: BaseException, **extra: Any) -> None:
    record(token, {
        "type": type(exc).__name__,
        "mro": [c.__name__ for c in type(exc).__mro__],
        "message": str(exc),
        "thread": threading.current_thread().name,
        **extra,
    })
    log.warning("consumer %s caught %s: %s", token, type(exc).__name__, exc)


def loop_ok(message: Dict[str, Any]) -> bool:
    return asyncio.get_running_loop() is message["channel_layer"].loop


def shape_answer(message: Dict[str, Any], shape: str, on_loop: bool) -> None:
    reply_json(message, {
        "shape": shape,
        "path": message["path"],
        "body": message["body"].decode("latin-1"),
        "loop_ok": on_loop,
        "loop_type": type(message["channel_layer"].loop).__module__,
    })


# -- consumers of every shape -----------------------------------------------------------------


def plain(message):
    shape_answer(message, "plain", loop_ok(message))


async def async_consumer(message):
    # Only replies if the worker actually runs the coroutine, and only after a real await.
    await asyncio.sleep(0.01)
    shape_answer(message, "async_consumer", loop_ok(message))


class CallableConsumer:
    """An object whose (plain) ``__call__`` returns an awaitable: the worker awaits it."""

    def __call__(self, message):
        return self.answer(message)

    async def answer(self, message):
        await asyncio.sleep(0.01)
        shape_answer(message, "callable_object", loop_ok(message))


callable_object = CallableConsumer()


class AsyncCallableConsumer:
    async def __call__(self, message):
        await asyncio.sleep(0.01)
        shape_answer(message, "async_callable_object", loop_ok(message))


async_callable_object = AsyncCallableConsumer()


async def _tagged(tag, message):
    await asyncio.sleep(0.01)
    shape_answer(message, tag, loop_ok(message))


partial_consumer = functools.partial(_tagged, "partial_consumer")


def future_consumer(message):
    """Returns a future resolved later by the loop; ``?fail=TEXT`` makes it fail without replying."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    on_loop = loop_ok(message)
    fail = query(message).get("fail")

    def later():
        if fail:
            fut.set_exception(RuntimeError(fail))
        else:
            shape_answer(message, "future_consumer", on_loop)
            fut.set_result(None)

    loop.call_later(0.1, later)
    return fut


def task_consumer(message):
    """Returns a task; ``?fail=TEXT`` makes the task raise without replying."""
    fail = query(message).get("fail")

    async def work():
        await asyncio.sleep(0.05)
        if fail:
            raise RuntimeError(fail)
        shape_answer(message, "task_consumer", loop_ok(message))

    return message["channel_layer"].loop.create_task(work())


# -- the router: message and reply-channel behaviour ------------------------------------------


def message_report(message: Dict[str, Any]) -> Dict[str, Any]:
    body = message["body"]
    return {
        "message_type": type(message).__name__,
        "keys": sorted(message),
        "values": {k: describe(v) for k, v in message.items()
                   if k not in ("reply_channel", "channel_layer", "body")},
        "body_type": type(body).__name__,
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_head": body[:64].decode("latin-1"),
        "reply_channel_has_send": callable(getattr(message["reply_channel"], "send", None)),
        "loop_ok": loop_ok(message),
        "loop_type": type(message["channel_layer"].loop).__module__,
    }


BAD_FIRST_REPLIES = {
    "no-status": {"content": b"no status"},
    "str-content": {"status": 200, "content": "a str, not bytes"},
    "str-header-name": {"status": 200, "headers": [["content-type", b"text/plain"]], "content": b"x"},
    "str-header-value": {"status": 200, "headers": [[b"content-type", "text/plain"]], "content": b"x"},
    "headers-not-pairs": {"status": 200, "headers": [b"content-type"], "content": b"x"},
    "unknown-key": {"status": 200, "content": b"x", "body": b"x"},
    "str-status": {"status": "200", "content": b"x"},
    "not-a-dict": [("status", 200)],
}


def _bad(message, case, token):
    channel = message["reply_channel"]
    if case in BAD_FIRST_REPLIES:
        try:
            channel.send(BAD_FIRST_REPLIES[case])
        except Exception as exc:
            # Once a reply was refused, this response cannot be completed: a proper one
            # must be refused as well.
            try:
                channel.send({"status": 200, "content": b"second try"})
            except Exception as second:
                record_exception(token, exc, second=type(second).__name__)
            else:
                record_exception(token, exc, second=None)
        else:
            record(token, {"type": None})
    elif case == "status-later":
        channel.send({"status": 200, "content": b"partial;", "more_content": True})
        try:
            channel.send({"status": 201, "content": b"more;"})
        except Exception as exc:
            record_exception(token, exc)
        else:
            record(token, {"type": None})
    elif case == "headers-later":
        channel.send({"status": 200, "content": b"partial;", "more_content": True})
        try:
            channel.send({"headers": [[b"x-late", b"1"]], "content": b"more;"})
        except Exception as exc:
            record_exception(token, exc)
        else:
            record(token, {"type": None})
    elif case == "after-final":
        channel.send({"status": 200, "headers": [[b"content-type", b"text/plain"]], "content": b"complete"})
        try:
            channel.send({"content": b"again"})
        except Exception as exc:
            record_exception(token, exc)
        else:
            record(token, {"type": None})
    elif case == "in-thread":
        def work(channel):
            try:
                channel.send({"status": 200, "content": "str from a thread"})
            except Exception as exc:
                record_exception(token, exc)
            else:
                record(token, {"type": None})

        _POOL.submit(work, channel)
    else:
        reply_json(message, {"error": f"unknown case {case}"}, status=404)


async def _stream(channel, chunks, gate, last_key):
    """Send ``chunks`` one reply each, pausing after the first until the gate opens."""
    for i, chunk in enumerate(chunks[:-1]):
        channel.send({"content": chunk, "more_content": True})
        if i == 0 and gate is not None:
            try:
                await asyncio.wait_for(gate.wait(), 10)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(0.005)
    final = {"content": chunks[-1]}
    if last_key == "false":
        final["more_content"] = False
    channel.send(final)


def stream_chunks(n: int) -> "list[bytes]":
    return [b"chunk-%d-%s;" % (i, b"x" * (i * 7)) for i in range(n)]


def _thread_stream(channel, n):
    name = threading.current_thread().name.encode()
    channel.send({"status": 200, "headers": [[b"content-type", b"text/plain"]],
                  "content": b"start:" + name + b";", "more_content": True})
    for i in range(n):
        time.sleep(0.01)
        channel.send({"content": b"%d:%s;" % (i, name), "more_content": True})
    channel.send({"content": b"end;", "more_content": False})


class _CyclicHandler:
    """A request handler holding itself through a bound method: a reference cycle."""

    def __init__(self, message):
        self.message = message
        self.on_done = self.finish

    def finish(self):  # never called: the consumer forgets to reply
        pass


def router(message):
    path = message["path"]
    q = query(message)
    token = q.get("token", "")
    channel = message["reply_channel"]
    layer = message["channel_layer"]

    if path == "/report":
        with _REPORTS_LOCK:
            found = token in REPORTS
            data = REPORTS.get(token)
        reply_json(message, data if found else {"missing": token}, status=200 if found else 404)
    elif path == "/release":
        gate = _GATES.setdefault(token, asyncio.Event())
        gate.set()
        reply_json(message, {"released": token})
    elif path.startswith("/bad/"):
        _bad(message, path[len("/bad/"):], token)
    elif path == "/stream":
        # ?n=chunks &cl=1 (declare content-length) &gate=1 (hold after the first chunk until
        # /release?token=) &last=absent|false (how the final reply ends the response).
        n = int(q.get("n", "4"))
        chunks = stream_chunks(n)
        headers = [[b"content-type", b"text/plain"]]
        if q.get("cl"):
            headers.append([b"content-length", b"%d" % sum(map(len, chunks))])
        gate = _GATES.setdefault(token, asyncio.Event()) if q.get("gate") else None
        channel.send({"status": 200, "headers": headers, "more_content": True})
        layer.loop.create_task(_stream(channel, chunks, gate, q.get("last", "absent")))
    elif path == "/thread-stream":
        _POOL.submit(_thread_stream, channel, int(q.get("n", "5")))
    elif path == "/raise":
        raise RuntimeError(f"consumer failed on purpose {token}")
    elif path == "/raise-mid-stream":
        channel.send({"status": 200, "content": b"started;", "more_content": True})
        raise RuntimeError(f"consumer failed mid-stream {token}")
    elif path == "/stream-until-gone":
        async def stream_until_gone(channel):
            channel.send({"status": 200, "content": b"first;", "more_content": True})
            for i in range(500):  # at most ~5 s
                await asyncio.sleep(0.01)
                try:
                    channel.send({"content": b"%d;" % i + b"." * 1024, "more_content": True})
                except Exception as exc:
                    record_exception(token, exc, sent=i)
                    return
            record(token, {"type": None, "sent": 500})
            channel.send({"content": b""})

        layer.loop.create_task(stream_until_gone(channel))
    elif path == "/poll":
        _KEPT[token] = message  # long-polling: answered later by /answer
    elif path == "/answer":
        kept = _KEPT.pop(token, None)
        if kept is not None:
            kept["reply_channel"].send({"status": 200, "content": b"answered " + token.encode()})
        reply_json(message, {"answered": kept is not None})
    elif path == "/drop":
        pass  # returns without replying and without keeping the message
    elif path == "/drop-later":
        async def forget(message):
            await asyncio.sleep(0.2)

        layer.loop.create_task(forget(message))
    elif path == "/drop-cycle":
        _CyclicHandler(message)
    elif path == "/stream-drop":
        channel.send({"status": 200, "headers": [[b"content-type", b"text/plain"]],
                      "content": b"partial-body;", "more_content": True})
    elif path == "/stream-drop-later":
        async def start_then_forget(message):
            message["reply_channel"].send({"status": 200, "content": b"first;", "more_content": True})
            await asyncio.sleep(0.1)
            message["reply_channel"].send({"content": b"second;", "more_content": True})

        layer.loop.create_task(start_then_forget(message))
    elif path == "/echo-body":
        body = message["body"]
        channel.send({"status": 200, "headers": [[b"content-type", b"application/octet-stream"]],
                      "content": body})
    elif path == "/loop":
        on_loop = loop_ok(message)

        async def from_task(message):
            reply_json(message, {"sync": on_loop, "task": loop_ok(message),
                                 "same_layer_loop": message["channel_layer"].loop is layer.loop})

        layer.loop.create_task(from_task(message))
    elif path == "/minimal":
        channel.send({"status": 200})
    else:
        # Everything else: what the consumer got.
        reply_json(message, message_report(message))
