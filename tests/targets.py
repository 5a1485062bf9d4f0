"""One question, "what does the server send back for these bytes, and does it close?", asked of
either a real Gunicorn or the protocol harness, so that a rule of pure protocol is written once and
runs in-process (fast, exact) and, for a sample, end to end:

    data, closed = exchange(target, b"GET / HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n")

``target`` is a ``GunicornServer`` (bytes over a loopback socket, tests/wire.py) or an
``InProcess`` (each exchange a fresh ``HttpConnection`` over tests/protocol_harness.py). What the
harness can not stand in for: the worker's 1-second tick (timeouts), signals, real sockets and
processes - tests of those keep a ``GunicornServer``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Tuple, Union

import pytest

from asgiworker.config import Settings
from tests.conftest import GunicornServer
from tests.protocol_harness import Harness
from tests.wire import send_and_read


class InProcess:
    """Serves ``app`` with ``settings`` on ``loop``, one harness connection per exchange."""

    # How long an exchange lets the connection work before taking its output as final: past this
    # the server waits for the client (a body still to come), as a socket read would time out.
    # Only the loop's own work runs meanwhile, so this is generous.
    SETTLE = 1.0

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, settings: Optional[Settings] = None) -> None:
        self.app = app
        self.loop = loop
        self.settings = settings

    def __repr__(self) -> str:
        return "<in-process>"

    def exchange(self, data: bytes, shut_wr: bool = False) -> Tuple[bytes, bool]:
        return self.loop.run_until_complete(self._exchange(data, shut_wr))

    async def _exchange(self, data: bytes, shut_wr: bool) -> Tuple[bytes, bool]:
        harness = Harness(self.app, self.loop, self.settings)
        harness.conn.data_received(data)
        if shut_wr and not harness.transport.closing and not harness.conn.eof_received():
            harness.transport.close()  # what a real transport does when eof_received() is falsy
        try:
            await harness.settle(self.loop.time() + self.SETTLE)
        except TimeoutError:
            pass  # still waiting for the client: what it sent so far is the answer
        output, closed = harness.output(), harness.transport.closing
        await harness.close()
        return output, closed


Target = Union[GunicornServer, InProcess]


def exchange(target: Target, data: bytes, timeout: float = 5.0, shut_wr: bool = False) -> Tuple[bytes, bool]:
    """Send ``data`` on a new connection (half-closing it after, if ``shut_wr``); return what the
    server sent and whether it closed (within ``timeout`` over a socket)."""
    if isinstance(target, InProcess):
        return target.exchange(data, shut_wr)
    return send_and_read(target.port, data, timeout, shut_wr)


IN_PROCESS, GUNICORN = "in-process", "gunicorn"

# For a representative rule: run it end to end through the real Gunicorn as well as in-process.
end_to_end = pytest.mark.parametrize("target", [IN_PROCESS, GUNICORN], indirect=True)


def chosen_target(request: pytest.FixtureRequest, in_process: InProcess, gunicorn_fixture: str) -> Target:
    """For a module's ``target`` fixture: its ``InProcess`` unless the test is parametrized by
    ``end_to_end`` and this is its Gunicorn run (the server fixture named ``gunicorn_fixture``)."""
    if getattr(request, "param", IN_PROCESS) == GUNICORN:
        return request.getfixturevalue(gunicorn_fixture)
    return in_process
