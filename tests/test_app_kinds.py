"""Application kinds over a real Gunicorn: ASGI 3 and ASGI 2 shapes are detected and served,
overrides in code and in deployment (-e, environment, config file) are obeyed, and an app whose
kind cannot be told (or a bad ASGIWORKER_APP_KIND) stops Gunicorn at boot with a message naming
the override.

The apps live in tests/apps/kinds.py; each answers with JSON naming itself and the protocol it was
called with. All servers of this module boot in parallel, once.
"""

from __future__ import annotations

import subprocess
import time
from typing import Iterator

import httpx
import pytest

from tests.conftest import BootedServers, GunicornServer

APP = "tests.apps.kinds:"


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gunicorn-conf")


@pytest.fixture(scope="module")
def servers(conf_dir) -> Iterator[BootedServers]:
    conf = conf_dir / "conf_asgi3.py"
    conf.write_text('raw_env = ["ASGIWORKER_APP_KIND=asgi3"]\n')
    specs = {
        # auto-detected shapes
        "asgi3_function": ("asgi3_function", (), None),
        "asgi3_instance": ("asgi3_instance", (), None),
        "asgi3_partial": ("asgi3_partial", (), None),
        "Asgi3AwaitableClass": ("Asgi3AwaitableClass", (), None),
        "Asgi2Class": ("Asgi2Class", (), None),
        "asgi2_factory": ("asgi2_factory", (), None),
        # overrides
        "handler_auto": ("handler", (), None),
        "handler_code_asgi2": ("handler_as_asgi2", (), None),
        "handler_dash_e_asgi2": ("handler", ("-e", "ASGIWORKER_APP_KIND=asgi2"), None),
        "flexible_env_consumer": ("flexible", (), {"ASGIWORKER_APP_KIND": "consumer"}),
        "flexible_env_asgi2": ("flexible", (), {"ASGIWORKER_APP_KIND": "asgi2"}),
        "flexible_conf_asgi3": ("flexible", ("-c", str(conf)), None),
        "flexible_code_asgi3": ("flexible_as_asgi3", (), None),
        # the wrapper in code wins over the deployment setting
        "flexible_code_consumer_env_asgi3": ("flexible_as_consumer", ("-e", "ASGIWORKER_APP_KIND=asgi3"), None),
        # an explicit "auto" is the default
        "consumer_env_auto": ("hello_consumer", ("-e", "ASGIWORKER_APP_KIND=auto"), None),
    }
    booted = BootedServers({key: (APP + app, args, {"env": env}) for key, (app, args, env) in specs.items()})
    try:
        yield booted
    finally:
        booted.stop()


def _post(server: GunicornServer, body: bytes) -> httpx.Response:
    return httpx.post(server.url + "/some/path", content=body, timeout=10)


# -- auto-detection of ASGI 3 and ASGI 2 shapes -------------------------------------------------


@pytest.mark.parametrize("name,served_as", [
    ("asgi3_function", "asgi3"),        # async def app(scope, receive, send)
    ("asgi3_instance", "asgi3"),        # instance with async __call__(scope, receive, send)
    ("asgi3_partial", "asgi3"),         # functools.partial of a 4-argument async function
    ("Asgi3AwaitableClass", "asgi3"),   # class with __await__, instantiated with the 3 arguments
    ("Asgi2Class", "asgi2"),            # class(scope) whose instance is async __call__(receive, send)
    ("asgi2_factory", "asgi2"),         # def app(scope) returning an async callable
])
def test_asgi_shapes_are_detected_and_served(servers, name, served_as):
    server = servers[name]
    body = b"ping " + name.encode() + b" " + b"z" * 70000  # more than one read from the socket
    r = _post(server, body)
    assert r.status_code == 200, server.log()
    data = r.json()
    assert data["app"] == name
    assert data["served_as"] == served_as
    assert data["scope_type"] == "http"
    assert data["path"] == "/some/path"
    assert data["body"] == body.decode()
    if served_as == "asgi3":
        assert data["asgi"]["version"] == "3.0"
    # Several requests on one keep-alive connection: a fresh instance / call per request.
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(5):
            r = client.post("/n", content=b"%d" % i)
            assert r.status_code == 200
            assert r.json()["body"] == str(i)


# -- overrides ------------------------------------------------------------------------------------


def test_one_arg_function_not_named_scope_is_a_consumer_by_default(servers):
    """`def handler(x)` is auto-detected as a consumer: called with the message it returns a
    function and never replies, so the client gets a 500 and the log says why."""
    server = servers["handler_auto"]
    r = _post(server, b"x")
    assert r.status_code == 500
    assert "dropped its message" in server.log()


def test_override_in_code_asgi2(servers):
    r = _post(servers["handler_code_asgi2"], b"code")
    assert r.status_code == 200
    data = r.json()
    assert (data["app"], data["served_as"], data["scope_type"], data["path"], data["body"]) == \
        ("handler", "asgi2", "http", "/some/path", "code")


def test_override_in_code_asgi3(servers):
    r = _post(servers["flexible_code_asgi3"], b"code3")
    assert r.status_code == 200
    assert (r.json()["app"], r.json()["served_as"], r.json()["body"]) == ("flexible", "asgi3", "code3")


def test_override_on_gunicorn_command_line(servers):
    """gunicorn -e ASGIWORKER_APP_KIND=asgi2 tests.apps.kinds:handler"""
    r = _post(servers["handler_dash_e_asgi2"], b"dash-e")
    assert r.status_code == 200
    assert (r.json()["app"], r.json()["served_as"], r.json()["body"]) == ("handler", "asgi2", "dash-e")


@pytest.mark.parametrize("key,served_as", [
    ("flexible_env_consumer", "consumer"),
    ("flexible_env_asgi2", "asgi2"),
])
def test_override_by_environment_variable(servers, key, served_as):
    r = _post(servers[key], b"env")
    assert r.status_code == 200
    assert (r.json()["app"], r.json()["served_as"], r.json()["body"]) == ("flexible", served_as, "env")


def test_override_in_gunicorn_config_file(servers):
    """gunicorn -c conf.py, with raw_env = ["ASGIWORKER_APP_KIND=asgi3"]"""
    r = _post(servers["flexible_conf_asgi3"], b"conf")
    assert r.status_code == 200
    assert (r.json()["app"], r.json()["served_as"], r.json()["body"]) == ("flexible", "asgi3", "conf")


def test_wrapper_in_code_wins_over_deployment_setting(servers):
    r = _post(servers["flexible_code_consumer_env_asgi3"], b"wins")
    assert r.status_code == 200
    assert (r.json()["app"], r.json()["served_as"], r.json()["body"]) == ("flexible", "consumer", "wins")


def test_explicit_auto_detects(servers):
    r = _post(servers["consumer_env_auto"], b"auto")
    assert r.status_code == 200
    assert (r.json()["app"], r.json()["served_as"], r.json()["body"]) == ("hello_consumer", "consumer", "auto")


# -- refusing to boot -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failed_boots(conf_dir) -> Iterator[BootedServers]:
    bad_conf = conf_dir / "conf_bad.py"
    bad_conf.write_text('raw_env = ["ASGIWORKER_APP_KIND=channels"]\n')
    specs = {
        "varargs": ("flexible", (), None),                    # def flexible(*args)
        "two_args": ("two_args", (), None),                   # def two_args(a, b)
        "bad_kind_dash_e": ("asgi3_function", ("-e", "ASGIWORKER_APP_KIND=asgi4"), None),
        "bad_kind_env": ("asgi3_function", (), {"ASGIWORKER_APP_KIND": "wsgi"}),
        "bad_kind_conf": ("hello_consumer", ("-c", str(bad_conf)), None),
    }
    booted = BootedServers({key: (APP + app, args, {"env": env}) for key, (app, args, env) in specs.items()})
    try:
        deadline = time.monotonic() + 20  # shared: a failing run should not wait 20 s per server
        for key in specs:
            for attempt in range(3):
                server = booted.raw(key)
                try:
                    server.wait_exit(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    break  # still running: its test reports it
                log = server.log()
                if "Booting worker" in log or "in use" not in log or attempt == 2:
                    break
                booted.restart(key)  # it lost its port to another process before binding
        yield booted
    finally:
        booted.stop()


def _refusal(server: GunicornServer) -> str:
    """The worker's one-line reason for refusing to start (Gunicorn's config dump, which may
    echo raw_env, is not part of it)."""
    code = server.proc.poll()
    log = server.log()
    assert code is not None, f"gunicorn is still running:\n{log}"
    assert code != 0, log
    assert "Booting worker" in log  # it was the worker, loading the app, that refused
    lines = [line for line in log.splitlines() if "asgiworker cannot start" in line]
    assert len(lines) == 1, log
    return lines[0]


@pytest.mark.parametrize("key,app,shape", [
    ("varargs", "flexible", "any number of positional arguments"),
    ("two_args", "two_args", "2 positional arguments"),
])
def test_undecidable_app_stops_boot_and_names_the_override(failed_boots, key, app, shape):
    line = _refusal(failed_boots.raw(key))
    assert f"Cannot tell what kind of application {app} is" in line
    assert shape in line
    # The message tells both ways out.
    assert "ASGIWORKER_APP_KIND" in line
    assert "asgiworker.adapters" in line


@pytest.mark.parametrize("key,value", [
    ("bad_kind_dash_e", "asgi4"),
    ("bad_kind_env", "wsgi"),
    ("bad_kind_conf", "channels"),
])
def test_bad_app_kind_value_stops_boot_with_clear_message(failed_boots, key, value):
    line = _refusal(failed_boots.raw(key))
    assert f"Unknown application kind {value!r}" in line
    assert "ASGIWORKER_APP_KIND" in line
    for kind in ("auto", "asgi3", "asgi2", "consumer"):
        assert kind in line.split(f"Unknown application kind {value!r}", 1)[1]
