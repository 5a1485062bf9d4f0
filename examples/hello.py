"""The original example: a channel-style consumer answering on its reply channel.

    gunicorn hello:hello_world --bind localhost:8080 --worker-class asgiworker.ASGIWorker
"""

import asyncio

BODY = b"Hello, world!"


def hello_world(message):
    message["reply_channel"].send({
        "status": 200,
        "headers": [[b"content-type", b"text/html"], [b"content-length", str(len(BODY)).encode()]],
        "content": BODY,
    })


async def _answer_later(message):
    await asyncio.sleep(1)  # stands for real work that waits without blocking the loop
    message["reply_channel"].send({
        "status": 200,
        "headers": [[b"content-type", b"text/plain"]],
        "content": b"Hello after a second!",
    })


def sleepy(message):
    """The second original example: hand the work to the worker's loop and return at once."""
    message["channel_layer"].loop.create_task(_answer_later(message))
