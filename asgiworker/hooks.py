"""Gunicorn's ``pre_request`` / ``post_request`` server hooks, called around each HTTP request.

Gunicorn passes its own request (and response, environ) objects; we pass stand-ins built from the
ASGI scope with the attributes hooks use (``method``, ``path``, ``uri``, ``query``, ``version``,
``headers``; the response's ``status``, ``headers``, ``sent``). Only built when a hook is set.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

from asgiworker.accesslog import environ_for, response_for, text_pairs


class RequestShim:
    """What a Gunicorn hook reads of ``req``."""

    def __init__(self, scope: Dict[str, Any]) -> None:
        self.method = scope["method"]
        self.path = scope["path"]
        self.query = scope["query_string"].decode("latin-1")
        self.uri = scope["raw_path"].decode("latin-1") + ("?" + self.query if self.query else "")
        major, _, minor = scope["http_version"].partition(".")
        self.version = (int(major), int(minor or 0))
        self.scheme = scope["scheme"]
        self.headers = text_pairs(scope["headers"], upper=True)
        self.peer_addr = scope.get("client")


class RequestHooks:
    """Calls the configured hooks; a hook that raises is logged, never fatal to the request."""

    def __init__(self, worker: Any, pre: Optional[Callable[..., Any]], post: Optional[Callable[..., Any]], log: Any) -> None:
        self.worker = worker
        self.pre = pre
        self.post = post
        self.log = log

    def before(self, scope: Dict[str, Any]) -> None:
        if self.pre is not None:
            try:
                self.pre(self.worker, RequestShim(scope))
            except Exception:
                self.log.exception("Exception in pre_request hook")

    def after(self, scope: Dict[str, Any], status: int, headers: Iterable[Any], sent: int) -> None:
        if self.post is not None:
            try:
                request = RequestShim(scope)
                self.post(self.worker, request, environ_for(scope, request.headers),
                          response_for(status, headers, sent))
            except Exception:
                self.log.exception("Exception in post_request hook")


def from_gunicorn(worker: Any, cfg: Any, log: Any) -> Optional[RequestHooks]:
    """Hooks to call, or None when both are Gunicorn's defaults (which only log at debug)."""
    from gunicorn.config import PostRequest, PreRequest

    pre = cfg.pre_request if cfg.pre_request is not PreRequest.default else None
    post = cfg.post_request if cfg.post_request is not PostRequest.default else None
    return RequestHooks(worker, pre, post, log) if pre or post else None
