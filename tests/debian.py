"""Programs the tests borrow from Debian (redis-server, Chromium, slowhttptest), found or installed.

    path = ensure_debian_binary("slowhttptest", "slowhttptest")   # or raises DebianUnavailable

CI runs on a clean Debian machine as root, so a missing program is installed with apt-get (one
``apt-get update`` per test session, before the first install); where that is impossible (not
root, no apt-get, the install fails) the caller gets ``DebianUnavailable`` saying why, and skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Dict, List, Optional, Sequence

# Where Debian puts programs, for a PATH that lacks them (sbin is often missing for non-login shells).
_DEBIAN_BIN_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")

# One install at a time (tests may ask from threads), one `apt-get update` per session, and a
# failed install is not retried: every later caller gets the first failure's reason at once.
_lock = threading.Lock()
_updated = False
_failures: Dict[str, str] = {}


class DebianUnavailable(RuntimeError):
    """The program is missing and cannot be installed here: the message says why."""


def find_binary(names: Sequence[str]) -> Optional[str]:
    """The path of the first of ``names`` on PATH or in Debian's bin directories, or None."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for name in names:
        for directory in _DEBIAN_BIN_DIRS:
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def _apt_get(args: List[str], package: str) -> None:
    command = ["apt-get", *args]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DebianUnavailable(f"installing {package} failed: {' '.join(command)}: {exc}") from None
    if result.returncode != 0:
        raise DebianUnavailable(f"installing {package} failed: {' '.join(command)} exited {result.returncode}:\n"
                                f"{result.stdout[-2000:]}{result.stderr[-2000:]}")


def ensure_debian_binary(binary: str, package: str, alternatives: Sequence[str] = ()) -> str:
    """The path of ``binary`` (or of one of ``alternatives``), installing Debian's ``package``
    with apt-get when none is there; raises ``DebianUnavailable`` when that cannot be done."""
    global _updated
    names = (binary, *alternatives)
    path = find_binary(names)
    if path:
        return path
    with _lock:
        path = find_binary(names)  # another thread may have installed it while we waited
        if path:
            return path
        if package in _failures:
            raise DebianUnavailable(_failures[package])
        try:
            if os.geteuid() != 0 or not shutil.which("apt-get"):
                raise DebianUnavailable(f"{binary} is not installed and cannot be installed here "
                                        "(needs root and apt-get)")
            if not _updated:  # a clean machine's package lists may be empty or stale
                _apt_get(["update"], package)
                _updated = True
            _apt_get(["install", "-y", "-q", package], package)
            path = find_binary(names)
            if not path:
                raise DebianUnavailable(f"apt-get installed {package} but found no {' or '.join(names)}")
            return path
        except DebianUnavailable as exc:
            _failures[package] = str(exc)
            raise
