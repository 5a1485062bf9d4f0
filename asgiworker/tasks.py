"""Starting an application call: a real ``asyncio.Task`` of the worker's loop, in a clean context.

Every HTTP request, WebSocket session and lifespan run goes through ``start_task``, so from the
application's first line ``asyncio.current_task()`` is its task, and ``asyncio.timeout``,
``TaskGroup``, anyio and sniffio work. Each call runs in its own copy of the server's base context
(taken once, before anything is served): nothing a request sets in a ``ContextVar`` reaches the
next request on its connection.

On Python 3.12 and later the task is started eagerly (the standard library's ``eager_start``): its
first step runs at once, inside the call that started it, and a request answered without waiting
never goes through the loop's ready queue. It is a real Task from the start all the same. Callers
must therefore never start a task from inside another application's ``send()`` or ``receive()``
(the HTTP connection schedules the next pipelined request with ``call_soon`` for that reason).
"""

from __future__ import annotations

import asyncio
import sys
from contextvars import Context
from typing import Any, Coroutine

EAGER = sys.version_info >= (3, 12)

if EAGER:

    def start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], base: Context) -> "asyncio.Task[Any]":
        """Run ``coro`` as a Task of ``loop`` in a copy of ``base``, its first step right now."""
        return asyncio.Task(coro, loop=loop, context=base.copy(), eager_start=True)  # type: ignore[call-arg]  # 3.12+ API, typeshed lags

elif sys.version_info >= (3, 11):

    def start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], base: Context) -> "asyncio.Task[Any]":
        """Run ``coro`` as a Task of ``loop`` in a copy of ``base``, from the loop's next turn."""
        return loop.create_task(coro, context=base.copy())

else:

    def start_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], base: Context) -> "asyncio.Task[Any]":
        """Run ``coro`` as a Task of ``loop`` in a copy of ``base``, from the loop's next turn."""
        # Before 3.11 a Task copies the context it is created in: create it inside the base.
        return base.run(loop.create_task, coro)


def start_server_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> "asyncio.Task[Any]":
    """A Task for the server's own short coroutines (the loop's connection set-up: no
    application code), started eagerly where the standard library can."""
    if EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]  # 3.12+ API
    return loop.create_task(coro)


if sys.version_info >= (3, 11):

    def start_soon(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], base: Context) -> "asyncio.Task[Any]":
        """Run ``coro`` as a Task of ``loop`` in a copy of ``base``, from the loop's next turn
        (never eagerly: for application calls started from inside another's, e.g. a channel
        message delivered while its sender's ``await layer.send()`` runs)."""
        return loop.create_task(coro, context=base.copy())

else:

    def start_soon(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], base: Context) -> "asyncio.Task[Any]":
        """Run ``coro`` as a Task of ``loop`` in a copy of ``base``, from the loop's next turn."""
        return base.run(loop.create_task, coro)
