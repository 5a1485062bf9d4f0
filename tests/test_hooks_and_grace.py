"""Gunicorn's pre_request/post_request hooks, asgi_disconnect_grace_period and the warnings for
parser leniencies we do not honour, against a real gunicorn."""

import socket
import time

import httpx

from tests.conftest import GunicornServer, wait_for

APP = "tests.apps.hook_apps:app"


def records(path) -> list:
    return path.read_text().splitlines() if path.exists() else []


def test_pre_and_post_request_hooks_are_called_around_each_request(tmp_path):
    rec = tmp_path / "rec"
    conf = tmp_path / "conf.py"
    conf.write_text("from tests.apps.hook_apps import pre_request, post_request\n")
    server = GunicornServer(APP, "-c", str(conf), env={"HOOK_RECORD_FILE": str(rec)})
    try:
        r = httpx.get(server.url + "/a/b?x=1", headers={"x-tag": "t1"})
        assert r.status_code == 201 and r.text == "hooked"
        mine = lambda: [line for line in records(rec) if " GET " in line]  # noqa: E731 (not the boot probe)
        assert wait_for(lambda: len(mine()) >= 2, 5), records(rec)
        assert mine() == ["pre GET /a/b /a/b?x=1 1.1 t1", "post GET 201 6 /a/b?x=1"]
    finally:
        server.stop()


def test_disconnected_app_is_cancelled_after_the_grace_period(tmp_path):
    rec = tmp_path / "rec"
    server = GunicornServer(APP, "--asgi-disconnect-grace-period", "1", env={"HOOK_RECORD_FILE": str(rec)})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /ignore-disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200 ")
        left = time.monotonic()
        assert wait_for(lambda: "cancelled" in records(rec), 5), records(rec)
        waited = time.monotonic() - left
        assert 0.7 <= waited <= 3.0, waited
        # The worker goes on serving.
        assert httpx.get(server.url + "/").status_code == 201
    finally:
        server.stop()


def test_lenient_parser_settings_we_do_not_honour_are_warned_at_boot():
    server = GunicornServer(APP, "--permit-obsolete-folding", "--casefold-http-method")
    try:
        log = server.log()
        assert "does not honour --permit-obsolete-folding" in log
        assert "does not honour --casefold-http-method" in log
        # And the contract holds regardless: obs-fold is refused.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 400 ")
    finally:
        server.stop()


def test_uwsgi_protocol_stops_the_boot_with_the_fix():
    server = GunicornServer(APP, "--protocol", "uwsgi", wait=False)
    try:
        assert server.wait_exit(20) != 0
        assert "serves HTTP only, not --protocol uwsgi" in server.log()
    finally:
        server.stop()
