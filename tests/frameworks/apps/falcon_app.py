"""A ``falcon.asgi.App``: a JSON resource (collection and item), a custom media handler, Falcon's own
404s, a streamed body, WebSocket routes, and a lifespan middleware.

Falcon calls responders straight from its ``__call__`` (no task of its own), so ``/where``
shows whether the server itself runs each app call inside an asyncio Task.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Dict, List, Optional

import falcon
import falcon.asgi
import falcon.media

LOOP_THREAD: List[Optional[int]] = [None]
KV_TYPE = "application/x-kv"


class LifespanMiddleware:
    """Falcon runs ``process_startup`` / ``process_shutdown`` from the ASGI lifespan scope."""

    def __init__(self) -> None:
        self.started = False

    async def process_startup(self, scope: Dict[str, Any], event: Dict[str, Any]) -> None:
        LOOP_THREAD[0] = threading.get_ident()
        self.started = True

    async def process_shutdown(self, scope: Dict[str, Any], event: Dict[str, Any]) -> None:
        await asyncio.sleep(0)


class KeyValueHandler(falcon.media.BaseHandler):
    """``key=value`` lines, one pair per line: a media type Falcon knows nothing about."""

    def serialize(self, media: object, content_type: str) -> bytes:
        assert isinstance(media, dict)
        return "".join(f"{k}={v}\n" for k, v in sorted(media.items())).encode()

    async def deserialize_async(self, stream: Any, content_type: Optional[str],
                                content_length: Optional[int]) -> object:
        text = (await stream.read()).decode()
        pairs = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            if "=" not in line:
                raise falcon.MediaMalformedError(KV_TYPE)
            key, value = line.split("=", 1)
            pairs[key] = value
        return pairs


class ItemCollection:
    def __init__(self, store: Dict[int, Dict[str, Any]]) -> None:
        self.store = store

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"items": [self.store[k] for k in sorted(self.store)]}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await req.get_media()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise falcon.HTTPBadRequest(title="Invalid item", description="an object with a string 'name'")
        item_id = len(self.store) + 1
        item = {"id": item_id, "name": body["name"], "extra": body.get("extra")}
        self.store[item_id] = item
        resp.status = falcon.HTTP_201
        resp.location = f"/items/{item_id}"
        resp.media = item


class Item:
    def __init__(self, store: Dict[int, Dict[str, Any]]) -> None:
        self.store = store

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, item_id: int) -> None:
        if item_id not in self.store:
            raise falcon.HTTPNotFound(description=f"no item {item_id}")
        resp.media = self.store[item_id]


class KeyValueResource:
    """Reads and answers in the custom media type."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        data = await req.get_media()
        resp.content_type = KV_TYPE
        resp.media = {**data, "count": str(len(data))}


class Where:
    def __init__(self, lifespan: LifespanMiddleware) -> None:
        self.lifespan = lifespan

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Reports before any await: the responder is the app call, so it must be in a Task."""
        resp.media = {
            "started": self.lifespan.started,
            "on_loop": threading.get_ident() == LOOP_THREAD[0],
            "in_task": asyncio.current_task() is not None,
        }


class Stream:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """An async generator as ``resp.stream``, with a pause after the first chunk."""
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            await asyncio.sleep(0.6)
            for i in range(3):
                yield f"falcon-{i}\n".encode()
        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = chunks()


class Echo:
    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        """Text comes back reversed, bytes doubled, until the client disconnects."""
        await ws.accept()
        while True:
            try:
                message = await ws.receive_data() if req.get_param("mode") == "binary" else await ws.receive_text()
            except falcon.WebSocketDisconnected:
                return
            if isinstance(message, str):
                await ws.send_text(message[::-1])
            else:
                await ws.send_data(message * 2)


class Refuse:
    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        """Returns without accepting: Falcon closes, which the server must turn into an HTTP 403."""
        return


def create_app() -> falcon.asgi.App:
    lifespan = LifespanMiddleware()
    application = falcon.asgi.App(middleware=[lifespan])
    handler = KeyValueHandler()
    application.req_options.media_handlers[KV_TYPE] = handler
    application.resp_options.media_handlers[KV_TYPE] = handler
    store: Dict[int, Dict[str, Any]] = {}
    application.add_route("/items", ItemCollection(store))
    application.add_route("/items/{item_id:int}", Item(store))
    application.add_route("/kv", KeyValueResource())
    application.add_route("/where", Where(lifespan))
    application.add_route("/stream", Stream())
    application.add_route("/ws", Echo())
    application.add_route("/ws/refuse", Refuse())
    return application


app = create_app()
