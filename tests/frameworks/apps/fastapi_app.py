"""A FastAPI app using the features people deploy, for test_fastapi.py.

What the app cannot say in the response itself (that a yield dependency's teardown ran, that a
background task ran after the response) it keeps in module-level lists that a later request reads:
each gunicorn runs one worker, so one process holds them.

The ``@app.middleware("http")`` stack (a BaseHTTPMiddleware) lives on a sub-app mounted at ``/mw``
and GZip on one mounted at ``/gz``: the other routes are then tested on their own, and a failure
in one of those middlewares shows in its own tests only.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime.
"""

import asyncio
import hashlib
import os
import threading
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List

from fastapi import (
    BackgroundTasks,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Request,
    Response,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

from tests.frameworks.apps.anyio_app import REQUEST_VALUE, asyncio_report, set_request_value

STATIC = Path(__file__).resolve().parent / "static"
NUMBERS = STATIC / "numbers.txt"
GREETING = "hello from the FastAPI lifespan"
# Large and repetitive: compresses well past GZipMiddleware's minimum size.
BIG_TEXT = "".join(f"line {i:05d}: the quick brown fox jumps over the lazy dog\n" for i in range(2000))


def in_worker_thread() -> bool:
    return threading.current_thread() is not threading.main_thread()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[Dict[str, Any]]:
    yield {"greeting": GREETING, "lifespan_pid": os.getpid()}


app = FastAPI(lifespan=lifespan)


# -- def and async def endpoints ------------------------------------------------------------------

@app.get("/sync")
def sync_endpoint() -> Dict[str, Any]:
    # FastAPI runs a `def` endpoint in anyio's worker threads, never on the event loop's thread.
    return {"endpoint": "def", "in_worker_thread": in_worker_thread()}


@app.get("/async")
async def async_endpoint() -> Dict[str, Any]:
    await asyncio.sleep(0)
    return {"endpoint": "async def", "in_worker_thread": in_worker_thread()}


@app.get("/lifespan")
async def lifespan_state(request: Request) -> Dict[str, Any]:
    return {"greeting": request.state.greeting, "lifespan_pid": request.state.lifespan_pid, "pid": os.getpid()}


# -- yield dependencies -----------------------------------------------------------------------------

CLOSED: Dict[str, List[str]] = {"sync": [], "async": []}


def sync_resource() -> Iterator[Dict[str, Any]]:
    resource = {"token": uuid.uuid4().hex, "state": "open", "opened_in_worker_thread": in_worker_thread()}
    try:
        yield resource
    finally:
        resource["state"] = "closed"
        CLOSED["sync"].append(resource["token"])


async def async_resource() -> AsyncIterator[Dict[str, Any]]:
    resource = {"token": uuid.uuid4().hex, "state": "open", "opened_in_worker_thread": in_worker_thread()}
    try:
        await asyncio.sleep(0)
        yield resource
    finally:
        await asyncio.sleep(0)
        resource["state"] = "closed"
        CLOSED["async"].append(resource["token"])


@app.get("/deps/sync")
def uses_sync_resource(resource: Dict[str, Any] = Depends(sync_resource)) -> Dict[str, Any]:
    return dict(resource)


@app.get("/deps/async")
async def uses_async_resource(resource: Dict[str, Any] = Depends(async_resource)) -> Dict[str, Any]:
    return dict(resource)


@app.get("/deps/closed")
async def closed_resources() -> Dict[str, List[str]]:
    return CLOSED


# -- background tasks -------------------------------------------------------------------------------

DONE: List[Dict[str, Any]] = []


def sync_task(token: str, endpoint: str) -> None:
    DONE.append({"token": token, "task": "sync", "endpoint": endpoint, "in_worker_thread": in_worker_thread()})


async def async_task(token: str, endpoint: str) -> None:
    await asyncio.sleep(0.001)
    DONE.append({"token": token, "task": "async", "endpoint": endpoint, "in_worker_thread": in_worker_thread()})


TASKS: Dict[str, Callable[[str, str], Any]] = {"sync": sync_task, "async": async_task}


def _schedule(background_tasks: BackgroundTasks, task: str, token: str, endpoint: str) -> Dict[str, str]:
    if task not in TASKS:
        raise HTTPException(400, f"task must be one of {sorted(TASKS)}")
    background_tasks.add_task(TASKS[task], token, endpoint)
    return {"scheduled": token}


@app.get("/bg/def")
def background_from_def(token: str, task: str, background_tasks: BackgroundTasks) -> Dict[str, str]:
    return _schedule(background_tasks, task, token, "def")


@app.get("/bg/async")
async def background_from_async(token: str, task: str, background_tasks: BackgroundTasks) -> Dict[str, str]:
    return _schedule(background_tasks, task, token, "async def")


@app.get("/bg/done")
async def background_done() -> List[Dict[str, Any]]:
    return DONE


# -- streaming, uploads, files ----------------------------------------------------------------------

def sync_chunks(n: int) -> Iterator[str]:
    for i in range(n):
        # Starlette iterates a sync generator in a worker thread, off the event loop.
        yield f"sync chunk {i} in_worker_thread={in_worker_thread()}\n"


async def async_chunks(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        await asyncio.sleep(0.001)
        yield f"async chunk {i}\n".encode()


@app.get("/stream/sync")
def stream_sync(n: int = 5) -> StreamingResponse:
    return StreamingResponse(sync_chunks(n), media_type="text/plain")


@app.get("/stream/async")
async def stream_async(n: int = 5) -> StreamingResponse:
    return StreamingResponse(async_chunks(n), media_type="text/plain")


def _describe(name: str, content_type: str, data: bytes) -> Dict[str, Any]:
    return {"filename": name, "content_type": content_type, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


@app.post("/upload")
async def upload(note: str = Form(...), files: List[UploadFile] = File(...)) -> Dict[str, Any]:
    described = [_describe(f.filename or "", f.content_type or "", await f.read()) for f in files]
    return {"note": note, "files": described}


@app.post("/upload-sync")
def upload_sync(file: UploadFile = File(...)) -> Dict[str, Any]:
    # A `def` endpoint reads the spooled file directly, in its worker thread.
    return _describe(file.filename or "", file.content_type or "", file.file.read())


@app.get("/file")
async def file() -> FileResponse:
    return FileResponse(NUMBERS, media_type="text/plain")


# -- errors -----------------------------------------------------------------------------------------

class TeapotError(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@app.exception_handler(TeapotError)
async def teapot_handler(request: Request, exc: TeapotError) -> JSONResponse:
    return JSONResponse({"error": "teapot", "what": exc.what, "path": request.url.path}, status_code=418)


@app.get("/teapot")
async def teapot(what: str = "coffee") -> None:
    raise TeapotError(what)


@app.get("/teapot-sync")
def teapot_sync(what: str = "coffee") -> None:
    raise TeapotError(what)


# -- the asyncio contract ---------------------------------------------------------------------------

@app.get("/asyncio")
async def asyncio_contract() -> Dict[str, Any]:
    return await asyncio_report()


@app.get("/ctx/set")
async def ctx_set(request: Request, value: str, when: str = "eager") -> Dict[str, Any]:
    result: Dict[str, Any] = dict(await set_request_value(value, when))
    result["client_port"] = request.client.port if request.client else None
    return result


@app.get("/ctx/get")
async def ctx_get(request: Request) -> Dict[str, Any]:
    return {"value": REQUEST_VALUE.get(), "client_port": request.client.port if request.client else None}


# -- WebSocket --------------------------------------------------------------------------------------

@app.websocket("/ws")
async def websocket_echo(websocket: WebSocket) -> None:
    """Echoes text and bytes; ``bye`` makes the server close with 4001."""
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                if message["text"] == "bye":
                    await websocket.close(code=4001, reason="bye")
                    return
                await websocket.send_text("echo: " + message["text"])
            else:
                await websocket.send_bytes(b"echo: " + message["bytes"])
    except WebSocketDisconnect:
        return


# -- /mw: @app.middleware("http") -------------------------------------------------------------------

mw = FastAPI()


@mw.middleware("http")
async def stamp(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["x-middleware"] = "stamped"
    response.headers["x-trace-echo"] = request.headers.get("x-trace", "none")
    return response


@mw.get("/hello")
async def mw_hello() -> Dict[str, str]:
    return {"hello": "world"}


@mw.get("/sync")
def mw_sync() -> Dict[str, Any]:
    return {"endpoint": "def", "in_worker_thread": in_worker_thread()}


@mw.get("/missing")
async def mw_missing() -> None:
    raise HTTPException(404, "no such thing", headers={"x-why": "missing"})


@mw.get("/forbidden")
def mw_forbidden() -> None:
    raise HTTPException(403, "not you")


@mw.get("/bg")
async def mw_background(token: str, background_tasks: BackgroundTasks) -> Dict[str, str]:
    return _schedule(background_tasks, "sync", token, "behind middleware")


app.mount("/mw", mw)


# -- /gz: GZipMiddleware ----------------------------------------------------------------------------

gz = FastAPI()
gz.add_middleware(GZipMiddleware, minimum_size=1000)


@gz.get("/big")
async def gz_big() -> PlainTextResponse:
    return PlainTextResponse(BIG_TEXT)


@gz.get("/small")
async def gz_small() -> PlainTextResponse:
    return PlainTextResponse("too small to compress")


app.mount("/gz", gz)
