"""A Gunicorn master started by a command line the test wrote out in full (an installed wheel's
gunicorn, the ``asgiworker`` command, a systemd unit's ExecStart), waited for and stopped like the
`gunicorn` fixture's servers.

    server = CommandServer([venv / "bin" / "gunicorn", "hello:hello_world", ...], port=port, cwd=app)
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from tests.conftest import GunicornServer

Arg = Union[str, Path]


class CommandServer(GunicornServer):
    """``command`` run as is: the test chose every argument, the environment and the directory."""

    def __init__(self, command: Sequence[Arg], *, port: int, cwd: Path, env: Optional[Mapping[str, str]] = None,
                 workers: int = 1, wait: bool = True, timeout: float = 30.0) -> None:
        self.worker_class = "asgiworker.ASGIWorker"
        self.workers = workers
        self.host = "127.0.0.1"
        self.port = port
        self.url = f"http://{self.host}:{self.port}"
        self.command = [str(a) for a in command]
        self._logfile = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.command, stdout=self._logfile, stderr=subprocess.STDOUT,
                                     env=dict(os.environ if env is None else env), cwd=str(cwd),
                                     start_new_session=True)
        if wait:
            self.wait_ready(timeout)


def clean_env(**extra: str) -> dict:
    """The environment without anything that could put our source tree on a Python path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV")
           and not k.startswith(("GUNICORN_", "LISTEN_", "NOTIFY_SOCKET"))}
    env.update(extra)
    return env
