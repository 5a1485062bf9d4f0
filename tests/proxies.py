"""nginx and HAProxy, Debian's, started by the tests on loopback ports in front of Gunicorn.

    site = render_nginx_site(upstream="unix:/tmp/x.sock", port=free_port(), tls_port=free_port(), ...)
    proxy = Nginx(site)          # nginx -t, then nginx in the foreground; waits for its ports
    proxy.error_log()            # for assertion messages
    proxy.stop()

The site file is examples/deploy/nginx.conf itself, the one people copy: rendering changes only
its listen ports, certificate paths and upstream server line (each must be found exactly once,
so that the test notices when the file changes shape), optionally drops the lines marked
``# keep-alive`` (nginx's default upstream handling) and puts extra locations where the file
says "Your own locations go here". The same for examples/deploy/haproxy.cfg. A missing nginx or
haproxy is installed from Debian (tests/debian.py); where that is impossible the caller skips.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tests.debian import ensure_debian_binary

ROOT = Path(__file__).resolve().parent.parent
NGINX_SITE = ROOT / "examples" / "deploy" / "nginx.conf"
HAPROXY_CFG = ROOT / "examples" / "deploy" / "haproxy.cfg"
KEEPALIVE_MARK = "# keep-alive"
LOCATIONS_MARK = "# Your own locations go here"


def _replace_once(text: str, old: str, new: str, what: str) -> str:
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"{what}: expected {old!r} once in the example file, found it {count} times")
    return text.replace(old, new)


def render_nginx_site(*, upstream: str, port: int, tls_port: int, cert: Path, key: Path,
                      keepalive: bool = True, locations: str = "",
                      replace: Sequence["tuple[str, str]"] = (), source: Path = NGINX_SITE) -> str:
    """examples/deploy/nginx.conf for this test: ``upstream`` is ``unix:PATH`` or ``HOST:PORT``;
    ``keepalive=False`` drops the lines marked ``# keep-alive``; ``replace`` (old, new) pairs are
    for the tests that vary a timeout on purpose."""
    text = source.read_text()
    text = _replace_once(text, "server unix:/run/asgiworker.sock;", f"server {upstream};", "upstream")
    text = _replace_once(text, "listen 80;", f"listen 127.0.0.1:{port};", "listen")
    text = _replace_once(text, "listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;", "listen ssl")
    text = _replace_once(text, "/etc/ssl/certs/ssl-cert-snakeoil.pem", str(cert), "certificate")
    text = _replace_once(text, "/etc/ssl/private/ssl-cert-snakeoil.key", str(key), "key")
    if not keepalive:
        lines = [line for line in text.splitlines() if KEEPALIVE_MARK not in line]
        text = "\n".join(lines) + "\n"
    if locations:
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if LOCATIONS_MARK in line)
        lines[at:at] = ["    " + line for line in locations.splitlines()]
        text = "\n".join(lines) + "\n"
    for old, new in replace:
        text = _replace_once(text, old, new, "replacement")
    return text


def render_haproxy_cfg(*, port: int, server: str, source: Path = HAPROXY_CFG) -> str:
    """examples/deploy/haproxy.cfg for this test: its bind port, its server's address (and the
    log, to stderr instead of syslog)."""
    text = source.read_text()
    text = _replace_once(text, "bind :80", f"bind 127.0.0.1:{port}", "bind")
    text = _replace_once(text, "server app1 127.0.0.1:8000", f"server app1 {server}", "server")
    text = _replace_once(text, "log /dev/log local0", "log stderr format raw local0", "log")
    # Debian's defaults run HAProxy chrooted as its own user; a test runs it as whoever it is.
    text = _replace_once(text, "    chroot /var/lib/haproxy\n", "", "chroot")
    text = _replace_once(text, "    user haproxy\n    group haproxy\n", "", "user")
    return text


def make_certificate(directory: Path) -> "tuple[Path, Path]":
    """A self-signed certificate for 127.0.0.1 (the client does not verify it: nginx's TLS is not
    under test, only the scheme it reports)."""
    cert, key = directory / "proxy-cert.pem", directory / "proxy-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "3", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class ProxyProcess:
    """A proxy in the foreground in its own session, with its files in a private directory."""

    name = "proxy"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-test-"))
        # nginx's workers may run as another user (root's default is nobody): they must reach
        # the directory (its UNIX sockets, its temporary files).
        os.chmod(self.dir, 0o755)
        self.proc: Optional[subprocess.Popen] = None
        self._output = self.dir / "output.log"

    def _start(self, argv: List[str], ports: Sequence[int], timeout: float = 20.0) -> None:
        with open(self._output, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        waiting = list(ports)
        while waiting:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=1).close()
                waiting.pop(0)
                continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen on {waiting} in {timeout}s:\n{self.error_log()}")
            time.sleep(0.05)

    def error_log(self) -> str:
        """What the proxy said (its error log and its output), for assertion messages."""
        parts = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace")
            if text:
                parts.append(f"--- {path.name} ---\n{text[-6000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # fast shutdown for both nginx and HAProxy
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class Nginx(ProxyProcess):
    """nginx with one site file (``site``: http-context text) on the given ports."""

    name = "nginx"

    def __init__(self, site: str, ports: Sequence[int], extra_http: str = "", access_log: bool = True) -> None:
        super().__init__()
        self.binary = ensure_debian_binary("nginx", "nginx")
        (self.dir / "site.conf").write_text(site)
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""  # root's workers would be nobody
        temp = "".join(f"    {kind}_temp_path {d}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                           "uwsgi", "scgi"))
        (d / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {f'{d}/access.log' if access_log else 'off'};\n{temp}{extra_http}    include {d}/site.conf;\n}}\n")
        argv = [self.binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr}\n--- site.conf ---\n{site}")
        self._start(argv, ports)

    def access_log(self) -> str:
        path = self.dir / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""


class HAProxy(ProxyProcess):
    """HAProxy in the foreground (``-db``) with one configuration file."""

    name = "haproxy"

    def __init__(self, cfg: str, ports: Sequence[int]) -> None:
        super().__init__()
        self.binary = ensure_debian_binary("haproxy", "haproxy")
        path = self.dir / "haproxy.cfg"
        path.write_text(cfg)
        check = subprocess.run([self.binary, "-c", "-f", str(path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the configuration:\n{check.stdout}{check.stderr}\n"
                               f"--- haproxy.cfg ---\n{cfg}")
        self._start([self.binary, "-db", "-f", str(path)], ports)


def fenced_blocks(markdown: str, language: str) -> Dict[str, str]:
    """The fenced ``language`` blocks of a doc that follow a ``<!-- snippet: NAME -->`` line, by
    name (how the tests find the doc's snippets)."""
    found = {}
    pattern = re.compile(r"<!-- snippet: ([\w-]+) -->\s*\n```" + re.escape(language) + r"\n(.*?)```", re.S)
    for match in pattern.finditer(markdown):
        found[match.group(1)] = match.group(2)
    return found
