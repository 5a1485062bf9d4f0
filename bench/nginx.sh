#!/usr/bin/env bash
# Hello through nginx in both upstream modes: our worker, uvicorn-worker and Gunicorn's -k asgi
# behind the same nginx (bench/nginx.py says how; results: README.md, "Behind nginx").
#   bench/nginx.sh [--quick] [--rounds N] [--duration S]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv"

# wrk, taskset, curl and bench/.venv with the pinned peers: run.sh sets them up (its --help
# does that, then only prints its usage).
"$HERE/run.sh" --help >/dev/null
# nginx: Debian's, as the tests install it.
PYTHONPATH="$ROOT" "$VENV/bin/python" -c 'from tests.debian import ensure_debian_binary as e; e("nginx", "nginx")'
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

source "$HERE/_guarded.sh"
run_guarded "$VENV/bin/python" "$HERE/nginx.py" "$@"
exit $?
