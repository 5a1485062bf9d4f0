"""Hello through nginx (started by bench/nginx.sh): our worker, uvicorn-worker and Gunicorn's own
`-k asgi` behind the same nginx, in both upstream modes of examples/deploy/nginx.conf.

For every round, mode and server: start the server (one worker, CPU 0, bench.py's Server) on a
TCP port, nginx with the site file rendered for it (tests/proxies.py: the file people copy, its
ports and upstream line changed; "default" drops the lines marked `# keep-alive`; one nginx
worker, pinned to CPU 1 with wrk, access log off), check the body, warm up, measure with wrk
(bench.py's run_wrk: one thread, 64 connections, pinned to CPU 1), stop both. Prints a Markdown
table: req/s, p50/p99 and the ratio of req/s to uvicorn-worker in the same mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.proxies: the same rendering as the tests

import bench  # noqa: E402  (bench/bench.py: servers, wrk, process groups)
from tests.proxies import Nginx, make_certificate, render_nginx_site  # noqa: E402

SERVERS = {
    "asgiworker": "asgiworker.ASGIWorker",
    "uvicorn-worker": "uvicorn_worker.UvicornWorker",
    "gunicorn-asgi": "asgi",
}
MODES = ["keepalive", "default"]
WORKLOAD = bench.Workload("nginx-hello-64", "hello", 64, note="hello through nginx, 64 keep-alive client connections")


def server_argv(name: str, port: int) -> List[str]:
    argv = bench.gunicorn_args("hello", port, SERVERS[name])
    if name == "gunicorn-asgi":
        argv += ["--asgi-loop", "uvloop"]
    # Longer than the site file's upstream keepalive_timeout (60 s), as the doc says.
    return argv + ["--keep-alive", "75"]


def pin(proxy: Nginx, cpu: int) -> None:
    """nginx's master and worker onto ``cpu`` (they start unpinned)."""
    for pid in bench.group_stats(proxy.proc.pid):  # type: ignore[union-attr]
        os.sched_setaffinity(pid, {cpu})


def one_run(name: str, mode: str, args, tmp: Path, cert: Path, key: Path) -> dict:
    port, nginx_port, tls_port = bench.free_port(), bench.free_port(), bench.free_port()
    server = bench.Server(name, server_argv(name, port), port, tmp / f"{name}-{mode}.log")
    proxy = None
    try:
        bench.note_running([server])
        site = render_nginx_site(upstream=f"127.0.0.1:{port}", port=nginx_port, tls_port=tls_port,
                                 cert=cert, key=key, keepalive=mode == "keepalive")
        url = f"http://127.0.0.1:{nginx_port}/"
        bench.wait_ready(server, WORKLOAD, f"http://127.0.0.1:{port}/", tmp, tmp / "post")
        proxy = Nginx(site, [nginx_port, tls_port], access_log=False)
        pin(proxy, int(bench.WRK_CPU))
        bench.check_body(server, WORKLOAD, url, tmp, tmp / "post", "before")
        script = bench.wrk_script(WORKLOAD, tmp)
        if args.warmup:
            bench.run_wrk(WORKLOAD, url, args.warmup, script)
        result, text = bench.run_wrk(WORKLOAD, url, args.duration, script)
        bench.check_body(server, WORKLOAD, url, tmp, tmp / "post", "after")
        errors = result["connect"] + result["read"] + result["write"] + result["timeout"] + result["status"]
        return {"rps": result["requests"] / (result["duration_us"] / 1e6), "p50": result["lat_p50_us"] / 1000,
                "p99": result["lat_p99_us"] / 1000, "errors": errors}
    finally:
        if proxy is not None:
            proxy.stop()
        server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs (default: 3 rounds of 5 s)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=int)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 5)
    tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    os.chmod(tmp, 0o755)
    cert, key = make_certificate(tmp)
    (tmp / "post").write_bytes(b"")
    runs: Dict[tuple, List[dict]] = {}
    names = list(SERVERS)
    load = open("/proc/loadavg").read().split()[:3]
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate: drifts hit all alike
        for mode in MODES:
            for name in order:
                r = one_run(name, mode, args, tmp, cert, key)
                print(f"round {rnd + 1} {mode:9} {name:15} {r['rps']:9.0f} req/s  p50 {r['p50']:.2f} ms  "
                      f"p99 {r['p99']:.2f} ms  errors {r['errors']}", file=sys.stderr)
                runs.setdefault((mode, name), []).append(r)
                time.sleep(0.5)
    print(f"\n{args.rounds} round(s) of {args.duration} s (+{args.warmup} s warm-up), median per cell; "
          f"load average at start {' '.join(load)}, at end {' '.join(open('/proc/loadavg').read().split()[:3])}\n")
    print("| upstream mode | server | req/s | p50 ms | p99 ms | vs uvicorn-worker | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in MODES:
        base = statistics.median(r["rps"] for r in runs[(mode, "uvicorn-worker")])
        for name in names:
            cell = runs[(mode, name)]
            rps = statistics.median(r["rps"] for r in cell)
            print(f"| {mode} | {name} | {rps:,.0f} | {statistics.median(r['p50'] for r in cell):.2f} | "
                  f"{statistics.median(r['p99'] for r in cell):.2f} | {rps / base:.2f} | "
                  f"{sum(r['errors'] for r in cell)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
