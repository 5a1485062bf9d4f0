#!/usr/bin/env bash
# Run the whole test suite (any arguments go to pytest).
source "$(dirname "$0")/_venv.sh"
cd "$ROOT"
exec python -m pytest "$@"
