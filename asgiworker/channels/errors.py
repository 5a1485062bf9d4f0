"""What the channel layer raises (the names of the Channels specification, plus one of ours)."""

from __future__ import annotations


class ChannelFull(Exception):
    """``send()`` to a channel that already holds ``capacity`` messages (the Channels spec's
    name). ``group_send()`` never raises it: a full member silently misses that message."""


class MessageTooLarge(Exception):
    """A message whose encoded size is over the layer's ``max_message_size``."""


class ChannelLayerUnavailable(ConnectionError):
    """The layer's backend (Redis) cannot be reached. The text names the server and the cause.

    A call failed at once (the server is known to be down, or refuses connections) did nothing.
    A call cut off midway (the command timeout on a stalled server, a connection lost during the
    command) has an unknown outcome: the command may have run, or may still run once a stalled
    server resumes (a ``send`` that raised this can still deliver its message). The layer never
    retries, so nothing is delivered twice."""


class InvalidChannelName(TypeError):
    """A channel or group name the Channels specification does not allow (a ``TypeError``,
    as Channels raises)."""
