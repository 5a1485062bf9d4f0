"""The Redis reader's hand-out of one group message to this process's members, alone (no
sockets, no Redis): ``RedisChannelLayer._dispatch`` as it is in the working tree, against a
reference that decodes the message once and gives each member a copy decoded from the message
re-packed *without* its member list.

    .venv/bin/python bench/fanout_dispatch.py [--members 1,10,100,250,1000]

A group_send writes one message per worker process whose ``__asgi_channel__`` lists that
process's members (~45 bytes each); the reader decodes it and delivers it to each. Prints µs per
delivered member for both: a regression check for copies that cost members squared. (329d6ec
decoded the whole stored message again for each member: 16 µs per member at 250 members per
process, 67 at 1,000, against ~0.8 here; 999877f fixed it.) The reference lives here only.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict

import msgpack

from asgiworker.channels.codec import decode, encode
from asgiworker.channels.redis import RedisChannelLayer


class Sink:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def deliver(self, message: Dict[str, Any]) -> bool:
        self.n += 1
        return True


def dispatch_once(layer: RedisChannelLayer, data: bytes) -> None:
    """Decode once; each member after the first gets its own deep copy, unpacked from the
    message packed again without the member list (a few dozen bytes, not the whole list)."""
    message = decode(data)
    names = message.pop("__asgi_channel__", None)
    if isinstance(names, str):
        layer.local.deliver(names, message)
        return
    if not isinstance(names, list):
        return
    small = msgpack.packb(message, use_bin_type=True)
    first = True
    for name in names:
        if isinstance(name, str):
            layer.local.deliver(name, message if first else msgpack.unpackb(small, raw=False, strict_map_key=False))
            first = False


def measure(members: int, variant: str, seconds: float = 1.0) -> float:
    layer = RedisChannelLayer(["redis://127.0.0.1:1/0"])  # never connects: _dispatch needs no Redis
    names = []
    for _ in range(members):
        name = layer.local.new_name()
        layer.local.register(name, Sink())
        names.append(name)
    data = encode({"text": f"{time.time():.6f}", "__asgi_channel__": names}, 1 << 24)
    run = layer._dispatch if variant == "tree" else (lambda d: dispatch_once(layer, d))
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(data)
        n += 1
    return (time.perf_counter() - start) / (n * members) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="1,10,100,250,1000")
    args = parser.parse_args()
    print("| members per process | _dispatch as in the tree, µs/member | reference (decode once + small copy), µs/member |")
    print("|---:|---:|---:|")
    for members in (int(m) for m in args.members.split(",")):
        print(f"| {members} | {measure(members, 'tree'):.2f} | {measure(members, 'once'):.2f} |")


if __name__ == "__main__":
    main()
