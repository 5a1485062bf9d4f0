"""``Pending``: the handle a non-blocking layer call returns to synchronous code."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any, Callable, Optional

log = logging.getLogger("asgiworker.channels")


class Pending:
    """The outcome of a ``*_nowait`` call, which runs on the worker's loop after it returned.

    Most callers drop it (fire and forget: a failure nobody asked about is logged when the handle
    is garbage-collected, like an asyncio future's). ``done()`` checks without blocking;
    ``result()`` waits, from another thread: on the loop's own thread the operation cannot make
    progress while the caller blocks, so waiting there raises at once instead of deadlocking.
    """

    __slots__ = ("_future", "_loop_thread", "_what", "_seen", "_log")

    def __init__(self, future: "concurrent.futures.Future[Any]", loop_thread: Optional[int], what: str,
                 logger: Any = None) -> None:
        self._log = logger if logger is not None else log  # the worker's: Gunicorn's error log
        self._future = future
        self._loop_thread = loop_thread
        self._what = what
        self._seen = False

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: Optional[float] = None) -> Any:
        """The call's result, or its exception raised here; waits up to ``timeout`` seconds."""
        self._check_may_wait()
        self._seen = True
        return self._future.result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._check_may_wait()
        self._seen = True
        return self._future.exception(timeout)

    def add_done_callback(self, fn: Callable[["Pending"], Any]) -> None:
        """``fn(handle)`` once the call is done, on the loop's thread (or at once if it is)."""
        self._seen = True
        self._future.add_done_callback(lambda _: fn(self))

    def _check_may_wait(self) -> None:
        if not self._future.done() and threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                f"Waiting for {self._what} on the worker's event loop thread would deadlock it: "
                "the loop runs the call only once this code returns. In an async consumer, await "
                "the async form instead; in a sync one, drop the handle or check done() later.")

    def __del__(self) -> None:
        future = self._future
        if not self._seen and future.done() and not future.cancelled() and future.exception() is not None:
            self._log.warning("%s failed and nobody asked: %r", self._what, future.exception())

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<Pending {self._what} {state}>"
