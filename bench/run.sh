#!/usr/bin/env bash
# Benchmark our worker against its peers on this machine. Usage and what it measures: README.md.
#   [PYTHON=python3.X] bench/run.sh [--quick] [--rounds N] [--duration S] [--only WORKLOAD[,..]] [--servers NAME[,..]]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# One venv per Python: PYTHON=python3.13 bench/run.sh measures on that Python (bench/.venv-3.13).
if [ -n "${PYTHON:-}" ]; then
    VENV="$HERE/.venv-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
else
    VENV="$HERE/.venv"
fi

# wrk (load generator), taskset and curl.
if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)..." >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
for tool in taskset curl; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "need 2 CPUs: the server runs on CPU 0, wrk on CPU 1" >&2; exit 1
fi

# The servers, in a venv of their own, pinned (requirements.txt); ours from this checkout.
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
stamp="$VENV/.bench-installed"
want="$(cat "$HERE/requirements.txt" "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing the servers into $VENV..." >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt" -e "$ROOT"
    echo "$want" > "$stamp"
fi

# 1000 connections: the servers and wrk each need that many descriptors, and more.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

source "$HERE/_guarded.sh"
run_guarded "$VENV/bin/python" "$HERE/bench.py" "$@"
exit $?
