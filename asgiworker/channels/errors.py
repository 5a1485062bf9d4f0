"""What the channel layer raises (the names of the Channels specification, plus one of ours)."""

from __future__ import annotations


class ChannelFull(Exception):
    """``send()`` to a channel that already holds ``capacity`` messages (the Channels spec's
    name). ``group_send()`` never raises it: a full member silently misses that message."""


class MessageTooLarge(Exception):
    """A message whose encoded size is over the layer's ``max_message_size``."""


class ChannelLayerUnavailable(ConnectionError):
    """The layer's backend (Redis) cannot be reached: the call failed at once, nothing was
    done. The text names the server and the cause."""


class InvalidChannelName(TypeError):
    """A channel or group name the Channels specification does not allow (a ``TypeError``,
    as Channels raises)."""
