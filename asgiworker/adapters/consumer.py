"""Channel-style consumers: ``consumer(message)`` answering on ``message['reply_channel']``.

The consumer gets the whole request as one plain dict. Its replies go through a ``ReplyChannel``
whose ``send()`` is synchronous and thread-safe: it validates the reply in the caller (so a bad
reply raises right there), appends it to an outbox and wakes the request's task, which forwards
the replies to the ASGI ``send`` in order, waiting for the socket to drain when it must.

A consumer that drops its message without finishing the response is noticed when its
``ReplyChannel`` is garbage-collected: the client then gets a 500 (or, if the response had
started, the connection is closed) instead of waiting forever.

A reply channel gets a **name** on the channel layer the first time its ``.name`` is read
(``channel_layer.py`` in asgiworker.channels; see ``_Endpoint``): from then on any process on the
layer can send to it. A reply arriving that way goes to the socket; a message with another
``type`` is an *event*, handed to the consumer like any other message, in a Task of its own,
never at the same time as another call of the consumer for the same socket (``_take_turn``).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading
import time
from collections import deque
from inspect import isawaitable
from threading import get_ident
from typing import Any, Callable, Deque, Dict, Optional

from asgiworker.channels import ChannelLayer, get_channel_layer
from asgiworker.tasks import start_soon

log = logging.getLogger("asgiworker.consumer")

# An ASGI extension of asgiworker's HTTP layer (named here too: adapters do not import it).
RESPONSE_COMPLETE = "asgiworker.http.response.complete"

REPLY_KEYS = frozenset(("status", "headers", "content", "more_content"))
LATER_REPLY_KEYS = frozenset(("content", "more_content"))


# Guards the check-then-queue of a reply against another thread replying on the same channel at
# the same moment. One lock for all channels: it is held for microseconds, rarely contended, and
# saves allocating one per request.
_REPLY_LOCK = threading.Lock()

class ResponseAlreadySent(RuntimeError):
    """``reply_channel.send()`` after the reply that ended the response."""


class InvalidReply(ValueError):
    """A reply message the worker cannot send; the text says what is wrong with it."""


class ConsumerDidNotReply(RuntimeError):
    """The consumer let go of its reply channel without ending the response."""


class _Outbox:
    """Replies on their way from the consumer (any thread) to the request's task (the loop)."""

    __slots__ = ("loop", "thread_id", "queue", "waiter", "started", "finished", "failure",
                 "abandoned", "disconnect", "next_gc", "gc_interval", "whole", "reaped",
                 "layer", "name", "adapter", "base", "context", "busy", "turn_waiters",
                 "events_waiting", "event_error", "receive", "watcher", "websocket", "ended")

    def __init__(self, loop: asyncio.AbstractEventLoop, whole: bool = False,
                 reaped: "Optional[set[_Outbox]]" = None, layer: Optional[ChannelLayer] = None,
                 adapter: "Optional[ConsumerAdapter]" = None, base: Optional[Dict[str, Any]] = None,
                 websocket: bool = False, receive: Optional[Callable[..., Any]] = None) -> None:
        self.loop = loop
        # Where the outbox waits to be checked for abandonment (ConsumerAdapter.reap_abandoned).
        self.reaped = reaped
        # The server takes a whole response in one message (the RESPONSE_COMPLETE extension):
        # a reply that is the whole response is queued as that one message.
        self.whole = whole
        self.thread_id = threading.get_ident()
        self.queue: Deque[Dict[str, Any]] = deque()
        self.waiter: Optional[asyncio.Future[Any]] = None
        self.started = False
        self.finished = False
        self.failure: Optional[str] = None
        self.abandoned = False
        self.disconnect: Optional[OSError] = None
        self.next_gc = 0.0
        self.gc_interval = 1.0
        # The channel layer's side (see _Endpoint): the name once it has one, the consumer to
        # hand events to, the keys every event message carries, whose turn it is to run.
        self.layer = layer
        self.name: Optional[str] = None
        self.adapter = adapter
        self.base = base
        self.websocket = websocket
        self.context: Optional[contextvars.Context] = None
        # Born busy: the consumer's first call runs at once (an HTTP request's only one, a
        # socket's connect), and events arriving meanwhile must wait for it.
        self.busy = True
        self.turn_waiters: Optional[Deque[asyncio.Future[None]]] = None  # made when first needed
        self.events_waiting = 0
        self.event_error: Optional[BaseException] = None
        # HTTP: the scope, not the message (the message holds the reply channel, whose collection
        # is how an abandoned response is noticed). Also the request's receive, for a named
        # response to learn that its client left.
        self.receive = receive
        self.watcher: Optional[asyncio.Task[None]] = None
        self.ended = False

    def wake(self) -> None:
        if threading.get_ident() == self.thread_id:
            self._wake_in_loop()
        else:
            try:
                self.loop.call_soon_threadsafe(self._wake_in_loop)
            except RuntimeError:
                pass  # the loop is closed: the worker is gone, nobody is waiting

    def _wake_in_loop(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send_queued(self, send: Callable[..., Any]) -> None:
        """Hand every queued reply to the ASGI ``send``, in order; remember a disconnect, so
        that the consumer's next ``send()`` raises it too."""
        queue = self.queue
        while queue:
            try:
                await send(queue.popleft())
            except OSError as exc:
                self.disconnect = exc
                raise

    async def wait(self) -> None:
        reaped = self.reaped
        if reaped is not None and self not in reaped:
            self.next_gc = time.monotonic() + self.gc_interval
            reaped.add(self)
        self.waiter = self.loop.create_future()
        # Re-check after arming the waiter: another thread may have replied just before.
        if not (self.queue or self.finished or self.abandoned or self.event_error is not None
                or (self.name is not None and self.disconnect is not None)):
            await self.waiter
        self.waiter = None

    # -- the channel layer's side -------------------------------------------------------------------

    def attach(self) -> str:
        """Give this reply channel its name on the layer (the first time ``.name`` is read)."""
        with _REPLY_LOCK:
            if self.name is None:
                assert self.layer is not None
                self.context = contextvars.copy_context()
                self.name = self.layer.attach(_Endpoint(self))
                if not self.websocket and self.receive is not None and not self.finished:
                    # A named HTTP response may be answered from anywhere, for as long as the
                    # client stays: watch for it leaving (the body has been read already).
                    self.loop.call_soon_threadsafe(self._watch_disconnect)
        return self.name

    def _watch_disconnect(self) -> None:
        if self.watcher is None and not self.ended:
            self.watcher = self.loop.create_task(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        assert self.receive is not None
        while True:
            event = await self.receive()
            if event.get("type") == "http.disconnect":
                break
        with _REPLY_LOCK:
            if self.disconnect is None:
                self.disconnect = ConnectionResetError("the client has gone away")
        self._wake_in_loop()

    def detach(self) -> None:
        """The socket or response is done: its name and group memberships go with it."""
        self.ended = True
        if self.name is not None and self.layer is not None:
            self.layer.detach(self.name)
        watcher = self.watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()


class ReplyChannel:
    """``message['reply_channel']``: ``send()`` answers the request, from any thread."""

    __slots__ = ("_outbox", "__weakref__")

    def __init__(self, outbox: _Outbox) -> None:
        self._outbox = outbox

    def send(self, message: Dict[str, Any]) -> None:
        """Queue one reply. The first carries ``status`` (and optional ``headers``, ``content``,
        ``more_content``); later ones carry ``content`` and ``more_content``. The response ends
        with the first reply whose ``more_content`` is false or absent."""
        _queue_http_reply(self._outbox, message, strict=True)

    @property
    def name(self) -> str:
        """This reply channel's name on the channel layer: ``layer.send(name, reply)`` from any
        process on the layer answers (or streams more of) this response."""
        outbox = self._outbox
        return outbox.name if outbox.name is not None else outbox.attach()

    def __del__(self) -> None:
        outbox = self._outbox
        # A named response can still be answered through the layer: it is not abandoned.
        if not outbox.finished and outbox.name is None:
            outbox.abandoned = True
            outbox.wake()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplyChannel) and other._outbox is self._outbox

    def __hash__(self) -> int:
        return id(self._outbox)

    def __repr__(self) -> str:
        return f"<ReplyChannel started={self._outbox.started} finished={self._outbox.finished}>"


def _queue_http_reply(outbox: _Outbox, message: Any, strict: bool) -> None:
    """Queue one HTTP reply. ``strict`` (the consumer's own ``send()``): an invalid reply ends the
    response and raises. Otherwise (a reply from the channel layer, whose sender is out of
    reach) it only raises, leaving the response as it was."""
    with _REPLY_LOCK:
        if outbox.disconnect is not None:
            raise type(outbox.disconnect)(*outbox.disconnect.args)
        if outbox.finished:
            raise ResponseAlreadySent(
                "This response has already ended (a reply without more_content=True was sent)"
                if outbox.failure is None else f"This response was abandoned after an invalid reply: {outbox.failure}"
            )
        try:
            messages = _to_asgi(message, not outbox.started, outbox.whole)
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


class _Endpoint:
    """A named reply channel as the channel layer sees it: ``deliver()`` takes each message the
    layer has for it, on the loop's thread. Holds the outbox, never the ReplyChannel (whose
    garbage collection is how an abandoned response is noticed)."""

    __slots__ = ("outbox",)

    def __init__(self, outbox: _Outbox) -> None:
        self.outbox = outbox

    def deliver(self, message: Dict[str, Any]) -> bool:
        outbox = self.outbox
        if outbox.ended or outbox.disconnect is not None or outbox.finished:
            return True  # the socket is going: dropped, as for a channel nobody reads any more
        capacity = outbox.layer.capacity if outbox.layer is not None else 100
        reply = _websocket_reply(message) if outbox.websocket else (message if "type" not in message else None)
        if reply is not None:
            # Bounded: a slow client's unsent replies are at most the layer's capacity.
            if len(outbox.queue) >= capacity:
                return False
            try:
                if outbox.websocket:
                    _queue_websocket_reply(outbox, reply)
                else:
                    _queue_http_reply(outbox, reply, strict=False)
            except (InvalidReply, ResponseAlreadySent, OSError) as exc:
                log.warning("Dropped a message for %s from the channel layer: %s", outbox.name, exc)
            return True
        if outbox.events_waiting >= capacity:
            return False
        outbox.events_waiting += 1
        assert outbox.adapter is not None and outbox.context is not None
        start_soon(outbox.loop, outbox.adapter._run_event(outbox, message), outbox.context)
        return True


def _websocket_reply(message: Dict[str, Any]) -> Optional[Dict[str, Any]]:
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


async def _take_turn(outbox: _Outbox) -> None:
    """Wait until no other call of the consumer runs for this socket; the turn is then ours."""
    if not outbox.busy:
        outbox.busy = True
        return
    turn: asyncio.Future[None] = outbox.loop.create_future()
    if outbox.turn_waiters is None:
        outbox.turn_waiters = deque()
    outbox.turn_waiters.append(turn)
    try:
        await turn
    except asyncio.CancelledError:
        if turn.done() and not turn.cancelled():
            _give_turn(outbox)  # it was handed to us as we were cancelled: pass it on
        raise


def _give_turn(outbox: _Outbox) -> None:
    waiters = outbox.turn_waiters
    while waiters:  # (None or empty: nobody waits, the usual case)
        turn = waiters.popleft()
        if not turn.done():
            turn.set_result(None)  # still busy: the turn goes straight to the next caller
            return
    outbox.busy = False


def _to_asgi(message: Any, first: bool, whole: bool = False) -> "list[Dict[str, Any]]":
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


class ConsumerAdapter:
    """Serves a channel-style consumer as an ASGI 3 application."""

    def __init__(self, consumer: Callable[[Dict[str, Any]], Any],
                 layer: Optional[ChannelLayer] = None) -> None:
        self.consumer = consumer
        # A server gives its layer, bound to its one loop; elsewhere (a test harness) the
        # process's layer is bound to the first loop that serves a request.
        self._layer = layer
        # Requests whose consumer has returned and whose reply is still awaited.
        self._waiting: "set[_Outbox]" = set()

    def reap_abandoned(self) -> None:
        """Once a second, from the worker (adapters.tick). A message dropped inside a reference
        cycle is only freed by the cyclic garbage collector: when a reply has been awaited for 1,
        2, 4, 8... seconds, run it once, so that such a client gets its 500 promptly without a
        collection per request."""
        now = time.monotonic()
        due = False
        for outbox in self._waiting:
            if outbox.name is None and now >= outbox.next_gc:
                due = True
                outbox.gc_interval *= 2
                outbox.next_gc = now + outbox.gc_interval
        if due:
            gc.collect()

    def __repr__(self) -> str:
        return f"<ConsumerAdapter {self.consumer!r}>"

    def _channel_layer(self) -> ChannelLayer:
        layer = self._layer
        if layer is None:
            layer = self._layer = get_channel_layer()
        if layer._loop is None:
            layer.bind(asyncio.get_running_loop())
        return layer

    async def __call__(self, scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "websocket":
            await self._serve_websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"Channel consumers are served for HTTP and WebSocket; scope type "
                               f"{scope['type']!r} is not supported")
        request = await receive()
        if request["type"] != "http.request":
            return  # the client left before its request was complete
        body = request.get("body", b"")
        if request.get("more_body", False):
            body = await _read_rest_of_body(body, receive)
            if body is None:
                return
        layer = self._layer
        if layer is None or layer._loop is None:
            layer = self._channel_layer()
        outbox = _Outbox(layer._loop, RESPONSE_COMPLETE in (scope.get("extensions") or ()), self._waiting,  # type: ignore[arg-type]  # bound above
                         layer, self, scope, False, receive)
        message = {
            "type": "http.request",
            "reply_channel": ReplyChannel(outbox),
            "channel_layer": layer,
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope["raw_path"],
            "query_string": scope["query_string"],
            "root_path": scope["root_path"],
            "headers": scope["headers"],
            "body": body,
            "client": scope["client"],
            "server": scope["server"],
        }
        error: Optional[BaseException] = None
        try:
            result = self.consumer(message)
            # Let go of the message: if the consumer kept no reference, its ReplyChannel dies
            # here and we learn that no reply is coming.
            del message
            if result is not None and isawaitable(result):
                await result
            del result
        except Exception as exc:
            error = exc
        # The consumer's turn ends (events from the layer may have queued behind it).
        if outbox.turn_waiters:
            _give_turn(outbox)
        else:
            outbox.busy = False
        queue = outbox.queue
        if error is None and outbox.finished and outbox.failure is None and len(queue) == 1 \
                and outbox.name is None:
            # The usual case: the whole response in one reply, there already, in one message.
            try:
                await send(queue.popleft())
            except OSError as exc:
                outbox.disconnect = exc
                raise
            return
        try:
            await self._forward(outbox, send, wait=error is None)
        finally:
            self._waiting.discard(outbox)
            outbox.detach()
        if error is not None:
            raise error

    async def _forward(self, outbox: _Outbox, send: Callable[..., Any], wait: bool) -> None:
        queue = outbox.queue
        while True:
            finished = outbox.finished
            if queue:
                await outbox.send_queued(send)
            if finished:
                if outbox.failure is not None and wait:
                    raise InvalidReply(f"{self.consumer!r} sent an invalid reply: {outbox.failure}")
                return
            if not wait:
                return  # the consumer failed: its own exception is the one to report
            if outbox.event_error is not None:
                raise outbox.event_error
            if outbox.name is not None and outbox.disconnect is not None:
                # A named response whose client left: its consumer hears of it, like a socket's.
                await self._call_in_turn(outbox, {"type": "http.disconnect"})
                if outbox.started:
                    # End the stream: a client that only stopped sending (EOF) gets a complete
                    # response, and the server does not report an unfinished one as an error.
                    try:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except OSError:
                        pass  # it has really gone
                return
            if outbox.abandoned:
                raise ConsumerDidNotReply(
                    f"{self.consumer!r} dropped its message without ending the response "
                    "(the reply channel was garbage-collected before a reply without more_content)"
                )
            await outbox.wait()

    # -- events from the channel layer -------------------------------------------------------------

    async def _run_event(self, outbox: _Outbox, event: Dict[str, Any]) -> None:
        """A message with a ``type`` sent to a reply channel's name: the consumer gets it, with
        the keys of the socket's (or request's) messages, in its turn."""
        try:
            await self._call_in_turn(outbox, event, counted=True)
        except Exception as exc:
            # Like an exception in a consumer's own call: the socket (or response) ends, the
            # server reports it with its traceback.
            if outbox.event_error is None:
                outbox.event_error = exc
            if outbox.websocket:
                with _REPLY_LOCK:
                    if not outbox.finished and outbox.disconnect is None:
                        outbox.queue.append({"type": "websocket.close", "code": 1011})
                        outbox.finished = True
            outbox.wake()

    async def _call_in_turn(self, outbox: _Outbox, event: Dict[str, Any], counted: bool = False) -> None:
        try:
            await _take_turn(outbox)
        finally:
            if counted:
                # Waiting for its turn is what `capacity` bounds (_Endpoint.deliver): the event
                # stops counting once it runs, not as soon as its Task starts.
                outbox.events_waiting -= 1
        try:
            if outbox.ended and event.get("type") != "http.disconnect":
                return  # the socket has gone while this waited: nobody to act for
            await self._call(_event_message(outbox, event))
        finally:
            _give_turn(outbox)

    async def _call(self, message: Dict[str, Any]) -> None:
        """One call of the consumer, awaiting what it returns if that is awaitable."""
        result = self.consumer(message)
        del message
        if result is not None and isawaitable(result):
            await result

    # -- WebSocket ----------------------------------------------------------------------------

    async def _serve_websocket(self, scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        """One consumer call per event (connect, each message, disconnect), all sharing one reply
        channel whose replies a forwarding task sends in order."""
        layer = self._channel_layer()
        outbox = _Outbox(layer.loop, layer=layer, adapter=self, websocket=True)
        outbox.busy = False  # each event takes the turn below
        base = {
            "reply_channel": WebSocketReplyChannel(outbox),
            "channel_layer": layer,
            "path": scope["path"],
            "raw_path": scope["raw_path"],
            "query_string": scope["query_string"],
            "root_path": scope["root_path"],
            "scheme": scope["scheme"],
            "headers": scope["headers"],
            "client": scope["client"],
            "server": scope["server"],
            "subprotocols": scope["subprotocols"],
        }
        outbox.base = base
        forwarder = layer.loop.create_task(self._forward_websocket(outbox, send))
        try:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    # Replies from the disconnect handler have nowhere to go: say so.
                    with _REPLY_LOCK:
                        if outbox.disconnect is None:
                            outbox.disconnect = ConnectionResetError("the WebSocket connection is closed")
                    outbox.ended = True
                message = dict(base)
                message.update(event)
                await _take_turn(outbox)  # (waits only while a layer event is being handled)
                try:
                    await self._call(message)
                finally:
                    _give_turn(outbox)
                if forwarder.done():
                    forwarder.result()  # re-raises what went wrong sending the replies
                    if outbox.finished:
                        break  # the consumer closed the socket
                if event["type"] == "websocket.disconnect":
                    break
        finally:
            with _REPLY_LOCK:
                if outbox.disconnect is None:
                    outbox.disconnect = ConnectionResetError("the WebSocket connection is closed")
            outbox.detach()
            outbox.wake()
            if not forwarder.done():
                forwarder.cancel()
        if outbox.event_error is not None:
            raise outbox.event_error

    @staticmethod
    async def _forward_websocket(outbox: _Outbox, send: Callable[..., Any]) -> None:
        while True:
            finished = outbox.finished
            try:
                await outbox.send_queued(send)
            except OSError:
                return
            if finished or outbox.disconnect is not None:
                return
            await outbox.wait()


_HTTP_EVENT_KEYS = ("http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path",
                    "headers", "client", "server")


def _event_message(outbox: _Outbox, event: Dict[str, Any]) -> Dict[str, Any]:
    """What the consumer gets for an event: the socket's (or request's) keys, then the event's."""
    base = outbox.base or {}
    if outbox.websocket:
        message = dict(base)
    else:
        message = {key: base[key] for key in _HTTP_EVENT_KEYS if key in base}
        message["reply_channel"] = ReplyChannel(outbox)
        message["channel_layer"] = outbox.layer
    message.update(event)
    return message


class WebSocketReplyChannel:
    """``message['reply_channel']`` for WebSocket consumers: ``{'accept': True}`` (optional
    ``subprotocol``), ``{'text': str}``, ``{'bytes': bytes}``, ``{'close': True}`` or
    ``{'close': code}``; keys may be combined and apply in that order. Thread-safe."""

    __slots__ = ("_outbox", "__weakref__")

    def __init__(self, outbox: _Outbox) -> None:
        self._outbox = outbox

    def send(self, message: Dict[str, Any]) -> None:
        _queue_websocket_reply(self._outbox, message)

    @property
    def name(self) -> str:
        """This socket's name on the channel layer: ``layer.send(name, {'text': ...})`` from any
        process on the layer reaches it; a message with another ``type`` reaches its consumer."""
        outbox = self._outbox
        return outbox.name if outbox.name is not None else outbox.attach()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WebSocketReplyChannel) and other._outbox is self._outbox

    def __hash__(self) -> int:
        return id(self._outbox)

    def __repr__(self) -> str:
        return f"<WebSocketReplyChannel closed={self._outbox.finished}>"


def _queue_websocket_reply(outbox: _Outbox, message: Any) -> None:
    with _REPLY_LOCK:
        if outbox.disconnect is not None:
            raise type(outbox.disconnect)(*outbox.disconnect.args)
        if outbox.finished:
            raise ResponseAlreadySent("This WebSocket has already been closed by a 'close' reply")
        messages = _websocket_to_asgi(message)
        outbox.queue.extend(messages)
        outbox.finished = messages[-1]["type"] == "websocket.close"
    outbox.wake()


WEBSOCKET_REPLY_KEYS = frozenset(("accept", "subprotocol", "text", "bytes", "close"))


def _websocket_to_asgi(message: Any) -> "list[Dict[str, Any]]":
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


async def _read_rest_of_body(body: bytes, receive: Callable[..., Any]) -> Optional[bytes]:
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
