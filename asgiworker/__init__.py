"""asgiworker: a Gunicorn worker for ASGI 3, ASGI 2 and channel-style consumers.

    gunicorn app:hello_world --worker-class asgiworker.ASGIWorker
"""

__version__ = "0.1.0"

__all__ = ["ASGIWorker", "__version__"]


def __getattr__(name: str) -> object:
    # Imported lazily so that `import asgiworker.adapters` (done by user code for the
    # wrappers) does not drag in Gunicorn's worker machinery.
    if name == "ASGIWorker":
        from asgiworker.worker import ASGIWorker

        return ASGIWorker
    raise AttributeError(f"module 'asgiworker' has no attribute {name!r}")
