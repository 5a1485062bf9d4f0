"""The distribution as a user gets it: `python -m build` makes an sdist and, from that sdist, a wheel;
the wheel goes into a fresh virtual environment (no system site-packages, no source tree on any
path) whose own gunicorn serves examples/hello.py.

The build runs on a copy of the source tree, so nothing (egg-info, build/) is written into the
checkout that other test runs share. Building needs setuptools 77+ (pyproject.toml): `build`
installs it in an isolated environment from the package index; where the index cannot be reached
the test falls back to `--no-isolation` with this environment's setuptools, and skips, saying
why, only if that cannot build either.
"""

from __future__ import annotations

import email
import email.message
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator, List, NamedTuple

import httpx
import pytest

import asgiworker
from tests.command_server import CommandServer, clean_env
from tests.conftest import ROOT, free_port

# What is never copied into the tree that is built: other environments, caches, earlier builds.
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__",
                                      ".hypothesis", ".pytest_cache", ".tox", ".notes", "results")
SUPPORTED_PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
REQUIRED_CLASSIFIERS = [
    "Environment :: Web Environment",
    "Framework :: AsyncIO",
    "Intended Audience :: Developers",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3 :: Only",
    "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
]


class Built(NamedTuple):
    sdist: Path
    wheel: Path
    venv: Path
    app_dir: Path
    seconds: dict


def _build(tree: Path, outdir: Path, isolated: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "build", "--outdir", str(outdir), str(tree)]
    if not isolated:
        cmd.insert(3, "--no-isolation")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    pytest.importorskip("build", reason="`build` is in the test extra: pip install -e .[test]")
    import time

    seconds = {}
    base = tmp_path_factory.mktemp("packaging")
    tree = base / "tree"
    shutil.copytree(ROOT, tree, ignore=_NOT_SOURCES)
    dist = base / "dist"
    started = time.monotonic()
    result = _build(tree, dist, isolated=True)
    # Only a failure to install the build's own requirements (no index) is worth a second try.
    if result.returncode != 0 and "Getting build dependencies" not in result.stdout:
        isolated_error = (result.stdout + result.stderr)[-1500:]
        result = _build(tree, dist, isolated=False)
        if result.returncode != 0 and "Missing dependencies" in result.stdout + result.stderr:
            pytest.skip("cannot build here: the isolated build could not install setuptools>=77 "
                        f"({isolated_error}) and this environment lacks it:\n{result.stdout[-1500:]}")
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
    seconds["build"] = time.monotonic() - started
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")

    # A fresh environment, with no pip of its own (this environment's pip installs into it: quicker
    # than ensurepip) and no system site-packages: only the wheel and what it requires.
    started = time.monotonic()
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--quiet", str(wheel)], capture_output=True, text=True, timeout=300,
                             env=clean_env())
    assert install.returncode == 0, f"installing the wheel failed:\n{install.stdout[-3000:]}{install.stderr[-3000:]}"
    seconds["venv+install"] = time.monotonic() - started

    # The application lives outside the source tree, as a user's would.
    app_dir = base / "app"
    app_dir.mkdir()
    shutil.copy(ROOT / "examples" / "hello.py", app_dir / "hello.py")
    yield Built(sdist, wheel, venv, app_dir, seconds)
    print(f"\npackaging: {', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}")


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(zf.read(name))


def test_the_wheel_metadata(built: Built) -> None:
    meta = _wheel_metadata(built.wheel)
    assert meta["Name"] == "asgiworker"
    assert meta["Version"] == asgiworker.__version__
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    for classifier in REQUIRED_CLASSIFIERS:
        assert classifier in classifiers
    versions = sorted(c.rsplit(" :: ", 1)[1] for c in classifiers
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions == SUPPORTED_PYTHONS
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert set(urls) == {"Documentation", "Source", "Changelog", "Issues"}
    assert all(u.startswith("https://github.com/asgiworker/asgiworker") for u in urls.values())
    requires = {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0] for r in meta.get_all("Requires-Dist") or []
                if "extra ==" not in r}
    assert requires == {"gunicorn", "uvloop", "httptools", "websockets", "msgpack"}


def test_the_wheel_contents(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as zf:
        names = zf.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_text = zf.read(entry_points).decode()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(license_file) == (ROOT / "LICENSE").read_bytes()
    assert "asgiworker/py.typed" in names
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "examples", "docs")]
    # Every module of the package, every subpackage included; nothing else of ours.
    source = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "asgiworker").rglob("*.py"))
    assert sorted(n for n in names if n.endswith(".py")) == source
    assert "[gunicorn.workers]\nasgiworker = asgiworker.worker:ASGIWorker" in entry_text
    assert "[console_scripts]\nasgiworker = asgiworker.cli:main" in entry_text


def test_the_sdist_contents(built: Built) -> None:
    with tarfile.open(built.sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in ("PKG-INFO", "README.md", "LICENSE", "CHANGELOG.md", "setup.cfg", "pyproject.toml",
                   "MANIFEST.in", "asgiworker/py.typed", "asgiworker/__init__.py", "examples/hello.py",
                   "examples/deploy/asgiworker.service", "docs/deployment-systemd-and-containers.md"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/", ".venv", ".git/"))]
    assert not [n for n in names if "__pycache__" in n]
    # `python -m build` made the wheel from this sdist: the sdist is complete enough to build from.


def test_the_installed_package_comes_from_the_venv(built: Built) -> None:
    out = subprocess.run(
        [str(built.venv / "bin" / "python"), "-I", "-c",
         "import asgiworker, gunicorn, sys; print(asgiworker.__file__); print(asgiworker.__version__);"
         "print(sys.prefix != sys.base_prefix)"],
        capture_output=True, text=True, timeout=60, cwd=str(built.app_dir), env=clean_env(), check=True,
    ).stdout.split()
    site_packages = built.venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert Path(out[0]).is_relative_to(site_packages), out
    assert not Path(out[0]).is_relative_to(ROOT)
    assert out[1:] == [asgiworker.__version__, "True"]


@pytest.mark.parametrize("command", [
    ["gunicorn", "hello:hello_world", "--worker-class", "asgiworker.ASGIWorker"],
    # Gunicorn's short form: gunicorn.util.load_class looks "egg:DIST#NAME" up in DIST's
    # gunicorn.workers entry points, which only an installed distribution has.
    ["gunicorn", "hello:hello_world", "-k", "egg:asgiworker#asgiworker"],
    ["asgiworker", "hello:hello_world"],
], ids=["dotted", "egg", "asgiworker-command"])
def test_the_installed_wheel_serves_hello(built: Built, command: List[str], tmp_path: Path) -> None:
    port = free_port()
    # No source tree anywhere: PYTHONPATH cleared, the working directory is the app's; the
    # control socket (Gunicorn 25.1+) goes to a directory of the test's.
    argv = [str(built.venv / "bin" / command[0]), *command[1:], "--bind", f"127.0.0.1:{port}",
            "--chdir", str(built.app_dir)]
    server = CommandServer(argv, port=port, cwd=built.app_dir, env=clean_env(XDG_RUNTIME_DIR=str(tmp_path)))
    try:
        response = httpx.get(server.url + "/", timeout=10)
        assert response.status_code == 200
        assert response.text == "Hello, world!"
        worker = "egg:asgiworker#asgiworker" if "-k" in command else "asgiworker.ASGIWorker"
        assert f"Using worker: {worker}" in server.log()
    finally:
        server.stop()


def test_the_changelog_is_at_the_version() -> None:
    # The version is written once, in asgiworker/__init__.py; setup.cfg reads it, the CHANGELOG's
    # newest entry names it.
    assert "version = attr: asgiworker.__version__" in (ROOT / "setup.cfg").read_text()
    assert "[project]" not in (ROOT / "pyproject.toml").read_text()  # (its version would be a second one)
    headings = re.findall(r"(?m)^## (\d+\.\d+\.\d+\S*)", (ROOT / "CHANGELOG.md").read_text())
    assert headings and headings[0] == asgiworker.__version__
