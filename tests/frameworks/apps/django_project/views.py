"""The views the Django tests call; each returns what the test needs to tell right from wrong.

Where it matters a view reports *how* it ran (on the event loop's thread or not, inside an
asyncio Task or not): Django runs sync views in a thread through asgiref and async views as
coroutines on the loop, and a server that drives the app oddly shows up there first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from typing import Dict

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template import engines
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie


def _on_main_thread() -> bool:
    # The event loop of a Gunicorn worker (ours and uvicorn-worker alike) runs on the main thread.
    return threading.current_thread() is threading.main_thread()


def _in_task() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no running loop at all
        return False


# -- plain views ------------------------------------------------------------------------------


def sync_view(request):
    return JsonResponse({"kind": "sync", "main_thread": _on_main_thread(), "q": request.GET.get("q")})


async def async_view(request):
    in_task = _in_task()  # before the view's first await, and after it
    await asyncio.sleep(0.01)  # really suspend, so that the view's coroutine is driven by the loop
    return JsonResponse({"kind": "async", "main_thread": _on_main_thread(), "in_task": in_task and _in_task(),
                         "q": request.GET.get("q")})


async def _loop_side(word: str) -> Dict[str, object]:
    await asyncio.sleep(0.01)
    return {"word": word.upper(), "main_thread": _on_main_thread(), "in_task": _in_task()}


def sync_calls_async(request):
    """A sync view hopping back onto the event loop with async_to_sync (and back out)."""
    inner = async_to_sync(_loop_side)(request.GET.get("word", ""))
    return JsonResponse({"view_main_thread": _on_main_thread(), "inner": inner})


def _thread_side(word: str) -> Dict[str, object]:
    time.sleep(0.01)
    return {"word": word[::-1], "main_thread": _on_main_thread()}


async def async_calls_sync(request):
    """An async view calling blocking code both ways asgiref offers."""
    word = request.GET.get("word", "")
    in_task = _in_task()
    sensitive = await sync_to_async(_thread_side)(word)
    pooled = await sync_to_async(_thread_side, thread_sensitive=False)(word)
    return JsonResponse({"view_main_thread": _on_main_thread(), "view_in_task": in_task and _in_task(),
                         "sensitive": sensitive, "pooled": pooled})


def slow_sync(request):
    """Blocks its thread: only Django running sync views in threads lets several overlap."""
    time.sleep(0.5)
    return JsonResponse({"thread": threading.get_ident(), "main_thread": _on_main_thread()})


def meta(request, word):
    """What Django made of the ASGI scope: path, query, headers, client and server addresses."""
    keys = ("REQUEST_METHOD", "PATH_INFO", "SCRIPT_NAME", "QUERY_STRING", "REMOTE_ADDR",
            "SERVER_NAME", "SERVER_PORT", "HTTP_X_CUSTOM", "HTTP_HOST")
    return JsonResponse({
        "word": word,
        "path": request.path,
        "get": {key: request.GET.getlist(key) for key in request.GET},
        "meta": {key: request.META.get(key) for key in keys},
        "host": request.get_host(),
        "scheme": request.scheme,
        "absolute": request.build_absolute_uri(),
    })


@csrf_exempt
def echo_json(request):
    body = request.body
    return JsonResponse({
        "method": request.method,
        "content_type": request.content_type,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "echo": json.loads(body),
    })


def boom(request):
    raise RuntimeError("deliberate failure for the 500 test")


# -- streaming and files ----------------------------------------------------------------------

SYNC_CHUNKS = 50


def stream_sync(request):
    """A sync iterator: Django consumes it in a thread (sync_to_async) before sending."""
    def chunks():
        for i in range(SYNC_CHUNKS):
            yield f"sync-{i:03d}\n".encode()
    return StreamingHttpResponse(chunks(), content_type="text/plain")


ASYNC_CHUNKS = 4
ASYNC_GAP = 0.2


def stream_async(request):
    """An async iterator with pauses: each chunk must reach the client as it is produced."""
    async def chunks():
        for i in range(ASYNC_CHUNKS):
            if i:
                await asyncio.sleep(ASYNC_GAP)
            yield f"async-{i}\n".encode()
    return StreamingHttpResponse(chunks(), content_type="text/plain")


# token -> "running" / "closed": what the endless stream's generator went through.
STREAM_STATE: Dict[str, str] = {}


def stream_forever(request):
    """An async stream that only ends (within ~20 s) when the client goes away.

    Django 5 listens for ``http.disconnect`` while streaming and cancels the response then; the
    generator's ``finally`` records that it was closed.
    """
    token = request.GET["token"]

    async def chunks():
        STREAM_STATE[token] = "running"
        try:
            for i in range(400):
                yield f"tick-{i}\n".encode()
                await asyncio.sleep(0.05)
            STREAM_STATE[token] = "ran to the end"
        finally:
            if STREAM_STATE[token] == "running":
                STREAM_STATE[token] = "closed"
    return StreamingHttpResponse(chunks(), content_type="text/plain")


def stream_state(request):
    return JsonResponse({"state": STREAM_STATE.get(request.GET["token"])})


def file_view(request):
    """The payload file the test wrote (its path in settings.PAYLOAD_FILE), as an attachment."""
    return FileResponse(open(settings.PAYLOAD_FILE, "rb"), as_attachment=True, filename="payload.bin")


# -- sessions and CSRF ------------------------------------------------------------------------


def counter(request):
    count = request.session.get("count", 0) + 1
    request.session["count"] = count
    return JsonResponse({"count": count})


FORM = """<!doctype html>
<form method="post" action="/form/">{% csrf_token %}<input name="name"><button>Go</button></form>
"""


@ensure_csrf_cookie
def form(request):
    """GET: a form with the CSRF token (and the csrftoken cookie); POST: CSRF-checked by the middleware."""
    if request.method == "POST":
        return JsonResponse({"name": request.POST.get("name")})
    return HttpResponse(engines["django"].from_string(FORM).render({}, request))
