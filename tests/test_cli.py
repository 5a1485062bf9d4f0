"""The `asgiworker` command and `python -m asgiworker` (asgiworker/cli.py): Gunicorn's own command
line with our worker class and an access log on stdout added, everything else passed through.

What Gunicorn resolved is read from Gunicorn itself (`--print-config`, which prints every setting
after the command line, GUNICORN_CMD_ARGS and config files are applied, then exits); serving is
checked on a real master started by each spelling of the command.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import gunicorn
import httpx
import pytest

import asgiworker
from tests.command_server import CommandServer, clean_env
from tests.conftest import ROOT, free_port, wait_for

EXAMPLES = ROOT / "examples"
SCRIPT = Path(sys.executable).parent / "asgiworker"
SPELLINGS = {"script": [str(SCRIPT)], "module": [sys.executable, "-m", "asgiworker"]}


@pytest.fixture(autouse=True)
def _installed() -> None:
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: the package is installed without its console script "
                    "(pip install -e .[test] makes it)")


def _env(tmp_path: Path, **extra: str) -> dict:
    # Gunicorn's defaults depend on PORT and WEB_CONCURRENCY: neither may leak in from the shell.
    env = {k: v for k, v in clean_env(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(tmp_path)).items()
           if k not in ("PORT", "WEB_CONCURRENCY")}
    env.update(extra)
    return env


def _run(args: List[str], tmp_path: Path, spelling: str = "script", cwd: Optional[Path] = None,
         **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SPELLINGS[spelling], *args], capture_output=True, text=True, timeout=60,
                          cwd=str(cwd or EXAMPLES), env=_env(tmp_path, **env))


def _resolved(args: List[str], tmp_path: Path, spelling: str = "script", cwd: Optional[Path] = None,
              **env: str) -> Dict[str, str]:
    result = _run(["hello:hello_world", *args, "--print-config"], tmp_path, spelling, cwd, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(re.findall(r"(?m)^(\w+)\s+= (.*)$", result.stdout))


@pytest.mark.parametrize("spelling", ["script", "module"])
def test_what_the_command_adds(spelling: str, tmp_path: Path) -> None:
    config = _resolved([], tmp_path, spelling)
    assert config["worker_class"] == "asgiworker.ASGIWorker"
    assert config["accesslog"] == "-"
    # The rest is Gunicorn's own default, untouched.
    assert config["bind"] == "['127.0.0.1:8000']"
    assert config["workers"] == "1"


def test_every_other_argument_passes_through(tmp_path: Path) -> None:
    config = _resolved(["--workers", "4", "-b", "0.0.0.0:80", "--keep-alive", "7", "--access-logfile",
                        str(tmp_path / "access.log")], tmp_path)
    assert (config["workers"], config["bind"], config["keepalive"]) == ("4", "['0.0.0.0:80']", "7")
    assert config["accesslog"] == str(tmp_path / "access.log")
    # Gunicorn's environment variables work as with gunicorn.
    assert _resolved([], tmp_path, PORT="9999", WEB_CONCURRENCY="3")["bind"] == "['0.0.0.0:9999']"
    assert _resolved([], tmp_path, WEB_CONCURRENCY="3")["workers"] == "3"


def test_a_config_file_keeps_its_access_log(tmp_path: Path) -> None:
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text('accesslog = "/dev/null"\nworkers = 3\n')
    # Named with -c, or found in the working directory as Gunicorn does: not overridden by our default.
    assert _resolved(["-c", str(conf)], tmp_path)["accesslog"] == "/dev/null"
    assert _resolved(["--chdir", str(EXAMPLES)], tmp_path, cwd=tmp_path)["accesslog"] == "/dev/null"
    # Gunicorn looks for it where it starts, not in --chdir's directory: neither do we.
    assert _resolved(["--chdir", str(tmp_path)], tmp_path)["accesslog"] == "-"
    from_env = _resolved([], tmp_path, GUNICORN_CMD_ARGS=f"--access-logfile {tmp_path / 'a.log'}")
    assert from_env["accesslog"] == str(tmp_path / "a.log")


@pytest.mark.parametrize("args, env", [
    (["-k", "sync"], {}),
    (["--worker-class=gthread"], {}),
    (["-kuvicorn_worker.UvicornWorker"], {}),
    ([], {"GUNICORN_CMD_ARGS": "--worker-class sync"}),
], ids=["-k", "--worker-class=", "-kX", "GUNICORN_CMD_ARGS"])
def test_another_worker_class_is_refused(args: List[str], env: Dict[str, str], tmp_path: Path) -> None:
    result = _run(["hello:hello_world", *args], tmp_path, **env)
    assert result.returncode == 2
    assert "is not asgiworker's" in result.stderr and "run gunicorn itself" in result.stderr
    assert "Starting gunicorn" not in result.stdout + result.stderr


@pytest.mark.parametrize("worker", ["asgiworker.ASGIWorker", "asgiworker.worker.ASGIWorker",
                                    "egg:asgiworker#asgiworker"])
def test_our_worker_class_may_be_named(worker: str, tmp_path: Path) -> None:
    assert _resolved(["-k", worker], tmp_path)["worker_class"] == worker


def test_version_and_help(tmp_path: Path) -> None:
    version = _run(["--version"], tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip() == f"asgiworker {asgiworker.__version__} (gunicorn {gunicorn.__version__})"
    help_ = _run(["--help"], tmp_path, spelling="module")
    assert help_.returncode == 0
    ours, _, theirs = help_.stdout.partition("Gunicorn's help follows.")
    assert ours.startswith("python -m asgiworker: Gunicorn with asgiworker's worker class")
    assert "--worker-class asgiworker.ASGIWorker" in ours and "--access-logfile -" in ours
    assert "usage: python -m asgiworker [OPTIONS] [APP_MODULE]" in theirs and "--worker-connections" in theirs


@pytest.mark.parametrize("spelling, workers", [("script", 1), ("module", 2)])
def test_it_serves(spelling: str, workers: int, tmp_path: Path) -> None:
    port = free_port()
    args = ["hello:hello_world", "--bind", f"127.0.0.1:{port}"] + (["--workers", str(workers)] if workers > 1 else [])
    server = CommandServer([*SPELLINGS[spelling], *args], port=port, cwd=EXAMPLES, env=_env(tmp_path),
                           workers=workers)
    try:
        response = httpx.get(server.url + "/", timeout=10)
        assert (response.status_code, response.text) == (200, "Hello, world!")
        log = server.log()
        assert "Using worker: asgiworker.ASGIWorker" in log
        assert f"Listening at: http://127.0.0.1:{port} " in log
        assert len(server.worker_pids()) == workers
        # The access line, on stdout (written once the response is out: it may follow it).
        assert wait_for(lambda: re.search(r'"GET / HTTP/1\.1" 200 13 ', server.log())), server.log()
    finally:
        server.stop()
