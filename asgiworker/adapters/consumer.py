"""Channel-style consumers: ``consumer(message)`` answering on ``message['reply_channel']``.

The consumer gets the whole request as one plain dict. Its replies go through a ``ReplyChannel``
whose ``send()`` is synchronous and thread-safe: it validates the reply in the caller (so a bad
reply raises right there), appends it to an outbox and wakes the request's task, which forwards
the replies to the ASGI ``send`` in order, waiting for the socket to drain when it must.

A consumer that drops its message without finishing the response is noticed when its
``ReplyChannel`` is garbage-collected: the client then gets a 500 (or, if the response had
started, the connection is closed) instead of waiting forever.

A reply channel gets a **name** on the channel layer the first time its ``.name`` is read
(``asgiworker.channels``; see ``replies.Endpoint``): from then on any process on the
layer can send to it. A reply arriving that way goes to the socket; a message with another
``type`` is an *event*, handed to the consumer like any other message, in a Task of its own,
never at the same time as another call of the consumer for the same socket (``outbox.take_turn``).
"""

from __future__ import annotations

import asyncio
import gc
import time
from inspect import isawaitable
from typing import Any, Callable, Dict, Optional

from asgiworker.adapters.outbox import REPLY_LOCK, Outbox, give_turn, take_turn
from asgiworker.adapters.replies import (
    LATER_REPLY_KEYS,
    REPLY_KEYS,
    RESPONSE_COMPLETE,
    WEBSOCKET_REPLY_KEYS,
    ConsumerDidNotReply,
    InvalidReply,
    ReplyChannel,
    ResponseAlreadySent,
    WebSocketReplyChannel,
)
from asgiworker.channels import ChannelLayer, get_channel_layer

__all__ = [
    "LATER_REPLY_KEYS", "REPLY_KEYS", "RESPONSE_COMPLETE", "WEBSOCKET_REPLY_KEYS", "ConsumerAdapter",
    "ConsumerDidNotReply", "InvalidReply", "ReplyChannel", "ResponseAlreadySent", "WebSocketReplyChannel",
]


class ConsumerAdapter:
    """Serves a channel-style consumer as an ASGI 3 application."""

    def __init__(self, consumer: Callable[[Dict[str, Any]], Any],
                 layer: Optional[ChannelLayer] = None) -> None:
        self.consumer = consumer
        # A server gives its layer, bound to its one loop; elsewhere (a test harness) the
        # process's layer is bound to the first loop that serves a request.
        self._layer = layer
        # Requests whose consumer has returned and whose reply is still awaited.
        self._waiting: "set[Outbox]" = set()

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
        outbox = Outbox(layer._loop, RESPONSE_COMPLETE in (scope.get("extensions") or ()), self._waiting,  # type: ignore[arg-type]  # bound above
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
            give_turn(outbox)
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

    async def _forward(self, outbox: Outbox, send: Callable[..., Any], wait: bool) -> None:
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

    async def _run_event(self, outbox: Outbox, event: Dict[str, Any]) -> None:
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
                with REPLY_LOCK:
                    if not outbox.finished and outbox.disconnect is None:
                        outbox.queue.append({"type": "websocket.close", "code": 1011})
                        outbox.finished = True
            outbox.wake()

    async def _call_in_turn(self, outbox: Outbox, event: Dict[str, Any], counted: bool = False) -> None:
        try:
            await take_turn(outbox)
        finally:
            if counted:
                # Waiting for its turn is what `capacity` bounds (Endpoint.deliver): the event
                # stops counting once it runs, not as soon as its Task starts.
                outbox.events_waiting -= 1
        try:
            if outbox.ended and event.get("type") != "http.disconnect":
                return  # the socket has gone while this waited: nobody to act for
            await self._call(event_message(outbox, event))
        finally:
            give_turn(outbox)

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
        outbox = Outbox(layer.loop, layer=layer, adapter=self, websocket=True)
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
                    with REPLY_LOCK:
                        if outbox.disconnect is None:
                            outbox.disconnect = ConnectionResetError("the WebSocket connection is closed")
                    outbox.ended = True
                message = dict(base)
                message.update(event)
                await take_turn(outbox)  # (waits only while a layer event is being handled)
                try:
                    await self._call(message)
                finally:
                    give_turn(outbox)
                if forwarder.done():
                    forwarder.result()  # re-raises what went wrong sending the replies
                    if outbox.finished:
                        break  # the consumer closed the socket
                if event["type"] == "websocket.disconnect":
                    break
        finally:
            with REPLY_LOCK:
                if outbox.disconnect is None:
                    outbox.disconnect = ConnectionResetError("the WebSocket connection is closed")
            outbox.detach()
            outbox.wake()
            if not forwarder.done():
                forwarder.cancel()
        if outbox.event_error is not None:
            raise outbox.event_error

    @staticmethod
    async def _forward_websocket(outbox: Outbox, send: Callable[..., Any]) -> None:
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


def event_message(outbox: Outbox, event: Dict[str, Any]) -> Dict[str, Any]:
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


async def _read_rest_of_body(body: bytes, receive: Callable[..., Any]) -> Optional[bytes]:
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
