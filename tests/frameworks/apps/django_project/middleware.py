"""Two custom middlewares, in the two forms projects write them.

``ProcessResponseHeaderMiddleware`` is the common ``MiddlewareMixin`` kind with a sync
``process_response`` hook: under ASGI Django keeps the chain async and calls the hook in a worker
thread through asgiref's ``sync_to_async``. ``AsyncCapableHeaderMiddleware`` is the sync-and-async
form from Django's documentation; it is listed last (right above the async handler), so Django
runs it as a coroutine. Each stamps a response header saying how it ran, which the tests read.

(No sync-only middleware: one would make Django run the whole chain in a thread and hop back to
the loop with async_to_sync for the view, hiding how the server itself drives the app. The
views in views.py cover that hop explicitly.)
"""

from __future__ import annotations

import asyncio
import threading

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.deprecation import MiddlewareMixin


class ProcessResponseHeaderMiddleware(MiddlewareMixin):
    """A sync hook on the mixin: Django runs it off the event loop's thread."""

    def process_response(self, request, response):
        on_main = threading.current_thread() is threading.main_thread()
        response["X-Sync-Middleware"] = "main-thread" if on_main else "worker-thread"
        return response


class AsyncCapableHeaderMiddleware:
    """Both sync and async capable, in the form Django's documentation gives."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        response = self.get_response(request)
        response["X-Async-Middleware"] = "sync"
        return response

    async def _acall(self, request):
        response = await self.get_response(request)
        # "async" only when it really ran as a coroutine inside a Task on the loop's thread.
        in_task = asyncio.current_task() is not None
        on_main = threading.current_thread() is threading.main_thread()
        response["X-Async-Middleware"] = "async" if in_task and on_main else f"odd(task={in_task},main={on_main})"
        return response
