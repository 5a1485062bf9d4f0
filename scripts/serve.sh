#!/usr/bin/env bash
# Serve the example channel consumer on http://localhost:8080 (any arguments go to gunicorn).
source "$(dirname "$0")/_venv.sh"
cd "$ROOT/examples"
exec gunicorn hello:hello_world --bind localhost:8080 --worker-class asgiworker.ASGIWorker "$@"
