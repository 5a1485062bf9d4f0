"""Apps the tests serve through a real gunicorn."""


async def answer_lifespan(receive, send) -> None:
    """Say yes to the lifespan protocol: startup complete, then shutdown complete."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
