"""WebSocket echo load generator for bench.py's "ws" kind (run pinned to CPU 1 with taskset).

    python bench/wsclient.py --port PORT [--connections 64] [--warmup 1] [--duration 5]

One asyncio process (uvloop if installed) opens N connections to ws://127.0.0.1:PORT/ (no
compression offered, so every server speaks plain frames) and each connection, in a loop, sends a
16-byte text message and awaits its echo, checking it is the same text. After the warm-up it
prints `GO` (the runner reads the server's CPU time then), measures for the duration, prints
`BENCH_RESULT {json}` (messages, duration_us, latency percentiles in µs, errors) and closes
every connection. Bounded: it gives up after warm-up + duration + 30 s whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect

MESSAGE = "0123456789abcdef"  # 16 bytes of text


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def main(args) -> dict:
    uri = f"ws://127.0.0.1:{args.port}/"
    sockets = await asyncio.gather(*(
        connect(uri, compression=None, max_queue=None, ping_interval=None, open_timeout=10)
        for _ in range(args.connections)))
    phase = {"measure": False, "stop": False}
    latencies: list = []
    errors = {"wrong_echo": 0, "closed": 0}

    async def loop(ws):
        perf = time.perf_counter
        try:
            while not phase["stop"]:
                t = perf()
                await ws.send(MESSAGE)
                reply = await ws.recv()
                if phase["measure"] and not phase["stop"]:
                    latencies.append(perf() - t)
                if reply != MESSAGE:
                    errors["wrong_echo"] += 1
        except Exception:
            errors["closed"] += 1

    tasks = [asyncio.create_task(loop(ws)) for ws in sockets]
    await asyncio.sleep(args.warmup)
    print("GO", flush=True)
    phase["measure"] = True
    start = time.perf_counter()
    await asyncio.sleep(args.duration)
    phase["stop"] = True
    elapsed = time.perf_counter() - start
    await asyncio.wait(tasks, timeout=10)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    lat = sorted(latencies)
    return {
        "connections": args.connections, "messages": len(lat), "duration_us": elapsed * 1e6,
        "lat_p50_us": percentile(lat, 0.50) * 1e6, "lat_p90_us": percentile(lat, 0.90) * 1e6,
        "lat_p99_us": percentile(lat, 0.99) * 1e6, "lat_max_us": (lat[-1] if lat else 0) * 1e6,
        **errors,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def bounded():
        return await asyncio.wait_for(main(args), args.warmup + args.duration + 30)

    result = asyncio.run(bounded())
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    sys.exit(0)
