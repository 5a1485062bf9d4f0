"""Idle keep-alive connections for bench.py's "idle-rss" kind (run pinned to CPU 1 with taskset).

    python bench/idleconns.py --port PORT [--connections 10000] [--parallel 200]

One asyncio process opens N connections to 127.0.0.1:PORT (at most --parallel handshakes at a
time), sends one `GET /` keep-alive request on each and reads its whole response (Content-Length
body), then leaves it open. It prints `OPEN {json}` (how many are open, failures) and waits for a
line on stdin: the runner measures the server's RSS meanwhile. On that line it checks every
connection is still open (none read EOF), prints `BENCH_RESULT {json}` and closes them all.
Bounded: it gives up after --timeout seconds (default 180) whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: idleconns\r\nAccept: */*\r\n\r\n"


async def one(port: int, gate: asyncio.Semaphore):
    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 20)
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), 20)
        return reader, writer


async def main(args) -> dict:
    gate = asyncio.Semaphore(args.parallel)
    t0 = time.monotonic()
    results = await asyncio.gather(*(one(args.port, gate) for _ in range(args.connections)),
                                   return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    failures = {}
    for r in results:
        if isinstance(r, BaseException):
            key = type(r).__name__ + (f": {r}" if str(r) else "")
            failures[key[:120]] = failures.get(key[:120], 0) + 1
    print("OPEN " + json.dumps({"open": len(conns), "failed": len(results) - len(conns),
                                "failures": failures, "open_s": round(time.monotonic() - t0, 2)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    # Still open? A connection the server closed has had its EOF (or an error) delivered to its
    # reader (every response was read whole, so nothing else is buffered).
    await asyncio.sleep(0.2)
    closed = sum(1 for reader, _ in conns if reader.at_eof() or reader.exception() is not None)
    for _, writer in conns:
        writer.transport.abort()
    return {"connections": args.connections, "open": len(conns), "failed": len(results) - len(conns),
            "closed_by_server": closed, "failures": failures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def bounded():
        return await asyncio.wait_for(main(args), args.timeout)

    result = asyncio.run(bounded())
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    sys.exit(0)
