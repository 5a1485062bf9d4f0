"""Apps and Gunicorn config hooks for tests/test_hooks_and_grace.py."""

import asyncio
import os


def _record(line: str) -> None:
    with open(os.environ["HOOK_RECORD_FILE"], "a") as f:
        f.write(line + "\n")


def pre_request(worker, req):
    _record("pre %s %s %s %d.%d %s" % (req.method, req.path, req.uri, req.version[0], req.version[1],
                                       dict(req.headers).get("X-TAG", "-")))


def post_request(worker, req, environ, resp):
    _record("post %s %s %s %s" % (req.method, resp.status, resp.sent, environ["RAW_URI"]))


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/ignore-disconnect":
        # Streams, and ignores both receive() and the OSError its send() raises once the client
        # has gone: only a cancellation ends it.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(36000):
                try:
                    await send({"type": "http.response.body", "body": b"tick", "more_body": True})
                except OSError:
                    pass
                await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            _record("cancelled")
            raise
    body = b"hooked"
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
