#!/usr/bin/env bash
# Group fan-out over Redis: our worker against Django Channels + channels_redis on uvicorn-worker.
# Usage and what it measures: README.md ("Group fan-out").
#   bench/fanout.sh [--quick] [--servers ours,channels] [--rates 10,25,...] [--fixed-rate 25] [--profile]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# The project's venv: it has our package (editable), channels, channels_redis, uvicorn-worker.
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "no venv at $VENV (set VENV=...)" >&2; exit 1; }
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || { echo "redis-server is required" >&2; exit 1; }
"$PY" - <<'PY' || { echo "the venv lacks a package the benchmark needs (above)" >&2; exit 1; }
import asgiworker, channels, channels_redis, django, uvicorn_worker, uvloop, redis, gunicorn  # noqa: F401
PY
if [[ " $* " == *" --profile "* ]] && [ ! -x "$VENV/bin/py-spy" ] && ! command -v py-spy >/dev/null; then
    echo "installing py-spy into $VENV (for --profile)..." >&2
    "$VENV/bin/pip" install -q py-spy
fi

# 1000 client sockets and 1000 server sockets, plus Redis's.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

source "$HERE/_guarded.sh"
run_guarded "$PY" "$HERE/fanout.py" "$@"
exit $?
