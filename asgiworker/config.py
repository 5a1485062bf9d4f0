"""The worker's settings: Gunicorn's own, plus the few of ours that Gunicorn has no name for.

Ours are read from ``ASGIWORKER_*`` environment variables, so they can be set without touching
code, from the shell, on the Gunicorn command line (``-e ASGIWORKER_APP_KIND=consumer``) or in a
Gunicorn config file (``raw_env = ["ASGIWORKER_APP_KIND=consumer"]``). Gunicorn applies ``raw_env``
in the worker before the application is loaded, which is when we read them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

from asgiworker.accesslog import access_log_enabled
from asgiworker.channels.factory import REDIS_SCHEMES, LayerSpec
from asgiworker.proxy import ProxyPolicy
from asgiworker.proxy_protocol import mode_from_gunicorn
from asgiworker.tls import read_server_cert

APP_KIND_ENV = "ASGIWORKER_APP_KIND"
HEADER_TIMEOUT_ENV = "ASGIWORKER_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "ASGIWORKER_BODY_TIMEOUT"
BODY_MIN_RATE_ENV = "ASGIWORKER_BODY_MIN_RATE"
SEND_TIMEOUT_ENV = "ASGIWORKER_SEND_TIMEOUT"
LINGER_TIMEOUT_ENV = "ASGIWORKER_LINGER_TIMEOUT"
WS_HANDSHAKE_TIMEOUT_ENV = "ASGIWORKER_WS_HANDSHAKE_TIMEOUT"
SERVER_HEADER_ENV = "ASGIWORKER_SERVER_HEADER"
LIFESPAN_ENV = "ASGIWORKER_LIFESPAN"
ROOT_PATH_ENV = "ASGIWORKER_ROOT_PATH"
WS_MAX_SIZE_ENV = "ASGIWORKER_WS_MAX_SIZE"
WS_MAX_QUEUE_ENV = "ASGIWORKER_WS_MAX_QUEUE"
WS_PING_INTERVAL_ENV = "ASGIWORKER_WS_PING_INTERVAL"
WS_PING_TIMEOUT_ENV = "ASGIWORKER_WS_PING_TIMEOUT"
WS_DEFLATE_ENV = "ASGIWORKER_WS_PER_MESSAGE_DEFLATE"
CHANNEL_LAYER_ENV = "ASGIWORKER_CHANNEL_LAYER"
CHANNEL_PREFIX_ENV = "ASGIWORKER_CHANNEL_PREFIX"
CHANNEL_CAPACITY_ENV = "ASGIWORKER_CHANNEL_CAPACITY"
CHANNEL_EXPIRY_ENV = "ASGIWORKER_CHANNEL_EXPIRY"
CHANNEL_GROUP_EXPIRY_ENV = "ASGIWORKER_CHANNEL_GROUP_EXPIRY"
CHANNEL_MAX_MESSAGE_ENV = "ASGIWORKER_CHANNEL_MAX_MESSAGE_SIZE"
LIFESPAN_MODES = ("auto", "on", "off")
_N = TypeVar("_N", int, float)


class ConfigurationError(Exception):
    """A setting has a value we cannot work with; the message says what to change."""


@dataclass(frozen=True)
class Settings:
    """Everything the HTTP layer needs to know, resolved once at boot (and never changed)."""

    keepalive: float = 2.0
    header_timeout: float = 10.0
    # A request body that stops arriving (while we read) for this long is given up (408).
    body_timeout: float = 20.0
    # ... or trickles in slower than this many bytes/s over a window of body_timeout (0: no minimum).
    body_min_rate: int = 500
    # A client that takes none of our output (the socket's buffer stays full) for this long is cut.
    send_timeout: float = 30.0
    # A closing connection reads and discards input for at most this long (RFC 9112 9.6).
    linger_timeout: float = 2.0
    # A WebSocket app must accept or refuse within this long of the handshake.
    ws_handshake_timeout: float = 5.0
    limit_request_line: int = 4094
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    root_path: str = ""
    server_header: bytes = b"asgiworker"
    app_kind: str = "auto"
    access_log: bool = False
    lifespan: str = "auto"
    worker_connections: int = 1000
    proxy: Optional[ProxyPolicy] = None
    server_cert: Optional[str] = None
    proxy_protocol: str = "off"
    header_map: str = "drop"
    disconnect_grace: float = 3.0
    # Gunicorn's pre_request/post_request hooks, when set (see hooks.py); the worker makes them.
    request_hooks: Any = None
    ws_max_size: Optional[int] = 16 * 1024 * 1024  # None: no limit
    ws_max_queue: int = 32
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_per_message_deflate: bool = False
    proxy_protocol_peers: Optional[ProxyPolicy] = None
    channel_layer: LayerSpec = LayerSpec()

    @classmethod
    def from_gunicorn(cls, cfg: Any, environ: Optional[Mapping[str, str]] = None, request_hooks: Any = None) -> "Settings":
        environ = os.environ if environ is None else environ
        return cls(
            keepalive=float(cfg.keepalive),
            header_timeout=_seconds(environ, HEADER_TIMEOUT_ENV, 10.0),
            body_timeout=_seconds(environ, BODY_TIMEOUT_ENV, 20.0),
            body_min_rate=_number(environ, BODY_MIN_RATE_ENV, 500, int, 0,
                                  "zero (no minimum) or a positive whole number of bytes per second; set it to e.g. 500"),
            send_timeout=_seconds(environ, SEND_TIMEOUT_ENV, 30.0),
            linger_timeout=_seconds(environ, LINGER_TIMEOUT_ENV, 2.0, allow_zero=True),
            ws_handshake_timeout=_seconds(environ, WS_HANDSHAKE_TIMEOUT_ENV, 5.0),
            # Gunicorn uses 0 to mean "unlimited" for these.
            limit_request_line=int(cfg.limit_request_line) or 1 << 30,
            limit_request_fields=int(cfg.limit_request_fields) or 1 << 30,
            limit_request_field_size=int(cfg.limit_request_field_size) or 1 << 30,
            root_path=environ.get(ROOT_PATH_ENV) or getattr(cfg, "root_path", "") or "",
            server_header=environ.get(SERVER_HEADER_ENV, "asgiworker").encode("latin-1"),
            app_kind=environ.get(APP_KIND_ENV, "auto").strip().lower() or "auto",
            access_log=access_log_enabled(cfg),
            lifespan=_lifespan_mode(cfg, environ),
            worker_connections=int(cfg.worker_connections),
            proxy=ProxyPolicy.from_gunicorn(cfg),
            server_cert=read_server_cert(cfg.certfile) if cfg.is_ssl else None,
            proxy_protocol=mode_from_gunicorn(cfg),
            header_map=str(getattr(cfg, "header_map", "drop") or "drop"),
            disconnect_grace=float(getattr(cfg, "asgi_disconnect_grace_period", 3)),
            ws_max_size=_ws_max_size(cfg, environ),
            ws_max_queue=_positive_int(environ, WS_MAX_QUEUE_ENV, 32),
            ws_ping_interval=_seconds(environ, WS_PING_INTERVAL_ENV, 20.0, allow_zero=True),
            ws_ping_timeout=_seconds(environ, WS_PING_TIMEOUT_ENV, 20.0),
            ws_per_message_deflate=_flag(environ, WS_DEFLATE_ENV, False),
            proxy_protocol_peers=ProxyPolicy(_as_list(getattr(cfg, "proxy_allow_ips", ["127.0.0.1"])), {}),
            request_hooks=request_hooks,
            channel_layer=layer_spec(environ),
        )


def layer_spec(environ: Mapping[str, str]) -> LayerSpec:
    """The channel layer named by ASGIWORKER_CHANNEL_LAYER (``memory``, the default, or
    ``redis://host:port/db``; several comma-separated URLs shard the layer) and its options."""
    raw = (environ.get(CHANNEL_LAYER_ENV) or "memory").strip()
    options = dict(
        prefix=environ.get(CHANNEL_PREFIX_ENV, "asgi"),
        capacity=_positive_int(environ, CHANNEL_CAPACITY_ENV, 100),
        expiry=_seconds(environ, CHANNEL_EXPIRY_ENV, 60.0),
        group_expiry=_seconds(environ, CHANNEL_GROUP_EXPIRY_ENV, 86400.0),
        max_message_size=_positive_int(environ, CHANNEL_MAX_MESSAGE_ENV, 1024 * 1024),
    )
    if options["group_expiry"] < 3:  # type: ignore[operator]  # a float, read above
        raise ConfigurationError(
            f"{CHANNEL_GROUP_EXPIRY_ENV}={environ.get(CHANNEL_GROUP_EXPIRY_ENV)!r} is too short: live "
            "memberships are refreshed once a second at most often; set it to 3 seconds or more")
    if raw.lower() == "memory":
        return LayerSpec("memory", (), **options)  # type: ignore[arg-type]  # checked above
    urls = tuple(url.strip() for url in raw.split(",") if url.strip())
    for url in urls:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in REDIS_SCHEMES:
            raise ConfigurationError(
                f"{CHANNEL_LAYER_ENV}={raw!r}: {url!r} is neither 'memory' nor a Redis URL; set it to "
                "memory or to redis://host:port/db (rediss:// for TLS, unix:///path.sock)")
    try:
        import redis.asyncio  # noqa: F401  # only checking that it is there
    except ImportError:
        raise ConfigurationError(f"{CHANNEL_LAYER_ENV} names Redis but redis-py is not installed: "
                                 "pip install 'asgiworker[redis]'") from None
    return LayerSpec("redis", urls, **options)  # type: ignore[arg-type]  # checked above


def _ws_max_size(cfg: Any, environ: Mapping[str, str]) -> Optional[int]:
    # Ours wins; else Gunicorn's --websocket-max-message-size, where 0 means no limit.
    gunicorn_value = getattr(cfg, "websocket_max_message_size", None)
    default = 16 * 1024 * 1024 if gunicorn_value is None else int(gunicorn_value)
    value = _positive_int(environ, WS_MAX_SIZE_ENV, default) if environ.get(WS_MAX_SIZE_ENV) else default
    return value or None


def _lifespan_mode(cfg: Any, environ: Mapping[str, str]) -> str:
    # Our variable wins; else Gunicorn's own `--asgi-lifespan` where the installed Gunicorn has it.
    raw = environ.get(LIFESPAN_ENV) or getattr(cfg, "asgi_lifespan", None) or "auto"
    mode = str(raw).strip().lower()
    if mode not in LIFESPAN_MODES:
        raise ConfigurationError(f"Lifespan mode {raw!r} is not one of {', '.join(LIFESPAN_MODES)}: "
                                 f"set {LIFESPAN_ENV} (or --asgi-lifespan) to one of them")
    return mode


def _seconds(environ: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    what = "zero (off) or a positive" if allow_zero else "a positive"
    return _number(environ, name, default, float, 0.0 if allow_zero else None,
                   f"{what} number of seconds; set it to e.g. 10")


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _number(environ, name, default, int, None, f"a positive whole number; set it to e.g. {default}")


def _number(environ: Mapping[str, str], name: str, default: _N, convert: Callable[[str], _N],
            also_allowed: Optional[_N], want: str) -> _N:
    """The number in variable ``name`` (``default`` when unset or empty): positive, or equal to
    ``also_allowed``; ConfigurationError saying what to set otherwise."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not {want}") from None
    if not (value > 0 or value == also_allowed):
        raise ConfigurationError(f"{name}={raw!r} is not {want}")
    return value


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a yes/no value; set it to 1 or 0")


def _as_list(value: Any) -> "list[str]":
    return value.split(",") if isinstance(value, str) else list(value or ())
