"""Which kind of application is this? The rules, in order (documented in the README):

1. A class is an ASGI 2 application (it is called with the scope, its instances serve the
   connection), unless it defines ``__await__``, in which case instantiating it with
   ``(scope, receive, send)`` is the ASGI 3 call.
2. Otherwise look at how many positional arguments the callable takes (functions, objects with
   ``__call__``, ``functools.partial`` and decorated functions alike):
   - exactly three -> ASGI 3;
   - exactly one  -> a channel-style consumer, except a plain (non-async) callable whose one
     parameter is named ``scope``, which is an ASGI 2 application factory;
   - anything else (two, none, or ``*args`` that could be either) -> we cannot tell, and the
     worker refuses to boot with a message naming the override.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

KINDS = ("asgi3", "asgi2", "consumer")

OVERRIDE_HINT = (
    "Say which it is: in code wrap it with asgiworker.adapters.asgi3(app), .asgi2(app) or "
    ".consumer(app); or without touching code set ASGIWORKER_APP_KIND=asgi3|asgi2|consumer "
    "(e.g. gunicorn -e ASGIWORKER_APP_KIND=asgi3 ...)."
)


class AppKindError(Exception):
    """The application's kind cannot be determined (or the override names no known kind)."""


class ForcedKind:
    """An application whose kind was stated in code. Still callable as the original."""

    __slots__ = ("app", "kind")

    def __init__(self, app: Any, kind: str) -> None:
        if kind not in KINDS:
            raise AppKindError(f"Unknown application kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not callable(app):
            raise AppKindError(f"{app!r} is not callable, so it cannot be served as {kind}")
        self.app = app
        self.kind = kind

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.app(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.app!r}>"


def _describe(app: Any) -> str:
    return getattr(app, "__qualname__", None) or repr(app)


def is_async_callable(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    # The class's own __call__ (not callable(): whether it is a coroutine function is the question).
    call = getattr(type(obj), "__call__", None) if not inspect.isroutine(obj) else None  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _positional_arity(app: Any) -> "tuple[int, float, list[str]]":
    """(fewest, most, names) positional arguments the callable accepts."""
    sig = inspect.signature(app)
    required = optional = 0
    names = []
    most: float = 0
    for param in sig.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            names.append(param.name)
            if param.default is param.empty:
                required += 1
            else:
                optional += 1
        elif param.kind == param.VAR_POSITIONAL:
            most = float("inf")
        elif param.kind == param.KEYWORD_ONLY and param.default is param.empty:
            raise AppKindError(f"{_describe(app)} requires the keyword-only argument {param.name!r}")
    return required, max(most, required + optional), names


def detect_kind(app: Any) -> str:
    """Return one of ``KINDS`` for ``app``, or raise ``AppKindError`` naming the override."""
    if not callable(app):
        raise AppKindError(f"{_describe(app)} is not callable: point Gunicorn at your application object")
    if inspect.isclass(app):
        return "asgi3" if hasattr(app, "__await__") else "asgi2"
    try:
        fewest, most, names = _positional_arity(app)
    except (TypeError, ValueError) as exc:
        raise AppKindError(f"Cannot tell what kind of application {_describe(app)} is: "
                           f"its signature cannot be read ({exc}). {OVERRIDE_HINT}") from None
    takes_three = fewest <= 3 <= most
    takes_one = fewest <= 1 <= most
    if takes_three and not takes_one:
        return "asgi3"
    if takes_one and not takes_three:
        if not is_async_callable(app) and names[:1] == ["scope"]:
            return "asgi2"
        return "consumer"
    shape = "any number of" if most == float("inf") else f"{fewest}" if fewest == most else f"{fewest} to {most}"
    raise AppKindError(f"Cannot tell what kind of application {_describe(app)} is: it takes {shape} "
                       f"positional arguments, where an ASGI 3 app takes 3 and a consumer or ASGI 2 "
                       f"app takes 1. {OVERRIDE_HINT}")
