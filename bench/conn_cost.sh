#!/usr/bin/env bash
# Instructions the server spends per `Connection: close` request (accept, serve, close), counted by
# callgrind: repeatable on a noisy machine, unlike timings. Usage:
#   bench/conn_cost.sh [--listener native|ours] [--protocol bare|ours]
# Runs bench/floor.py under callgrind twice (N=300 and N=900 sequential connections from a
# Python client) and prints (Ir(900) - Ir(300)) / 600.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$HERE/.venv/bin/python"
# Dict layouts follow the hash seed: fixed, the same code counts the same instructions each run.
export PYTHONHASHSEED=0
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
count() {
    local n=$1; shift
    local port=$((20000 + RANDOM % 20000)) out
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$PY" "$HERE/floor.py" --port "$port" "$@" >/dev/null 2>&1 &
    local pid=$!
    "$PY" - "$port" "$n" <<'PYCLIENT'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while True:  # wait for the server (slow under valgrind)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
for _ in range(n):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        while s.recv(65536):
            pass
PYCLIENT
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
    rm -f "$out"
}
a=$(count 300 "$@")
b=$(count 900 "$@")
echo "$* instructions per connection: $(( (b - a) / 600 ))"
