#!/usr/bin/env bash
# ruff (asgiworker, tests, bench, examples) and mypy --strict (asgiworker), as configured in
# pyproject.toml; the `lint` extra of setup.cfg is installed into .venv when missing.
source "$(dirname "$0")/_venv.sh"
cd "$ROOT"
if ! python -m ruff --version >/dev/null 2>&1 || ! python -m mypy --version >/dev/null 2>&1; then
    python -m pip install -q -e "$ROOT[lint]"
fi
python -m ruff check asgiworker tests bench examples
python -m mypy
