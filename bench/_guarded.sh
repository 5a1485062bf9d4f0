# Sourced by run.sh and fanout.sh: run_guarded PYTHON SCRIPT [ARGS...] runs a benchmark runner.
#
# The runner kills every process group it starts (servers, clients, Redis) when done or
# interrupted (Ctrl-C, SIGTERM, SIGHUP). Should the runner itself die without cleaning up (e.g.
# SIGKILL), the trap here kills the process groups it listed as running in $BENCH_PGID_FILE.
run_guarded() {
    local python="$1" script="$2"
    shift 2
    PGIDS="$(mktemp "${TMPDIR:-/tmp}/asgibench-pgids.XXXXXX")"
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
    # In the background so that this shell's traps run at once on a signal.
    BENCH_PGID_FILE="$PGIDS" "$python" "$script" "$@" &
    runner=$!
    local status=0
    wait "$runner" || status=$?
    runner=""
    return "$status"
}
