"""``python -m asgiworker``: the ``asgiworker`` command (asgiworker/cli.py)."""

from asgiworker.cli import main

if __name__ == "__main__":
    main(prog="python -m asgiworker")
