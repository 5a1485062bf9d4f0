"""The Gunicorn worker: one uvloop event loop per process serving every listening socket.

Gunicorn's master forks us, hands us the listening sockets and watches our heartbeat. We own the
loop: servers on the sockets, signals through the loop, a once-a-second ticker that beats the
heartbeat, refreshes the Date header and closes idle connections, and the graceful shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import traceback
from functools import partial
from typing import Any, List

import uvloop
from gunicorn.arbiter import Arbiter
from gunicorn.workers import base

from asgiworker import adapters, channels, hooks
from asgiworker.config import ConfigurationError, Settings
from asgiworker.http import HttpConnection, ServerState
from asgiworker.lifespan import Lifespan, LifespanFailed
from asgiworker.listener import Listener

# Gunicorn's parser leniencies: our contract (docs/http.md) refuses these requests whatever the
# setting, since each leniency is a request-smuggling risk.
_LENIENCIES_NOT_HONOURED = {
    "permit_obsolete_folding": "obs-fold header lines are always refused with 400",
    "strip_header_spaces": "whitespace before a header's colon is always refused with 400",
    "permit_unconventional_http_method": "unknown methods get 501, invalid ones 400",
    "permit_unconventional_http_version": "versions other than HTTP/1.0 and 1.1 get 505",
    "casefold_http_method": "methods are case-sensitive",
}


class ASGIWorker(base.Worker):  # type: ignore[misc]  # Gunicorn ships no type information
    """``gunicorn --worker-class asgiworker.ASGIWorker``"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.servers: List[Listener] = []
        self.state: ServerState = None  # type: ignore[assignment]
        self.settings: Settings = None  # type: ignore[assignment]
        self.asgi: Any = None
        self.layer: Any = None
        self._stopped: asyncio.Event = None  # type: ignore[assignment]
        self._quick_exit = False
        self._boot_failed = False
        self._stop_at: Any = None

    # -- boot -----------------------------------------------------------------------------------

    def init_process(self) -> None:
        # The loop must exist before Gunicorn's init_process installs signals and loads the app:
        # apps that look up the loop at import time get ours.
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # Settings that mean nothing under an event loop get a warning, not silence.
        if "h2" in (getattr(cfg, "http_protocols", None) or ()):
            log.warning("asgiworker speaks HTTP/1.1 only: --http-protocols h2 is ignored "
                        "(TLS offers http/1.1 alone over ALPN)")
        for name, why in _LENIENCIES_NOT_HONOURED.items():
            setting = cfg.settings.get(name)
            if setting is not None and setting.get() != setting.default:
                log.warning("asgiworker does not honour --%s: %s", name.replace("_", "-"), why)
        if cfg.threads > 1:
            log.warning("asgiworker ignores --threads (%d): one event loop serves all connections; "
                        "use --worker-connections to bound them", cfg.threads)

    def load_wsgi(self) -> None:
        """Load the application and adapt it; a bad configuration stops Gunicorn at boot."""
        try:
            if getattr(self.cfg, "protocol", "http") != "http":
                raise ConfigurationError(f"asgiworker serves HTTP only, not --protocol {self.cfg.protocol}: "
                                         "remove the option or use another worker class")
            self.settings = Settings.from_gunicorn(self.cfg, request_hooks=hooks.from_gunicorn(self, self.cfg, self.log))
            try:
                self.wsgi = self.app.wsgi()
            except SyntaxError as exc:
                if not self.cfg.reload:
                    raise
                # Under --reload a typo must not kill the worker: serve the traceback as a 500
                # and keep watching the file, so that saving the fix brings the app back.
                self.log.exception("Syntax error while loading the application")
                if self.reloader is not None and exc.filename:
                    self.reloader.add_extra_file(exc.filename)
                self.asgi = adapters.error_app("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                return
            self.asgi = adapters.load(self.wsgi, self.settings.app_kind, layer=self._channel_layer())
        except (adapters.AppKindError, ConfigurationError) as exc:
            self.log.error("asgiworker cannot start: %s", exc)
            # WORKER_BOOT_ERROR makes the master halt instead of respawning us forever.
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def _channel_layer(self) -> channels.ChannelLayer:
        """This process's channel layer (ASGIWORKER_CHANNEL_LAYER), bound to our loop and
        installed for get_channel_layer(); it connects when serving starts."""
        if self.layer is None:
            self.layer = channels.build(self.settings.channel_layer)
            self.layer.log = self.log
            self.layer.bind(self.loop)
            channels.install(self.layer)
        return self.layer  # type: ignore[no-any-return]  # built just above

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGQUIT, self._on_sigquit)
        loop.add_signal_handler(signal.SIGINT, self._on_sigquit)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        loop.add_signal_handler(signal.SIGWINCH, lambda: None)  # Gunicorn's master uses it, not us
        loop.add_signal_handler(signal.SIGABRT, self._on_sigabrt)

    # -- signals --------------------------------------------------------------------------------

    def _stop(self) -> None:
        self.alive = False
        if self._stop_at is None:
            self._stop_at = self.loop.time()
        if self._stopped is not None:
            self._stopped.set()

    def _on_sigterm(self) -> None:
        self._stop()

    def _on_sigquit(self) -> None:
        self._quick_exit = True
        self.cfg.worker_int(self)
        self._stop()

    def _on_sigabrt(self) -> None:
        self.alive = False
        self.cfg.worker_abort(self)
        sys.exit(1)

    def _on_max_requests(self) -> None:
        self.log.info("Autorestarting worker after current request.")
        # Stop accepting at once: what waits in the kernel's queue goes to the other workers
        # (or our replacement) instead of to a worker on its way out.
        for server in self.servers:
            server.close()
        # Responses from now on say `connection: close`: clients reconnect to another worker
        # instead of finding their kept-alive connection closed under them.
        self.state.shutdown()
        self._stop()

    # -- serving --------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
            # Whatever still runs past the shutdown (apps ignoring their disconnect) is cancelled.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self.loop.close()
            # The loop's signal handlers are gone: a late SIGTERM from the master (it may repeat
            # it while we exit) must not turn our clean exit into a death by signal.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A failed lifespan startup halts Gunicorn instead of respawning us forever.
        sys.exit(Arbiter.WORKER_BOOT_ERROR if self._boot_failed else 0)

    async def _serve(self) -> None:
        loop = self.loop
        self._stopped = asyncio.Event()
        self.state = ServerState(self.asgi, self.settings, self.log, loop,
                                 max_requests=self.max_requests if self.max_requests < sys.maxsize else 0,
                                 on_max_requests=self._on_max_requests)
        layer = self._channel_layer()
        await layer.start()
        self.log.info("Channel layer: %s", layer.describe())
        lifespan = Lifespan(self.asgi, self.log, self.settings.lifespan)
        try:
            await lifespan.startup()
        except LifespanFailed as exc:
            self.log.error("%s", exc)
            self._boot_failed = True
            return
        if lifespan.supported:
            self.state.lifespan_state = lifespan.state
        ssl_context = self._ssl_context()
        state = self.state
        # Everything loaded so far (Gunicorn, the app, its imports) lives as long as the worker:
        # keep it out of the garbage collector's scans, which then only walk request garbage.
        gc.freeze()
        for gunicorn_socket in self.sockets:
            listener = Listener(loop, gunicorn_socket.sock, partial(HttpConnection, state), ssl_context, self.log)
            listener.start()
            self.servers.append(listener)
        await self._tick_until_stopped()
        await self._shutdown()
        # Gunicorn's master SIGKILLs us graceful_timeout after its SIGTERM: finish before that.
        hard_end = (self._stop_at or loop.time()) + float(self.cfg.graceful_timeout) - 0.1
        await lifespan.shutdown(max(0.1, hard_end - loop.time()), heartbeat=self.notify)
        await layer.close()

    def _ssl_context(self) -> Any:
        if not self.cfg.is_ssl:
            return None
        from gunicorn.sock import ssl_context

        context = ssl_context(self.cfg)
        context.set_alpn_protocols(["http/1.1"])  # never let a client pick h2 from us
        return context

    async def _tick_until_stopped(self) -> None:
        # Gunicorn hands us half its --timeout: beating at least that often keeps us alive, and a
        # loop blocked longer than --timeout stops the beat, so the master rightly kills us.
        interval = max(0.05, min(1.0, float(self.timeout) / 2 if self.timeout else 1.0))
        while self.alive:
            self.notify()
            self.state.tick()
            adapters.tick(self.asgi)
            self.layer.tick()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            try:
                await asyncio.wait_for(self._stopped.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def _shutdown(self) -> None:
        for server in self.servers:
            server.close()
        state = self.state
        if self._quick_exit:
            state.force_close()
            return
        # Graceful: idle connections close now, busy ones after their response; whatever still
        # runs near graceful_timeout is cut, leaving a little of it for the lifespan shutdown.
        state.shutdown()
        loop = self.loop
        graceful = float(self.cfg.graceful_timeout)
        reserve = min(2.0, max(0.4, graceful * 0.1))
        cut_at = (self._stop_at or loop.time()) + max(0.0, graceful - reserve)
        next_tick = loop.time() + 1.0
        while (state.connections or any(listener.pending for listener in self.servers)) \
                and loop.time() < cut_at and not self._quick_exit:
            self.notify()
            if loop.time() >= next_tick:
                state.tick()  # idle and slow connections keep timing out while we drain
                next_tick += 1.0
            await asyncio.sleep(0.05)
        if state.connections:
            self.log.warning("Graceful timeout reached: closing %d connection(s)", len(state.connections))
            state.force_close()
        # The requests that were cut learn it from send()/receive(): give them a moment to wind
        # down, then cancel those still running, so that the lifespan shutdown comes last. Only
        # the application's request and WebSocket tasks: the lifespan and whatever it started
        # (an anyio task group, a background poller) live until the lifespan shutdown ends them.
        running = state.running_tasks()
        if running:
            _, still = await asyncio.wait(running, timeout=0.2)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=0.2)
