# Sourced by the other scripts: make .venv (once) and keep it in step with setup.cfg.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
# The default Python's environment is .venv; another one (PYTHON=python3.13 ./scripts/test.sh)
# gets its own, .venv-3.13, so that switching back and forth reinstalls nothing.
if [ -n "${PYTHON:-}" ]; then
    VENV="$ROOT/.venv-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
else
    VENV="$ROOT/.venv"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.asgiworker-installed"
want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
