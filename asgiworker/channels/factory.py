"""Which layer a process uses: built from the ``ASGIWORKER_CHANNEL_*`` settings, one per process.

The worker builds it at boot (config.py reads the settings) and installs it; ``get_channel_layer()``
is how any application code in the process reaches the same layer, ASGI apps included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from asgiworker.channels.layer import ChannelLayer, MiB

REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class LayerSpec:
    """The settings of a layer: ``backend`` is ``memory`` or ``redis`` (with ``urls``)."""

    backend: str = "memory"
    urls: Tuple[str, ...] = ()
    prefix: str = "asgi"
    capacity: int = 100
    expiry: float = 60.0
    group_expiry: float = 86400.0
    max_message_size: int = MiB


def build(spec: LayerSpec) -> ChannelLayer:
    options = dict(prefix=spec.prefix, capacity=spec.capacity, expiry=spec.expiry,
                   group_expiry=spec.group_expiry, max_message_size=spec.max_message_size)
    if spec.backend == "redis":
        from asgiworker.channels.redis import RedisChannelLayer

        return RedisChannelLayer(spec.urls, **options)
    from asgiworker.channels.memory import InMemoryChannelLayer

    return InMemoryChannelLayer(**options)


_installed: Optional[ChannelLayer] = None


def install(layer: Optional[ChannelLayer]) -> None:
    """Make ``layer`` this process's layer (the worker does, at boot)."""
    global _installed
    _installed = layer


def get_channel_layer() -> ChannelLayer:
    """This process's channel layer: the worker's, in a worker; elsewhere (a script, a test)
    one built once from the environment's settings."""
    global _installed
    if _installed is None:
        from asgiworker.config import layer_spec

        _installed = build(layer_spec(os.environ))
    return _installed
