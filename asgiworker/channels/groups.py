"""``Group``: a chat room in three lines, in the style of the original consumer design.

    room = Group("lobby")
    room.add(message["reply_channel"])       # on websocket.connect
    room.send({"text": "hello, everyone"})   # on websocket.receive

Each call is non-blocking (the layer's ``*_nowait`` forms: safe in sync and async consumers,
run in the order made) and returns a ``Pending``. A socket leaves its groups by itself when it
disconnects; ``discard`` is for leaving earlier.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from asgiworker.channels.layer import ChannelLayer
from asgiworker.channels.names import check_group
from asgiworker.channels.pending import Pending


class Group:
    __slots__ = ("name", "_layer")

    def __init__(self, name: str, layer: Optional[ChannelLayer] = None) -> None:
        self.name = check_group(name)
        self._layer = layer

    @property
    def layer(self) -> ChannelLayer:
        if self._layer is not None:
            return self._layer
        from asgiworker.channels.factory import get_channel_layer

        return get_channel_layer()

    def add(self, channel: Any) -> Pending:
        """Join a reply channel (or any channel name) to the group."""
        return self.layer.group_add_nowait(self.name, _name(channel))

    def discard(self, channel: Any) -> Pending:
        return self.layer.group_discard_nowait(self.name, _name(channel))

    def send(self, message: Dict[str, Any]) -> Pending:
        """Send to every member: a reply (``{'text': ...}``) goes to each member's socket, a
        message with a ``type`` to each member's consumer."""
        return self.layer.group_send_nowait(self.name, message)

    def __repr__(self) -> str:
        return f"<Group {self.name}>"


def _name(channel: Any) -> str:
    name = getattr(channel, "name", channel)
    if not isinstance(name, str):
        raise TypeError(f"Group members are reply channels or channel names, got {channel!r}")
    return name
