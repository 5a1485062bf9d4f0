"""The frameworks people deploy, each served by our worker and by uvicorn-worker side by side.

Every check runs first against the reference (uvicorn-worker, same gunicorn, same app, same
arguments) and then against ours, in the same test: a check the reference fails is a broken test,
and a check only ours fails is our bug, by construction.

    @pytest.fixture(scope="module")
    def pair():
        with Pair("tests.frameworks.apps.fastapi_app:app") as p:
            yield p

    def test_sync_endpoint(pair):
        def check(server):
            assert httpx.get(server.url + "/sync").json() == {"ok": True}
        pair.check(check)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest

from tests.conftest import BootedServers, GunicornServer

REFERENCE_WORKER = "uvicorn_worker.UvicornWorker"
_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.MULTILINE)


class Pair:
    """One app under ``asgiworker.ASGIWorker`` (``ours``) and under uvicorn-worker (``reference``)."""

    def __init__(self, app: str, *args: str, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[Path] = None) -> None:
        common: Dict[str, Any] = {"env": env, "cwd": cwd}
        self._servers = BootedServers({
            "ours": (app, args, dict(common)),
            "reference": (app, args, dict(common, worker_class=REFERENCE_WORKER)),
        })

    @property
    def ours(self) -> GunicornServer:
        return self._servers["ours"]

    @property
    def reference(self) -> GunicornServer:
        return self._servers["reference"]

    def check(self, check: Callable[[GunicornServer], Any]) -> Any:
        """``check(server)`` against the reference, then against ours; returns ours' result."""
        try:
            check(self.reference)
        except Exception as exc:  # noqa: BLE001 - any failure here means the test is wrong
            pytest.fail(f"the check fails under uvicorn-worker too, so the test is wrong: {exc!r}\n"
                        f"reference log:\n{self.reference.log()[-3000:]}")
        try:
            return check(self.ours)
        except Exception:
            print(f"our worker's log:\n{self.ours.log()[-5000:]}")
            raise

    def assert_no_extra_tracebacks(self) -> None:
        """No traceback in our worker's log where the reference has none."""
        ours = len(_TRACEBACK.findall(self.ours.log()))
        reference = len(_TRACEBACK.findall(self.reference.log()))
        assert ours <= reference, (f"{ours} traceback(s) in our log against {reference} in the reference's:\n"
                                   f"{self.ours.log()[-6000:]}")

    def stop(self) -> None:
        self._servers.stop()

    def __enter__(self) -> "Pair":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
