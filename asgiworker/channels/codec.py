"""Messages as bytes, in the encoding of ``channels_redis``: twelve random bytes, then msgpack.

The random prefix makes every stored message unique (a Redis sorted set would otherwise merge two
equal messages into one). The in-memory layer encodes too, so that both layers accept the same
messages (what msgpack can carry: dicts, lists, str, bytes, numbers, booleans, None), enforce the
same size limit and hand every receiver its own copy.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict

import msgpack

from asgiworker.channels.errors import MessageTooLarge

RANDOM_PREFIX = 12


def encode(message: Dict[str, Any], max_size: int) -> bytes:
    if not isinstance(message, dict):
        raise TypeError(f"A channel message must be a dict, got {type(message).__name__}")
    try:
        packed: bytes = msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"A channel message must hold only dicts, lists, str, bytes, numbers, "
                        f"booleans and None: {exc}") from None
    if len(packed) > max_size:
        raise MessageTooLarge(f"The message is {len(packed)} bytes encoded, over the layer's "
                              f"max_message_size of {max_size} (ASGIWORKER_CHANNEL_MAX_MESSAGE_SIZE)")
    return os.urandom(RANDOM_PREFIX) + packed


def copier(message: Dict[str, Any]) -> Callable[[], Dict[str, Any]]:
    """Makes copies of a decoded message for its other receivers: a flat one (``{'text': ...}``,
    the usual fan-out) by ``dict()``, one with nested lists or dicts through msgpack, so that no
    two receivers share a mutable value. (Never by decoding the stored message again: a group
    message lists its receivers, and decoding it per receiver would cost receivers squared.)"""
    if not any(isinstance(value, (dict, list)) for value in message.values()):
        return lambda: dict(message)
    packed = msgpack.packb(message, use_bin_type=True)
    return lambda: msgpack.unpackb(packed, raw=False, strict_map_key=False)  # (a map: it was one)


def decode(data: bytes) -> Dict[str, Any]:
    message = msgpack.unpackb(data[RANDOM_PREFIX:], raw=False, strict_map_key=False)
    if not isinstance(message, dict):
        raise ValueError("not a channel message (not a map)")
    return message
