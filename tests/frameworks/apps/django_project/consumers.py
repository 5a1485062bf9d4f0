"""Channels consumers for the WebSocket tests (and one HTTP consumer); routed in channels_asgi.py.

- ``ChatConsumer`` (async): joins the group of its room on the in-memory channel layer and
  broadcasts every text it receives to that group; ``"bye"`` makes it close with code 4000. Its
  first message says what the auth/session middlewares put in the scope.
- ``EchoConsumer`` (sync): Channels runs its handlers in a thread through asgiref; it says so.
- ``RefusingConsumer``: closes before accepting, so the handshake is refused (HTTP 403).
- ``EventsConsumer`` (AsyncHttpConsumer): a small event stream, sent in several body messages.
"""

from __future__ import annotations

import asyncio
import json
import threading

from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.group = f"chat.{self.room}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # Sent only once this consumer is in the group: a client that has read it is sure to get
        # every broadcast that follows.
        await self.send(text_data=json.dumps({
            "type": "welcome",
            "room": self.room,
            "anonymous": self.scope["user"].is_anonymous,
            "count": self.scope["session"].get("count"),
        }))

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "bye":
            await self.close(code=4000)
            return
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "text": text_data, "sender": self.channel_name})

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({
            "type": "message", "text": event["text"], "mine": event["sender"] == self.channel_name}))

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)


class EchoConsumer(WebsocketConsumer):
    def connect(self):
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        if text_data is not None:
            self.send(text_data=json.dumps({"upper": text_data.upper(), "main_thread": _on_main_thread()}))
        else:
            self.send(bytes_data=bytes_data[::-1])


class RefusingConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close()


class EventsConsumer(AsyncHttpConsumer):
    EVENTS = 3
    GAP = 0.1

    async def handle(self, body):
        await self.send_headers(headers=[(b"Content-Type", b"text/event-stream"),
                                         (b"Cache-Control", b"no-cache")])
        for i in range(self.EVENTS):
            if i:
                await asyncio.sleep(self.GAP)
            await self.send_body(f"data: event-{i}\n\n".encode(), more_body=True)
        await self.send_body(b"", more_body=False)
