"""The ``asgiworker`` command (and ``python -m asgiworker``): Gunicorn with our worker class.

    asgiworker app:app                   # gunicorn app:app --worker-class asgiworker.ASGIWorker
                                         #   --access-logfile -
    asgiworker app:app -w 4 -b 0.0.0.0:80

It is Gunicorn's own command line, run by Gunicorn's own runner (``gunicorn.app.wsgiapp.run``):
every argument is passed through unchanged, and only two are added in front of them:

- ``--worker-class asgiworker.ASGIWorker``, always (a worker class that is not ours is refused,
  since running it is what ``gunicorn`` is for);
- ``--access-logfile -`` (access lines on stdout, as a quick start wants to see), unless an access
  log is set on the command line or in ``GUNICORN_CMD_ARGS``, or a Gunicorn config file is in play
  (``-c``, or ``gunicorn.conf.py`` in the working directory), whose settings it would override.

Everything else is Gunicorn's default: ``--bind 127.0.0.1:8000`` (``0.0.0.0:$PORT`` when ``PORT`` is
set) and one worker (``$WEB_CONCURRENCY`` when set).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Mapping, Optional, Sequence

WORKER_CLASS = "asgiworker.ASGIWorker"

# The spellings of our worker that need no import to recognise (the entry point is setup.cfg's).
_OUR_NAMES = frozenset({WORKER_CLASS, "asgiworker.worker.ASGIWorker", "egg:asgiworker#asgiworker"})

_PREAMBLE = """\
{prog}: Gunicorn with asgiworker's worker class, for quick starts.

  {prog} APP_MODULE [GUNICORN OPTIONS]
  == gunicorn APP_MODULE --worker-class {worker} --access-logfile - [GUNICORN OPTIONS]

Every option below is Gunicorn's and is passed through unchanged. Added in front of them:
  --worker-class {worker}
      always; another worker class is refused (run gunicorn itself for it)
  --access-logfile -
      unless an access log is set on the command line or in GUNICORN_CMD_ARGS, or a
      Gunicorn config file is in play (-c, or gunicorn.conf.py in the working directory)
The rest are Gunicorn's defaults: --bind 127.0.0.1:8000 (0.0.0.0:$PORT when PORT is set) and
one worker ($WEB_CONCURRENCY when set).

Gunicorn's help follows.
"""


class UsageError(Exception):
    """The command line asks for something this command does not do: the message says what."""


def gunicorn_argv(args: Sequence[str], environ: Optional[Mapping[str, str]] = None,
                  cwd: Optional[str] = None) -> List[str]:
    """Gunicorn's arguments for our ``args``: ours in front, the user's after them, unchanged."""
    environ = dict(os.environ if environ is None else environ)
    # Gunicorn's own parser reads the arguments, so every spelling it accepts (-kX, --worker-class=X,
    # abbreviations) is read as Gunicorn will read it.
    parser = _gunicorn_parser()
    given = _parse(parser, list(args))
    from_env = _parse(parser, shlex.split(environ.get("GUNICORN_CMD_ARGS", "")))
    added: List[str] = []
    for source, namespace in (("the command line", given), ("GUNICORN_CMD_ARGS", from_env)):
        worker = namespace.worker_class
        if worker is not None and not _is_ours(worker):
            raise UsageError(
                f"worker class {worker!r} (from {source}) is not asgiworker's: this command always "
                f"runs {WORKER_CLASS}; for another worker class run gunicorn itself")
    if given.worker_class is None:
        added += ["--worker-class", WORKER_CLASS]
    if not _access_log_configured(given, from_env, cwd or os.getcwd()):
        added += ["--access-logfile", "-"]
    return [*added, *args]


def main(argv: Optional[Sequence[str]] = None, prog: str = "asgiworker") -> None:
    """Run Gunicorn (it does not return: Gunicorn exits the process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-v", "--version") for a in args):
        import gunicorn

        from asgiworker import __version__

        print(f"asgiworker {__version__} (gunicorn {gunicorn.__version__})")
        raise SystemExit(0)
    if any(a in ("-h", "--help") for a in args):
        print(_PREAMBLE.format(prog=prog, worker=WORKER_CLASS))
        _run_gunicorn(prog, ["--help"])  # Gunicorn's argparse prints its help and exits
    try:
        gunicorn_args = gunicorn_argv(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _run_gunicorn(prog, gunicorn_args)


def _run_gunicorn(prog: str, args: List[str]) -> None:
    from gunicorn.app.wsgiapp import run

    # Gunicorn parses sys.argv, and re-executes `python sys.argv...` on USR2 (a binary upgrade):
    # argv[0] must be a script that runs this command again. `python -m asgiworker` has only the
    # package's __main__.py there, which run as a script would put the package's own directory
    # (with its `http` package) first on sys.path: the console script beside the interpreter
    # is used instead when there is one.
    script = sys.argv[0]
    if prog != "asgiworker":
        beside = os.path.join(os.path.dirname(sys.executable), "asgiworker")
        if os.access(beside, os.X_OK):
            script = beside
    sys.argv = [script, *args]
    run(prog=prog)


def _gunicorn_parser() -> argparse.ArgumentParser:
    from gunicorn.config import Config

    parser: argparse.ArgumentParser = Config().parser()
    return parser


def _parse(parser: argparse.ArgumentParser, args: List[str]) -> argparse.Namespace:
    # A command line Gunicorn would refuse is left for Gunicorn to refuse, with its own message.
    try:
        namespace, _ = parser.parse_known_args(args)
    except SystemExit:
        return argparse.Namespace(worker_class=None, accesslog=None, config=None, chdir=None)
    return namespace


def _is_ours(worker: str) -> bool:
    if worker in _OUR_NAMES:
        return True
    # A subclass of our worker (a user's own, named by its dotted path) is ours too.
    from gunicorn.util import load_class

    from asgiworker.worker import ASGIWorker

    try:
        cls = load_class(worker)
    except Exception:
        return False
    return isinstance(cls, type) and issubclass(cls, ASGIWorker)


def _access_log_configured(given: argparse.Namespace, from_env: argparse.Namespace, cwd: str) -> bool:
    if given.accesslog is not None or from_env.accesslog is not None:
        return True
    if given.config is not None or from_env.config is not None:
        return True
    # Gunicorn looks for gunicorn.conf.py in the directory it was started in: its --chdir is
    # applied after the config file is read (gunicorn/app/base.py, Application.load_config).
    return os.path.exists(os.path.join(cwd, "gunicorn.conf.py"))
