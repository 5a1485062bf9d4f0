"""Benchmark runner: our worker side by side with its peers (stdlib only; started by run.sh).

For every round, workload and server: start the server (one worker process, pinned to CPU 0,
in its own process group), wait until it answers, check that it answers with exactly the bytes
of bench/apps.py, warm up, then measure with wrk pinned to CPU 1 while reading the server's CPU
time from /proc, check it still answers, and kill its process group. Servers are interleaved
within each round and their order rotates from round to round, so slow drifts of the machine
hit everyone alike.

Prints a Markdown table; writes JSON, the table and the server/wrk logs to bench/results/.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent  # run.sh runs us with bench/.venv/bin/python
RESULTS = HERE / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CPU = "0"
WRK_CPU = "1"
BASELINE = "uvicorn-worker"

sys.path.insert(0, str(HERE))
import apps  # noqa: E402  (the same module the servers load: expected bodies come from it)

# -- workloads ---------------------------------------------------------------------------------

@dataclass
class Workload:
    name: str
    app: str                      # callable in apps.py
    connections: int
    kind: str = "wrk"             # how it is measured: a key of MEASURES
    lua: Optional[str] = None     # extra wrk script in bench/lua/
    close: bool = False           # send 'Connection: close'
    servers: Optional[List[str]] = None  # None: every server
    compare_to: Optional[str] = None     # workload whose result for the same server is the baseline
    note: str = ""


WORKLOADS = [
    Workload("hello-64", "hello", 64, note="13-byte 'Hello, world!', 64 keep-alive connections"),
    Workload("consumer-hello-64", "consumer_hello", 64, servers=["asgiworker"], compare_to="hello-64",
             note="the same hello as a channel-style consumer, our worker only, compared to our ASGI 3 hello"),
    Workload("hello-1", "hello", 1, note="one connection: pure per-request latency"),
    Workload("hello-1000", "hello", 1000, note="1000 keep-alive connections"),
    Workload("json-64", "json_1k", 64, note="1 KiB JSON, json.dumps per request"),
    Workload("stream-64", "stream", 64, note="100 x 1 KiB chunks (chunked encoding)"),
    Workload("1mib-16", "big", 16, note="1 MiB body in one send"),
    Workload("post-64k-64", "echo", 64, lua="post64k.lua", note="64 KiB POST echoed back"),
    Workload("hello-close-16", "hello", 16, close=True, note="'Connection: close': a new connection per request"),
    Workload("ws-echo-64", "ws_echo", 64, kind="ws",
             note="WebSocket echo of a 16-byte text message, 64 connections (bench/wsclient.py)"),
    Workload("idle-rss-10k", "hello", 10000, kind="idle-rss",
             note="10,000 idle keep-alive connections after one GET each: server RSS growth per connection"),
]


# -- servers -----------------------------------------------------------------------------------

def gunicorn_args(app: str, port: int, worker_class: str) -> List[str]:
    return [
        str(VENV_BIN / "gunicorn"), f"apps:{app}", "--worker-class", worker_class, "--workers", "1",
        "--bind", f"127.0.0.1:{port}", "--backlog", "2048", "--worker-connections", "4096",
        "--graceful-timeout", "3", "--log-level", "warning",
    ]


def gunicorn_has(option: str) -> bool:
    out = subprocess.run([str(VENV_BIN / "gunicorn"), "--help"], capture_output=True, text=True).stdout
    return option in out


def server_commands() -> Dict[str, object]:
    """name -> function(app, port) -> argv. Peers run as their docs recommend for speed."""
    servers: Dict[str, object] = {
        "asgiworker": lambda app, port: gunicorn_args(app, port, "asgiworker.ASGIWorker"),
        # uvicorn[standard] is installed, so "auto" picks uvloop + httptools.
        "uvicorn-worker": lambda app, port: gunicorn_args(app, port, "uvicorn_worker.UvicornWorker"),
    }
    if gunicorn_has("--asgi-loop"):  # Gunicorn >= 24 has its own asgi worker
        servers["gunicorn-asgi"] = lambda app, port: gunicorn_args(app, port, "asgi") + ["--asgi-loop", "uvloop"]
    else:
        print("note: this Gunicorn has no asgi worker (needs >= 24): gunicorn-asgi skipped", file=sys.stderr)
    servers["granian"] = lambda app, port: [
        str(VENV_BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1",
        "--backlog", "2048", "--log-level", "warning", f"apps:{app}",
    ]
    return servers


def extra_args(name: str, workload: Workload) -> List[str]:
    """Options a workload kind needs on top of the usual command (later options win in Gunicorn)."""
    if workload.kind == "idle-rss":
        # 10,000 connections must all be accepted and stay open while the RSS is read.
        if name == "granian":  # HTTP/1 keep-alive has no idle timeout; the cap is backpressure
            return ["--backpressure", "20000"]
        return ["--worker-connections", "20000", "--keep-alive", "600"]
    return []


def server_argv(name: str, argv_for, workload: Workload, port: int) -> List[str]:
    argv = argv_for(workload.app, port)
    extra = extra_args(name, workload)
    return argv[:-1] + extra + argv[-1:] if name == "granian" else argv + extra  # granian: app last


def _die_with_parent() -> None:
    # If this runner is killed outright (SIGKILL), the server's master gets SIGKILL too. Its
    # worker may outlive it (uvicorn-worker's does not watch its parent): run.sh's EXIT trap
    # then kills the whole group.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def note_running(servers: List["Server"]) -> None:
    """Tell run.sh which process groups are running, for its last-resort cleanup."""
    path = os.environ.get("BENCH_PGID_FILE")
    if path:
        with open(path, "w") as f:
            f.write("".join(f"{s.pgid}\n" for s in servers))


class Server:
    """One server process group, started in its own session and always killed as a group."""

    def __init__(self, name: str, argv: List[str], port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *argv], cwd=HERE, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )
        self.pgid = self.proc.pid  # taskset execs the server: same pid, leader of a new group

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> List[int]:
        return sorted(group_stats(self.pgid))

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.proc.poll()
                if not group_stats(self.pgid):
                    break
                time.sleep(0.05)
            else:
                continue
            break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


# -- /proc -------------------------------------------------------------------------------------

def group_stats(pgid: int) -> Dict[int, List[str]]:
    """pid -> the fields after 'comm' of /proc/<pid>/stat, for every live process of the group."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # rest[0] is field 3 (state): pgrp is field 5, utime..cstime 14..17, rss 24.
        if int(rest[2]) == pgid and rest[0] != "Z":
            found[int(entry)] = rest
    return found


def group_cpu_seconds(pgid: int) -> float:
    """user+sys of the whole group (with reaped children's, should a worker die meanwhile)."""
    ticks = sum(int(r[11]) + int(r[12]) + int(r[13]) + int(r[14]) for r in group_stats(pgid).values())
    return ticks / CLK_TCK


def measure_rss(pgid: int) -> float:
    """RSS of the group in MiB. (The future idle-connection workload will report this.)"""
    return sum(int(r[21]) for r in group_stats(pgid).values()) * PAGE / 2**20


NETSTAT_KEYS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts", "SyncookiesSent")


def tcp_counters() -> Dict[str, int]:
    """System-wide TCP trouble counters (accept queue overflows, retransmitted SYNs...)."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
    return {k: values.get(k, 0) for k in NETSTAT_KEYS}


def cpu_busy_seconds(cpu: str) -> float:
    """Time CPU `cpu` spent on anything but idle/iowait, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return 0.0


# -- checks ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchError(Exception):
    pass


def curl(workload: Workload, url: str, out: Path, post_file: Path, max_time: float = 5.0):
    """(http status, body bytes) of one request as the workload makes it, or (None, b'') if none."""
    argv = ["curl", "-sS", "--max-time", str(max_time), "-o", str(out), "-w", "%{http_code}"]
    if workload.lua == "post64k.lua":
        argv += ["--data-binary", f"@{post_file}", "-H", "Content-Type: application/octet-stream"]
    if workload.close:
        argv += ["-H", "Connection: close"]
    result = subprocess.run(argv + [url], capture_output=True, text=True)
    if result.returncode != 0:
        return None, b""
    return int(result.stdout.strip() or 0), out.read_bytes()


def check_body(server: Server, workload: Workload, url: str, tmp: Path, post_file: Path, when: str) -> None:
    status, body = curl(workload, url, tmp / "body", post_file)
    expected = apps.expected_body(workload.app)
    if status == 200 and body == expected:
        return
    first_diff = next((i for i, (a, b) in enumerate(zip(body, expected)) if a != b), min(len(body), len(expected)))
    raise BenchError(
        f"{server.name} answered {workload.name} ({when}) with status {status} and {len(body)} bytes "
        f"(sha256 {hashlib.sha256(body).hexdigest()[:16]}), expected 200 and {len(expected)} bytes "
        f"(sha256 {hashlib.sha256(expected).hexdigest()[:16]}); first difference at byte {first_diff}.\n"
        f"--- {server.log_path} (tail) ---\n{server.log_tail()}"
    )


def wait_ready(server: Server, workload: Workload, url: str, tmp: Path, post_file: Path, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not server.alive():
            raise BenchError(f"{server.name} exited (code {server.proc.returncode}) before answering.\n"
                             f"--- {server.log_path} (tail) ---\n{server.log_tail()}")
        status, _ = curl(workload, url, tmp / "ready", post_file, max_time=2.0)
        if status is not None:
            return time.monotonic() - start
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not answer within {timeout:.0f}s.\n"
                     f"--- {server.log_path} (tail) ---\n{server.log_tail()}")


# -- wrk ---------------------------------------------------------------------------------------

def wrk_script(workload: Workload, tmp: Path) -> Path:
    path = tmp / f"{workload.name}.lua"
    parts = []
    if workload.lua:
        parts.append((HERE / "lua" / workload.lua).read_text())
    parts.append((HERE / "lua" / "report.lua").read_text())
    path.write_text("\n".join(parts))
    return path


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(workload: Workload, url: str, seconds: int, script: Path, timeout_s: int = 5):
    argv = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{workload.connections}", f"-d{seconds}s",
            f"--timeout={timeout_s}s", "--latency", "-s", str(script)]
    if workload.close:
        argv += ["-H", "Connection: close"]
    result = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60)
    parsed = None
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            parsed = json.loads(line[len("BENCH_RESULT "):])
    if result.returncode != 0 or parsed is None:
        raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return parsed, result.stdout + result.stderr


# -- one run -----------------------------------------------------------------------------------

def error_lines(log_text: str) -> List[str]:
    """Log lines that say something went wrong (servers log at 'warning', so normally none)."""
    marks = ("Traceback", "ERROR", "CRITICAL", "Exception", "WORKER TIMEOUT", "panicked")
    return [line for line in log_text.splitlines() if any(m in line for m in marks)]


def measure_wrk(server: Server, workload: Workload, url: str, args, tmp: Path, logs: Path, tag: str) -> dict:
    """The "wrk" kind: warm up, then one wrk run with the server's CPU time read around it."""
    script = wrk_script(workload, tmp)
    if args.warmup:
        run_wrk(workload, url, args.warmup, script)
    cpu_before, wrk_cpu_before = group_cpu_seconds(server.pgid), children_cpu_seconds()
    cpu0_before, cpu1_before, t0 = cpu_busy_seconds(SERVER_CPU), cpu_busy_seconds(WRK_CPU), time.monotonic()
    tcp_before = tcp_counters()
    wrk, wrk_text = run_wrk(workload, url, args.duration, script)
    cpu_after, wrk_cpu_after = group_cpu_seconds(server.pgid), children_cpu_seconds()
    cpu0_after, cpu1_after, t1 = cpu_busy_seconds(SERVER_CPU), cpu_busy_seconds(WRK_CPU), time.monotonic()
    tcp_after = tcp_counters()
    (logs / f"{tag}.wrk.txt").write_text(wrk_text)
    server_cpu = cpu_after - cpu_before
    wrk_cpu = wrk_cpu_after - wrk_cpu_before
    elapsed = t1 - t0
    requests = wrk["requests"]
    return {
        "requests": requests,
        "rps": requests / (wrk["duration_us"] / 1e6),
        "lat_p50_ms": wrk["lat_p50_us"] / 1000, "lat_p90_ms": wrk["lat_p90_us"] / 1000,
        "lat_p99_ms": wrk["lat_p99_us"] / 1000, "lat_max_ms": wrk["lat_max_us"] / 1000,
        "cpu_us_per_req": server_cpu / requests * 1e6 if requests else None,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_pct": round(100 * server_cpu / elapsed, 1),
        "wrk_cpu_pct": round(100 * wrk_cpu / elapsed, 1),
        # Time of CPU 0 (1) not spent by the server (wrk): other processes, e.g. parallel test
        # suites, and the kernel's loopback work done outside either process.
        "cpu0_foreign_pct": round(max(0.0, 100 * ((cpu0_after - cpu0_before) - server_cpu) / elapsed), 1),
        "cpu1_foreign_pct": round(max(0.0, 100 * ((cpu1_after - cpu1_before) - wrk_cpu) / elapsed), 1),
        "socket_errors": wrk["connect"] + wrk["read"] + wrk["write"] + wrk["timeout"],
        "non_2xx": wrk["status"],
        "wrk_errors": {k: wrk[k] for k in ("connect", "read", "write", "timeout", "status")},
        "mib_per_s": wrk["bytes"] / (wrk["duration_us"] / 1e6) / 2**20,
        # System-wide (other processes count too): non-zero ListenOverflows/TCPSynRetrans during a
        # run explain latency spikes of ~1 s (a dropped SYN or handshake is retried after 1 s).
        "tcp_counters": {k: tcp_after[k] - tcp_before[k] for k in NETSTAT_KEYS},
    }


# Workload.kind -> how it is measured. To add later:
#   "ws"       - WebSocket echo: a stdlib-asyncio client (bench/wsclient.py) on CPU 1 sending N
#                messages per connection; same fields as wrk (rps, latencies, cpu_us_per_req).
#   "idle-rss" - open N idle keep-alive connections (one request each), then report
#                measure_rss(server.pgid) minus the RSS before, per connection.
# summarize() and markdown() read the wrk fields (rps, latencies, cpu_us_per_req, errors): a new
# kind returns those it has and gets its own table section for the rest.
def proc_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError):
        return 0.0


class Client:
    """A Python load client pinned to CPU 1, talking to the runner line by line on stdout."""

    def __init__(self, script: str, argv: List[str], log: Path, limit_s: float) -> None:
        self.log_path = log
        self.err = open(log, "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", WRK_CPU, sys.executable, str(HERE / script), *argv], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.err, text=True, preexec_fn=_die_with_parent)
        self.deadline = time.monotonic() + limit_s
        import threading
        self.timer = threading.Timer(limit_s, self.proc.kill)
        self.timer.daemon = True
        self.timer.start()
        self.lines: List[str] = []

    def expect(self, prefix: str) -> str:
        """The next stdout line starting with prefix (its rest), or BenchError."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.close()
                raise BenchError(f"{self.log_path.name}: the client ended without '{prefix}':\n"
                                 + "".join(self.lines[-10:]) + self.log_path.read_text(errors="replace")[-3000:])
            self.lines.append(line)
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close(self) -> None:
        self.timer.cancel()
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def measure_ws(server: Server, workload: Workload, url: str, args, tmp: Path, logs: Path, tag: str) -> dict:
    """The "ws" kind: bench/wsclient.py (one asyncio process on CPU 1) echoes 16-byte text
    messages over N connections; the server's CPU time is read between its GO and its result."""
    client = Client("wsclient.py", ["--port", str(server.port), "--connections", str(workload.connections),
                                    "--warmup", str(args.warmup), "--duration", str(args.duration)],
                    logs / f"{tag}.client.txt", args.warmup + args.duration + 60)
    try:
        client.expect("GO")
        cpu_before, client_cpu_before = group_cpu_seconds(server.pgid), proc_cpu_seconds(client.proc.pid)
        cpu0_before, cpu1_before, t0 = cpu_busy_seconds(SERVER_CPU), cpu_busy_seconds(WRK_CPU), time.monotonic()
        tcp_before = tcp_counters()
        res = json.loads(client.expect("BENCH_RESULT "))
        cpu_after, client_cpu_after = group_cpu_seconds(server.pgid), proc_cpu_seconds(client.proc.pid)
        cpu0_after, cpu1_after, t1 = cpu_busy_seconds(SERVER_CPU), cpu_busy_seconds(WRK_CPU), time.monotonic()
        tcp_after = tcp_counters()
    finally:
        client.close()
    (logs / f"{tag}.client.txt").write_text("".join(client.lines) + client.log_path.read_text(errors="replace"))
    server_cpu, client_cpu, elapsed = cpu_after - cpu_before, client_cpu_after - client_cpu_before, t1 - t0
    msgs = res["messages"]
    return {
        "requests": msgs,
        "rps": msgs / (res["duration_us"] / 1e6),
        "lat_p50_ms": res["lat_p50_us"] / 1000, "lat_p90_ms": res["lat_p90_us"] / 1000,
        "lat_p99_ms": res["lat_p99_us"] / 1000, "lat_max_ms": res["lat_max_us"] / 1000,
        "cpu_us_per_req": server_cpu / msgs * 1e6 if msgs else None,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_pct": round(100 * server_cpu / elapsed, 1),
        "wrk_cpu_pct": round(100 * client_cpu / elapsed, 1),  # here: wsclient.py's CPU
        "cpu0_foreign_pct": round(max(0.0, 100 * ((cpu0_after - cpu0_before) - server_cpu) / elapsed), 1),
        "cpu1_foreign_pct": round(max(0.0, 100 * ((cpu1_after - cpu1_before) - client_cpu) / elapsed), 1),
        "socket_errors": res["closed"], "non_2xx": res["wrong_echo"],
        "wrk_errors": {"closed": res["closed"], "wrong_echo": res["wrong_echo"]},
        "tcp_counters": {k: tcp_after[k] - tcp_before[k] for k in NETSTAT_KEYS},
    }


def measure_idle_rss(server: Server, workload: Workload, url: str, args, tmp: Path, logs: Path, tag: str) -> dict:
    """The "idle-rss" kind: bench/idleconns.py opens N keep-alive connections, one GET each, and
    holds them open; the growth of the server group's RSS, per connection, is the figure."""
    time.sleep(0.5)
    rss_before = measure_rss(server.pgid)
    client = Client("idleconns.py", ["--port", str(server.port), "--connections", str(workload.connections)],
                    logs / f"{tag}.client.txt", 180)
    try:
        opened = json.loads(client.expect("OPEN "))
        time.sleep(1.0)  # let the server settle (the last responses were read already)
        rss_after = measure_rss(server.pgid)
        client.send("check\n")
        res = json.loads(client.expect("BENCH_RESULT "))
    finally:
        client.close()
    (logs / f"{tag}.client.txt").write_text("".join(client.lines) + client.log_path.read_text(errors="replace"))
    still_open = res["open"] - res["closed_by_server"]
    return {
        "open": res["open"], "failed": res["failed"], "closed_by_server": res["closed_by_server"],
        "failures": res["failures"], "open_s": opened.get("open_s"),
        "rss_before_mib": round(rss_before, 2), "rss_after_mib": round(rss_after, 2),
        "kib_per_conn": (rss_after - rss_before) * 1024 / res["open"] if res["open"] else None,
        "still_open": still_open,
        "socket_errors": res["failed"] + res["closed_by_server"], "non_2xx": 0,
    }


MEASURES = {"wrk": measure_wrk, "ws": measure_ws, "idle-rss": measure_idle_rss}


def one_run(name: str, argv_for, workload: Workload, rnd: int, args, tmp: Path, post_file: Path, logs: Path,
            current: list) -> dict:
    """Start the server, check it, measure, check it again, kill it: one row of the JSON."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tag = f"r{rnd}-{workload.name}-{name}"
    server = Server(name, server_argv(name, argv_for, workload, port), port, logs / f"{tag}.server.log")
    current.append(server)
    note_running(current)
    try:
        boot_s = wait_ready(server, workload, url, tmp, post_file)
        check_body(server, workload, url, tmp, post_file, "before the run")
        pids_before = server.pids()
        result = MEASURES[workload.kind](server, workload, url, args, tmp, logs, tag)
        pids_after = server.pids()
        rss = measure_rss(server.pgid)
        post_ok = True
        try:
            check_body(server, workload, url, tmp, post_file, "after the run")
        except BenchError as exc:
            post_ok = False
            print(f"  !! {exc}", file=sys.stderr)
    finally:
        server.kill()
        current.remove(server)
        note_running(current)
    return {
        "round": rnd, "workload": workload.name, "server": name, "port": port, "boot_s": round(boot_s, 3),
        **result,
        "rss_mib_after": round(rss, 1),
        "pids_before": pids_before, "pids_after": pids_after,
        # A worker that crashed or was killed for a timeout is replaced by the master.
        "worker_replaced": pids_before != pids_after,
        "post_check_ok": post_ok,
        "log_problems": error_lines(server.log_path.read_text(errors="replace"))[:20],
    }


# -- report ------------------------------------------------------------------------------------

def summarize(runs: List[dict], workloads: List[Workload], servers: List[str]) -> List[dict]:
    rows = []
    for w in workloads:
        for s in servers:
            mine = [r for r in runs if r["workload"] == w.name and r["server"] == s]
            if not mine:
                continue
            med = lambda key, mine=mine: statistics.median(r[key] for r in mine if r[key] is not None)  # noqa: E731
            common = {
                "socket_errors": sum(r["socket_errors"] for r in mine),
                "non_2xx": sum(r["non_2xx"] for r in mine),
                "worker_replaced": sum(r["worker_replaced"] for r in mine),
                "post_check_failed": sum(not r["post_check_ok"] for r in mine),
                "log_problems": sum(len(r["log_problems"]) for r in mine),
            }
            if w.kind == "idle-rss":
                per = [r["kib_per_conn"] for r in mine if r["kib_per_conn"] is not None]
                rows.append({
                    "workload": w.name, "server": s, "kind": w.kind, "rounds": len(mine),
                    "kib_per_conn": statistics.median(per) if per else None,
                    "kib_per_conn_best": min(per) if per else None,
                    "rss_before_mib": med("rss_before_mib"), "rss_after_mib": med("rss_after_mib"),
                    "open_min": min(r["open"] for r in mine), "still_open_min": min(r["still_open"] for r in mine),
                    "connections": w.connections, **common,
                })
                continue
            rows.append({"kind": w.kind,
                "workload": w.name, "server": s, "rounds": len(mine),
                "rps_median": med("rps"), "rps_best": max(r["rps"] for r in mine),
                "lat_p50_ms": med("lat_p50_ms"), "lat_p99_ms": med("lat_p99_ms"),
                "cpu_us_per_req": med("cpu_us_per_req"),
                "socket_errors": sum(r["socket_errors"] for r in mine),
                "non_2xx": sum(r["non_2xx"] for r in mine),
                "worker_replaced": sum(r["worker_replaced"] for r in mine),
                "post_check_failed": sum(not r["post_check_ok"] for r in mine),
                "log_problems": sum(len(r["log_problems"]) for r in mine),
                "server_cpu_pct": med("server_cpu_pct"),
                "cpu0_foreign_pct": med("cpu0_foreign_pct"),
                "cpu1_foreign_pct": med("cpu1_foreign_pct"),
                "client_cpu_pct": med("wrk_cpu_pct"),
            })
    by_key = {(r["workload"], r["server"]): r for r in rows}
    for r in rows:
        base = by_key.get((r["workload"], BASELINE))
        if r["kind"] == "idle-rss":
            r["rss_vs_baseline"] = (r["kib_per_conn"] / base["kib_per_conn"]
                                    if base and base["kib_per_conn"] and r["kib_per_conn"] is not None else None)
            continue
        r["rps_vs_baseline"] = r["rps_median"] / base["rps_median"] if base else None
        r["cpu_vs_baseline"] = r["cpu_us_per_req"] / base["cpu_us_per_req"] if base and base["cpu_us_per_req"] else None
    for w in workloads:
        if not w.compare_to:
            continue
        for r in rows:
            other = by_key.get((w.compare_to, r["server"]))
            if r["workload"] == w.name and other:
                r["compared_to"] = w.compare_to
                r["rps_vs_compared"] = r["rps_median"] / other["rps_median"]
                r["cpu_vs_compared"] = r["cpu_us_per_req"] / other["cpu_us_per_req"]
    return rows


def markdown(rows: List[dict], meta: dict) -> str:
    def ratio(x):
        return "" if x is None else f"{x:.2f}x"

    out = [
        f"Rounds: {meta['rounds']} x {meta['duration_s']} s per run (after {meta['warmup_s']} s warm-up); "
        f"server on CPU {SERVER_CPU}, wrk (1 thread) on CPU {WRK_CPU}. Ratios are to {BASELINE} "
        "(req/s: higher is better; CPU per request: lower is better).",
        "",
        "| workload | server | req/s median | req/s best | req/s vs uvicorn-worker | p50 ms | p99 ms "
        "| CPU µs/req | CPU/req vs uvicorn-worker | server CPU % | errors (socket / non-2xx) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    def flagged(r):
        flags = []
        if r["worker_replaced"]:
            flags.append(f"worker replaced in {r['worker_replaced']} run(s)")
        if r["post_check_failed"]:
            flags.append("wrong answer after the run")
        if r["log_problems"]:
            flags.append(f"{r['log_problems']} error line(s) in log")
        return " **" + "; ".join(flags) + "**" if flags else ""

    ws_rows = [r for r in rows if r["kind"] == "ws"]
    rss_rows = [r for r in rows if r["kind"] == "idle-rss"]
    rows = [r for r in rows if r["kind"] == "wrk"]
    if not rows:
        out = out[:1]  # no HTTP table
    for r in rows:
        flags = []
        if r["worker_replaced"]:
            flags.append(f"worker replaced in {r['worker_replaced']} run(s)")
        if r["post_check_failed"]:
            flags.append("wrong answer after the run")
        if r["log_problems"]:
            flags.append(f"{r['log_problems']} error line(s) in log")
        errors = f"{r['socket_errors']} / {r['non_2xx']}" + (" **" + "; ".join(flags) + "**" if flags else "")
        cpu = f"{r['cpu_us_per_req']:.1f}" if r["cpu_us_per_req"] is not None else "?"
        out.append(
            f"| {r['workload']} | {r['server']} | {r['rps_median']:,.0f} | {r['rps_best']:,.0f} "
            f"| {ratio(r['rps_vs_baseline'])} | {r['lat_p50_ms']:.2f} | {r['lat_p99_ms']:.2f} "
            f"| {cpu} | {ratio(r['cpu_vs_baseline'])} | {r['server_cpu_pct']:.0f} | {errors} |"
        )
    if ws_rows:
        out += ["", "WebSocket echo (bench/wsclient.py, one asyncio process on CPU 1; a message = a 16-byte text "
                    "sent and its echo received; latency = that round trip; errors = connections lost / wrong echoes; "
                    "client CPU % shows whether the client, not the server, was the limit):", "",
                "| workload | server | msgs/s median | msgs/s best | msgs/s vs uvicorn-worker | p50 ms | p99 ms "
                "| CPU µs/msg | CPU/msg vs uvicorn-worker | server CPU % | client CPU % | errors (lost / wrong echo) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in ws_rows:
            cpu = f"{r['cpu_us_per_req']:.1f}" if r["cpu_us_per_req"] is not None else "?"
            out.append(
                f"| {r['workload']} | {r['server']} | {r['rps_median']:,.0f} | {r['rps_best']:,.0f} "
                f"| {ratio(r['rps_vs_baseline'])} | {r['lat_p50_ms']:.2f} | {r['lat_p99_ms']:.2f} "
                f"| {cpu} | {ratio(r['cpu_vs_baseline'])} | {r['server_cpu_pct']:.0f} | {r['client_cpu_pct']:.0f} "
                f"| {r['socket_errors']} / {r['non_2xx']}{flagged(r)} |")
    if rss_rows:
        out += ["", "Idle connections (bench/idleconns.py: each sends one `GET /`, reads the answer and stays open; "
                    "RSS of the server's whole process group before and after, median over rounds; "
                    "gunicorn-based servers run with `--worker-connections 20000 --keep-alive 600`, granian with "
                    "`--backpressure 20000`; lower is better):", "",
                "| workload | server | KiB/conn median | KiB/conn best | vs uvicorn-worker | RSS before MiB | RSS after MiB "
                "| open (min) | still open at the end (min) | errors (failed + closed) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rss_rows:
            kib = "?" if r["kib_per_conn"] is None else f"{r['kib_per_conn']:.2f}"
            best = "?" if r["kib_per_conn_best"] is None else f"{r['kib_per_conn_best']:.2f}"
            out.append(
                f"| {r['workload']} | {r['server']} | {kib} | {best} | {ratio(r['rss_vs_baseline'])} "
                f"| {r['rss_before_mib']:.1f} | {r['rss_after_mib']:.1f} | {r['open_min']:,} / {r['connections']:,} "
                f"| {r['still_open_min']:,} | {r['socket_errors']}{flagged(r)} |")
    for r in rows:
        if "compared_to" in r:
            out += ["", f"{r['workload']} ({r['server']}) vs {r['compared_to']} ({r['server']}): "
                        f"req/s {r['rps_vs_compared']:.2f}x, CPU per request {r['cpu_vs_compared']:.2f}x."]
    rows = rows + ws_rows
    if rows:
        f0 = [r["cpu0_foreign_pct"] for r in rows]
        f1 = [r["cpu1_foreign_pct"] for r in rows]
        out += ["", f"Noise: other processes (and kernel work outside server and wrk) used a median {statistics.median(f0):.0f}% "
                    f"(max {max(f0):.0f}%) of CPU {SERVER_CPU} and {statistics.median(f1):.0f}% (max {max(f1):.0f}%) of CPU {WRK_CPU} "
                    "during the measurements. Server CPU % under 100 means the server was not the bottleneck "
                    "(wrk, the kernel or the noise was). CPU per request is the steadier figure."]
    return "\n".join(out)


def versions() -> dict:
    out = {"python": platform.python_version(), "kernel": platform.release(), "cpus": os.cpu_count()}
    for dist in ("asgiworker", "gunicorn", "gunicorn_h1c", "uvicorn", "uvicorn-worker", "granian", "uvloop", "httptools"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].strip()
    try:
        head = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "asgiworker"],
                               capture_output=True, text=True).stdout.strip()
        out["asgiworker_commit"] = head + ("+dirty" if dirty else "")
    except OSError:
        pass
    return out


# -- main --------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s runs (default: 3 rounds of 5 s)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--duration", type=int, help="seconds measured per run (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per run (default 1)")
    parser.add_argument("--only", action="append", default=[],
                        help="workload(s) to run, comma-separated or repeated: " + ", ".join(w.name for w in WORKLOADS))
    parser.add_argument("--servers", default="", help="server(s) to run, comma-separated (default: all)")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.warmup = 1 if args.warmup is None else args.warmup

    commands = server_commands()
    only = {n for item in args.only for n in item.split(",") if n}
    unknown = only - {w.name for w in WORKLOADS}
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; known: {[w.name for w in WORKLOADS]}")
    workloads = [w for w in WORKLOADS if not only or w.name in only]
    # A comparison needs its baseline workload measured in the same rounds.
    for w in list(workloads):
        if w.compare_to and w.compare_to not in {x.name for x in workloads}:
            workloads.insert(workloads.index(w), next(x for x in WORKLOADS if x.name == w.compare_to))
    wanted = [s for s in args.servers.split(",") if s] or list(commands)
    missing = set(wanted) - set(commands)
    if missing:
        parser.error(f"unknown server(s) {sorted(missing)}; known: {list(commands)}")
    servers = [s for s in commands if s in wanted]

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    meta = {"started": stamp, "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
            "versions": versions(), "loadavg_start": open("/proc/loadavg").read().split()[:3],
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "commands": {s: commands[s]("APP", 0) for s in servers},
            "extra_args": {w.kind: {s: extra_args(s, w) for s in servers} for w in workloads},
            "workloads": {w.name: {"app": w.app, "connections": w.connections, "close": w.close,
                                   "lua": w.lua, "note": w.note} for w in workloads}}
    if meta["nofile"] < 2 * 1000 + 100:
        print(f"warning: ulimit -n is {meta['nofile']}: too low for 1000 connections", file=sys.stderr)

    plan = []
    for rnd in range(1, args.rounds + 1):
        for w in workloads:
            names = [s for s in servers if w.servers is None or s in w.servers]
            shift = (rnd - 1) % len(names)
            plan += [(rnd, w, s) for s in names[shift:] + names[:shift]]
    per_run = args.warmup + args.duration + 2
    print(f"{len(plan)} runs, about {len(plan) * per_run / 60:.0f} min. Logs: {logs}", file=sys.stderr)

    current: List[Server] = []
    runs: List[dict] = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    status = 0
    with tempfile.TemporaryDirectory(prefix="asgibench-") as tmpdir:
        tmp = Path(tmpdir)
        post_file = tmp / "post.bin"
        post_file.write_bytes(apps.POST_BODY)
        try:
            for i, (rnd, w, s) in enumerate(plan, 1):
                run = one_run(s, commands[s], w, rnd, args, tmp, post_file, logs, current)
                runs.append(run)
                note = "" if not (run["socket_errors"] or run["non_2xx"] or run["worker_replaced"]
                                  or run["log_problems"] or not run["post_check_ok"]) else "  <-- problems, see logs"
                if w.kind == "idle-rss":
                    print(f"[{i}/{len(plan)}] round {rnd} {w.name:<18} {s:<15} {run['kib_per_conn'] or 0:6.2f} KiB/conn "
                          f"RSS {run['rss_before_mib']:.1f} -> {run['rss_after_mib']:.1f} MiB, open {run['open']}, "
                          f"still open {run['still_open']}, failed {run['failed']}{note}", file=sys.stderr)
                    continue
                print(f"[{i}/{len(plan)}] round {rnd} {w.name:<18} {s:<15} {run['rps']:>9,.0f} req/s "
                      f"p99 {run['lat_p99_ms']:7.2f} ms  cpu {run['cpu_us_per_req'] or 0:6.1f} µs/req  "
                      f"server {run['server_cpu_pct']:3.0f}% wrk {run['wrk_cpu_pct']:3.0f}% "
                      f"(foreign cpu0 {run['cpu0_foreign_pct']:.0f}% cpu1 {run['cpu1_foreign_pct']:.0f}%){note}",
                      file=sys.stderr)
        except BenchError as exc:
            print(f"\nBENCHMARK ABORTED: {exc}", file=sys.stderr)
            status = 2
        except KeyboardInterrupt:
            print("\ninterrupted: partial results follow", file=sys.stderr)
            status = 130
        finally:
            # A second Ctrl-C (or run.sh's SIGTERM) must not cut the cleanup short.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            for server in list(current):
                server.kill()
            note_running([])

    rows = summarize(runs, workloads, servers)
    meta["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    table = markdown(rows, meta) if rows else "(no results)"
    (RESULTS / f"{stamp}.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=1))
    (RESULTS / f"{stamp}.md").write_text(table + "\n")
    print(table)
    print(f"\nJSON: {RESULTS / (stamp + '.json')}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
