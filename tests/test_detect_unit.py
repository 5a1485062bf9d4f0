"""Unit tests of the kind detection rules (asgiworker/adapters/detect.py) and of adapters.load().

Fast and in-process, on top of the Gunicorn-level tests in test_app_kinds.py / test_consumers.py.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, List

import pytest

from asgiworker import adapters
from asgiworker.adapters import AppKindError, detect_kind, load
from asgiworker.adapters.consumer import ConsumerAdapter

# -- shapes ---------------------------------------------------------------------------------------


def consumer_fn(message):
    pass


async def async_consumer_fn(message):
    pass


def scope_factory(scope):
    async def instance(receive, send):
        pass

    return instance


async def async_scope_fn(scope):  # async: a consumer, whatever its parameter's name
    pass


async def asgi3_fn(scope, receive, send):
    pass


def sync_three(scope, receive, send):  # arity decides, async or not
    pass


def two_args(a, b):
    pass


def no_args():
    pass


def varargs(*args):
    pass


def varargs_kwargs(*args, **kwargs):
    pass


def one_plus_optional(message, extra=None):  # takes 1 or 2: never 3
    pass


def two_plus_optional(scope, receive, send=None):  # takes 2 or 3: never 1
    pass


def one_to_three(a, b=None, c=None):  # takes 1, 2 or 3: could be either
    pass


def one_and_varargs(a, *rest):
    pass


def required_keyword_only(message, *, flag):
    pass


def optional_keyword_only(message, *, flag=False):
    pass


def positional_only(message, /):
    pass


def with_kwargs(message, **kwargs):
    pass


def passthrough(fn):
    """A decorator that keeps the signature visible through functools.wraps."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def async_passthrough(fn):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        return await fn(*args, **kwargs)

    return wrapper


def opaque(fn):
    """A decorator without functools.wraps: only *args is visible."""
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@passthrough
def decorated_consumer(message):
    pass


@passthrough
def decorated_scope_factory(scope):
    pass


@async_passthrough
async def decorated_asgi3(scope, receive, send):
    pass


@passthrough
@passthrough
async def twice_decorated_asgi3(scope, receive, send):
    pass


@opaque
def opaque_decorated(message):
    pass


class Asgi2Class:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        pass


class PlainClass:
    pass


class AwaitableAsgi3Class:
    def __init__(self, scope, receive, send):
        pass

    def __await__(self):
        return iter(())


class Asgi3Object:
    async def __call__(self, scope, receive, send):
        pass


class SyncThreeObject:
    def __call__(self, scope, receive, send):
        pass


class ConsumerObject:
    def __call__(self, message):
        pass


class AsyncConsumerObject:
    async def __call__(self, message):
        pass


class ScopeObject:
    def __call__(self, scope):  # a plain callable object whose parameter is `scope`: ASGI 2
        pass


class AsyncScopeObject:
    async def __call__(self, scope):
        pass


class TwoArgObject:
    async def __call__(self, receive, send):
        pass


class Handlers:
    def consume(self, message):
        pass

    async def async_consume(self, message):
        pass

    def factory(self, scope):
        pass

    async def asgi3(self, scope, receive, send):
        pass

    def pair(self, a, b):
        pass

    @classmethod
    def class_consume(cls, message):
        pass

    @staticmethod
    def static_asgi3(scope, receive, send):
        pass


handlers = Handlers()


async def _tagged_four(tag, scope, receive, send):
    pass


def _tagged_two(tag, message):
    pass


def _tagged_scope(tag, scope):
    pass


async def _async_tagged_scope(tag, scope):
    pass


def _keyword_bound(scope, receive, send, *, tag):
    pass


CASES = [
    # (app, expected kind)
    (consumer_fn, "consumer"),
    (async_consumer_fn, "consumer"),
    (scope_factory, "asgi2"),
    (async_scope_fn, "consumer"),
    (asgi3_fn, "asgi3"),
    (sync_three, "asgi3"),
    (one_plus_optional, "consumer"),
    (two_plus_optional, "asgi3"),
    (optional_keyword_only, "consumer"),
    (positional_only, "consumer"),
    (with_kwargs, "consumer"),
    (decorated_consumer, "consumer"),
    (decorated_scope_factory, "asgi2"),
    (decorated_asgi3, "asgi3"),
    (twice_decorated_asgi3, "asgi3"),
    (Asgi2Class, "asgi2"),
    (PlainClass, "asgi2"),
    (AwaitableAsgi3Class, "asgi3"),
    (Asgi3Object(), "asgi3"),
    (SyncThreeObject(), "asgi3"),
    (ConsumerObject(), "consumer"),
    (AsyncConsumerObject(), "consumer"),
    (ScopeObject(), "asgi2"),
    (AsyncScopeObject(), "consumer"),
    (handlers.consume, "consumer"),
    (handlers.async_consume, "consumer"),
    (handlers.factory, "asgi2"),
    (handlers.asgi3, "asgi3"),
    (Handlers.class_consume, "consumer"),
    (Handlers.static_asgi3, "asgi3"),
    (functools.partial(_tagged_four, "t"), "asgi3"),
    (functools.partial(_tagged_two, "t"), "consumer"),
    (functools.partial(_tagged_scope, "t"), "asgi2"),
    (functools.partial(_async_tagged_scope, "t"), "consumer"),
    (functools.partial(functools.partial(_tagged_four, "t")), "asgi3"),
    (functools.partial(_keyword_bound, tag="t"), "asgi3"),
    (lambda message: None, "consumer"),
    (lambda scope: None, "asgi2"),
    (lambda scope, receive, send: None, "asgi3"),
]


@pytest.mark.parametrize("app,kind", CASES,
                         ids=lambda v: v if isinstance(v, str) else getattr(v, "__qualname__", type(v).__name__))
def test_detect_kind(app, kind):
    assert detect_kind(app) == kind


UNDECIDABLE = [
    two_args,
    no_args,
    varargs,
    varargs_kwargs,
    one_to_three,
    one_and_varargs,
    opaque_decorated,  # no functools.wraps: it shows only *args
    TwoArgObject(),
    handlers.pair,
    functools.partial(_tagged_four, "t", "scope"),  # two left
    lambda *args: None,
    lambda a, b: None,
    lambda: None,
]


@pytest.mark.parametrize("app", UNDECIDABLE, ids=lambda v: getattr(v, "__qualname__", type(v).__name__))
def test_undecidable_apps_raise_naming_the_override(app):
    with pytest.raises(AppKindError) as info:
        detect_kind(app)
    text = str(info.value)
    assert "Cannot tell what kind of application" in text
    assert "ASGIWORKER_APP_KIND" in text
    assert "asgiworker.adapters" in text
    with pytest.raises(AppKindError):
        load(app)


def test_undecidable_message_describes_the_signature():
    assert "takes 2 positional arguments" in str(pytest.raises(AppKindError, detect_kind, two_args).value)
    assert "takes any number of positional arguments" in str(pytest.raises(AppKindError, detect_kind, varargs).value)
    assert "takes 0 positional arguments" in str(pytest.raises(AppKindError, detect_kind, no_args).value)
    assert "takes 1 to 3 positional arguments" in str(pytest.raises(AppKindError, detect_kind, one_to_three).value)


def test_required_keyword_only_argument_is_refused():
    with pytest.raises(AppKindError) as info:
        detect_kind(required_keyword_only)
    assert "flag" in str(info.value)


def test_unreadable_signature_is_refused_naming_the_override():
    # Builtins such as `print` have no signature inspect can read.
    with pytest.raises(AppKindError) as info:
        detect_kind(print)
    assert "ASGIWORKER_APP_KIND" in str(info.value)


@pytest.mark.parametrize("thing", [None, 42, "app", {"not": "callable"}])
def test_not_callable(thing):
    with pytest.raises(AppKindError) as info:
        detect_kind(thing)
    assert "not callable" in str(info.value)


# -- load(): overrides and adapters ------------------------------------------------------------------


def test_forced_kind_is_still_callable_as_the_original():
    forced = adapters.asgi2(scope_factory)
    assert forced.app is scope_factory and forced.kind == "asgi2"
    assert callable(forced({"type": "http"}))
    assert adapters.consumer(lambda m: m * 2)(21) == 42


def test_wrapping_something_not_callable_is_refused():
    with pytest.raises(AppKindError):
        adapters.consumer(42)


@pytest.mark.parametrize("wrapper,kind", [(adapters.consumer, "consumer"), (adapters.asgi2, "asgi2"),
                                          (adapters.asgi3, "asgi3")])
@pytest.mark.parametrize("setting", ["auto", "asgi3", "asgi2", "consumer", "bogus"])
def test_wrapper_in_code_wins_over_the_setting(wrapper, kind, setting):
    served = load(wrapper(varargs), setting)
    if kind == "consumer":
        assert isinstance(served, ConsumerAdapter) and served.consumer is varargs
    elif kind == "asgi3":
        assert served is varargs
    else:
        assert not isinstance(served, ConsumerAdapter) and served is not varargs


def test_load_with_an_explicit_kind_skips_detection():
    assert load(varargs, "asgi3") is varargs
    assert isinstance(load(varargs, "consumer"), ConsumerAdapter)
    assert load(asgi3_fn, "auto") is asgi3_fn
    assert isinstance(load(consumer_fn, "auto"), ConsumerAdapter)


@pytest.mark.parametrize("value", ["bogus", "ASGI3", "wsgi", ""])
def test_load_with_an_unknown_kind_names_the_setting(value):
    # ("ASGI3": Settings lower-cases the environment value; load() itself takes the exact names.)
    with pytest.raises(AppKindError) as info:
        load(consumer_fn, value)
    assert repr(value) in str(info.value)
    assert "ASGIWORKER_APP_KIND" in str(info.value)


def test_forced_kind_rejects_unknown_names():
    from asgiworker.adapters.detect import ForcedKind

    with pytest.raises(AppKindError):
        ForcedKind(consumer_fn, "wsgi")


# -- the loaded callables really speak ASGI 3 ----------------------------------------------------------


def _run_asgi3(app: Any, body: bytes = b"payload") -> List[dict]:
    sent: List[dict] = []
    incoming = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/p", "raw_path": b"/p", "query_string": b"", "root_path": "",
             "headers": [[b"host", b"x"]], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def main():
        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(main())
    return sent


class EchoAsgi2:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": self.scope["path"].encode() + message["body"]})


def test_loaded_asgi2_class_serves_as_asgi3():
    sent = _run_asgi3(load(EchoAsgi2))
    assert sent[0]["status"] == 201
    assert sent[1]["body"] == b"/ppayload"


def test_loaded_consumer_serves_as_asgi3():
    seen = {}

    def consumer(message):
        seen.update(message)
        message["reply_channel"].send({"status": 202, "headers": [[b"x-a", b"1"]],
                                       "content": message["body"], "more_content": True})
        message["reply_channel"].send({"content": b"!"})

    sent = _run_asgi3(load(consumer))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert sent[0]["status"] == 202 and list(map(list, sent[0]["headers"])) == [[b"x-a", b"1"]]
    assert (sent[1]["body"], sent[1]["more_body"]) == (b"payload", True)
    assert (sent[2]["body"], sent[2]["more_body"]) == (b"!", False)
    assert seen["type"] == "http.request" and seen["body"] == b"payload" and seen["path"] == "/p"


def test_consumer_adapter_uses_plain_asgi_without_the_extension():
    # Without the whole-response extension in the scope (another server, or a middleware that
    # rewrote the scope), the adapter answers with the two standard ASGI messages.
    import asyncio

    from asgiworker.adapters import load

    def consumer(message):
        message["reply_channel"].send({"status": 203, "content": b"plain"})

    adapter = load(consumer, "consumer")
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/",
             "raw_path": b"/", "query_string": b"", "root_path": "", "headers": [], "client": None,
             "server": None}
    asyncio.run(adapter(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 203 and sent[1]["body"] == b"plain"
    sent.clear()
    scope["extensions"] = {"asgiworker.http.response.complete": {}}
    asyncio.run(adapter(scope, receive, send))
    assert sent == [{"type": "asgiworker.http.response.complete", "status": 203, "headers": (),
                     "body": b"plain"}]
