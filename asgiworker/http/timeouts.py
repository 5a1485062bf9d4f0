"""The connection's clocks: checked once a second by the worker's tick (``check_timeouts``) and at
the start of a graceful stop (``shutdown``): the send timeout (a client that reads nothing), the
body timeout and minimum rate (a slow body), the header timeout (slowloris), the keep-alive
timeout and the graceful stop's grace for idle connections, and the end of a lingering close.

``ConnectionTimeouts`` is a part of ``HttpConnection`` (which holds the attributes used here).
"""

from __future__ import annotations

from typing import Any, Optional

from asgiworker.http.cycle import RequestCycle
from asgiworker.wire.lines import error_response

# At a graceful stop, an idle kept-alive connection is closed after this long without a request.
SHUTDOWN_IDLE_GRACE = 1.0


class ConnectionTimeouts:
    # Declared for the type checker; set by HttpConnection.
    state: Any
    settings: Any
    flow: Any
    out: Any
    client: Any
    stopping: bool
    _active: Optional[RequestCycle]
    _parsing: Optional[RequestCycle]
    _head_started: Optional[float]
    _last_activity: float
    _linger_until: Optional[float]
    _body_bytes: int
    _rate_cycle: Optional[RequestCycle]
    _rate_since: float
    _rate_mark: int

    @property
    def closed(self) -> bool:
        raise NotImplementedError  # HttpConnection's

    def _end_linger(self, abort: bool) -> None:
        raise NotImplementedError  # HttpConnection's

    def _reject(self, status: int, reason: str, quiet: bool = False) -> None:
        raise NotImplementedError  # HttpConnection's

    def send_and_close(self, data: bytes) -> None:
        raise NotImplementedError  # HttpConnection's

    def _close(self, linger: bool = True) -> None:
        raise NotImplementedError  # HttpConnection's

    def _cut(self) -> None:
        raise NotImplementedError  # HttpConnection's

    def check_timeouts(self, now: float) -> None:
        settings = self.settings
        if self.closed:
            until = self._linger_until
            if until is not None:
                stalled = self.flow.stalled_for(now) > settings.send_timeout
                if stalled or now >= until:
                    self._end_linger(abort=stalled)
            return
        if self.flow.stalled_for(now) > settings.send_timeout:
            # The client takes none of our output (slow read): its buffer is ours to free. Its
            # app, if one is writing, sees the disconnect.
            self.state.log.info("Closing connection from %s: it read nothing of the response for %gs",
                                self._peer_host(), settings.send_timeout)
            self._cut()
            return
        parsing = self._parsing
        if parsing is not None and parsing.more_body and self._body_too_slow(parsing, now):
            return
        active = self._active
        if active is not None:
            task = active.task
            if task is None or not task.done():
                return  # an application is at work (or about to start): its time is its own
            # Nothing runs for this connection any more although requests are queued: the idle
            # and header timeouts below apply, so that a stalled connection cannot live forever.
        if self._head_started is not None:
            if now - self._head_started > settings.header_timeout:
                self.state.log.info("Closing connection from %s: request head not received in %gs",
                                    self._peer_host(), settings.header_timeout)
                self.send_and_close(error_response(408, "Request Timeout", self.state.default_headers))
        elif parsing is None and now - self._last_activity > (
                settings.keepalive if not self.stopping else min(settings.keepalive, SHUTDOWN_IDLE_GRACE)):
            self._close()

    def _body_too_slow(self, parsing: RequestCycle, now: float) -> bool:
        """Slow body: a body that stops arriving for body_timeout, or trickles in slower than
        body_min_rate bytes/s over a window of body_timeout, is given up (408; its app sees a
        disconnect). Not while reading is paused by us: the app is then the slow one."""
        settings = self.settings
        if self.flow.reading_paused:
            self._rate_cycle = None  # a new window once we read again
            return False
        why = None
        if now - self._last_activity > settings.body_timeout:
            why = "the request body stopped arriving for %gs" % settings.body_timeout
        elif settings.body_min_rate:
            if self._rate_cycle is not parsing:
                self._rate_cycle, self._rate_since, self._rate_mark = parsing, now, self._body_bytes
            elif now - self._rate_since >= settings.body_timeout:
                rate = (self._body_bytes - self._rate_mark) / (now - self._rate_since)
                if rate < settings.body_min_rate:
                    why = "the request body arrived at %.0f bytes/s (ASGIWORKER_BODY_MIN_RATE: %d)" % (
                        rate, settings.body_min_rate)
                self._rate_since, self._rate_mark = now, self._body_bytes
        if why is None:
            return False
        self._reject(408, "Request Timeout: " + why, quiet=True)
        return True

    def _peer_host(self) -> str:
        return self.client[0] if self.client else "?"

    def shutdown(self) -> None:
        """A graceful stop begins: every response from now on says `connection: close`. Nothing
        is closed here: an idle kept-alive connection may be carrying the client's next request
        right now, and closing it would make the client guess whether it was read. It gets
        ``SHUTDOWN_IDLE_GRACE`` (at most its keep-alive) to send one, which is answered, then is
        closed in stages; a connection that has not sent its first request yet likewise."""
        self.stopping = True
