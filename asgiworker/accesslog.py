"""Access log lines through Gunicorn's own logger, so every `access_log_format` atom, a custom
`logger_class` and statsd work as with Gunicorn's own workers.

Gunicorn's ``Logger.access(resp, req, environ, request_time)`` was written for WSGI; we hand it
small stand-ins built from the ASGI scope. This runs only when access logging is on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Dict, Iterable, List, Tuple


def access_log_enabled(cfg: Any) -> bool:
    """Whether to call `Logger.access` for each request: when Gunicorn's own rule says it writes
    a line, and also whenever the logger may do more with it (statsd metrics, a custom class)."""
    from gunicorn.glogging import Logger

    return bool(
        cfg.accesslog or cfg.logconfig or getattr(cfg, "logconfig_dict", None)
        or getattr(cfg, "logconfig_json", None)
        or (cfg.syslog and not cfg.disable_redirect_access_to_syslog)
        or getattr(cfg, "statsd_host", None)
        or cfg.logger_class is not Logger
    )


class _Response:
    __slots__ = ("status", "headers", "sent")

    def __init__(self, status: int, headers: List[Tuple[str, str]], sent: int) -> None:
        self.status = status
        self.headers = headers
        self.sent = sent


class _Request:
    __slots__ = ("headers",)

    def __init__(self, headers: List[Tuple[str, str]]) -> None:
        self.headers = headers


def text_pairs(pairs: Iterable[Any], upper: bool) -> List[Tuple[str, str]]:
    out = []
    for name, value in pairs:
        name = bytes(name).decode("latin-1")
        out.append((name.upper() if upper else name, bytes(value).decode("latin-1")))
    return out


def environ_for(scope: Dict[str, Any], headers: List[Tuple[str, str]]) -> Dict[str, Any]:
    query = scope["query_string"].decode("latin-1")
    raw_uri = scope["raw_path"].decode("latin-1") + ("?" + query if query else "")
    client = scope.get("client") or ("-", 0)
    environ: Dict[str, Any] = {
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "REQUEST_METHOD": scope["method"],
        "RAW_URI": raw_uri,
        "PATH_INFO": scope["path"],
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
        "SCRIPT_NAME": scope.get("root_path", ""),
        "wsgi.url_scheme": scope.get("scheme", "http"),
    }
    for name, value in headers:
        key = "HTTP_" + name.replace("-", "_")
        environ[key] = environ[key] + "," + value if key in environ else value
    return environ


def log_access(log: Any, scope: Dict[str, Any], status: int, response_headers: Iterable[Any],
               sent: int, seconds: float) -> None:
    request_headers = text_pairs(scope["headers"], upper=True)
    log.access(response_for(status, response_headers, sent), _Request(request_headers),
               environ_for(scope, request_headers), timedelta(seconds=max(seconds, 0.0)))


def response_for(status: int, headers: Iterable[Any], sent: int) -> _Response:
    try:
        return _Response(status, text_pairs(headers, upper=False), sent)
    except (TypeError, ValueError):
        return _Response(status, [], sent)
