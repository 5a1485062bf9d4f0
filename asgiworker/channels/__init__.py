"""``asgiworker.channels``: the channel layer of the Channels specification, for consumers and
ASGI apps, in memory (one process) or on Redis (many, compatible with channels_redis).

See docs/channel-layer.md.
"""

from asgiworker.channels.errors import ChannelFull, ChannelLayerUnavailable, InvalidChannelName, MessageTooLarge
from asgiworker.channels.factory import LayerSpec, build, get_channel_layer, install
from asgiworker.channels.groups import Group
from asgiworker.channels.layer import ChannelLayer
from asgiworker.channels.memory import InMemoryChannelLayer
from asgiworker.channels.pending import Pending

__all__ = [
    "ChannelFull", "ChannelLayer", "ChannelLayerUnavailable", "Group", "InMemoryChannelLayer",
    "InvalidChannelName", "LayerSpec", "MessageTooLarge", "Pending", "build", "get_channel_layer",
    "install",
]
