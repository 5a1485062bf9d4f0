"""Every command and config snippet in README.md and docs/*.md is run (issue 14).

The convention, which every doc follows and this test enforces:

**Blocks.** The fenced blocks (```` ```info ````, indented or not) of README.md and every
docs/*.md are extracted. A marker line right before a block (blank lines between are allowed)
tells the test what to do with it:

- ``<!-- doc-test: skip (why) -->``: the block is not run. The reason, in parentheses, is
  required (pip install, git clone, systemctl, long benchmarks: things a test cannot run here).
- ``<!-- doc-test: serve -->`` (an ``sh`` block with one ``gunicorn``/``asgiworker`` command): the
  command is started for real, as written, but for its ``--bind`` (replaced by a free loopback
  port, or added), in the doc's working directory; every ``curl`` command after it in the same
  doc, up to the next serve block, is run against it (its URL's ``host:port`` replaced). In a
  ``console`` block the lines after ``$ curl ...`` are its expected output, compared exactly (a
  ``...`` line matches any lines).
- ``<!-- doc-test: file NAME -->``: the block is written as NAME into the doc's working directory
  before the doc's commands run (an app module, a ``gunicorn.conf.py`` the commands use).
- ``<!-- doc-test: quote PATH -->`` / ``<!-- doc-test: excerpt PATH -->``: the block is the file
  PATH of the repository, whole / a run of whole consecutive lines of it.
- ``<!-- snippet: NAME -->``: the block is run by another test: a tests/test_*.py (or the
  tests/proxies.py it uses) names the doc, and the test file names NAME.

**By info string**, for blocks without skip/quote/excerpt/snippet:

- ``sh``, ``console``, ``shell``, ``bash``: the command lines (``console``: the lines starting
  with ``$ ``; otherwise every line but comments; ``\\`` continuations joined), each one command
  (no ``|``, ``&&``, ``;``, redirections). A command that starts (after ``NAME=value``
  assignments) with ``gunicorn``, ``asgiworker`` or ``python -m asgiworker`` is run with
  ``--print-config`` appended (Gunicorn parses every flag and the config file and imports the
  app, then exits) in the doc's working directory, with this Python's bin directory first on
  PATH; and it is resolved again by HELPER below the way Gunicorn resolves it, which also loads
  the worker class (it must be asgiworker's), builds ``Settings.from_gunicorn`` with ``raw_env``
  applied, and adapts the app with ``adapters.load`` (so a wrong ``ASGIWORKER_*`` value or app
  kind fails: ``--print-config`` alone validates neither). The working directory has a copy of
  examples/*.py and every ``file`` block of the doc; a ``module:name`` named on the command line
  that is in neither gets a stand-in module (any name in it is an ASGI 3 app). ``curl``: see
  serve. A script of the repository (``./scripts/serve.sh``, ``bench/run.sh``) must exist and be
  executable (they install things and run for minutes). Anything else fails: mark the block.
- ``python``: compiled. A block that defines an app or a consumer at top level
  (``[async] def NAME(scope, receive, send)``, ``[async] def NAME(message)``) is also written to a
  module of its own and served through a real gunicorn with our worker: it must answer ``GET /``
  with a status below 400, or, if it handles ``websocket.connect``, accept a WebSocket (and, if
  it handles ``websocket.receive``, answer a message). A block whose first line is
  ``# gunicorn.conf.py`` is a Gunicorn config file, resolved like a command with ``-c`` it.
- ``nginx``, ``haproxy``, ``ini``, ``systemd``, ``dockerfile``, ``toml``, ``yaml``, ``conf``,
  ``cfg``: must be marked quote, excerpt, snippet or skip.
- no info string, ``text``: prose (diagrams, file layouts, log lines), not run.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import gunicorn.config
import pytest

from tests.conftest import ROOT, GunicornServer, free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
SHELL_INFOS = {"sh", "console", "shell", "bash"}
PYTHON_INFOS = {"python", "py"}
CONFIG_INFOS = {"nginx", "haproxy", "ini", "systemd", "dockerfile", "toml", "yaml", "conf", "cfg"}
PROSE_INFOS = {"", "text"}
OUR_COMMANDS = ("gunicorn", "asgiworker")
_HAS_CONTROL_SOCKET = any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS)

MARKER = re.compile(r"^\s*<!--\s*(doc-test|snippet):\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
APP_DEF = re.compile(r"^(?:async\s+)?def\s+([A-Za-z]\w*)\s*\(\s*(scope\s*,\s*receive\s*,\s*send|message)\s*\)",
                     re.M)
MODULE_ATTR = re.compile(r"^([A-Za-z_][\w.]*):([A-Za-z_]\w*)(?:\(.*\))?$")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}

# Run in a fresh interpreter: the command line resolved as Gunicorn resolves it, then what the
# worker does at boot with the result (asgiworker/worker.py, load_wsgi).
HELPER = r"""
import os, sys
prog, args = sys.argv[1], sys.argv[2:]
if prog == "asgiworker":
    from asgiworker.cli import gunicorn_argv
    args = gunicorn_argv(args)
from gunicorn.app.wsgiapp import WSGIApplication
sys.argv = ["gunicorn", *args]
application = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog="gunicorn")
cfg = application.cfg
from asgiworker.worker import ASGIWorker
worker = cfg.worker_class
if not (isinstance(worker, type) and issubclass(worker, ASGIWorker)):
    sys.exit(f"the worker class is {cfg.worker_class_str}, not asgiworker's")
if getattr(cfg, "protocol", "http") != "http":
    sys.exit(f"--protocol {cfg.protocol}: asgiworker would refuse to boot")
os.environ.update(cfg.env)  # raw_env, applied by Gunicorn's worker before the app is loaded
from asgiworker import adapters
from asgiworker.config import Settings
settings = Settings.from_gunicorn(cfg)
adapters.load(application.load(), settings.app_kind)
print("RESOLVED", cfg.worker_class_str, settings.app_kind)
"""

STUB_MODULE = '''"""A stand-in for a doc's application module: every name in it is an ASGI 3 app."""


async def _app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stand-in"})


def __getattr__(name):
    return _app
'''


@dataclasses.dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: str
    markers: List[Tuple[str, str]]  # (kind, argument): ("doc-test", "skip (why)"), ("snippet", "x")

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def marker(self, word: str) -> Optional[str]:
        """The argument of this block's ``doc-test: WORD ...`` marker, if it has one."""
        for kind, arg in self.markers:
            if kind == "doc-test" and (arg == word or arg.startswith(word + " ")):
                return arg[len(word):].strip()
        return None

    @property
    def snippet(self) -> Optional[str]:
        return next((arg for kind, arg in self.markers if kind == "snippet"), None)


def blocks_of(doc: Path) -> List[Block]:
    lines = doc.read_text().splitlines()
    found: List[Block] = []
    pending: List[Tuple[str, str]] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        fence = FENCE.match(lines[i])
        if marker:
            pending.append((marker.group(1), marker.group(2)))
        elif fence:
            indent, ticks, info = fence.groups()
            start = i
            body: List[str] = []
            i += 1
            while i < len(lines) and not (lines[i].strip().startswith(ticks)
                                          and not lines[i].strip().strip(ticks[0])):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            found.append(Block(doc, start + 1, info.lower(), "\n".join(body) + "\n", pending))
            pending = []
        elif lines[i].strip() and pending:
            raise AssertionError(f"{doc.relative_to(ROOT)}:{i + 1}: a marker must come right before a "
                                 f"fenced block, not before {lines[i].strip()[:40]!r}")
        i += 1
    assert not pending, f"{doc.relative_to(ROOT)}: a marker at the end with no block after it"
    return found


def all_blocks() -> List[Block]:
    return [block for doc in DOCS for block in blocks_of(doc)]


# -- commands ------------------------------------------------------------------------------------

def command_lines(block: Block) -> List[Tuple[str, List[str]]]:
    """(command line, expected output lines) of a shell block."""
    raw = block.text.splitlines()
    if block.info == "console":
        commands: List[Tuple[str, List[str]]] = []
        for line in raw:
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif commands:
                commands[-1][1].append(line)
        return [(line, [o for o in out if o.strip()]) for line, out in commands]
    joined: List[str] = []
    carry = ""
    for line in raw:
        if line.rstrip().endswith("\\"):
            carry += line.rstrip()[:-1] + " "
            continue
        line, carry = carry + line, ""
        if line.strip() and not line.strip().startswith("#"):
            joined.append(line)
    return [(line, []) for line in joined]


def strip_comment(line: str) -> str:
    """The line without its shell comment (a ``#`` that starts a word, outside quotes: the
    ``#`` of ``egg:asgiworker#asgiworker`` is not one)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def split_command(line: str) -> Tuple[Dict[str, str], List[str]]:
    """(leading VAR=value assignments, argv) of a command line."""
    tokens = shlex.split(strip_comment(line))
    env: Dict[str, str] = {}
    while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):
        name, value = tokens.pop(0).split("=", 1)
        env[name] = value
    bad = [t for t in tokens if t in SHELL_OPERATORS]
    assert not bad, f"{line!r}: one command per line, no shell operators ({bad})"
    return env, tokens


def our_command(argv: Sequence[str]) -> Optional[Tuple[str, List[str], List[str]]]:
    """(prog, executable argv, arguments) if ``argv`` runs gunicorn or asgiworker, else None."""
    if argv and argv[0] in OUR_COMMANDS:
        return argv[0], [str(BIN / argv[0])], list(argv[1:])
    if len(argv) >= 3 and re.match(r"^python(3(\.\d+)?)?$", argv[0]) and argv[1] == "-m" \
            and argv[2] in OUR_COMMANDS:
        return argv[2], [sys.executable, "-m", argv[2]], list(argv[3:])
    return None


def command_env(extra: Dict[str, str], runtime_dir: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GUNICORN_CMD_ARGS", "PORT", "WEB_CONCURRENCY")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # Gunicorn 25.1+'s control socket goes there: one of its own for each master.
    env["XDG_RUNTIME_DIR"] = runtime_dir
    env.update(extra)
    return env


def stub_modules(args: Sequence[str], cwd: Path) -> None:
    for arg in args:
        match = MODULE_ATTR.match(arg)
        if match and "/" not in arg:
            module = match.group(1)
            path = cwd / (module.replace(".", "/") + ".py")
            if not path.exists() and not (cwd / module.split(".")[0]).is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(STUB_MODULE)


def check_our_command(where: str, line: str, cwd: Path) -> None:
    """``--print-config`` of the command as written, and the helper's resolution of it."""
    env, argv = split_command(line)
    ours = our_command(argv)
    assert ours is not None
    prog, executable, args = ours
    stub_modules(args, cwd)
    with tempfile.TemporaryDirectory(prefix="doc-runtime-") as runtime:
        full_env = command_env(env, runtime)
        printed = subprocess.run([*executable, *args, "--print-config"], cwd=cwd, env=full_env,
                                 capture_output=True, text=True, timeout=60)
        assert printed.returncode == 0, (f"{where}: {line!r} --print-config exited {printed.returncode}:\n"
                                         f"{printed.stdout[-2000:]}{printed.stderr[-3000:]}")
        if any(a in ("-h", "--help", "-v", "--version") for a in args):
            return  # nothing to resolve: the command prints and exits
        assert "worker_class" in printed.stdout, f"{where}: {line!r} printed no configuration"
        resolved = subprocess.run([sys.executable, "-c", HELPER, prog, *args], cwd=cwd, env=full_env,
                                  capture_output=True, text=True, timeout=60)
        assert resolved.returncode == 0 and "RESOLVED" in resolved.stdout, (
            f"{where}: {line!r} would not boot asgiworker:\n{resolved.stdout[-2000:]}{resolved.stderr[-3000:]}")


def check_script(where: str, argv: Sequence[str]) -> None:
    path = ROOT / argv[0]
    assert path.is_file() and os.access(path, os.X_OK), f"{where}: {argv[0]} is not an executable script"


def doc_workdir(doc: Path, base: Path) -> Path:
    """The doc's working directory: examples/*.py and the doc's ``file`` blocks."""
    cwd = base / doc.stem
    cwd.mkdir()
    for example in (ROOT / "examples").glob("*.py"):
        shutil.copy(example, cwd)
    for example in (ROOT / "examples").glob("*.html"):
        shutil.copy(example, cwd)
    written: Dict[str, str] = {}
    for block in blocks_of(doc):
        name = block.marker("file")
        if name:
            assert written.get(name, block.text) == block.text, f"{block.where()}: {name} written twice, differently"
            written[name] = block.text
            (cwd / name).write_text(block.text)
    return cwd


@dataclasses.dataclass
class ServeGroup:
    block: Block
    line: str
    curls: List[Tuple[str, List[str]]]


def plan(doc: Path) -> Tuple[List[Tuple[Block, str]], List[ServeGroup], List[str]]:
    """What the doc's shell blocks ask for: (block, command) to check with --print-config, the
    servers with their curl commands, and the errors found."""
    checks: List[Tuple[Block, str]] = []
    groups: List[ServeGroup] = []
    errors: List[str] = []
    for block in blocks_of(doc):
        if block.info not in SHELL_INFOS or block.marker("skip") is not None:
            continue
        serve = block.marker("serve") is not None
        served = 0
        for line, output in command_lines(block):
            try:
                env, argv = split_command(line)
            except (AssertionError, ValueError) as exc:
                errors.append(f"{block.where()}: {exc}")
                continue
            if not argv:
                continue
            if our_command(argv):
                checks.append((block, line))
                if serve:
                    groups.append(ServeGroup(block, line, []))
                    served += 1
            elif argv[0] == "curl":
                if not groups:
                    errors.append(f"{block.where()}: {line!r} needs a serve block before it")
                else:
                    groups[-1].curls.append((line, output))
            elif "/" in argv[0] and (ROOT / argv[0]).suffix == ".sh":
                try:
                    check_script(block.where(), argv)
                except AssertionError as exc:
                    errors.append(str(exc))
            else:
                errors.append(f"{block.where()}: {line!r} cannot be run by the test: mark the block "
                              "<!-- doc-test: skip (why) -->")
        if serve and served != 1:
            errors.append(f"{block.where()}: a serve block has exactly one gunicorn/asgiworker command")
    return checks, groups, errors


BIND = re.compile(r"^(?:--bind=|-b)(.+)$")
URL_HOST = re.compile(r"(?<=://)(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::\d+)?")


def with_port(argv: List[str], port: int) -> List[str]:
    out: List[str] = []
    replaced = False
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--bind", "-b") and i + 1 < len(argv):
            out += ["--bind", f"127.0.0.1:{port}"]
            skip = replaced = True
        elif BIND.match(arg):
            out += ["--bind", f"127.0.0.1:{port}"]
            replaced = True
        else:
            out.append(arg)
    return out if replaced else [*out, "--bind", f"127.0.0.1:{port}"]


def matches(expected: List[str], got: List[str]) -> bool:
    if not expected:
        return True
    if expected[0].strip() == "...":
        return any(matches(expected[1:], got[i:]) for i in range(len(got) + 1))
    return bool(got) and got[0].rstrip() == expected[0].rstrip() and matches(expected[1:], got[1:])


def run_serve_group(group: ServeGroup, cwd: Path) -> None:
    env, argv = split_command(group.line)
    ours = our_command(argv)
    assert ours is not None
    _, executable, args = ours
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="doc-serve-") as runtime, \
            tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([*executable, *with_port(args, port)], cwd=cwd, env=command_env(env, runtime),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def logged() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        try:
            wait_answering(port, proc, logged)
            for line, expected in group.curls:
                tokens = shlex.split(strip_comment(URL_HOST.sub(f"127.0.0.1:{port}", line)))
                result = subprocess.run([tokens[0], "--silent", "--show-error", "--fail", "--max-time", "10",
                                         *tokens[1:]], capture_output=True, text=True, timeout=30)
                where = f"{group.block.doc.relative_to(ROOT)}: {line!r} (against {group.line!r})"
                assert result.returncode == 0, f"{where} exited {result.returncode}: {result.stderr}\n{logged()}"
                assert matches(expected, result.stdout.splitlines()), (
                    f"{where} printed\n{result.stdout}\nwhere the doc says\n" + "\n".join(expected))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_answering(port: int, proc: "subprocess.Popen[bytes]", logged, timeout: float = 40.0) -> None:
    """Until the server answers an HTTP request (any status: the curls judge the answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{logged()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the server did not answer within {timeout} s:\n{logged()}")


@pytest.fixture(scope="module")
def workdirs() -> Iterator[Dict[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="doc-test-") as base:
        yield {doc: doc_workdir(doc, Path(base)) for doc in DOCS}


def _run_all(jobs: List) -> List[str]:
    """Run the (callable, args) jobs side by side; the failures' messages."""
    def run(job) -> str:
        fn, args = job
        try:
            fn(*args)
            return ""
        except AssertionError as exc:
            return str(exc)
    with ThreadPoolExecutor(max_workers=6) as pool:
        return [message for message in pool.map(run, jobs) if message]


def test_every_command_in_the_docs_is_valid(workdirs: Dict[Path, Path]) -> None:
    """Every gunicorn/asgiworker line of every doc, with --print-config and through the helper;
    every script named exists; every other command is in a skipped block."""
    jobs: List = []
    errors: List[str] = []
    for doc in DOCS:
        checks, _, found = plan(doc)
        errors += found
        jobs += [(check_our_command, (block.where(), line, workdirs[doc])) for block, line in checks]
    assert len(jobs) >= 10
    errors += _run_all(jobs)
    assert not errors, "\n\n".join(errors)


def test_served_commands_answer_their_curls(workdirs: Dict[Path, Path]) -> None:
    """Each serve block's command, started as written, answers the doc's curl lines as shown."""
    jobs: List = []
    for doc in DOCS:
        _, groups, _ = plan(doc)
        jobs += [(run_serve_group, (group, workdirs[doc])) for group in groups]
    assert jobs, "the quick start serves something"
    errors = _run_all(jobs)
    assert not errors, "\n\n".join(errors)


# -- markers, quotes and config blocks -------------------------------------------------------------

KNOWN_MARKERS = re.compile(r"^(skip \(.*\S.*\)|serve|file [\w./-]+|quote [\w./-]+|excerpt [\w./-]+)$")


def test_every_marker_is_known_and_every_skip_says_why() -> None:
    bad = [f"{block.where()}: <!-- doc-test: {arg} -->" for block in all_blocks()
           for kind, arg in block.markers if kind == "doc-test" and not KNOWN_MARKERS.match(arg)]
    assert not bad, "unknown marker, or a skip without its (reason):\n" + "\n".join(bad)


def test_quotes_and_excerpts_are_the_files() -> None:
    errors = []
    for block in all_blocks():
        for word, whole in (("quote", True), ("excerpt", False)):
            name = block.marker(word)
            if not name:
                continue
            path = ROOT / name
            if not path.is_file():
                errors.append(f"{block.where()}: {name} does not exist")
                continue
            content = path.read_text()
            if whole and block.text != content:
                errors.append(f"{block.where()}: the quote of {name} differs from the file")
            if not whole and ("\n" + block.text) not in ("\n" + content + ("" if content.endswith("\n") else "\n")):
                errors.append(f"{block.where()}: the excerpt is not a run of whole lines of {name}")
    assert not errors, "\n".join(errors)


def test_config_blocks_are_quotes_snippets_or_skipped() -> None:
    """A config file shown in a doc is a file a test uses (quote/excerpt), a snippet another
    test runs (and that test names it), or skipped with a reason."""
    errors = []
    for block in all_blocks():
        if block.info in SHELL_INFOS | PYTHON_INFOS | PROSE_INFOS:
            continue
        if block.info not in CONFIG_INFOS:
            errors.append(f"{block.where()}: info string {block.info!r} is not one this test knows")
        elif block.snippet:
            if not snippet_is_run(block):
                errors.append(f"{block.where()}: no test names {block.doc.name} and snippet {block.snippet!r}")
        elif not any(block.marker(w) is not None for w in ("quote", "excerpt", "skip")):
            errors.append(f"{block.where()}: a {block.info} block needs a quote, excerpt, snippet or skip marker")
    assert not errors, "\n".join(errors)


def snippet_is_run(block: Block) -> bool:
    sources = {p: p.read_text() for p in (ROOT / "tests").glob("*.py") if p.name != "test_docs.py"}
    readers = [p for p, text in sources.items() if block.doc.name in text]
    return any(f'"{block.snippet}"' in text or f"'{block.snippet}'" in text
               for p, text in sources.items() if p.name.startswith("test_")
               and (p in readers or any(r.stem in text for r in readers)))


# -- python blocks ---------------------------------------------------------------------------------

def python_blocks() -> List[Block]:
    return [b for b in all_blocks() if b.info in PYTHON_INFOS and b.marker("skip") is None and not b.snippet]


def test_every_python_block_compiles() -> None:
    errors = []
    for block in python_blocks():
        try:
            compile(block.text, block.where(), "exec")
        except SyntaxError as exc:
            errors.append(f"{block.where()}: {exc}")
    assert not errors, "\n".join(errors)


def app_name(block: Block) -> Optional[str]:
    """The app or consumer a block defines at top level, if any (the first public one)."""
    tree = ast.parse(block.text)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and APP_DEF.match(
                ast.get_source_segment(block.text, node) or "") and not node.name.startswith("_"):
            return node.name
    return None


def check_config_file(block: Block, base: Path) -> None:
    cwd = base / f"conf{block.line}"
    cwd.mkdir()
    (cwd / "gunicorn.conf.py").write_text(block.text)
    # A config file that names no worker class is one of ours only with -k on the command line.
    worker = "" if "worker_class" in block.text else " -k asgiworker.ASGIWorker"
    check_our_command(block.where(), f"gunicorn -c gunicorn.conf.py docstub:app{worker}", cwd)


def test_gunicorn_config_blocks_resolve(tmp_path: Path) -> None:
    blocks = [b for b in python_blocks() if b.text.startswith("# gunicorn.conf.py") or b.marker("file") == "gunicorn.conf.py"]
    assert blocks
    errors = _run_all([(check_config_file, (block, tmp_path)) for block in blocks])
    assert not errors, "\n\n".join(errors)


def check_served_block(block: Block, server: GunicornServer) -> None:
    server_ready(server, block)
    if "websocket.connect" in block.text:
        from websockets.sync.client import connect

        try:
            with connect(server.ws_url("/ws"), open_timeout=10) as ws:
                if "websocket.receive" in block.text:
                    ws.send("hello from the doc test")
                    ws.recv(timeout=10)
        except Exception as exc:  # noqa: BLE001  # any failure is the block's
            raise AssertionError(f"{block.where()}: the WebSocket consumer did not answer ({exc!r}):\n"
                                 f"{server.log()[-3000:]}") from None
        return
    try:
        with urllib.request.urlopen(server.url + "/", timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        raise AssertionError(f"{block.where()}: no answer ({exc!r}):\n{server.log()[-3000:]}") from None
    assert status < 400, f"{block.where()}: GET / gave {status}:\n{server.log()[-3000:]}"


def server_ready(server: GunicornServer, block: Block) -> None:
    try:
        server.wait_ready(40)
    except RuntimeError as exc:
        raise AssertionError(f"{block.where()}: {exc}") from None


def test_app_and_consumer_blocks_are_served(tmp_path: Path) -> None:
    """Each block that defines an app or a consumer, served through a real gunicorn, answers."""
    served = [(b, app_name(b)) for b in python_blocks()]
    served = [(b, name) for b, name in served if name]
    assert len(served) >= 3
    servers: List[Tuple[Block, GunicornServer]] = []
    try:
        for i, (block, name) in enumerate(served):
            (tmp_path / f"doc_snippet_{i}.py").write_text(block.text)
            servers.append((block, GunicornServer(f"doc_snippet_{i}:{name}", wait=False, cwd=tmp_path)))
        errors = _run_all([(check_served_block, pair) for pair in servers])
    finally:
        for _, server in servers:
            server.stop()
    assert not errors, "\n\n".join(errors)


# -- the settings table ----------------------------------------------------------------------------

def settings_rows() -> Dict[str, List[str]]:
    """docs/settings.md's rows whose first cell is an ``ASGIWORKER_*`` name: name -> cells."""
    rows: Dict[str, List[str]] = {}
    for line in (ROOT / "docs" / "settings.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        match = re.match(r"^`(ASGIWORKER_\w+)`$", cells[0]) if cells else None
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} has two rows"
            rows[match.group(1)] = cells
    return rows


def our_variables() -> Dict[str, str]:
    """Every ``*_ENV = "ASGIWORKER_..."`` of asgiworker/config.py: constant -> variable."""
    source = (ROOT / "asgiworker" / "config.py").read_text()
    found = dict(re.findall(r'^(\w+_ENV) = "(ASGIWORKER_\w+)"$', source, re.M))
    assert len(found) >= 15
    return found


def comparable(settings: object) -> Dict[str, object]:
    # The proxy policies are built anew on each call (no __eq__) and read no variable of ours.
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)  # type: ignore[arg-type]
            if f.name not in ("proxy", "proxy_protocol_peers", "request_hooks")}


def test_the_settings_table_has_every_variable_with_the_code_s_default() -> None:
    """Setting each variable to the table's default changes nothing: that is the default."""
    from asgiworker.config import Settings

    rows = settings_rows()
    variables = set(our_variables().values())
    assert set(rows) == variables, (f"missing from docs/settings.md: {sorted(variables - set(rows))}; "
                                    f"not in config.py: {sorted(set(rows) - variables)}")
    cfg = gunicorn.config.Config()
    unset = comparable(Settings.from_gunicorn(cfg, {}))
    errors = []
    for name, cells in rows.items():
        default = re.match(r"^`([^`]*)`", cells[1])
        if not default:
            errors.append(f"{name}: the default cell {cells[1]!r} does not start with the value in backticks")
            continue
        value = default.group(1)
        value = "" if value == '""' else value
        given = comparable(Settings.from_gunicorn(cfg, {name: value}))
        if given != unset:
            changed = {k: (unset[k], given[k]) for k in unset if unset[k] != given[k]}
            errors.append(f"{name}: {value!r} is not the default (code default, given): {changed}")
    assert not errors, "\n".join(errors)


def test_the_settings_table_links_each_variable_to_its_contract() -> None:
    rows = settings_rows()
    unlinked = [name for name, cells in rows.items() if not re.search(r"\]\((?:[\w./-]+\.md)?#[\w-]+\)", " ".join(cells))]
    assert not unlinked, f"rows without a link to their contract: {unlinked}"
