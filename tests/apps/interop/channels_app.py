"""The Channels side: a ProtocolTypeRouter with ``RoomConsumer`` on ``/ws/<room>/`` (the room
protocol of tests/apps/interop/__init__.py) and a plain ASGI answer for HTTP."""

from __future__ import annotations

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.interop.settings")

import django  # noqa: E402

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"hello": self.channel_name, "pid": os.getpid()}))

    async def receive(self, text_data=None, bytes_data=None):
        try:
            command = json.loads(text_data)
        except (TypeError, ValueError):
            command = None
        if isinstance(command, dict) and "to" in command:
            # Straight to one socket's channel, as Channels consumers talk to each other's
            # sockets: the ASGI message the receiving consumer would send itself.
            await self.channel_layer.send(command["to"], {"type": "websocket.send", "text": command["text"]})
        else:
            await self.channel_layer.group_send(self.room, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event):
        await self.send(text_data=event["text"])

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)


async def health(scope, receive, send):
    """Any HTTP request: 200 ``ok`` (gunicorn's readiness probe and nothing else)."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


application = ProtocolTypeRouter({
    "http": health,
    "websocket": URLRouter([path("ws/<str:room>/", RoomConsumer.as_asgi())]),
})
