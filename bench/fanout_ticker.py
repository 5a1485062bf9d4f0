"""The sending side of bench/fanout.py: one ``group_send('bench', ...)`` per tick.

    python fanout_ticker.py --impl ours|channels_redis --url redis://127.0.0.1:PORT/0 --prefix P

``ours``: asgiworker's layer (``build(LayerSpec('redis', (url,), prefix=P))``), message
``{'text': '<send timestamp>'}`` (a reply: it goes straight to each member's socket).
``channels_redis``: its ``RedisChannelLayer(hosts=[url], prefix=P)``, message
``{'type': 'bench.message', 'text': '<send timestamp>'}`` (the consumer's handler sends it on).
The timestamp is ``time.time()`` taken just before the call, so a message's latency includes
the group_send itself.

Prints ``READY`` once connected. Then, for each stdin line ``run RATE START END W0 W1``, sends
a tick at START + i/RATE for every such time before END (at most ``--in-flight`` group_sends at
once: a slow call does not hold back the next tick unless that many are already waiting),
and prints a JSON line: ticks sent, ticks sent in [W0, W1], how late the latest tick was, the
durations of the group_send calls, errors. ``quit`` ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Dict, List

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def make_layer(impl: str, url: str, prefix: str) -> Any:
    if impl == "ours":
        from asgiworker.channels import LayerSpec, build

        return build(LayerSpec("redis", (url,), prefix=prefix))
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[url], prefix=prefix)


def make_message(impl: str, stamp: str) -> Dict[str, Any]:
    if impl == "ours":
        return {"text": stamp}
    return {"type": "bench.message", "text": stamp}


async def run(layer: Any, impl: str, group: str, rate: float, start: float, end: float,
              w0: float, w1: float, in_flight: int) -> Dict[str, Any]:
    gate = asyncio.Semaphore(in_flight)
    durations: List[float] = []
    errors: List[str] = []
    tasks = set()
    sent = sent_in_window = 0
    max_late = 0.0

    async def one(stamp: float) -> None:
        try:
            await layer.group_send(group, make_message(impl, f"{stamp:.6f}"))
        except Exception as exc:  # reported, not fatal: the runner judges the step
            errors.append(repr(exc))
        finally:
            durations.append(time.time() - stamp)
            gate.release()

    i = 0
    while True:
        due = start + i / rate
        if due >= end:
            break
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await gate.acquire()
        now = time.time()
        max_late = max(max_late, now - due)
        sent += 1
        if w0 <= now <= w1:
            sent_in_window += 1
        task = asyncio.ensure_future(one(now))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks)
    durations.sort()
    pick = (lambda q: durations[min(len(durations) - 1, int(q * len(durations)))]) if durations else (lambda q: 0.0)
    return {"sent": sent, "sent_in_window": sent_in_window, "max_late": max_late,
            "call_p50": pick(0.5), "call_p99": pick(0.99), "call_max": durations[-1] if durations else 0.0,
            "errors": len(errors), "first_errors": errors[:3]}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=("ours", "channels_redis"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--group", default="bench")
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    layer = make_layer(args.impl, args.url, args.prefix)
    await layer.group_send("fanout-warmup", make_message(args.impl, "0"))  # connects
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        if line[0] == "run":
            rate, start, end, w0, w1 = map(float, line[1:6])
            result = await run(layer, args.impl, args.group, rate, start, end, w0, w1, args.in_flight)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())
