# Sourced by the scripts that pick a Python by version (test-pythons.sh, .ci/run).

# The newest X.Y.Z under pyenv, else pythonX.Y on PATH; only one that actually runs counts (a pyenv
# shim for a version that is not active is on PATH but fails).
find_python() {
    local want="$1" candidate
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/* 2>/dev/null \
                       | grep -E "/${want//./\\.}\.[0-9]+$" | sort -rV) "$(command -v "python$want" || true)"; do
        [ -d "$candidate" ] && candidate="$candidate/bin/python$want"
        if [ -n "$candidate" ] && "$candidate" -c 'import sys' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
