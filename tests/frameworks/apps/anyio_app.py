"""A raw ASGI 3 app, no framework: the asyncio contract and plain anyio code, for test_anyio.py.

What any asyncio server promises an app, and what libraries silently rely on:

* every app call runs inside a real ``asyncio.Task``, the same one from its first line to its last
  (``asyncio.timeout``, ``asyncio.wait_for`` on 3.12+, anyio's cancel scopes and sniffio all look
  the task up with ``asyncio.current_task()``);
* every request runs in a context of its own: a ContextVar one request sets is never seen by the
  next request, not even on the same keep-alive connection.

``asyncio_report`` and ``REQUEST_VALUE`` are shared with fastapi_app.py, which runs the same probes
through FastAPI. Each probe records what it saw, or the exception it met, so a failure shows
exactly which part of the contract broke.

Routes (all ``GET``, answering JSON):

``/asyncio``            the asyncio contract probes (current task, sniffio, timeouts, TaskGroup)
``/ctx/set?value=&when=`` sets ``REQUEST_VALUE`` (``when=eager``: before any await; ``after-await``)
``/ctx/get``            reads ``REQUEST_VALUE`` (must be the default in every new request)
``/anyio/task-group``   anyio task groups: children, ``tg.start``, memory streams, error propagation
``/anyio/to-thread``    ``anyio.to_thread.run_sync`` (and ``anyio.from_thread.run`` back into the loop)
``/anyio/cancel``       ``move_on_after``, ``fail_after``, a manual cancel, a shielded scope
``/anyio/sleep``        ``anyio.sleep``, ``anyio.Event``, ``anyio.get_current_task``
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List
from urllib.parse import parse_qs

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import sniffio

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]

DEFAULT_VALUE = "unset"
REQUEST_VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("request_value", default=DEFAULT_VALUE)
THREAD_VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("thread_value", default="not propagated")

HAS_311 = sys.version_info >= (3, 11)
UNAVAILABLE = "unavailable before Python 3.11"


# -- the asyncio contract ------------------------------------------------------------------------

async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def asyncio_report() -> Dict[str, Any]:
    """Probe the asyncio contract from inside a request. Await it first thing, before any other
    await: the first stretch of a request (before it ever suspends) must run in the Task too, so
    the probes of that stretch come first (the current task, sniffio, a timeout around the very
    first await), then those after a suspension."""
    report: Dict[str, Any] = {}
    task = asyncio.current_task()
    report["current_task"] = task is not None
    try:
        report["sniffio"] = sniffio.current_async_library()
    except Exception as exc:  # noqa: BLE001 - the probe reports what it met
        report["sniffio"] = f"error: {exc!r}"
    # The request's first await is a timeout: it must find the Task already there.
    try:
        if HAS_311:
            async with asyncio.timeout(1):
                await asyncio.sleep(0)
        else:
            await asyncio.wait_for(asyncio.sleep(0), 1)
        report["first_await_under_timeout"] = "ok"
    except Exception as exc:  # noqa: BLE001 - the probe reports what it met
        report["first_await_under_timeout"] = f"error: {exc!r}"
    report["same_task_after_await"] = task is not None and asyncio.current_task() is task

    async def wait_for() -> str:
        try:
            await asyncio.wait_for(asyncio.sleep(10), 0.05)
        except asyncio.TimeoutError:
            return "timed out"
        return "completed"

    async def timeout() -> Any:
        if not HAS_311:
            return UNAVAILABLE
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(10)
        except TimeoutError:
            # The timeout's cancellation was absorbed: the task is not left "cancelling".
            return ["timed out", asyncio.current_task().cancelling()]
        return "completed"

    async def task_group() -> Any:
        if not HAS_311:
            return UNAVAILABLE
        async with asyncio.TaskGroup() as tg:
            children = [tg.create_task(_double(i)) for i in range(3)]
        return [child.result() for child in children]

    async def gather() -> List[int]:
        return list(await asyncio.gather(*(_double(i) for i in range(3))))

    for name, probe in (("wait_for", wait_for), ("timeout", timeout), ("task_group", task_group),
                        ("gather", gather)):
        try:
            report[name] = await probe()
        except Exception as exc:  # noqa: BLE001 - the probe reports what it met
            report[name] = f"error: {exc!r}"
    # After all those timeouts, the request goes on normally: nothing left it cancelled.
    await asyncio.sleep(0.001)
    report["finished"] = True
    return report


def expected_asyncio_report() -> Dict[str, Any]:
    """What ``asyncio_report()`` gives under a correct server, on this Python (the tests and the
    servers they start run the same interpreter)."""
    return {
        "current_task": True,
        "sniffio": "asyncio",
        "first_await_under_timeout": "ok",
        "same_task_after_await": True,
        "wait_for": "timed out",
        "timeout": ["timed out", 0] if HAS_311 else UNAVAILABLE,
        "task_group": [0, 2, 4] if HAS_311 else UNAVAILABLE,
        "gather": [0, 2, 4],
        "finished": True,
    }


async def set_request_value(value: str, when: str) -> Dict[str, str]:
    """Set ``REQUEST_VALUE`` for this request (``when``: ``eager`` before the first await, or
    ``after-await``): what the request saw before, and after a later await."""
    before = REQUEST_VALUE.get()
    if when == "after-await":
        await asyncio.sleep(0)
    REQUEST_VALUE.set(value)
    await asyncio.sleep(0)
    return {"before": before, "after": REQUEST_VALUE.get()}


# -- plain anyio ----------------------------------------------------------------------------------

async def anyio_task_group() -> Dict[str, Any]:
    report: Dict[str, Any] = {}
    finished: List[int] = []

    async def child(i: int) -> None:
        await anyio.sleep(0.005 * (3 - i))
        finished.append(i)

    async def starter(*, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        await anyio.sleep(0)
        task_status.started("ready")
        await anyio.sleep(0.005)

    send_stream, receive_stream = anyio.create_memory_object_stream(10)
    received: List[int] = []

    async def producer() -> None:
        async with send_stream:
            for i in range(5):
                await send_stream.send(i)

    async def consumer() -> None:
        async with receive_stream:
            async for item in receive_stream:
                received.append(item)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(child, i)
        report["started"] = await tg.start(starter)
        tg.start_soon(producer)
        tg.start_soon(consumer)
    report["children"] = sorted(finished)
    report["stream"] = received

    # A child that fails cancels its siblings and the group raises an exception group.
    sibling: Dict[str, bool] = {"cancelled": False}

    async def failing() -> None:
        await anyio.sleep(0.005)
        raise ValueError("boom")

    async def sleeper() -> None:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            sibling["cancelled"] = True
            raise

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            tg.start_soon(failing)
    except Exception as exc:  # noqa: BLE001 - an ExceptionGroup (the backport before 3.11)
        report["error"] = [type(e).__name__ for e in getattr(exc, "exceptions", [exc])]
    else:
        report["error"] = None
    report["sibling_cancelled"] = sibling["cancelled"]
    return report


async def _triple(x: int) -> int:
    await anyio.sleep(0)
    return 3 * x


def _blocking(x: int) -> Dict[str, Any]:
    time.sleep(0.005)
    return {
        "in_worker_thread": threading.current_thread() is not threading.main_thread(),
        "value": x,
        "context": THREAD_VALUE.get(),
        "from_thread": anyio.from_thread.run(_triple, x),
    }


async def anyio_to_thread() -> Dict[str, Any]:
    THREAD_VALUE.set("propagated")
    result = await anyio.to_thread.run_sync(_blocking, 7)
    results: List[int] = []

    async def one(i: int) -> None:
        results.append((await anyio.to_thread.run_sync(_blocking, i))["value"])

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, i)
    result["concurrent"] = sorted(results)
    return result


async def anyio_cancel() -> Dict[str, Any]:
    report: Dict[str, Any] = {}
    started = anyio.current_time()
    reached = False
    with anyio.move_on_after(0.05) as scope:
        await anyio.sleep(10)
        reached = True
    report["move_on_after"] = {"cancel_called": scope.cancel_called,
                               "cancelled_caught": scope.cancelled_caught, "body_finished": reached}
    try:
        with anyio.fail_after(0.05):
            await anyio.sleep(10)
        report["fail_after"] = "completed"
    except TimeoutError:
        report["fail_after"] = "TimeoutError"
    with anyio.CancelScope() as manual:
        manual.cancel()
        await anyio.sleep(10)
    report["manual"] = manual.cancelled_caught
    shielded_finished = False
    with anyio.move_on_after(0.01) as outer:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.03)
            shielded_finished = True
        await anyio.sleep(10)
    report["shield"] = {"shielded_finished": shielded_finished, "outer_caught": outer.cancelled_caught}
    await anyio.sleep(0)  # the request is not left cancelled
    report["elapsed_under_2s"] = anyio.current_time() - started < 2
    return report


async def anyio_sleep() -> Dict[str, Any]:
    report: Dict[str, Any] = {"backend": sniffio.current_async_library()}
    started = time.monotonic()
    await anyio.sleep(0.05)
    elapsed = time.monotonic() - started
    report["slept_long_enough"] = elapsed >= 0.04
    report["slept_under_1s"] = elapsed < 1
    event = anyio.Event()

    async def setter() -> None:
        await anyio.sleep(0.005)
        event.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(setter)
        with anyio.fail_after(2):
            await event.wait()
    report["event_set"] = event.is_set()
    current = anyio.get_current_task()
    report["current_task_has_id"] = isinstance(current.id, int)
    return report


# -- the ASGI app ---------------------------------------------------------------------------------

async def _json(send: Send, payload: Any, status: int = 200) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/asyncio":
        # First thing: the probes must see the request's first stretch, before any await.
        payload: Any = await asyncio_report()
    elif path == "/ctx/set":
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        payload = await set_request_value(query.get("value", ""), query.get("when", "eager"))
    elif path == "/ctx/get":
        payload = {"value": REQUEST_VALUE.get()}
    elif path == "/anyio/task-group":
        payload = await anyio_task_group()
    elif path == "/anyio/to-thread":
        payload = await anyio_to_thread()
    elif path == "/anyio/cancel":
        payload = await anyio_cancel()
    elif path == "/anyio/sleep":
        payload = await anyio_sleep()
    else:
        await _json(send, {"error": "not found", "path": path}, status=404)
        return
    if isinstance(payload, dict):
        payload["client_port"] = scope["client"][1] if scope.get("client") else None
        payload["pid"] = os.getpid()
    await _json(send, payload)
