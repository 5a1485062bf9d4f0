"""Replies: what a consumer sends on ``message['reply_channel']``, checked and turned into ASGI
messages, and what the channel layer delivers to a named reply channel (``Endpoint``).

``send()`` is synchronous and thread-safe: it validates the reply in the caller (so a bad reply
raises right there), appends it to the outbox and wakes the task that forwards it.
"""

from __future__ import annotations

import logging
from threading import get_ident
from typing import Any, Dict, Optional

from asgiworker.adapters.outbox import REPLY_LOCK, Outbox
from asgiworker.tasks import start_soon

log = logging.getLogger("asgiworker.consumer")

# An ASGI extension of asgiworker's HTTP layer (named here too: adapters do not import it).
RESPONSE_COMPLETE = "asgiworker.http.response.complete"

REPLY_KEYS = frozenset(("status", "headers", "content", "more_content"))
LATER_REPLY_KEYS = frozenset(("content", "more_content"))



class ResponseAlreadySent(RuntimeError):
    """``reply_channel.send()`` after the reply that ended the response."""


class InvalidReply(ValueError):
    """A reply message the worker cannot send; the text says what is wrong with it."""


class ConsumerDidNotReply(RuntimeError):
    """The consumer let go of its reply channel without ending the response."""


class _NamedChannel:
    """What both reply channels share: the outbox, and a name on the channel layer made the first
    time ``.name`` is read, which any process on the layer can send to (``Endpoint`` takes what
    arrives). Two wrappers of one outbox are the same channel (events get wrappers of their own)."""

    __slots__ = ("_outbox", "__weakref__")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    @property
    def name(self) -> str:
        outbox = self._outbox
        return outbox.name if outbox.name is not None else outbox.attach(Endpoint(outbox))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._outbox is self._outbox

    def __hash__(self) -> int:
        return id(self._outbox)


class ReplyChannel(_NamedChannel):
    """``message['reply_channel']``: ``send()`` answers the request, from any thread. Its
    ``name`` lets any process on the layer answer (or stream more of) the response."""

    __slots__ = ()

    def send(self, message: Dict[str, Any]) -> None:
        """Queue one reply. The first carries ``status`` (and optional ``headers``, ``content``,
        ``more_content``); later ones carry ``content`` and ``more_content``. The response ends
        with the first reply whose ``more_content`` is false or absent."""
        queue_http_reply(self._outbox, message, strict=True)

    def __del__(self) -> None:
        outbox = self._outbox
        # A named response can still be answered through the layer: it is not abandoned.
        if not outbox.finished and outbox.name is None:
            outbox.abandoned = True
            outbox.wake()

    def __repr__(self) -> str:
        return f"<ReplyChannel started={self._outbox.started} finished={self._outbox.finished}>"


def queue_http_reply(outbox: Outbox, message: Any, strict: bool) -> None:
    """Queue one HTTP reply. ``strict`` (the consumer's own ``send()``): an invalid reply ends the
    response and raises. Otherwise (a reply from the channel layer, whose sender is out of
    reach) it only raises, leaving the response as it was."""
    with REPLY_LOCK:
        if outbox.disconnect is not None:
            raise type(outbox.disconnect)(*outbox.disconnect.args)
        if outbox.finished:
            raise ResponseAlreadySent(
                "This response has already ended (a reply without more_content=True was sent)"
                if outbox.failure is None else f"This response was abandoned after an invalid reply: {outbox.failure}"
            )
        try:
            messages = to_asgi(message, not outbox.started, outbox.whole)
        except InvalidReply as exc:
            if strict:
                # Whatever the consumer does next, this response cannot be completed properly.
                outbox.failure = str(exc)
                outbox.finished = True
                outbox.wake()
            raise
        outbox.started = True
        outbox.queue.extend(messages)
        # Set after queueing: the forwarder reads `finished` first, then drains the queue.
        outbox.finished = not messages[-1].get("more_body", False)
    # On the loop's thread with nobody waiting yet (a consumer answering at once), the
    # request's task will find the reply by itself; a waiting task or another thread wakes it.
    if outbox.waiter is not None or get_ident() != outbox.thread_id:
        outbox.wake()


class Endpoint:
    """A named reply channel as the channel layer sees it: ``deliver()`` takes each message the
    layer has for it, on the loop's thread. Holds the outbox, never the ReplyChannel (whose
    garbage collection is how an abandoned response is noticed)."""

    __slots__ = ("outbox",)

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def deliver(self, message: Dict[str, Any]) -> bool:
        outbox = self.outbox
        if outbox.ended or outbox.disconnect is not None or outbox.finished:
            return True  # the socket is going: dropped, as for a channel nobody reads any more
        capacity = outbox.layer.capacity if outbox.layer is not None else 100
        reply = websocket_reply(message) if outbox.websocket else (message if "type" not in message else None)
        if reply is not None:
            # Bounded: a slow client's unsent replies are at most the layer's capacity.
            if len(outbox.queue) >= capacity:
                return False
            try:
                if outbox.websocket:
                    queue_websocket_reply(outbox, reply)
                else:
                    queue_http_reply(outbox, reply, strict=False)
            except (InvalidReply, ResponseAlreadySent, OSError) as exc:
                log.warning("Dropped a message for %s from the channel layer: %s", outbox.name, exc)
            return True
        if outbox.events_waiting >= capacity:
            return False
        outbox.events_waiting += 1
        assert outbox.adapter is not None and outbox.context is not None
        start_soon(outbox.loop, outbox.adapter._run_event(outbox, message), outbox.context)
        return True


def websocket_reply(message: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A message from the layer as a WebSocket reply, or None if it is an event for the consumer:
    a reply without ``type`` (``{'text': ...}``) or an ASGI ``websocket.send``/``websocket.close``
    (what Channels' consumers send to each other's sockets)."""
    kind = message.get("type")
    if kind is None:
        return message
    if kind == "websocket.send":
        return {key: message[key] for key in ("text", "bytes") if message.get(key) is not None}
    if kind == "websocket.close":
        return {"close": message.get("code") or True}
    return None


def to_asgi(message: Any, first: bool, whole: bool = False) -> "list[Dict[str, Any]]":
    if not isinstance(message, dict):
        raise InvalidReply(f"A reply must be a dict, got {type(message).__name__}")
    allowed = REPLY_KEYS if first else LATER_REPLY_KEYS
    if not allowed.issuperset(message):
        unknown = message.keys() - allowed
        if not first and unknown <= REPLY_KEYS:
            raise InvalidReply(f"{sorted(unknown)} may only be given in the first reply of a response")
        raise InvalidReply(f"Unknown reply keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    content = message.get("content", b"")
    if type(content) is not bytes:
        if not isinstance(content, (bytes, bytearray)):
            raise InvalidReply(f"Reply 'content' must be bytes, got {type(content).__name__}")
        content = bytes(content)
    more_body = bool(message.get("more_content", False))
    body = {"type": "http.response.body", "body": content, "more_body": more_body}
    if not first:
        return [body]
    if "status" not in message:
        raise InvalidReply("The first reply must have a 'status' (an int such as 200)")
    status = message["status"]
    if type(status) is not int or not 100 <= status <= 999:
        raise InvalidReply(f"Reply 'status' must be an int from 100 to 999, got {status!r}")
    headers = message.get("headers", ())
    pairs = []
    try:
        for name, value in headers:
            if type(name) is not bytes or type(value) is not bytes:
                raise InvalidReply(f"Reply header names and values must be bytes, got {name!r}: {value!r}")
            pairs.append((name, value))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidReply):
            raise
        raise InvalidReply(f"Reply 'headers' must be a list of [name, value] byte pairs, got {headers!r}") from None
    # As sent now (the consumer may reuse its lists), and as tuples: the server keeps the
    # checked block of a header set it has seen before (see asgiworker.http).
    headers = tuple(pairs)
    if whole and not more_body:
        return [{"type": RESPONSE_COMPLETE, "status": status, "headers": headers, "body": content}]
    return [{"type": "http.response.start", "status": status, "headers": headers}, body]


class WebSocketReplyChannel(_NamedChannel):
    """``message['reply_channel']`` for WebSocket consumers: ``{'accept': True}`` (optional
    ``subprotocol``), ``{'text': str}``, ``{'bytes': bytes}``, ``{'close': True}`` or
    ``{'close': code}``; keys may be combined and apply in that order. Thread-safe. Its ``name``
    lets any process on the layer reach the socket (a message with another ``type`` reaches the
    consumer)."""

    __slots__ = ()

    def send(self, message: Dict[str, Any]) -> None:
        queue_websocket_reply(self._outbox, message)

    def __repr__(self) -> str:
        return f"<WebSocketReplyChannel closed={self._outbox.finished}>"


def queue_websocket_reply(outbox: Outbox, message: Any) -> None:
    with REPLY_LOCK:
        if outbox.disconnect is not None:
            raise type(outbox.disconnect)(*outbox.disconnect.args)
        if outbox.finished:
            raise ResponseAlreadySent("This WebSocket has already been closed by a 'close' reply")
        if type(message) is dict and len(message) == 1 and type(message.get("text")) is str:
            # The usual reply (and every fan-out's): one text message, nothing else to check.
            outbox.queue.append({"type": "websocket.send", "text": message["text"]})
        else:
            messages = websocket_to_asgi(message)
            outbox.queue.extend(messages)
            outbox.finished = messages[-1]["type"] == "websocket.close"
    outbox.wake()


WEBSOCKET_REPLY_KEYS = frozenset(("accept", "subprotocol", "text", "bytes", "close"))


def websocket_to_asgi(message: Any) -> "list[Dict[str, Any]]":
    if not isinstance(message, dict):
        raise InvalidReply(f"A reply must be a dict, got {type(message).__name__}")
    unknown = message.keys() - WEBSOCKET_REPLY_KEYS
    if unknown:
        raise InvalidReply(f"Unknown WebSocket reply keys {sorted(unknown)}; allowed: {sorted(WEBSOCKET_REPLY_KEYS)}")
    out: "list[Dict[str, Any]]" = []
    accept = message.get("accept")
    if accept is True:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and not isinstance(subprotocol, str):
            raise InvalidReply(f"'subprotocol' must be a str, got {type(subprotocol).__name__}")
        out.append({"type": "websocket.accept", "subprotocol": subprotocol})
    elif accept is False:
        out.append({"type": "websocket.close", "code": 1000})  # a refusal: 403 before accept
        return out
    elif accept is not None:
        raise InvalidReply(f"'accept' must be True or False, got {accept!r}")
    if "text" in message:
        if not isinstance(message["text"], str):
            raise InvalidReply(f"'text' must be a str, got {type(message['text']).__name__}")
        out.append({"type": "websocket.send", "text": message["text"]})
    if "bytes" in message:
        if not isinstance(message["bytes"], (bytes, bytearray)):
            raise InvalidReply(f"'bytes' must be bytes, got {type(message['bytes']).__name__}")
        out.append({"type": "websocket.send", "bytes": bytes(message["bytes"])})
    close = message.get("close")
    if close is True:
        out.append({"type": "websocket.close", "code": 1000})
    elif type(close) is int:
        if not (close == 1000 or 3000 <= close <= 4999):
            raise InvalidReply(f"'close' code must be 1000 or 3000-4999, got {close}")
        out.append({"type": "websocket.close", "code": close})
    elif close not in (None, False):
        raise InvalidReply(f"'close' must be True or an int close code, got {close!r}")
    if not out:
        raise InvalidReply("A WebSocket reply needs one of 'accept', 'text', 'bytes' or 'close'")
    return out
