"""The asyncio contract and plain anyio code in a raw ASGI 3 app, under our worker and uvicorn-worker.

No framework in between: what these tests see is what the server gives an app. Each app call must
run in a real asyncio Task (the same one throughout) and in a context of its own; anyio's task
groups, threads and cancel scopes, asyncio's timeouts and TaskGroup and sniffio all build on that.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Iterator

import httpx
import pytest

from tests.conftest import GunicornServer
from tests.frameworks.apps.anyio_app import DEFAULT_VALUE, expected_asyncio_report
from tests.frameworks.conftest import Pair

APP = "tests.frameworks.apps.anyio_app:app"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with Pair(APP) as p:
        yield p


def get_json(server: GunicornServer, path: str, **params: Any) -> Dict[str, Any]:
    response = httpx.get(server.url + path, params=params, timeout=TIMEOUT)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


# -- the asyncio contract ---------------------------------------------------------------------------

def test_asyncio_contract(pair: Pair) -> None:
    """A real current Task from the first line on, sniffio says asyncio, wait_for / asyncio.timeout
    time out and leave the task usable, TaskGroup and gather work."""
    def check(server: GunicornServer) -> None:
        report = get_json(server, "/asyncio")
        report.pop("client_port")
        report.pop("pid")
        assert report == expected_asyncio_report()
    pair.check(check)


@pytest.mark.parametrize("when", ["eager", "after-await"])
def test_contextvar_does_not_leak_between_requests_on_one_connection(pair: Pair, when: str) -> None:
    """A ContextVar set by one request (before its first await, or after one) is unset again in the
    next request on the same keep-alive connection."""
    def check(server: GunicornServer) -> None:
        ports = set()
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            for i in range(3):
                value = f"{when}-{i}-{uuid.uuid4().hex}"
                set_ = client.get("/ctx/set", params={"value": value, "when": when})
                assert set_.status_code == 200, set_.text
                assert set_.json()["before"] == DEFAULT_VALUE, set_.json()
                assert set_.json()["after"] == value
                got = client.get("/ctx/get")
                assert got.status_code == 200, got.text
                assert got.json()["value"] == DEFAULT_VALUE, f"request {i}: sees the value the /ctx/set before it set"
                ports.update({set_.json()["client_port"], got.json()["client_port"]})
        # The requests really shared one connection, or this test proves nothing.
        assert len(ports) == 1, ports
    pair.check(check)


# -- anyio ------------------------------------------------------------------------------------------

def test_anyio_task_group(pair: Pair) -> None:
    """Children run to completion, tg.start hands back its value, memory streams carry items, and a
    failing child cancels its sibling and surfaces as an exception group."""
    def check(server: GunicornServer) -> None:
        report = get_json(server, "/anyio/task-group")
        assert report["started"] == "ready"
        assert report["children"] == [0, 1, 2]
        assert report["stream"] == [0, 1, 2, 3, 4]
        assert report["error"] == ["ValueError"]
        assert report["sibling_cancelled"] is True
    pair.check(check)


def test_anyio_to_thread(pair: Pair) -> None:
    """run_sync runs in a worker thread with the caller's context, from_thread.run gets back into
    the loop from there, and several threads run side by side."""
    def check(server: GunicornServer) -> None:
        report = get_json(server, "/anyio/to-thread")
        assert report["in_worker_thread"] is True
        assert report["value"] == 7
        assert report["context"] == "propagated"
        assert report["from_thread"] == 21
        assert report["concurrent"] == [0, 1, 2, 3]
    pair.check(check)


def test_anyio_cancel_scopes(pair: Pair) -> None:
    """move_on_after and fail_after fire (fail_after's TimeoutError caught by the app), a manual
    cancel and a shield behave, and the request goes on and answers in well under the 10 s sleeps."""
    def check(server: GunicornServer) -> None:
        report = get_json(server, "/anyio/cancel")
        assert report["move_on_after"] == {"cancel_called": True, "cancelled_caught": True, "body_finished": False}
        assert report["fail_after"] == "TimeoutError"
        assert report["manual"] is True
        assert report["shield"] == {"shielded_finished": True, "outer_caught": True}
        assert report["elapsed_under_2s"] is True
    pair.check(check)


def test_anyio_sleep_event_and_current_task(pair: Pair) -> None:
    """anyio.sleep sleeps (not less, not forever), an Event set by a child wakes the waiter, and
    anyio knows the current task and the backend."""
    def check(server: GunicornServer) -> None:
        report = get_json(server, "/anyio/sleep")
        assert report["backend"] == "asyncio"
        assert report["slept_long_enough"] is True
        assert report["slept_under_1s"] is True
        assert report["event_set"] is True
        assert report["current_task_has_id"] is True
    pair.check(check)


def test_unknown_path_is_the_apps_404(pair: Pair) -> None:
    """The app is really the one answering (its own 404 body), so the 200s above are its."""
    def check(server: GunicornServer) -> None:
        response = httpx.get(server.url + "/nope", timeout=TIMEOUT)
        assert response.status_code == 404
        assert response.json() == {"error": "not found", "path": "/nope"}
    pair.check(check)


def test_no_extra_tracebacks(pair: Pair) -> None:
    """Last in the module: nothing above made our worker log a traceback the reference did not."""
    pair.assert_no_extra_tracebacks()
