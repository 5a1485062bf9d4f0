"""What all connections of one worker share: the app, the settings, the clock, the connections
and the application tasks still running."""

from __future__ import annotations

import asyncio
from contextvars import copy_context
from email.utils import formatdate
from typing import Any, Awaitable, Callable, Dict, List, Optional, Protocol

from asgiworker.config import Settings
from asgiworker.tasks import start_task
from asgiworker.wire.grammar import SPECIAL_HEADERS

ASGIApp = Callable[[Dict[str, Any], Callable[[], Awaitable[Dict[str, Any]]], Callable[[Dict[str, Any]], Awaitable[None]]], Awaitable[None]]


class ServedConnection(Protocol):
    """What the server asks of every connection it holds (HTTP connections, WebSocket sessions)."""

    def check_timeouts(self, now: float) -> None:
        """Once a second: close the connection if it has been idle or slow for too long."""

    def shutdown(self) -> None:
        """A graceful stop begins: close when idle, answer what was accepted."""

    def abort(self) -> None:
        """The graceful stop's deadline: close now."""


class AppCall(Protocol):
    """What runs an application call: its task, once started."""

    task: Optional["asyncio.Task[None]"]


class ServerState:
    def __init__(self, app: ASGIApp, settings: Settings, log: Any, loop: asyncio.AbstractEventLoop,
                 max_requests: int = 0, on_max_requests: Optional[Callable[[], None]] = None) -> None:
        self.app = app
        self.settings = settings
        self.log = log
        self.loop = loop
        self.connections: "set[ServedConnection]" = set()
        # Every request and WebSocket session runs in its own copy of this context, taken before
        # anything is served (see asgiworker.tasks). Those whose task is still running are kept
        # here (each takes itself out as its task ends), so that a shutdown cancels the
        # application's requests and nothing else: the lifespan and whatever it started live on
        # until the lifespan shutdown.
        self.base_context = copy_context()
        self.running: "set[AppCall]" = set()
        self.stopping = False
        self.requests_total = 0
        # 0 (no limit) is never reached: the counter starts at 0 and is compared after a +1.
        self.max_requests = max_requests
        self.on_max_requests = on_max_requests
        self.default_headers = b""
        # Read for every request: Gunicorn's pre/post_request hooks (or None), whether requests
        # are timed (for the access log), and whether a finished request is reported.
        self.hooks = settings.request_hooks
        self.timing = settings.access_log
        self.reporting = bool(settings.access_log or settings.request_hooks is not None)
        proxy = settings.proxy
        self.proxied_headers = SPECIAL_HEADERS | proxy.header_names if proxy else SPECIAL_HEADERS
        # Set by the worker when the app's lifespan startup filled a state (copied per request).
        self.lifespan_state: Optional[Dict[str, Any]] = None
        self.update_date()

    def update_date(self) -> None:
        # The Date header is cached and refreshed once a second by the worker's ticker.
        self.default_headers = b"".join(
            (b"date: ", formatdate(usegmt=True).encode("ascii"), b"\r\nserver: ", self.settings.server_header, b"\r\n")
        )

    def start_app_task(self, owner: AppCall, coro: Any) -> None:
        """Start ``coro``, ``owner``'s application call, as ``owner.task`` (asgiworker.tasks).
        ``owner`` is in ``running`` until its call ends; the call takes it out itself, which
        costs less than a done-callback (a request answered in its first step never goes in)."""
        owner.task = task = start_task(self.loop, coro, self.base_context)
        if not task.done():
            self.running.add(owner)

    def running_tasks(self) -> List["asyncio.Task[None]"]:
        """The application tasks still running (requests, WebSocket sessions)."""
        return [owner.task for owner in self.running if owner.task is not None and not owner.task.done()]

    def request_done(self) -> None:
        self.requests_total += 1
        if self.requests_total == self.max_requests and self.on_max_requests is not None:
            self.on_max_requests()

    def tick(self) -> None:
        """Once a second: refresh the Date header and close idle or too slow connections."""
        self.update_date()
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_timeouts(now)

    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their last response."""
        self.stopping = True
        for conn in list(self.connections):
            conn.shutdown()

    def force_close(self) -> None:
        for conn in list(self.connections):
            conn.abort()
