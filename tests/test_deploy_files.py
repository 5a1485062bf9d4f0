"""examples/deploy/: the systemd units and the container file, checked for what can be checked here.

- The units pass `systemd-analyze verify` (Debian's systemd package, installed when missing) on a
  copy whose paths are this test environment's: verify refuses an ExecStart binary that does not
  exist, and the units name an example layout (/opt/asgiworker/venv, /srv/asgiworker).
- Socket activation works with our worker: the service's own ExecStart runs under
  `systemd-socket-activate`, which listens, then execs it in place on the first connection with
  LISTEN_FDS=1 and LISTEN_PID set, as systemd does; that connection is answered, and a SIGHUP
  (the unit's ExecReload) replaces the workers while the socket stays open.
- The container file: built and run where a Docker engine answers; everywhere, parsed (every COPY
  source exists and passes its ignore file, the CMD is a JSON list) and its CMD run for real with
  this environment's gunicorn.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import httpx
import pytest

from tests.command_server import CommandServer, clean_env
from tests.conftest import _HAS_CONTROL_SOCKET, ROOT, free_port, wait_for
from tests.debian import DebianUnavailable, ensure_debian_binary

DEPLOY = ROOT / "examples" / "deploy"
VENV = Path(sys.executable).parent.parent  # this test environment: its bin/gunicorn exists
# The example layout the units name, and what stands for it here.
UNIT_VENV, UNIT_APP, UNIT_RUNTIME = "/opt/asgiworker/venv", "/srv/asgiworker", "/run/asgiworker"


def _unit(path: Path) -> Dict[str, List[str]]:
    """A unit file's settings, ``Section.Key`` to every value given (systemd allows repeats)."""
    settings: Dict[str, List[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def _render(text: str, runtime: Path) -> str:
    return (text.replace(UNIT_VENV, str(VENV)).replace(UNIT_APP, str(ROOT / "examples"))
            .replace(UNIT_RUNTIME, str(runtime)))


def _binary(name: str) -> str:
    try:
        return ensure_debian_binary(name, "systemd")
    except DebianUnavailable as exc:
        pytest.skip(str(exc))


# -- systemd --------------------------------------------------------------------------------------

def test_the_units_say_what_the_docs_say() -> None:
    service = _unit(DEPLOY / "asgiworker.service")
    socket_ = _unit(DEPLOY / "asgiworker.socket")
    assert service["Service.Type"] == ["notify"]  # Gunicorn's master sends READY=1
    assert service["Service.KillMode"] == ["mixed"]
    assert service["Service.ExecReload"] == ["/bin/kill -s HUP $MAINPID"]
    assert service["Service.DynamicUser"] == ["yes"] and service["Service.User"] == ["asgiworker"]
    assert service["Service.RuntimeDirectory"] == ["asgiworker"]
    assert service["Unit.Requires"] == ["asgiworker.socket"]
    (exec_start,) = service["Service.ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == f"{UNIT_VENV}/bin/gunicorn"
    assert argv[argv.index("--worker-class") + 1] == "asgiworker.ASGIWorker"
    assert not {"--bind", "-b"} & set(argv)  # the socket comes from the socket unit
    # systemd must wait longer than Gunicorn's graceful stop before it kills what is left.
    assert int(service["Service.TimeoutStopSec"][0]) > int(argv[argv.index("--graceful-timeout") + 1])
    assert socket_["Socket.Accept"] == ["no"] and socket_["Socket.ListenStream"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _binary("systemd-analyze")
    for name in ("asgiworker.socket", "asgiworker.service"):
        (tmp_path / name).write_text(_render((DEPLOY / name).read_text(), tmp_path / "run"))
    result = subprocess.run([analyze, "verify", str(tmp_path / "asgiworker.socket"),
                             str(tmp_path / "asgiworker.service")],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify exits 0 on settings it ignores (an unknown Type=, a misspelt key): any word about our
    # units is a failure.
    assert not [line for line in output.splitlines() if "asgiworker" in line], output


def test_socket_activation_with_the_services_command_line(tmp_path: Path) -> None:
    activate = _binary("systemd-socket-activate")
    service = _unit(DEPLOY / "asgiworker.service")
    runtime = tmp_path / "run"
    runtime.mkdir()  # what RuntimeDirectory= makes
    argv = shlex.split(_render(service["Service.ExecStart"][0], runtime))
    # Like systemd, systemd-socket-activate gives the service a clean environment: only LISTEN_*
    # and what -E names (here, the unit's Environment= lines).
    assignments = [_render(a, runtime) for a in service["Service.Environment"]]
    port = free_port()
    command = [activate, "--listen", f"127.0.0.1:{port}", "--fdname", "asgiworker",
               *(f"--setenv={a}" for a in assignments), *argv]
    workdir = Path(_render(service["Service.WorkingDirectory"][0], runtime))
    workers = int(argv[argv.index("--workers") + 1])
    server = CommandServer(command, port=port, cwd=workdir, env=clean_env(), workers=workers, wait=False)
    try:
        # systemd-socket-activate execs the service on the first connection, which waits in the
        # socket's backlog meanwhile: the first request is the activation.
        response = httpx.get(server.url + "/", timeout=30)
        assert (response.status_code, response.text) == (200, "Hello, world!")
        # LISTEN_PID matched: the master is the activator's own process, on the inherited socket
        # (without --bind, a Gunicorn that ignored it would listen on 127.0.0.1:8000).
        log = server.log()
        assert f"Listening at: http://127.0.0.1:{port} ({server.proc.pid})" in log, log
        assert "Using worker: asgiworker.ASGIWorker" in log
        def workers_other_than(old: Set[int]) -> Set[int]:
            pids = set(server.worker_pids())
            return pids if len(pids) == workers and not pids & old else set()

        before = wait_for(lambda: workers_other_than(set()), 20)
        assert before, server.log()

        # ExecReload: new workers, the same socket, no request refused.
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: workers_other_than(before), 30), server.log()
        assert httpx.get(server.url + "/", timeout=10).text == "Hello, world!"
        assert server.log().count("Listening at:") == 1
        if _HAS_CONTROL_SOCKET:  # Gunicorn 25.1+ puts it in $XDG_RUNTIME_DIR: the RuntimeDirectory
            assert (runtime / "gunicorn.ctl").exists()
        server.signal(signal.SIGTERM)  # KillMode=mixed: SIGTERM to the master first
        assert server.wait_exit(20) == 0, server.log()
    finally:
        server.stop()


# -- the container file ---------------------------------------------------------------------------

def _instructions(path: Path) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"(?m)^\s*([A-Za-z]+)\s+(.*)$", text)]


def _ignored(path: str, patterns: List[str]) -> bool:
    """Whether Docker's ignore rules exclude ``path`` (the last matching pattern decides; a pattern
    matching a parent directory matches its contents)."""
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern.strip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.strip("/").split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def _ignore_patterns() -> List[str]:
    lines = (DEPLOY / "Containerfile.dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _cmd() -> List[str]:
    (cmd,) = [args for name, args in _instructions(DEPLOY / "Containerfile") if name == "CMD"]
    argv = json.loads(cmd)  # the exec form: no shell between the container's PID 1 and gunicorn
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def test_the_container_file() -> None:
    steps = _instructions(DEPLOY / "Containerfile")
    assert [args.split()[0] for name, args in steps if name == "FROM"] == ["python:3.12-slim"] * 2
    patterns = _ignore_patterns()
    for name, args in steps:
        if name != "COPY" or "--from=" in args:
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not _ignored(source, patterns), f"{source} is excluded by Containerfile.dockerignore"
            inside = (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else [ROOT / source]
            for file in inside:
                if "__pycache__" not in file.parts:
                    assert not _ignored(str(file.relative_to(ROOT)), patterns), file
    # Nothing else of the checkout goes to the builder.
    for other in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/run.sh", "build/lib/x.py",
                  "asgiworker/__pycache__/worker.cpython-311.pyc", "examples/chat.py"):
        assert _ignored(other, patterns), other
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [name for name, _ in steps].index("USER") < [name for name, _ in steps].index("CMD")
    argv = _cmd()
    assert argv[0] == "gunicorn"
    assert argv[argv.index("--worker-class") + 1] == "asgiworker.ASGIWorker"
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:8000"


def test_the_container_command_serves(tmp_path: Path) -> None:
    # The CMD as it stands, run by this environment's gunicorn from a directory laid out like the
    # image's WORKDIR (/app holding hello.py); only the address is changed to a loopback port.
    argv = _cmd()
    port = free_port()
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "examples" / "hello.py", app / "hello.py")
    server = CommandServer([str(VENV / "bin" / argv[0]), *argv[1:]], port=port, cwd=app,
                           env=clean_env(XDG_RUNTIME_DIR=str(tmp_path)))
    try:
        assert httpx.get(server.url + "/", timeout=10).text == "Hello, world!"
        assert "Using worker: asgiworker.ASGIWorker" in server.log()
    finally:
        server.stop()


def _docker_engine() -> str:
    docker = shutil.which("docker")
    if not docker:
        return ""
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    return docker if info.returncode == 0 else ""


def test_the_container_builds_and_serves() -> None:
    docker = _docker_engine()
    if not docker:
        pytest.skip("no Docker engine answers `docker info` here (the docker client alone cannot build): "
                    "the container file is checked by parsing it and by running its CMD instead")
    tag = f"asgiworker-test:{os.getpid()}"
    env = dict(os.environ, DOCKER_BUILDKIT="1")  # BuildKit reads Containerfile.dockerignore
    build = subprocess.run([docker, "build", "-f", str(DEPLOY / "Containerfile"), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=900, env=env)
    if build.returncode != 0 and re.search(r"python:3\.12-slim.*(timeout|dial tcp|no such host|TLS)",
                                           build.stderr, re.S | re.I):
        pytest.skip(f"the base image cannot be pulled here:\n{build.stderr[-1500:]}")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    port = free_port()
    run = subprocess.run([docker, "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8000", tag],
                         capture_output=True, text=True, timeout=120, check=True)
    container = run.stdout.strip()
    try:
        def answered() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
            except httpx.HTTPError:
                return ""
        assert wait_for(answered, 60) == "Hello, world!"
        user = subprocess.run([docker, "exec", container, "id", "-u"], capture_output=True, text=True, timeout=30)
        assert user.stdout.strip() not in ("", "0")
    finally:
        subprocess.run([docker, "stop", container], capture_output=True, timeout=60)
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=60)


# -- docs/deployment-systemd-and-containers.md ------------------------------------------------------

DOC = ROOT / "docs" / "deployment-systemd-and-containers.md"


def _resolved(argv: List[str], tmp_path: Path) -> str:
    """Gunicorn's every setting as ``argv`` resolves them (``--print-config`` prints them and exits)."""
    programs = {"asgiworker": [str(VENV / "bin" / "asgiworker")], "gunicorn": [str(VENV / "bin" / "gunicorn")],
                "python": [sys.executable]}
    env = {k: v for k, v in clean_env(XDG_RUNTIME_DIR=str(tmp_path)).items() if k not in ("PORT", "WEB_CONCURRENCY")}
    result = subprocess.run([*programs[argv[0]], *argv[1:], "--print-config"], capture_output=True, text=True,
                            timeout=60, cwd=str(ROOT / "examples"), env=env)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout


def test_every_command_in_the_doc_runs(tmp_path: Path) -> None:
    text = DOC.read_text()
    commands = [shlex.split(line) for block in re.findall(r"```sh\n(.*?)```", text, re.S)
                for line in block.splitlines() if line.strip()]
    assert len(commands) == 4, commands
    for argv in commands:
        worker = re.search(r"(?m)^worker_class\s+= (.*)$", _resolved(argv, tmp_path))
        assert worker and worker.group(1) in ("asgiworker.ASGIWorker", "egg:asgiworker#asgiworker"), argv
    # "asgiworker hello:hello_world is gunicorn hello:hello_world --worker-class ... --access-logfile -"
    (equivalence,) = re.findall(r"is `(gunicorn hello:hello_world [^`]*)`", text)
    assert _resolved(["asgiworker", "hello:hello_world"], tmp_path) == _resolved(shlex.split(equivalence), tmp_path)
    # The container's command line as quoted is the Containerfile's CMD.
    (quoted,) = re.findall(r"(?m)^    (gunicorn .*\n(?:    .*\n)*)", text)
    assert shlex.split(quoted) == _cmd()
