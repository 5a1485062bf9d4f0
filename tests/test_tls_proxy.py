"""TLS, client certificates, the ASGI TLS extension, proxy headers from trusted peers and the PROXY
protocol, under a real Gunicorn."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Dict, Optional

import pytest

from tests.conftest import GunicornServer
from tests.wire import Response, http_request, read_response, request_bytes

APP = "tests.apps.drop_in_apps:lifespan_app"


# -- certificates -----------------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=str(cwd), check=True, capture_output=True)


def make_cert(d: Path, name: str, subject: str, ca: Optional[str], ext: str) -> None:
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=d)
    (d / (name + ".ext")).write_text(ext)
    sign = ["-CA", ca + ".pem", "-CAkey", ca + ".key", "-CAcreateserial"] if ca else ["-signkey", name + ".key"]
    openssl("x509", "-req", "-in", name + ".csr", "-out", name + ".pem", "-days", "3", *sign,
            "-extfile", name + ".ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_cert(d, "ca", "/CN=Dropin Test CA", None, "basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign\n")
    make_cert(d, "server", "/CN=127.0.0.1", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    # A comma in a value: RFC 4514 escapes it in client_cert_name.
    make_cert(d, "client", "/O=Dropin, Test/CN=dropin client", "ca", "extendedKeyUsage=clientAuth\n")
    # A Gunicorn config file with the ssl_context hook: TLS 1.2 at most.
    (d / "tls12.conf.py").write_text(
        "import ssl\n"
        "def ssl_context(conf, default_ssl_context_factory):\n"
        "    context = default_ssl_context_factory()\n"
        "    context.maximum_version = ssl.TLSVersion.TLSv1_2\n"
        "    return context\n")
    return d


def pem(path: Path) -> str:
    text = path.read_text()
    start = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return text[start:end].strip()


def client_context(certs: Path, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if with_cert:
        context.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    return context


def https_get(port: int, path: str, context: ssl.SSLContext, headers=()) -> Response:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request_bytes(path, headers=headers, close=True))
            return read_response(s, timeout=None)[0]


class TLSServer(GunicornServer):
    """Its readiness check speaks TLS."""

    context: ssl.SSLContext

    def wait_ready(self, timeout: float = 20.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            if "Booting worker" in self.log():
                try:
                    if https_get(self.port, "/pid", self.context).status == 200:
                        return
                except (OSError, ValueError):
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not become ready in {timeout}s:\n{self.log()}")


def start_all(servers: Dict[str, GunicornServer]) -> Dict[str, GunicornServer]:
    """Servers were created with wait=False so that they boot side by side; wait for each."""
    try:
        for server in servers.values():
            server.wait_ready()
    except Exception:
        for server in servers.values():
            server.stop()
        raise
    return servers


@pytest.fixture(scope="module")
def tls(certs):
    servers: Dict[str, GunicornServer] = {}
    for name, extra, client_cert in (
            ("plain", [], False),
            ("mutual", ["--ca-certs", str(certs / "ca.pem"), "--cert-reqs", "2", "-c", str(certs / "tls12.conf.py"),
                        "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"], True)):
        server = TLSServer(APP, "--certfile", str(certs / "server.pem"), "--keyfile", str(certs / "server.key"),
                           *extra, wait=False)
        server.context = client_context(certs, client_cert)
        servers[name] = server
    yield start_all(servers)
    for server in servers.values():
        server.stop()


# -- TLS ------------------------------------------------------------------------------------------

def test_tls_scope_and_extension(tls, certs):
    info = https_get(tls["plain"].port, "/info/tls", client_context(certs, False)).json()
    assert info["scheme"] == "https"
    ext = info["extensions"]["tls"]
    assert ext["tls_version"] == 0x0304
    assert ext["server_cert"].strip() == pem(certs / "server.pem")
    assert ext["client_cert_chain"] == []
    assert ext["client_cert_name"] is None
    assert ext["client_cert_error"] is None
    assert isinstance(ext["cipher_name"], str) and ext["cipher_name"].startswith("TLS_")


def test_plain_http_to_a_tls_port_gets_no_response(tls):
    with socket.create_connection(("127.0.0.1", tls["plain"].port), timeout=5) as s:
        s.sendall(request_bytes("/pid", close=True))
        s.settimeout(5)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200"), data


def test_client_certificate_in_the_extension(tls, certs):
    info = https_get(tls["mutual"].port, "/info/mtls", client_context(certs, True)).json()
    assert info["scheme"] == "https"
    ext = info["extensions"]["tls"]
    assert [c.strip() for c in ext["client_cert_chain"]][:1] == [pem(certs / "client.pem")]
    # The ssl_context hook (TLS 1.2 at most) and --ciphers were applied.
    assert ext["tls_version"] == 0x0303
    assert ext["cipher_name"] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    # RFC 4514 (as the ASGI TLS extension asks): short attribute type names, most specific first,
    # special characters escaped.
    assert ext["client_cert_name"] == "CN=dropin client,O=Dropin\\, Test"


def test_cert_reqs_required_refuses_a_client_without_certificate(tls, certs):
    with pytest.raises((ssl.SSLError, OSError, ValueError)):
        response = https_get(tls["mutual"].port, "/pid", client_context(certs, False))
        pytest.fail("served without a client certificate: %r" % response)


# -- proxy headers ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxies():
    servers = {
        "any": GunicornServer(APP, "--forwarded-allow-ips", "*", wait=False),
        "default": GunicornServer(APP, wait=False),  # 127.0.0.1,::1
        "other": GunicornServer(APP, "--forwarded-allow-ips", "10.0.0.1", wait=False),
        "pp_auto": GunicornServer(APP, "--proxy-protocol", "auto", wait=False),
        "pp_v1": GunicornServer(APP, "--proxy-protocol", "v1", wait=False),
        "pp_v2_other": GunicornServer(APP, "--proxy-protocol", "v2", "--proxy-allow-from", "10.0.0.1", wait=False),
    }
    yield start_all(servers)
    for server in servers.values():
        server.stop()


def info_via(server: GunicornServer, *headers) -> dict:
    response = http_request(server.port, "/info", headers=headers)
    assert response.status == 200, response
    return response.json()


def test_forwarded_headers_from_a_trusted_peer(proxies):
    info = info_via(proxies["any"], ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"))
    assert info["client"] == ["203.0.113.7", 0]
    assert info["scheme"] == "https"
    # Every hop is trusted with '*': the client is the leftmost.
    info = info_via(proxies["any"], ("X-Forwarded-For", "198.51.100.1, 203.0.113.7"))
    assert info["client"] == ["198.51.100.1", 0]
    assert info["scheme"] == "http"


@pytest.mark.parametrize("header", [("X-Forwarded-Ssl", "on"), ("X-Forwarded-Protocol", "ssl"),
                                    ("X-Forwarded-Proto", "https")])
def test_default_secure_scheme_headers(proxies, header):
    assert info_via(proxies["default"], header)["scheme"] == "https"
    assert info_via(proxies["other"], header)["scheme"] == "http"


@pytest.mark.parametrize("headers", [
    (("X-Forwarded-Proto", "http"), ("X-Forwarded-Ssl", "on")),
    (("X-Forwarded-Proto", "https"), ("X-Forwarded-Protocol", "tls")),
    (("X-Forwarded-Ssl", "off"), ("X-Forwarded-Protocol", "ssl")),
])
def test_contradictory_scheme_headers_are_refused_as_gunicorn_does(proxies, headers):
    # A proxy that sets only X-Forwarded-Proto passes on a client's own X-Forwarded-Ssl: believing
    # the "https" one would let a plain-HTTP client pass for a secure one. Gunicorn answers 400.
    response = http_request(proxies["default"].port, "/info", headers=headers)
    assert response.status == 400 and b"Contradictory scheme headers" in response.body, response
    # Agreeing headers are fine, and an untrusted peer's are not looked at.
    assert info_via(proxies["default"], ("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "on"))["scheme"] == "https"
    assert info_via(proxies["other"], *headers)["scheme"] == "http"


def test_forwarded_for_takes_the_rightmost_untrusted_hop(proxies):
    # The default allow list trusts 127.0.0.1: what a client wrote left of the first untrusted hop
    # is not believed.
    info = info_via(proxies["default"], ("X-Forwarded-For", "198.51.100.1, 203.0.113.7, 127.0.0.1"))
    assert info["client"] == ["203.0.113.7", 0]


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(proxies):
    info = info_via(proxies["other"], ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"))
    assert info["client"][0] == "127.0.0.1" and info["client"][1] > 0
    assert info["scheme"] == "http"
    # The headers are still there for the app to see.
    assert ["x-forwarded-for", "203.0.113.7"] in info["headers"]


# -- the PROXY protocol -----------------------------------------------------------------------------

V1 = b"PROXY TCP4 192.0.2.10 198.51.100.20 56324 8443\r\n"
V1_IPV6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n"
V2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
      + socket.inet_aton("192.0.2.11") + socket.inet_aton("198.51.100.21") + struct.pack("!HH", 40000, 9443))


def raw_exchange(server: GunicornServer, prefix: bytes, requests: int = 1) -> list:
    responses = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(prefix)
        for n in range(requests):
            s.sendall(request_bytes("/info", close=n == requests - 1))
            responses.append(read_response(s, timeout=None)[0])
    return responses


@pytest.mark.parametrize("header,client,server", [
    (V1, ["192.0.2.10", 56324], ["198.51.100.20", 8443]),
    (V1_IPV6, ["2001:db8::1", 1234], ["2001:db8::2", 443]),
    (V2, ["192.0.2.11", 40000], ["198.51.100.21", 9443]),
], ids=["v1", "v1-ipv6", "v2"])
def test_proxy_protocol_sets_client_and_server(proxies, header, client, server):
    # Two requests on the connection: the header speaks for the whole connection.
    for response in raw_exchange(proxies["pp_auto"], header, requests=2):
        assert response.status == 200, response
        info = response.json()
        assert info["client"] == client
        assert info["server"] == server


def test_proxy_protocol_is_optional_and_unknown_keeps_the_socket_addresses(proxies):
    server = proxies["pp_auto"]
    for prefix in (b"", b"PROXY UNKNOWN\r\n"):
        [response] = raw_exchange(server, prefix)
        assert response.status == 200, (prefix, response)
        info = response.json()
        assert info["client"][0] == "127.0.0.1"
        assert info["server"] == ["127.0.0.1", server.port]


@pytest.mark.parametrize("name,prefix,status", [
    ("pp_auto", b"PROXY TCP4 not-an-ip 198.51.100.20 1 2\r\n", 400),
    ("pp_auto", b"PROXY TCP4 192.0.2.10 198.51.100.20 56324 99999\r\n", 400),
    ("pp_v1", V2, 400),
    ("pp_v2_other", V1, 400),
    ("pp_v2_other", V2, 403),
], ids=["bad-address", "bad-port", "v2-when-v1", "v1-when-v2", "peer-not-allowed"])
def test_proxy_protocol_refusals(proxies, name, prefix, status):
    with socket.create_connection(("127.0.0.1", proxies[name].port), timeout=10) as s:
        s.sendall(prefix + request_bytes("/info"))
        response = read_response(s, timeout=None)[0]
        assert response.status == status, response
        assert response.get(b"connection") == b"close"


def test_proxy_protocol_peer_not_allowed_still_serves_plain_requests(proxies):
    [response] = raw_exchange(proxies["pp_v2_other"], b"")
    assert response.status == 200
    assert response.json()["client"][0] == "127.0.0.1"
