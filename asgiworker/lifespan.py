"""The ASGI lifespan protocol: startup before the worker accepts connections, shutdown after.

Modes: ``on`` (the app must support it), ``off`` (never run), ``auto`` (run it; an app that raises
on the lifespan scope, as Django does, simply runs without it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Optional


class LifespanFailed(Exception):
    """Startup failed: the worker must not serve."""


class Lifespan:
    def __init__(self, app: Callable[..., Any], log: Any, mode: str) -> None:
        self.app = app
        self.log = log
        self.mode = mode
        self.state: Dict[str, Any] = {}
        self.supported = False
        self._inbox: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self._startup_done: Optional[asyncio.Future[Any]] = None
        self._shutdown_done: Optional[asyncio.Future[Any]] = None
        self._task: Optional[asyncio.Task[Any]] = None

    async def startup(self) -> None:
        """Run the app's startup; raise ``LifespanFailed`` if the worker must not serve."""
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._startup_done = loop.create_future()
        self._shutdown_done = loop.create_future()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._task = loop.create_task(self._run(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        outcome = await self._startup_done
        if outcome is None:
            self.supported = True
            return
        kind, detail = outcome
        if kind == "failed":
            raise LifespanFailed(f"Application startup failed: {detail}")
        # The app raised or returned instead of answering the startup.
        if self.mode == "on":
            raise LifespanFailed(f"Application does not support lifespan ({detail}) but lifespan is 'on'")
        self.log.info("ASGI lifespan not supported by the application (%s); serving without it", detail)

    @property
    def task(self) -> Optional[asyncio.Task[Any]]:
        return self._task

    async def shutdown(self, timeout: float, heartbeat: Callable[[], None] = lambda: None) -> None:
        if not self.supported or self._shutdown_done is None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Beat the heartbeat while the app cleans up: a slow shutdown is not a stuck worker.
        while not self._shutdown_done.done() and loop.time() < deadline:
            heartbeat()
            await asyncio.wait([self._shutdown_done], timeout=min(0.5, max(0.0, deadline - loop.time())))
        if not self._shutdown_done.done():
            self.log.warning("ASGI lifespan shutdown did not complete in %gs", timeout)
            if self._task is not None:
                self._task.cancel()
            return
        outcome = self._shutdown_done.result()
        if outcome is not None:
            self.log.error("ASGI lifespan shutdown failed: %s", outcome[1])

    async def _run(self, scope: Dict[str, Any]) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # the app's failure is reported, never raised into the loop
            detail = f"{type(exc).__name__}: {exc}"
            if self._startup_done is not None and not self._startup_done.done():
                if self.mode == "on":
                    self.log.exception("Exception in ASGI lifespan startup")
                self._startup_done.set_result(("error", detail))
            elif self._shutdown_done is not None and not self._shutdown_done.done():
                self.log.exception("Exception in ASGI lifespan shutdown")
                self._shutdown_done.set_result(("error", detail))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if self._startup_done is not None and not self._startup_done.done():
                self._startup_done.set_result(("error", "the application returned"))
            if self._shutdown_done is not None and not self._shutdown_done.done():
                self._shutdown_done.set_result(None)

    async def _receive(self) -> Dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: Dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            _resolve(self._startup_done, None)
        elif kind == "lifespan.startup.failed":
            _resolve(self._startup_done, ("failed", message.get("message", "")))
        elif kind == "lifespan.shutdown.complete":
            _resolve(self._shutdown_done, None)
        elif kind == "lifespan.shutdown.failed":
            _resolve(self._shutdown_done, ("failed", message.get("message", "")))
        else:
            raise RuntimeError(f"Unexpected ASGI lifespan message type {kind!r}")


def _resolve(future: Optional[asyncio.Future[Any]], value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)
