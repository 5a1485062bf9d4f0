"""Turn every kind of application we serve into one internal ASGI 3 callable.

Kinds: ``asgi3`` (``async app(scope, receive, send)``), ``asgi2`` (``app(scope)`` returning
``async instance(receive, send)``) and ``consumer`` (``consumer(message)`` answering on
``message['reply_channel']``). ``load()`` picks the kind by the rules in ``detect.py`` unless it
is forced, in code with the wrappers below or in deployment with ``ASGIWORKER_APP_KIND``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from asgiworker.adapters.asgi2 import asgi2_to_asgi3
from asgiworker.adapters.consumer import ConsumerAdapter, ReplyChannel, ResponseAlreadySent, WebSocketReplyChannel
from asgiworker.adapters.detect import KINDS, AppKindError, ForcedKind, detect_kind

__all__ = [
    "AppKindError", "ReplyChannel", "ResponseAlreadySent", "WebSocketReplyChannel", "KINDS",
    "asgi2", "asgi3", "consumer", "detect_kind", "error_app", "load", "tick",
]


def consumer(fn: Callable[..., Any]) -> ForcedKind:
    """Mark ``fn`` as a channel-style consumer: ``fn(message)``."""
    return ForcedKind(fn, "consumer")


def asgi2(fn: Callable[..., Any]) -> ForcedKind:
    """Mark ``fn`` as an ASGI 2 application: ``fn(scope)`` returns ``async instance(receive, send)``."""
    return ForcedKind(fn, "asgi2")


def asgi3(fn: Callable[..., Any]) -> ForcedKind:
    """Mark ``fn`` as an ASGI 3 application: ``async fn(scope, receive, send)``."""
    return ForcedKind(fn, "asgi3")


def load(app: Any, kind: str = "auto", layer: Any = None) -> Callable[..., Any]:
    """Return the ASGI 3 callable that serves ``app``.

    ``kind`` is ``auto`` or one of ``KINDS``; a wrapper applied in code wins over it, since
    whoever wrapped the app knew best. Raises ``AppKindError`` with the fix when undecidable.
    ``layer``: the server's channel layer (``asgiworker.channels``), for consumers; without it
    a consumer gets the process's (``get_channel_layer()``).
    """
    if isinstance(app, ForcedKind):
        kind, app = app.kind, app.app
    elif kind == "auto":
        kind = detect_kind(app)
    elif kind not in KINDS:
        raise AppKindError(
            f"Unknown application kind {kind!r}: set ASGIWORKER_APP_KIND to one of auto, {', '.join(KINDS)}"
        )
    if kind == "asgi3":
        return app  # type: ignore[no-any-return]  # any callable: its kind was decided above
    if kind == "asgi2":
        return asgi2_to_asgi3(app)
    return ConsumerAdapter(app, layer)


def error_app(text: str) -> Callable[..., Any]:
    """An ASGI 3 app answering every request with 500 and ``text`` (used while code is broken)."""
    body = text.encode("utf-8", "replace")

    async def app(scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            raise RuntimeError("the application failed to load")
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body})

    return app


def tick(app: Callable[..., Any]) -> None:
    """Once a second, from the server: the periodic work of the adapter behind ``app`` (a
    consumer's abandoned requests are looked for), if it has any."""
    if isinstance(app, ConsumerAdapter):
        app.reap_abandoned()
