"""Exceptions shared by the protocol modules (kept apart so that http and websocket need not
import each other for them)."""


class ClientDisconnected(OSError):
    """The client went away: raised by ``send()`` so that a streaming app stops (ASGI 2.4)."""
