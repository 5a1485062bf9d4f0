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

# fanout.py kills every process group it starts (Redis, each Gunicorn, the clients, the ticker)
# when done or interrupted, and they die with it (PDEATHSIG); should it be killed outright,
# this trap kills the groups it listed in $PGIDS.
PGIDS="$(mktemp "${TMPDIR:-/tmp}/fanout-pgids.XXXXXX")"
runner=""
cleanup() {
    if [ -n "$runner" ]; then
        kill -TERM "$runner" 2>/dev/null || true
        wait "$runner" 2>/dev/null || true
    fi
    while read -r pgid; do
        [ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null || true
    done < "$PGIDS"
    rm -f "$PGIDS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

BENCH_PGID_FILE="$PGIDS" "$PY" "$HERE/fanout.py" "$@" &
runner=$!
status=0
wait "$runner" || status=$?
runner=""
exit "$status"
