"""ASGI 2 ("double callable") applications, served as ASGI 3."""

from __future__ import annotations

from typing import Any, Callable, Dict


def asgi2_to_asgi3(app: Callable[..., Any]) -> Callable[..., Any]:
    async def asgi3(scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        instance = app(scope)
        await instance(receive, send)

    asgi3.__qualname__ = f"asgi2_to_asgi3({getattr(app, '__qualname__', app)!s})"
    return asgi3
