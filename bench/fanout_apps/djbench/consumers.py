from channels.generic.websocket import AsyncWebsocketConsumer


class BenchConsumer(AsyncWebsocketConsumer):
    """Joins the group ``bench`` on connect; each ``bench.message`` event goes to the socket."""

    async def connect(self):
        await self.channel_layer.group_add("bench", self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard("bench", self.channel_name)

    async def bench_message(self, event):
        await self.send(text_data=event["text"])
