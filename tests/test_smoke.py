import httpx

from tests.conftest import ROOT
from tests.wire import raw_request


def test_hello_consumer_over_real_gunicorn(gunicorn):
    server = gunicorn("hello:hello_world", cwd=ROOT / "examples",
                      env={"PYTHONPATH": "."})
    r = httpx.get(server.url + "/")
    assert r.status_code == 200
    assert r.text == "Hello, world!"
    assert r.headers["server"] == "asgiworker"
    assert "date" in r.headers


def test_asgi3_echo(gunicorn):
    server = gunicorn("tests.apps.basic:app")
    r = httpx.post(server.url + "/echo", content=b"x" * 100000)
    assert r.content == b"x" * 100000
    out = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 2
