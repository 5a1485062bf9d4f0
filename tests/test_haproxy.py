"""HAProxy (Debian's) in front of Gunicorn with our worker: examples/deploy/haproxy.cfg itself
(tests/proxies.py changes its bind port, server address and log target), the worker started
with docs/deployment-proxies.md's command line.

One happy path: several requests on a kept-alive client connection and from several clients,
with ``http-reuse safe``: every answer right, the app sees the client's address from
``option forwardfor`` (and the client's own hop is not believed), the scheme HAProxy sets, and
the connections to the worker are reused (a worker that does not trust HAProxy shows HAProxy's
source port: after a client's first request, its requests ride connections already open;
at most one new connection per client).
"""

from __future__ import annotations

import shlex
from typing import Dict, Iterator, List

import httpx
import pytest

from tests.conftest import ROOT, GunicornServer, free_port
from tests.debian import DebianUnavailable, ensure_debian_binary
from tests.proxies import HAProxy, fenced_blocks, render_haproxy_cfg

APP = "tests.apps.proxied_apps:app"
DOC = ROOT / "docs" / "deployment-proxies.md"
CLIENT_ADDRESS = "127.0.0.2"


def doc_gunicorn_args() -> List[str]:
    """The doc's command line after ``gunicorn app:app``, without its --bind (the test's own)."""
    argv = shlex.split(fenced_blocks(DOC.read_text(), "sh")["gunicorn-haproxy"].strip())
    assert argv[:2] == ["gunicorn", "app:app"], argv
    at = argv.index("--bind")
    assert argv[at + 1] == "127.0.0.1:8000", argv
    return argv[2:at] + argv[at + 2:]


@pytest.fixture(scope="module")
def proxies() -> Iterator[Dict[str, str]]:
    try:
        ensure_debian_binary("haproxy", "haproxy")
    except DebianUnavailable as exc:
        pytest.skip(str(exc))
    servers = {
        "trusted": GunicornServer(APP, *doc_gunicorn_args(), "--log-level", "info", wait=False),
        "untrusted": GunicornServer(APP, *doc_gunicorn_args(), "--forwarded-allow-ips", "192.0.2.1",
                                    "--log-level", "info", wait=False),
    }
    running: List[HAProxy] = []
    urls: Dict[str, str] = {}
    try:
        for key, server in servers.items():
            server.wait_ready(60)
            port = free_port()
            running.append(HAProxy(render_haproxy_cfg(port=port, server=f"127.0.0.1:{server.port}"), [port]))
            urls[key] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proxy in running:
            proxy.stop()
        for server in servers.values():
            server.stop()


def client() -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=CLIENT_ADDRESS)
    return httpx.Client(transport=transport, trust_env=False, timeout=10)


def test_haproxy_with_connection_reuse(proxies):
    with client() as c:
        seen = [c.get(proxies["trusted"] + "/echo", headers={"X-Forwarded-For": "203.0.113.66"}).json()
                for _ in range(5)]
    for one in seen:
        assert one["client"][0] == CLIENT_ADDRESS, one
        assert one["scheme"] == "http", one
        assert one["headers"]["x-forwarded-for"] == f"203.0.113.66, {CLIENT_ADDRESS}", one
        assert one["http_version"] == "1.1", one

    # Untrusted: the app sees HAProxy's own source port, i.e. which connection carried each request.
    ports: List[int] = []
    for _ in range(4):
        with client() as c:
            for _ in range(5):
                response = c.get(proxies["untrusted"] + "/echo")
                assert response.status_code == 200
                one = response.json()
                assert one["client"][0] == "127.0.0.1", one
                assert one["headers"]["x-forwarded-for"] == CLIENT_ADDRESS, one
                ports.append(one["client"][1])
            # "safe": a client's first request may open a connection of its own (HAProxy could
            # not retry it on a reused one), the later ones ride connections already open.
            assert set(ports[-4:]) <= set(ports[:-4]) | {ports[-5]}, ports
    # 20 requests, at most one new connection to the worker per client.
    assert len(set(ports)) <= 4, ports
    with client() as c:
        assert c.post(proxies["trusted"] + "/upload", content=b"x" * 100000).json()["length"] == 100000
