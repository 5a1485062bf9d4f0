"""Channel and group names, by the rules of the Channels specification.

A channel name is ASCII letters, digits, ``-``, ``_`` and ``.``, shorter than 100 characters;
a *process-specific* name has a ``!`` and a local part after it (``specific.<process>!<id>``):
messages for it go to the process that owns the part up to the ``!``. Group names have no ``!``.
"""

from __future__ import annotations

import re

from asgiworker.channels.errors import InvalidChannelName

MAX_NAME_LENGTH = 100
# The very patterns of Channels (channels.layers.BaseChannelLayer), so that names pass both.
_CHANNEL = re.compile(r"^[a-zA-Z\d\-_.]+(![\d\w\-_.]*)?$")
_GROUP = re.compile(r"^[a-zA-Z\d\-_.]+$")
_RULE = ("name must be a str shorter than 100 characters of ASCII letters, digits, hyphens, "
         "underscores or periods")


def check_channel(name: object) -> str:
    if type(name) is not str or len(name) >= MAX_NAME_LENGTH or _CHANNEL.match(name) is None:
        raise InvalidChannelName(f"Channel {_RULE} (with one '!' for a process-specific channel), "
                                 f"got {name!r}")
    return name


def check_group(name: object) -> str:
    if type(name) is not str or len(name) >= MAX_NAME_LENGTH or _GROUP.match(name) is None:
        raise InvalidChannelName(f"Group {_RULE}, got {name!r}")
    return name


def non_local_name(name: str) -> str:
    """The part a process-specific name is routed by: up to and including the ``!``."""
    bang = name.find("!")
    return name if bang < 0 else name[: bang + 1]
