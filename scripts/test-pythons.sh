#!/usr/bin/env bash
# Run the whole test suite on several Pythons through tox, one after the other:
#   ./scripts/test-pythons.sh                         every env in tox.ini (py310 ... py313)
#   ./scripts/test-pythons.sh py310 py313 -- -x -q     these envs (py39,py313 works too); arguments
#                                                     after -- go to pytest
# Installs tox into .venv when missing. Each pyXY env takes Python X.Y from pyenv
# ($PYENV_ROOT/versions/X.Y.*, whether or not it is on PATH) or else pythonX.Y on PATH, and
# stops before running anything when one is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

envs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; break ;;
        -*) echo "usage: $0 [ENV ...] [-- PYTEST_ARGS ...]   (unknown option $1)" >&2; exit 2 ;;
        *) IFS=, read -ra names <<< "$1"; envs+=("${names[@]}"); shift ;;  # py39 py313 or py39,py313
    esac
done

# tox lives in .venv beside the test dependencies (scripts/_venv.sh adds those when it runs).
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -m tox --version >/dev/null 2>&1; then
    echo "installing tox into .venv" >&2
    "$VENV/bin/python" -m pip install -q "tox>=4.11,<5"
fi
TOX=("$VENV/bin/python" -m tox)

if [ ${#envs[@]} -eq 0 ]; then
    mapfile -t envs < <("${TOX[@]}" -qq list --no-desc)
fi

source "$ROOT/scripts/_pythons.sh"  # find_python

discover=()
missing=0
for env in "${envs[@]}"; do
    if [[ "$env" =~ ^py3([0-9]+)$ ]]; then
        want="3.${BASH_REMATCH[1]}"
        if exe="$(find_python "$want")"; then
            echo "$env: $exe" >&2
            discover+=("$exe")
        else
            echo "$env: no Python $want found (looked in ${PYENV_ROOT:-$HOME/.pyenv}/versions/$want.* and for python$want on PATH); install it, e.g. pyenv install $want" >&2
            missing=1
        fi
    fi
done
[ "$missing" -eq 0 ] || exit 1

joined="$(IFS=,; echo "${envs[*]}")"
if [ ${#discover[@]} -gt 0 ]; then
    exec "${TOX[@]}" run --discover "${discover[@]}" -e "$joined" -- "$@"
fi
exec "${TOX[@]}" run -e "$joined" -- "$@"
