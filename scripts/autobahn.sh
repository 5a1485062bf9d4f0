#!/usr/bin/env bash
# Every case of the Autobahn Testsuite's fuzzing client (run by kosoku, from PyPI) against a real
# gunicorn with our worker and the echo app tests/apps/autobahn_app.py, permessage-deflate off and
# then on. Prints the verdicts per behaviour, the cases that are not OK, and where the HTML report
# is; exits 1 if a case did not get the verdict docs/websocket.md documents.
#
#   scripts/autobahn.sh                        # all cases one at a time, one worker (~9 min here)
#   scripts/autobahn.sh --parallel 2 --workers 2 /tmp/ab   # faster; report under /tmp/ab
#   scripts/autobahn.sh --modes off            # only with permessage-deflate off (~15 s)
#
# The run and the checks are tests/test_autobahn.py's (its main()); CI runs a subset of it.
source "$(dirname "$0")/_venv.sh"
cd "$ROOT"
exec python -m tests.test_autobahn "$@"
