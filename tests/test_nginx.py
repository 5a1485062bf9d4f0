"""nginx (Debian's) in front of Gunicorn with our worker, as docs/deployment-proxies.md sets it up.

Every nginx here runs examples/deploy/nginx.conf itself (tests/proxies.py changes only its ports,
certificate paths and upstream server line), with the doc's own extra locations put in, in the
four combinations people run: over a UNIX socket or TCP, and with upstream keep-alive (the file
as shipped) or nginx's default (the lines marked ``# keep-alive`` dropped: HTTP/1.0 and
``Connection: close`` to the worker). The worker runs with the doc's Gunicorn command line.

- proxy headers: the app sees the client's address (the client connects from 127.0.0.2, nginx
  from 127.0.0.1) and scheme (http, and https on nginx's TLS port); a client's own
  X-Forwarded-For hop and scheme claims are not believed; without ``forwarded_allow_ips`` trust
  (TCP) the app sees nginx, while a UNIX socket peer is always trusted (as in Gunicorn);
- connections: keep-alive mode reuses upstream connections, the default mode does not;
- a chunked upload arrives intact (buffered: nginx sends Content-Length; the doc's unbuffered
  location: chunked, with HTTP/1.1 to the worker);
- WebSocket echo through the ``map $http_upgrade`` idiom;
- server-sent events reach the client as they are produced with ``X-Accel-Buffering: no`` or
  the doc's ``proxy_buffering off`` location, and are held back without either;
- timeouts: a worker keep-alive shorter than nginx's upstream ``keepalive_timeout`` races nginx
  reusing the connection the worker is closing; the recommended order gives no error.
"""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import ROOT, GunicornServer, free_port
from tests.debian import DebianUnavailable, ensure_debian_binary
from tests.proxies import Nginx, fenced_blocks, make_certificate, render_nginx_site

APP = "tests.apps.proxied_apps:app"
DOC = ROOT / "docs" / "deployment-proxies.md"
CLIENT_ADDRESS = "127.0.0.2"  # the client's source address; nginx talks to the worker from 127.0.0.1
MODES = ["keepalive", "default"]
SOCKETS = ["unix", "tcp"]
COMBOS = [(m, s) for m in MODES for s in SOCKETS]


def doc_snippets() -> Tuple[Dict[str, str], Dict[str, str]]:
    text = DOC.read_text()
    return fenced_blocks(text, "nginx"), fenced_blocks(text, "sh")


def doc_gunicorn_args(socket_path: str) -> List[str]:
    """The doc's Gunicorn command line (after ``gunicorn app:app``), bound to our socket."""
    argv = shlex.split(doc_snippets()[1]["gunicorn-nginx"].strip())
    assert argv[:2] == ["gunicorn", "app:app"], argv
    return [socket_path if a == "unix:/run/asgiworker.sock" else a for a in argv[2:]]


class Stack:
    """The worker and the nginx processes in front of it, started once for the module."""

    def __init__(self) -> None:
        try:
            ensure_debian_binary("nginx", "nginx")
        except DebianUnavailable as exc:
            pytest.skip(str(exc))
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-stack-"))
        os.chmod(self.dir, 0o755)  # nginx's worker must reach the sockets in it
        self.cert, self.key = make_certificate(self.dir)
        locations = "".join(doc_snippets()[0][name] for name in ("upload", "events"))
        self.servers: Dict[str, GunicornServer] = {}
        self.nginx: Dict[Tuple[str, str], Nginx] = {}
        self.ports: Dict[Tuple[str, str], Tuple[int, int]] = {}
        specs = {
            # The doc's command line; forwarded_allow_ips left at Gunicorn's default (127.0.0.1).
            "trusted": doc_gunicorn_args(f"unix:{self.dir}/trusted.sock"),
            # Trusts nobody on TCP (a TEST-NET address): headers from nginx must not be believed.
            "untrusted": doc_gunicorn_args(f"unix:{self.dir}/untrusted.sock") + [
                "--forwarded-allow-ips", "192.0.2.1"],
            # Worker keep-alive (1 s) shorter than nginx's upstream keepalive_timeout (the file's 60 s).
            "short": ["--keep-alive", "1"],
            # The recommended order, scaled down: worker 3 s, nginx 1 s.
            "long": ["--keep-alive", "3"],
        }
        try:
            for key, args in specs.items():
                self.servers[key] = GunicornServer(APP, *args, "--log-level", "info", wait=False)
            for server in self.servers.values():
                server.wait_ready(60)
            for mode, sock in COMBOS:
                self._nginx((mode, sock), "trusted", mode, sock, locations)
            for mode, sock in (("keepalive", "tcp"), ("default", "tcp"), ("keepalive", "unix")):
                self._nginx(("untrusted-" + mode, sock), "untrusted", mode, sock, locations)
            # gzip for event streams (a common addition): buffered events wait for gzip's buffer.
            self._nginx(("gzip", "unix"), "trusted", "keepalive", "unix", locations,
                        extra_http="    gzip on;\n    gzip_types text/event-stream;\n")
            # The file without its two lines clearing the client's own secure-scheme headers.
            self._nginx(("no-clearing", "tcp"), "trusted", "keepalive", "tcp", "", replace=[
                ('    proxy_set_header X-Forwarded-Ssl "";\n', ""),
                ('    proxy_set_header X-Forwarded-Protocol "";\n', "")])
            self._nginx(("short", "tcp"), "short", "keepalive", "tcp", "")
            self._nginx(("long", "tcp"), "long", "keepalive", "tcp", "",
                        replace=[("keepalive_timeout 60s;", "keepalive_timeout 1s;")])
        except BaseException:
            self.stop()
            raise

    def _nginx(self, key, server_key: str, mode: str, sock: str, locations: str, replace=(),
               extra_http: str = "") -> None:
        server = self.servers[server_key]
        upstream = f"unix:{self.dir}/{server_key}.sock" if sock == "unix" else f"127.0.0.1:{server.port}"
        port, tls_port = free_port(), free_port()
        site = render_nginx_site(upstream=upstream, port=port, tls_port=tls_port, cert=self.cert, key=self.key,
                                 keepalive=mode == "keepalive", locations=locations, replace=replace)
        self.nginx[key] = Nginx(site, [port, tls_port], extra_http=extra_http)
        self.ports[key] = (port, tls_port)

    def url(self, key, path: str, tls: bool = False) -> str:
        port, tls_port = self.ports[key]
        return f"https://127.0.0.1:{tls_port}{path}" if tls else f"http://127.0.0.1:{port}{path}"

    def logs(self, key) -> str:
        server_key = key[0].replace("untrusted-keepalive", "untrusted").replace("untrusted-default", "untrusted")
        server_key = server_key if server_key in self.servers else "trusted"
        return f"{self.nginx[key].error_log()}\n--- gunicorn ---\n{self.servers[server_key].log()[-4000:]}"

    def stop(self) -> None:
        for proxy in self.nginx.values():
            proxy.stop()
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    booted = Stack()
    yield booted
    booted.stop()


def client() -> httpx.Client:
    """A client connecting from 127.0.0.2 (so that its address differs from nginx's), ignoring
    proxies from the environment and not checking nginx's self-signed certificate."""
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDRESS, verify=False)
    return httpx.Client(transport=transport, trust_env=False, timeout=10)


# -- proxy headers -------------------------------------------------------------------------------

SPOOF = {"X-Forwarded-For": "203.0.113.66", "X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on",
         "X-Forwarded-Protocol": "ssl", "X-Real-IP": "203.0.113.66"}


@pytest.mark.parametrize("mode,sock", COMBOS)
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_app_sees_the_client_address_and_scheme(stack, mode, sock, tls):
    key = (mode, sock)
    with client() as c:
        plain = c.get(stack.url(key, "/echo", tls)).json()
        spoofed = c.get(stack.url(key, "/echo", tls), headers=SPOOF).json()
    scheme = "https" if tls else "http"
    for seen in (plain, spoofed):
        assert seen["client"][0] == CLIENT_ADDRESS, (seen, stack.logs(key))
        assert seen["scheme"] == scheme, (seen, stack.logs(key))
        assert seen["http_version"] == ("1.1" if mode == "keepalive" else "1.0"), seen
        assert seen["headers"]["host"] == "127.0.0.1", seen
        assert seen["headers"]["x-real-ip"] == CLIENT_ADDRESS, seen
        assert "x-forwarded-ssl" not in seen["headers"] and "x-forwarded-protocol" not in seen["headers"], seen
    # The client's own hop stays in the header (the app may log it) but is not its address.
    assert spoofed["headers"]["x-forwarded-for"] == f"203.0.113.66, {CLIENT_ADDRESS}", spoofed


def test_headers_from_an_untrusted_nginx_are_not_believed(stack):
    # TCP, forwarded_allow_ips not listing nginx: the app sees nginx's own address and port, and
    # the scheme of the connection to the worker, whatever the headers say.
    for mode in MODES:
        key = ("untrusted-" + mode, "tcp")
        with client() as c:
            seen = c.get(stack.url(key, "/echo", tls=True), headers=SPOOF).json()
        assert seen["client"][0] == "127.0.0.1" and seen["client"][1] > 0, (seen, stack.logs(key))
        assert seen["scheme"] == "http", seen
        assert seen["headers"]["x-forwarded-proto"] == "https", seen  # sent, and not believed


def test_a_unix_socket_peer_is_always_trusted(stack):
    # As in Gunicorn: a UNIX socket has no peer address to check, so forwarded_allow_ips does not
    # apply and nginx's headers are believed (only local processes can reach the socket: its
    # file permissions are the access control). The client's own hop is still not believed: it
    # is left of an address forwarded_allow_ips does not list.
    key = ("untrusted-keepalive", "unix")
    with client() as c:
        seen = c.get(stack.url(key, "/echo", tls=True), headers=SPOOF).json()
    assert seen["client"][0] == CLIENT_ADDRESS, (seen, stack.logs(key))
    assert seen["scheme"] == "https", seen


@pytest.mark.parametrize("header", ["X-Forwarded-Ssl: on", "X-Forwarded-Protocol: ssl"])
def test_without_the_clearing_lines_a_client_gets_a_400(stack, header):
    # Gunicorn's secure_scheme_headers (believed from a trusted peer) include these two, and
    # nginx passes a client's headers on unless told otherwise: beside nginx's own
    # X-Forwarded-Proto they contradict it, and the worker refuses (as Gunicorn does) rather
    # than believe the client. The file clears them, so such a client is simply served.
    name, value = header.split(": ")
    with client() as c:
        refused = c.get(stack.url(("no-clearing", "tcp"), "/echo"), headers={name: value})
        cleared = c.get(stack.url(("keepalive", "tcp"), "/echo"), headers={name: value}).json()
    assert refused.status_code == 400 and "Contradictory scheme headers" in refused.text, refused.text
    assert cleared["scheme"] == "http", cleared


@pytest.mark.parametrize("mode", MODES)
def test_upstream_connections_reused_only_with_keepalive(stack, mode):
    # The untrusted worker shows nginx's own source port: one connection, or one per request.
    key = ("untrusted-" + mode, "tcp")
    with client() as c:
        ports = [c.get(stack.url(key, "/echo")).json()["client"][1] for _ in range(6)]
    if mode == "keepalive":
        assert len(set(ports)) == 1, ports
    else:
        assert len(set(ports)) == 6, ports


# -- bodies ----------------------------------------------------------------------------------------

def _chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("mode,sock", COMBOS)
@pytest.mark.parametrize("location", ["/upload/", "/buffered/"], ids=["unbuffered", "buffered"])
def test_chunked_upload_arrives_intact(stack, mode, sock, location):
    key = (mode, sock)
    data = random.Random(f"{mode}{sock}{location}").randbytes(1 << 20)
    with client() as c:
        # A generator body: httpx sends it chunked.
        response = c.post(stack.url(key, location + "upload"), content=_chunks(data))
    assert response.status_code == 200, (response.text, stack.logs(key))
    seen = response.json()
    assert (seen["sha256"], seen["length"]) == (hashlib.sha256(data).hexdigest(), len(data)), seen
    if location == "/upload/" and mode == "keepalive":
        # proxy_request_buffering off and HTTP/1.1 to the worker: forwarded chunked as it comes.
        assert seen["transfer_encoding"] == "chunked" and seen["content_length"] is None, seen
    else:
        # Buffered (nginx's default), or unbuffered to an HTTP/1.0 upstream (nginx then buffers
        # a chunked body anyway): the whole body, with its Content-Length.
        assert seen["transfer_encoding"] is None and seen["content_length"] == str(len(data)), seen


# -- WebSocket -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sock", SOCKETS)
def test_websocket_passes_through(stack, sock):
    key = ("keepalive", sock)
    port = stack.ports[key][0]
    with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10, proxy=None) as ws:
        for i in range(3):
            ws.send(f"hello {i}")
            assert ws.recv(timeout=10) == f"hello {i}"
        ws.send(b"\x00\xff" * 1000)
        assert ws.recv(timeout=10) == b"\x00\xff" * 1000


def test_websocket_needs_the_keepalive_lines(stack):
    # Without proxy_http_version 1.1 and the Upgrade / Connection headers (the default mode),
    # nginx passes a handshake on as a plain HTTP/1.0 GET: the app answers it as HTTP.
    port = stack.ports[("default", "tcp")][0]
    with pytest.raises(InvalidStatus) as caught:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10, proxy=None):
            pass
    assert caught.value.response.status_code == 200


# -- server-sent events ----------------------------------------------------------------------------

GAP = 1.0


def _event_times(url: str) -> Tuple[float, float]:
    """Seconds from the request to the first and to the second event."""
    start = time.monotonic()
    arrivals: List[float] = []
    buffer = b""
    with httpx.Client(trust_env=False, timeout=10) as c, c.stream("GET", url) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():  # decoded as it comes (gzip included)
            buffer += chunk
            while len(arrivals) < buffer.count(b"\n\n"):
                arrivals.append(time.monotonic() - start)
    assert buffer == b"data: first\n\ndata: second\n\n", buffer
    return arrivals[0], arrivals[1]


@pytest.mark.parametrize("mode,sock", COMBOS + [("gzip", "unix")])
def test_events_reach_the_client_as_produced_with_x_accel_buffering_no(stack, mode, sock):
    first, second = _event_times(stack.url((mode, sock), f"/live/events?gap={GAP}&accel=1"))
    assert second - first > GAP * 0.6, (first, second)


@pytest.mark.parametrize("mode,sock", [("default", "tcp"), ("gzip", "unix")])
def test_events_reach_the_client_as_produced_with_proxy_buffering_off(stack, mode, sock):
    first, second = _event_times(stack.url((mode, sock), f"/events/events?gap={GAP}"))
    assert second - first > GAP * 0.6, (first, second)


@pytest.mark.parametrize("mode,sock", [("default", "tcp"), ("gzip", "unix")])
def test_events_are_held_back_without_either(stack, mode, sock):
    # nginx's proxy buffering (the default) keeps the first event until its buffer fills or the
    # response ends when the worker's response is close-delimited (HTTP/1.0 to the worker), or
    # when gzip compresses it: the client gets both at once, GAP seconds late.
    first, second = _event_times(stack.url((mode, sock), f"/live/events?gap={GAP}"))
    assert first > GAP * 0.9 and second - first < GAP * 0.3, (first, second)


def test_events_pass_buffered_over_chunked_keepalive(stack):
    # With HTTP/1.1 to the worker (chunked) and no gzip, nginx 1.22 passes each chunk on at once
    # even with buffering on: the header or the location is what keeps the other cases right.
    first, second = _event_times(stack.url(("keepalive", "unix"), f"/live/events?gap={GAP}"))
    assert second - first > GAP * 0.6, (first, second)


# -- timeouts ------------------------------------------------------------------------------------

def _spaced_posts(url: str, clients: int, each: int) -> Dict[int, int]:
    """Status counts of POSTs (never retried by nginx) from ``clients`` threads, each spacing its
    ``each`` requests 0.9-1.5 s apart (around a 1 s keep-alive)."""
    counts: Dict[int, int] = {}
    lock = threading.Lock()

    def run(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(trust_env=False, timeout=10) as c:
            for _ in range(each):
                time.sleep(rnd.uniform(0.9, 1.5))
                status = c.post(url, content=b"x" * 100).status_code
                with lock:
                    counts[status] = counts.get(status, 0) + 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return counts


def test_timeouts_worker_keepalive_against_nginx_keepalive_timeout(stack):
    # "short": the worker's keep-alive (1 s) is shorter than nginx's upstream keepalive_timeout
    # (the file's 60 s), so the worker closes connections nginx means to reuse, and a request
    # nginx sends as the worker closes is lost (a POST is not retried: 502). "long": the
    # recommended order, scaled down (worker 3 s, nginx 1 s): nginx closes first, nothing to race.
    # On loopback our worker's close loses nothing in either (nginx drops a cached connection
    # the moment the worker's FIN arrives, and the worker closes in stages): the window left is
    # the FIN's one-way trip, which a network widens. docs/deployment-proxies.md has the figures.
    results: Dict[str, Dict[int, int]] = {}

    def measure(name: str) -> None:
        results[name] = _spaced_posts(stack.url((name, "tcp"), "/upload"), clients=8, each=3)

    threads = [threading.Thread(target=measure, args=(name,)) for name in ("short", "long")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert results["long"] == {200: 24}, (results, stack.logs(("long", "tcp")))
    assert results["short"] == {200: 24}, (results, stack.logs(("short", "tcp")))


def test_the_doc_quotes_the_files_it_tests():
    # The doc's copies are the files the tests run (its other snippets run in the stack above).
    text = DOC.read_text()
    assert fenced_blocks(text, "nginx")["site-file"] == (ROOT / "examples/deploy/nginx.conf").read_text()
    assert fenced_blocks(text, "haproxy")["haproxy-file"] == (ROOT / "examples/deploy/haproxy.cfg").read_text()
