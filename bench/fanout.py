"""Group fan-out over a Redis channel layer: our worker against Django Channels + channels_redis
on uvicorn-worker, in one run. Usage and what it measures: README.md ("Group fan-out").

    bench/fanout.sh [--quick] [--rounds 2] [--servers ours,channels] [--rates 1,2,5,...]
                    [--fixed-rate 2] [--duration 5] [--warmup 1] [--profile] [--ours-tree DIR]

1,000 WebSocket clients (2 client processes of 500, fanout_client.py) in one group ``bench``,
spread over the 4 workers of one Gunicorn; a ticker process (fanout_ticker.py) does one
``group_send('bench', ...)`` per tick. For each tick rate: messages delivered per second,
p50/p99 latency from the send timestamp to the client's receipt, the workers' and Redis's CPU
time per delivered message. The rate is raised step by step until the server stops keeping up;
the highest rate it keeps up with is its saturation point.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import redis as redis_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "fanout_apps"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY = sys.executable
BIN = Path(PY).parent

sys.path.insert(0, str(HERE))
from fanout_client import bin_value  # noqa: E402,I001  # the histogram's bins, shared with the client


# -- processes ------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _preexec(nice: int):
    def run() -> None:
        _die_with_parent()
        if nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, nice)
            except OSError:
                pass  # not allowed (not root): the load generators run at the default priority
    return run


_groups: List[int] = []


def note_groups() -> None:
    """Tell fanout.sh which process groups run, for its last-resort cleanup."""
    path = os.environ.get("BENCH_PGID_FILE")
    if path:
        with open(path, "w") as f:
            f.write("".join(f"{pgid}\n" for pgid in _groups))


def spawn(argv: Sequence[str], log: Optional[Path] = None, pipes: bool = False, env: Optional[dict] = None,
          cwd: Path = HERE, nice: int = 0) -> subprocess.Popen:
    """A child in a process group of its own (killed as a group), dying with us."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        list(argv), cwd=str(cwd), env=env,
        stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipes else out,
        stderr=out, start_new_session=True, preexec_fn=_preexec(nice),
        text=pipes, bufsize=1 if pipes else -1,
    )
    _groups.append(proc.pid)
    note_groups()
    return proc


def kill_group(proc: subprocess.Popen, term_wait: float = 8.0) -> None:
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_pids(proc.pid):
            proc.poll()
            time.sleep(0.05)
        if not group_pids(proc.pid):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc.pid in _groups:
        _groups.remove(proc.pid)
        note_groups()


def read_line(proc: subprocess.Popen, what: str, timeout: float) -> str:
    """One line from a child's stdout, or an error saying who did not answer."""
    import select

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{what}: no answer within {timeout:.0f} s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise BenchError(f"{what}: the process exited ({proc.poll()})")
            return line.strip()


def tell(proc: subprocess.Popen, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


class BenchError(Exception):
    pass


# -- /proc ----------------------------------------------------------------------------------------

def _stat(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """user+sys of one process (all its threads), from /proc/<pid>/stat."""
    rest = _stat(pid)
    return (int(rest[11]) + int(rest[12])) / CLK_TCK if rest else 0.0


def sys_seconds(pid: int) -> float:
    """The sys part alone (time in the kernel: system calls, the TCP stack)."""
    rest = _stat(pid)
    return int(rest[12]) / CLK_TCK if rest else 0.0


def group_pids(pgid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            rest = _stat(int(entry))
            if rest and int(rest[2]) == pgid and rest[0] != "Z":
                found.append(int(entry))
    return found


def children(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            rest = _stat(int(entry))
            if rest and int(rest[1]) == pid and rest[0] != "Z":
                found.append(int(entry))
    return sorted(found)


def machine_busy_seconds() -> Tuple[float, float, float]:
    """(busy, total, irq + softirq) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    return (total - v[3] - v[4]) / CLK_TCK, total / CLK_TCK, (v[5] + v[6]) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


# -- Redis ------------------------------------------------------------------------------------------

class RedisServer:
    def __init__(self, logdir: Path) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="fanout-redis-")
        self.proc = spawn([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                           "--dir", self.dir, "--daemonize", "no", "--protected-mode", "no"],
                          log=logdir / "redis.log")
        self.client = redis_py.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis_py.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError(f"redis-server did not start (see {logdir / 'redis.log'})") from None
                time.sleep(0.05)
        self.version = self.client.info("server")["redis_version"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        kill_group(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the servers --------------------------------------------------------------------------------

@dataclass
class ServerSpec:
    name: str
    label: str
    impl: str  # the ticker's layer
    prefix: str
    argv: List[str]
    tree: Optional[str] = None  # another asgiworker package to run (ours only)


def server_specs(workers: int, port: int, redis_url: str, ours_tree: Optional[str] = None,
                 variants: Sequence[str] = ()) -> Dict[str, ServerSpec]:
    common = ["--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--backlog", "2048",
              "--worker-connections", "4096", "--log-level", "warning", "--graceful-timeout", "3",
              "--pythonpath", str(APPS), "--chdir", str(APPS), "--no-control-socket"]
    gunicorn = str(BIN / "gunicorn")
    ours_argv = [gunicorn, "ours:consumer", "-k", "asgiworker.ASGIWorker", *common,
                 "-e", f"ASGIWORKER_CHANNEL_LAYER={redis_url}", "-e", "ASGIWORKER_CHANNEL_PREFIX=fanA"]
    extra = {}
    for variant in variants:  # --variant NAME=DIR: "ours-NAME", our server on the asgiworker in DIR
        name, _, tree = variant.partition("=")
        extra[f"ours-{name}"] = ServerSpec(f"ours-{name}", f"asgiworker from {tree}", "ours", "fanA", ours_argv,
                                           str(Path(tree).resolve()))
    return {
        "ours": ServerSpec("ours", "asgiworker (consumer + our Redis layer)", "ours", "fanA", ours_argv, ours_tree),
        **extra,
        "channels": ServerSpec(
            "channels", "Django Channels + channels_redis on uvicorn-worker", "channels_redis", "fanB",
            [gunicorn, "djbench.asgi:application", "-k", "uvicorn_worker.UvicornWorker", *common,
             "-e", f"FANOUT_REDIS_URL={redis_url}", "-e", "FANOUT_PREFIX=fanB"]),
    }


def http_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.settimeout(3)
            return s.recv(12).startswith(b"HTTP/1.1")
    except OSError:
        return False


# -- one step -------------------------------------------------------------------------------------

@dataclass
class Step:
    label: str
    rate: float
    result: Dict[str, Any] = field(default_factory=dict)


def merged_percentiles(hists: List[Dict[str, int]]) -> Dict[str, float]:
    merged: Dict[int, int] = {}
    for hist in hists:
        for key, count in hist.items():
            merged[int(key)] = merged.get(int(key), 0) + count
    total = sum(merged.values())
    out = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)):
        if not total:
            out[name] = float("nan")
            continue
        target = q * total
        seen = 0
        for key in sorted(merged):
            seen += merged[key]
            if seen >= target:
                out[name] = bin_value(key)
                break
    return out


class Run:
    """One server under test: its Gunicorn, the clients, the ticker."""

    def __init__(self, spec: ServerSpec, port: int, redis: RedisServer, args: argparse.Namespace, logdir: Path,
                 round_: int = 1) -> None:
        self.spec = spec
        self.tag = f"{spec.name}-r{round_}"  # names its log files
        self.port = port
        self.redis = redis
        self.args = args
        self.logdir = logdir
        self.server: Optional[subprocess.Popen] = None
        self.clients: List[subprocess.Popen] = []
        self.ticker: Optional[subprocess.Popen] = None
        self.workers: List[int] = []
        self.distribution: List[int] = []
        self.asgiworker_file = ""

    # set-up

    def start(self) -> None:
        args = self.args
        self.redis.client.flushall()
        env = dict(os.environ)
        # --ours-tree: another copy of asgiworker (e.g. `git archive` of another commit) ahead of
        # the checkout, for our server and its ticker.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.spec.tree, str(ROOT), str(APPS), env.get("PYTHONPATH")]))
        if self.spec.impl == "ours":
            self.asgiworker_file = subprocess.run([PY, "-c", "import asgiworker; print(asgiworker.__file__)"],
                                                  env=env, cwd=str(APPS), capture_output=True, text=True).stdout.strip()
            print(f"  {self.spec.name}: asgiworker from {self.asgiworker_file}", flush=True)
        self.server = spawn(self.spec.argv, log=self.logdir / f"{self.tag}-server.log", env=env, cwd=APPS)
        deadline = time.monotonic() + 30
        while True:
            if self.server.poll() is not None:
                raise BenchError(f"{self.spec.name}: gunicorn exited:\n{self.log_tail()}")
            self.workers = children(self.server.pid)
            if len(self.workers) == args.workers and http_answers(self.port):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{self.spec.name}: not ready in 30 s:\n{self.log_tail()}")
            time.sleep(0.1)
        time.sleep(2.0)  # every worker done booting (Django's setup, our layer's connection)
        self.workers = children(self.server.pid)
        if len(self.workers) != args.workers:
            raise BenchError(f"{self.spec.name}: {len(self.workers)} workers, expected {args.workers}")

        self.ticker = spawn([PY, str(HERE / "fanout_ticker.py"), "--impl", self.spec.impl, "--url", self.redis.url,
                             "--prefix", self.spec.prefix, "--in-flight", str(args.in_flight)],
                            log=self.logdir / f"{self.tag}-ticker.log", pipes=True, env=env,
                            nice=args.load_nice)
        line = read_line(self.ticker, f"{self.spec.name} ticker", 20)
        if line != "READY":
            raise BenchError(f"ticker said {line!r}")

        per = [args.connections // args.clients + (1 if i < args.connections % args.clients else 0)
               for i in range(args.clients)]
        for n in per:
            log = self.logdir / f"{self.tag}-client{len(self.clients)}.log"
            self.clients.append(spawn([PY, str(HERE / "fanout_client.py"), "--port", str(self.port),
                                       "--connections", str(n), "--concurrency", str(args.handshakes)],
                                      log=log, pipes=True, env=env, nice=args.load_nice))
        opened = 0
        for i, client in enumerate(self.clients):
            words = read_line(client, f"client {i}", 120).split()
            if words[0] != "READY":
                raise BenchError(f"client {i} said {words!r}")
            opened += int(words[1])
            if int(words[2]):
                raise BenchError(f"client {i}: {words[2]} connection(s) failed to open")
        if opened != args.connections:
            raise BenchError(f"{opened} connections open, expected {args.connections}")

        key = f"{self.spec.prefix}:group:bench"
        deadline = time.monotonic() + 60
        while self.redis.client.zcard(key) < args.connections:
            if time.monotonic() > deadline:
                raise BenchError(f"group {key} has {self.redis.client.zcard(key)} members, expected {args.connections}")
            time.sleep(0.1)
        by_process: Dict[str, int] = {}
        for member in self.redis.client.zrange(key, 0, -1):
            process = member.split("!", 1)[0]
            by_process[process] = by_process.get(process, 0) + 1
        self.distribution = sorted(by_process.values(), reverse=True)
        print(f"  {self.spec.name}: {opened} connections, group members per worker process "
              f"{'/'.join(map(str, self.distribution))}", flush=True)

    def log_tail(self, lines: int = 30) -> str:
        path = self.logdir / f"{self.tag}-server.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in self.clients + ([self.ticker] if self.ticker else []):
            try:
                tell(proc, "quit")
            except (OSError, ValueError):
                pass
        for proc in self.clients + ([self.ticker] if self.ticker else []):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            kill_group(proc, 1.0)
        self.clients = []
        self.ticker = None
        if self.server is not None:
            kill_group(self.server)
            self.server = None

    # measuring

    def snapshot(self) -> Dict[str, Any]:
        return {
            "t": time.time(),
            "workers": {pid: cpu_seconds(pid) for pid in self.workers},
            "master": cpu_seconds(self.server.pid) if self.server else 0.0,
            "redis": cpu_seconds(self.redis.pid),
            "clients": [cpu_seconds(c.pid) for c in self.clients],
            "workers_sys": sum(sys_seconds(pid) for pid in self.workers),
            "clients_sys": sum(sys_seconds(c.pid) for c in self.clients),
            "ticker": cpu_seconds(self.ticker.pid) if self.ticker else 0.0,
            "machine": machine_busy_seconds(),
        }

    def settle(self) -> int:
        """Wait until nothing more arrives (a server that fell behind may still be sending):
        reports are taken (and dropped) until one finds nothing new. Returns what was dropped."""
        dropped = 0
        deadline = time.monotonic() + 20
        while True:
            got = sum(r["stored"] for r in self.reports(0, 0))
            dropped += got
            if got == 0 or time.monotonic() > deadline:
                return dropped
            time.sleep(0.5)

    def reports(self, s0: float, s1: float) -> List[Dict[str, Any]]:
        for client in self.clients:
            tell(client, f"report {s0:.6f} {s1:.6f}")
        return [json.loads(read_line(client, f"client {i} report", 60)) for i, client in enumerate(self.clients)]

    def step(self, label: str, rate: float, warmup: float, duration: float, profile: bool = False) -> Dict[str, Any]:
        args = self.args
        assert self.ticker is not None
        start = time.time() + 0.3
        w0 = start + warmup
        w1 = w0 + duration
        tell(self.ticker, f"run {rate} {start:.6f} {w1:.6f} {w0:.6f} {w1:.6f}")
        spies: List[subprocess.Popen] = []
        sleep_until(w0)
        if profile:
            spies = self.start_profilers(duration)
        before = self.snapshot()
        sleep_until(w1)
        after = self.snapshot()
        ticker = json.loads(read_line(self.ticker, "ticker", 60 + duration))
        sleep_until(w1 + args.drain)
        reports = self.reports(w0, w1)
        leftover = self.settle()
        for spy in spies:
            spy.wait(timeout=60)
        span = after["t"] - before["t"]
        worker_cpu = sum(after["workers"][p] - before["workers"].get(p, 0.0) for p in after["workers"])
        redis_cpu = after["redis"] - before["redis"]
        client_cpu = [a - b for a, b in zip(after["clients"], before["clients"])]
        ticker_cpu = after["ticker"] - before["ticker"]
        machine_total = max(1e-9, after["machine"][1] - before["machine"][1])
        busy = (after["machine"][0] - before["machine"][0]) / machine_total
        cores = machine_total / span
        irq = after["machine"][2] - before["machine"][2]
        ours = worker_cpu + redis_cpu + sum(client_cpu) + ticker_cpu + after["master"] - before["master"]
        other = after["machine"][0] - before["machine"][0] - irq - ours
        received = sum(r["received_in_window"] for r in reports)
        delivered = sum(r["delivered_sent_in_window"] for r in reports)
        expected = ticker["sent_in_window"] * args.connections
        pct = merged_percentiles([r["hist_first"] for r in reports] + [r["hist_second"] for r in reports])
        p99_first = merged_percentiles([r["hist_first"] for r in reports])["p99"]
        p99_second = merged_percentiles([r["hist_second"] for r in reports])["p99"]
        growing = not (p99_second <= 1.5 * p99_first + 0.05)
        lat_max = max((r["latency_max"] for r in reports), default=0.0)
        lat_mean = sum(r["latency_sum"] for r in reports) / delivered if delivered else float("nan")
        open_now = sum(r["open"] for r in reports)
        workers_now = children(self.server.pid) if self.server else []
        fraction = delivered / expected if expected else 0.0
        ticker_ok = ticker["sent_in_window"] >= 0.97 * rate * duration - 1 and not ticker["errors"]
        keeps_up = fraction >= args.keep_up and pct["p99"] <= args.p99_bound and not growing and ticker_ok \
            and open_now == args.connections
        return {
            "label": label, "rate": rate, "window_s": span,
            "ticks_in_window": ticker["sent_in_window"], "ticks_per_s": ticker["sent_in_window"] / span,
            "expected": expected, "delivered_of_sent_in_window": delivered, "delivered_fraction": fraction,
            "received_in_window": received, "delivered_per_s": received / span,
            "latency_ms": {k: v * 1000 for k, v in pct.items()} | {"mean": lat_mean * 1000, "max": lat_max * 1000,
                                                                  "p99_first_half": p99_first * 1000,
                                                                  "p99_second_half": p99_second * 1000},
            "latency_growing": growing,
            "worker_cpu_s": worker_cpu, "worker_cpu_us_per_msg": worker_cpu / received * 1e6 if received else None,
            "worker_cpu_pct": worker_cpu / span * 100,
            "worker_sys_share": (after["workers_sys"] - before["workers_sys"]) / worker_cpu if worker_cpu else None,
            "client_sys_share": ((after["clients_sys"] - before["clients_sys"]) / sum(client_cpu)
                                 if sum(client_cpu) else None),
            "worker_cpu_pct_each": [round((after["workers"][p] - before["workers"].get(p, 0.0)) / span * 100, 1)
                                    for p in after["workers"]],
            "redis_cpu_s": redis_cpu, "redis_cpu_us_per_msg": redis_cpu / received * 1e6 if received else None,
            "redis_cpu_pct": redis_cpu / span * 100,
            "client_cpu_pct": [c / span * 100 for c in client_cpu],
            "client_cpu_us_per_msg": sum(client_cpu) / received * 1e6 if received else None,
            "ticker_cpu_pct": ticker_cpu / span * 100, "ticker": ticker,
            "machine_busy_pct": busy * 100, "cores": cores,
            "softirq_pct": irq / span * 100,
            "other_cpu_pct": other / span * 100,
            "open_connections": open_now, "closed_by_server": sum(r["closed_by_server"] for r in reports),
            "workers_replaced": sorted(workers_now) != sorted(self.workers),
            "arrived_after_drain": leftover,
            "keeps_up": keeps_up, "ticker_limited": not ticker_ok,
        }

    def start_profilers(self, duration: float) -> List[subprocess.Popen]:
        spy = shutil.which("py-spy") or str(BIN / "py-spy")
        procs = []
        for pid in self.workers:
            out = self.logdir / f"{self.tag}-pyspy-{pid}.txt"
            native = ["--native"] if self.args.profile_native else []
            procs.append(subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(duration)), "-r", "100",
                                           "-f", "raw", "-o", str(out), "--nonblocking", *native],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          preexec_fn=_die_with_parent))
        return procs


def summarize_profile(files: Sequence[Path], top: int = 25) -> Dict[str, Any]:
    """py-spy's raw (collapsed) stacks of every worker, added up: the share of samples each
    function was running in itself (self) and was on the stack for (inclusive)."""
    own: Dict[str, int] = {}
    inclusive: Dict[str, int] = {}
    total = 0
    for path in files:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_frame_name(f) for f in stack.split(";")]
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for name in set(frames):
                inclusive[name] = inclusive.get(name, 0) + n

    def ranked(counts: Dict[str, int]) -> List[Tuple[str, float]]:
        return [(name, round(100.0 * c / total, 1)) for name, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self_pct": ranked(own) if total else [], "inclusive_pct": ranked(inclusive) if total else []}


def _frame_name(frame: str) -> str:
    """'send_text (websockets/protocol.py:321)' -> 'send_text (websockets/protocol.py)', with
    the site-packages or checkout prefix dropped."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0] if ":" in where else where
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def describe(step: Dict[str, Any]) -> str:
    lat = step["latency_ms"]
    verdict = "keeps up" if step["keeps_up"] else ("TICKER-LIMITED" if step["ticker_limited"] else "falls behind")
    return (f"    {step['label']:>7} {step['rate']:>5g}/s: {step['delivered_per_s']:>7,.0f} msg/s "
            f"({step['delivered_fraction'] * 100:5.1f}%), p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} "
            f"max {lat['max']:.0f} ms; workers {step['worker_cpu_us_per_msg'] or 0:.1f} µs/msg "
            f"({step['worker_cpu_pct']:.0f}%, sys {(step['worker_sys_share'] or 0) * 100:.0f}%), redis "
            f"{step['redis_cpu_us_per_msg'] or 0:.2f} µs/msg, clients "
            f"{'/'.join(f'{c:.0f}' for c in step['client_cpu_pct'])}% ({step['client_cpu_us_per_msg'] or 0:.1f} "
            f"µs/msg), ticker {step['ticker_cpu_pct']:.0f}%, other {step['other_cpu_pct']:.0f}%, machine "
            f"{step['machine_busy_pct']:.0f}%: {verdict}")


def measure(run: Run, args: argparse.Namespace) -> Dict[str, Any]:
    steps: List[Dict[str, Any]] = []

    def do(label: str, rate: float) -> Dict[str, Any]:
        step = run.step(label, rate, args.warmup, args.duration)
        print(describe(step), flush=True)
        steps.append(step)
        return step

    def attempt(label: str, rate: float) -> Dict[str, Any]:
        """A failing step gets one more chance: the machine is shared, a noisy second happens."""
        step = do(label, rate)
        if not step["keeps_up"] and args.retry:
            again = do(label + "+", rate)
            if again["keeps_up"]:
                return again
        return step

    # Warm-up: connections, caches, Redis's scripts, the first page faults of every buffer.
    run.step("warmup", args.fixed_rate, 0.0, args.initial_warmup)
    do("fixed", args.fixed_rate)
    best: Optional[Dict[str, Any]] = None
    first_fail: Optional[float] = None
    for rate in args.rates:
        step = attempt("ladder", rate)
        if not step["keeps_up"]:
            first_fail = rate
            break
        best = step
    if first_fail is not None:
        low = best["rate"] if best else 0.0
        high = first_fail
        for _ in range(args.refine):
            mid = float(round((low + high) / 2))
            if mid <= low or mid >= high:
                break
            step = attempt("refine", mid)
            if step["keeps_up"]:
                low, best = mid, step
            else:
                high = mid
        first_fail = high
    profile = None
    prate = args.profile_rate or (best["rate"] if best is not None else None)
    if args.profile and prate:
        print(f"    profiling the workers with py-spy at {prate:g} ticks/s...", flush=True)
        pstep = run.step("profile", prate, args.warmup, args.duration, profile=True)
        print(describe(pstep), flush=True)
        files = sorted(run.logdir.glob(f"{run.tag}-pyspy-*.txt"))
        profile = {"step": pstep, "files": [str(p) for p in files], "summary": summarize_profile(files)}
        summary = profile["summary"]
        print(f"    py-spy: {summary['samples']} samples over the {len(files)} workers; where they were (self):")
        for name, pct in summary["self_pct"][:15]:
            print(f"      {pct:5.1f}%  {name}")
        print("    on the stack (inclusive):")
        for name, pct in summary["inclusive_pct"][:20]:
            print(f"      {pct:5.1f}%  {name}")
    return {"steps": steps, "saturation": best, "first_failing_rate": first_fail,
            "distribution": run.distribution, "profile": profile}


# -- reporting ------------------------------------------------------------------------------------

def fmt(x: Optional[float], spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, spec)


def table(results: Dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"{args.connections} WebSocket clients in one group over {args.workers} workers; one group_send per tick; "
        f"{args.duration:g} s measured per step after {args.warmup:g} s at the rate. delivered/s: messages received "
        f"by the clients during the window; delivered %: of the messages the ticker sent in the window (x "
        f"{args.connections}), received by {args.drain:g} s after it; latency: send timestamp to receipt; CPU per "
        f"delivered message. keeps up: >= {args.keep_up * 100:g}% delivered, p99 <= {args.p99_bound * 1000:g} ms and "
        f"not growing (the p99 of the window's second half at most 1.5 x that of its first half + 50 ms); a step "
        f"that fails is run once more (`+`). CPU % is of one core (the machine has {os.cpu_count()}); other: CPU "
        f"used by processes outside the benchmark (and unattributed kernel time), i.e. noise.",
        "",
        "| server | round | step | ticks/s | delivered/s | delivered % | p50 ms | p99 ms | max ms | worker CPU µs/msg "
        "| redis CPU µs/msg | workers CPU % | redis CPU % | client CPU % | ticker CPU % | softirq % | other CPU % "
        "| keeps up |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, res in results.items():
        for rnd in res["rounds"]:
            for s in rnd["steps"]:
                lat = s["latency_ms"]
                flag = "yes" if s["keeps_up"] else ("**ticker**" if s["ticker_limited"] else "no")
                if s["workers_replaced"]:
                    flag += " **worker replaced**"
                if s["open_connections"] != args.connections:
                    flag += f" **{s['open_connections']} open**"
                lines.append(
                    f"| {name} | {rnd['round']} | {s['label']} | {s['ticks_per_s']:.0f} | {s['delivered_per_s']:,.0f} | "
                    f"{s['delivered_fraction'] * 100:.1f} | {fmt(lat['p50'], '.1f')} | {fmt(lat['p99'], '.1f')} | "
                    f"{fmt(lat['max'], '.0f')} | {fmt(s['worker_cpu_us_per_msg'], '.1f')} | "
                    f"{fmt(s['redis_cpu_us_per_msg'], '.2f')} | {s['worker_cpu_pct']:.0f} | {s['redis_cpu_pct']:.0f} | "
                    f"{'/'.join(f'{c:.0f}' for c in s['client_cpu_pct'])} | {s['ticker_cpu_pct']:.0f} | "
                    f"{s['softirq_pct']:.0f} | {s['other_cpu_pct']:.0f} | {flag} |")
    lines += ["", "Saturation (the highest rate kept up with), each round:", "",
              "| server | round | ticks/s | delivered/s | p50 ms | p99 ms | worker CPU µs/msg | redis CPU µs/msg | "
              "first failing rate | highest rate with p99 < 50 ms | group members per worker |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, res in results.items():
        for rnd in res["rounds"]:
            s = rnd["saturation"]
            dist = "/".join(map(str, rnd["distribution"]))
            under50 = [x for x in rnd["steps"] if x["keeps_up"] and x["latency_ms"]["p99"] < 50]
            best50 = max(under50, key=lambda x: x["delivered_per_s"], default=None)
            b50 = f"{best50['rate']:g} ({best50['delivered_per_s']:,.0f}/s)" if best50 else "none"
            head = f"| {name} | {rnd['round']} |"
            if s is None:
                lines.append(f"{head} none kept up | | | | | | {fmt(rnd['first_failing_rate'], 'g')} | {b50} | {dist} |")
                continue
            lines.append(f"{head} {s['rate']:g} | {s['delivered_per_s']:,.0f} | {s['latency_ms']['p50']:.1f} | "
                         f"{s['latency_ms']['p99']:.1f} | {fmt(s['worker_cpu_us_per_msg'], '.1f')} | "
                         f"{fmt(s['redis_cpu_us_per_msg'], '.2f')} | {fmt(rnd['first_failing_rate'], 'g')} | {b50} | "
                         f"{dist} |")
    for mine in [n for n in results if n.startswith("ours")]:
        if "channels" not in results:
            break
        a, b = results[mine]["saturation"], results["channels"]["saturation"]
        lines.append("")
        if a and b:
            fa, fb = results[mine]["fixed"], results["channels"]["fixed"]
            lines.append(
                f"**{mine} / channels**, best round each: delivery rate at saturation "
                f"**{a['delivered_per_s'] / b['delivered_per_s']:.2f}x** ({a['delivered_per_s']:,.0f} / "
                f"{b['delivered_per_s']:,.0f} msg/s, at {a['rate']:g} / {b['rate']:g} ticks/s), p99 there "
                f"{a['latency_ms']['p99']:.1f} / {b['latency_ms']['p99']:.1f} ms, worker CPU per message "
                f"{fmt(_ratio(a['worker_cpu_us_per_msg'], b['worker_cpu_us_per_msg']), '.2f')}x "
                f"({fmt(a['worker_cpu_us_per_msg'], '.1f')} / {fmt(b['worker_cpu_us_per_msg'], '.1f')} µs). "
                f"At the fixed {args.fixed_rate:g} ticks/s (median of rounds): p50 {fa['p50']:.1f} / {fb['p50']:.1f} ms, "
                f"p99 {fa['p99']:.1f} / {fb['p99']:.1f} ms, worker CPU per message "
                f"{fmt(_ratio(fa['cpu'], fb['cpu']), '.2f')}x ({fa['cpu']:.1f} / {fb['cpu']:.1f} µs).")
        else:
            lines.append(f"{mine} / channels: not computed (a server kept up with no rate)")
    return "\n".join(lines)


def aggregate(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A server's rounds: the best saturation of any round, the fixed-rate step's medians."""
    sats = [r["saturation"] for r in rounds if r["saturation"] is not None]
    fixed = [s for r in rounds for s in r["steps"] if s["label"] == "fixed"]

    def median(values: List[float]) -> float:
        values = sorted(v for v in values if v is not None and not math.isnan(v))
        if not values:
            return float("nan")
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    return {
        "rounds": rounds,
        "saturation": max(sats, key=lambda s: s["delivered_per_s"], default=None),
        "fixed": {"p50": median([s["latency_ms"]["p50"] for s in fixed]),
                  "p99": median([s["latency_ms"]["p99"] for s in fixed]),
                  "cpu": median([s["worker_cpu_us_per_msg"] for s in fixed])},
    }


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None


def versions() -> Dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("gunicorn", "uvicorn", "uvicorn-worker", "channels", "channels-redis", "Django", "redis",
                 "hiredis", "uvloop", "websockets", "msgpack", "asgiworker"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        def git(*argv: str) -> bytes:
            return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True).stdout

        # The commit that last changed asgiworker/ (later commits elsewhere do not count), plus a
        # hash of any uncommitted change to it: what the comparison at the end of the run checks.
        out["asgiworker_commit"] = git("log", "-1", "--format=%h", "--", "asgiworker").decode().strip()
        if git("status", "--porcelain", "asgiworker").strip():
            import hashlib

            digest = hashlib.sha1(git("diff", "HEAD", "--", "asgiworker")).hexdigest()[:10]
            out["asgiworker_commit"] += f" + uncommitted changes to asgiworker/ (diff sha1 {digest})"
        out["head"] = git("rev-parse", "--short", "HEAD").decode().strip()
    except OSError:
        pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="ours,channels")
    parser.add_argument("--rounds", type=int, default=2, help="the whole ladder this many times per server "
                                                                 "(alternating their order); the best round counts")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fixed-rate", type=float, default=2.0,
                        help="ticks/s measured first, for a side-by-side at a load both servers carry")
    parser.add_argument("--rates", default="1,2,5,10,20,30,40,50,60,80,100,150,200,300",
                        help="the ladder: raised until a rate fails (twice in a row)")
    parser.add_argument("--no-retry", dest="retry", action="store_false",
                        help="a failing step is final (by default it is run once more)")
    parser.add_argument("--handshakes", type=int, default=1, help="handshakes in flight per client process (1: one at a time, which spreads them best over the workers)")
    parser.add_argument("--load-nice", type=int, default=-10,
                        help="niceness of the clients and the ticker (negative: they get the CPU first, so "
                             "that their timestamps are not late; 0 to run them like the servers)")
    parser.add_argument("--refine", type=int, default=2, help="bisection steps after the first failing rate")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the step's rate before measuring")
    parser.add_argument("--initial-warmup", type=float, default=3.0)
    parser.add_argument("--drain", type=float, default=1.5, help="seconds after the window for late messages")
    parser.add_argument("--keep-up", type=float, default=0.99, help="fraction that must be delivered")
    parser.add_argument("--p99-bound", type=float, default=1.0,
                        help="seconds: a step whose p99 is above this does not keep up")
    parser.add_argument("--in-flight", type=int, default=4, help="group_sends the ticker has in flight at most")
    parser.add_argument("--profile", action="store_true",
                        help="one more step, at the saturation rate (or --profile-rate), with py-spy on every worker")
    parser.add_argument("--profile-rate", type=float, help="ticks/s of the profiled step")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--quick", action="store_true", help="one round of 2 s steps, no refinement")
    parser.add_argument("--ours-tree", help="a directory holding another asgiworker/ package to run as ours "
                                            "(default: this checkout's working tree)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="one more server, ours-NAME: ours on the asgiworker/ package in DIR (e.g. a git "
                             "archive of another commit); list it in --servers")
    parser.add_argument("--out", help="JSON file (default bench/results/fanout-<time>.json)")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    if args.quick:
        args.duration, args.refine, args.initial_warmup, args.rounds = 2.0, 0, 2.0, 1
    names = [n.strip() for n in args.servers.split(",") if n.strip()]

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results_dir = HERE / "results"
    logdir = results_dir / f"fanout-{stamp}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else results_dir / f"fanout-{stamp}.json"

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    redis = RedisServer(logdir)
    rounds: Dict[str, List[Dict[str, Any]]] = {}
    started = time.time()
    load_start = open("/proc/loadavg").read().split()[:3]
    versions_start = versions()  # (asgiworker's commit and state: again at the end, in case it moved)
    try:
        for rnd in range(1, args.rounds + 1):
            for name in (names if rnd % 2 else names[::-1]):  # the order alternates, round by round
                port = free_port()
                specs = server_specs(args.workers, port, redis.url, args.ours_tree, args.variant)
                if name not in specs:
                    raise BenchError(f"unknown server {name!r}: one of {', '.join(specs)}")
                spec = specs[name]
                print(f"round {rnd}/{args.rounds}, {spec.name}: {spec.label}", flush=True)
                run = Run(spec, port, redis, args, logdir, rnd)
                try:
                    run.start()
                    res = measure(run, args)
                    res["round"] = rnd
                    res["command"] = " ".join(spec.argv)
                    if run.asgiworker_file:
                        res["asgiworker_file"] = run.asgiworker_file
                    res["log_errors"] = [line for line in run.log_tail(200).splitlines()
                                         if "Error" in line or "Traceback" in line][:10]
                    rounds.setdefault(name, []).append(res)
                finally:
                    run.stop()
    except KeyboardInterrupt:
        print("interrupted: partial results", file=sys.stderr)
    except BenchError as exc:
        print(f"fanout: {exc}", file=sys.stderr)
        if not rounds:
            return 1
    finally:
        redis.stop()

    results = {name: aggregate(rounds[name]) for name in names if name in rounds}
    text = table(results, args)
    print()
    print(text)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
            "seconds": time.time() - started, "argv": sys.argv, "args": vars(args), "versions": versions_start,
            "asgiworker_at_end": versions()["asgiworker_commit"],
            "redis_version": redis.version, "cpus": os.cpu_count(), "kernel": platform.release(),
            "loadavg_start": load_start, "loadavg_end": open("/proc/loadavg").read().split()[:3]}
    out.write_text(json.dumps({"meta": meta, "results": results, "table": text}, indent=1, default=str))
    (out.with_suffix(".md")).write_text(text + "\n")
    if meta["asgiworker_at_end"] != versions_start["asgiworker_commit"]:
        print(f"\nWARNING: asgiworker changed during the run: {versions_start['asgiworker_commit']} at the start, "
              f"{meta['asgiworker_at_end']} at the end", file=sys.stderr)
    print(f"\nasgiworker: {versions_start['asgiworker_commit']}")
    print(f"wrote {out} (and .md), logs in {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
