"""examples/chat.py end to end in a real browser: headless Chromium, two tabs, one chat room.

Chromium is Debian's ``chromium`` package. If it is missing and we are root with apt-get, the
session fixture installs it with tests/debian.py (CI runs on a clean machine); the test is skipped
only when that is impossible. The browser is driven over the Chrome DevTools Protocol with the `websockets` client
(no Selenium): two targets (tabs) opened on the chat page, ``Runtime.evaluate`` to type, submit
and read the DOM.

Checked: both tabs connect to /ws; what tab A sends shows up in tab B (and in A), and the other
way round; markup typed by a user is shown as text, never as HTML; a tab that closes is announced
to the other.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT, GunicornServer
from tests.debian import DebianUnavailable, ensure_debian_binary

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return ensure_debian_binary(CHROMIUM_NAMES[0], "chromium", alternatives=CHROMIUM_NAMES[1:])
    except DebianUnavailable as exc:
        pytest.skip(str(exc))


class Browser:
    """Headless Chromium with the DevTools protocol on a loopback port of its choosing."""

    def __init__(self, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--remote-debugging-address=127.0.0.1", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-proxy-server",
             "--disable-dev-shm-usage", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.stderr: List[str] = []
        found: "queue.Queue[str]" = queue.Queue()

        def drain() -> None:  # keep reading stderr so that Chromium never blocks on it
            for raw in self.proc.stderr:  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace")
                self.stderr.append(line)
                if "DevTools listening on " in line:
                    found.put(line.split("DevTools listening on ", 1)[1].strip())

        threading.Thread(target=drain, daemon=True).start()
        try:
            url = found.get(timeout=60)
        except queue.Empty:
            self.close()
            raise RuntimeError("Chromium did not start its DevTools server:\n" + "".join(self.stderr[-50:])) from None
        assert url.startswith("ws://127.0.0.1:"), url
        self.ws = connect(url, max_size=None, proxy=None, ping_interval=None, open_timeout=10).__enter__()
        self._next_id = 0

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None,
             timeout: float = 15.0) -> Dict[str, Any]:
        self._next_id += 1
        request: Dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            request["sessionId"] = session
        self.ws.send(json.dumps(request))
        deadline = time.monotonic() + timeout
        while True:  # events come in between: skip them
            answer = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method} failed: {answer['error']}")
                return answer["result"]

    def open_tab(self, url: str) -> "Tab":
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Tab(self, target, session)

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                try:
                    self.call("Browser.close", timeout=5)
                except Exception:  # noqa: BLE001 - it closes the connection as it goes
                    pass
                self.ws.close()
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            shutil.rmtree(self.profile, ignore_errors=True)


class Tab:
    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session

    def js(self, expression: str) -> Any:
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is still loading
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{expression!r} never became true (last: {value!r}); log: {self.lines()!r}")

    def say(self, name: str, text: str) -> None:
        self.js(f"""(() => {{
            document.getElementById('name').value = {json.dumps(name)};
            document.getElementById('text').value = {json.dumps(text)};
            document.getElementById('form').requestSubmit();
            return true; }})()""")

    def lines(self) -> List[Any]:
        """Each line of the chat log: [name, text] for messages, ['', text] for the system's."""
        return self.js("""Array.from(document.querySelectorAll('#log li')).map(li =>
            li.classList.contains('system') ? ['', li.textContent]
            : [li.querySelector('b').textContent, li.lastChild.textContent])""")

    def has_line(self, name: str, text: str) -> str:
        return (f"Array.from(document.querySelectorAll('#log li:not(.system)')).some(li => "
                f"li.querySelector('b').textContent === {json.dumps(name + ':')} && "
                f"li.lastChild.textContent === {json.dumps(text)})")

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})


@pytest.fixture
def chat_server():
    server = GunicornServer("chat:chat", cwd=ROOT / "examples")
    yield server
    server.stop()


@pytest.mark.timeout(1200)  # the first run on a clean machine installs Chromium
def test_two_tabs_chat(chromium, chat_server):
    browser = Browser(chromium)
    try:
        url = f"http://127.0.0.1:{chat_server.port}/"
        tab_a = browser.open_tab(url)
        tab_b = browser.open_tab(url)
        for tab in (tab_a, tab_b):
            tab.wait_for("document.body && document.body.dataset.state === 'open'")
        # Only members get the room's messages: a tab that has seen a join is in the room.
        for tab in (tab_a, tab_b):
            tab.wait_for("document.getElementById('log').textContent.includes('someone joined')")

        tab_a.say("alice", "hello from A")
        tab_b.wait_for(tab_b.has_line("alice", "hello from A"))
        tab_a.wait_for(tab_a.has_line("alice", "hello from A"))  # a broadcast reaches the sender too

        tab_b.say("bob", "hi A, B here ✓")
        tab_a.wait_for(tab_a.has_line("bob", "hi A, B here ✓"))

        markup = "<img src=x onerror=alert(1)><b>bold</b>"
        tab_a.say("<i>mallory</i>", markup)
        tab_b.wait_for(tab_b.has_line("<i>mallory</i>", markup))
        assert tab_b.js("document.querySelectorAll('#log img, #log i, #log li b b').length") == 0

        messages_b = [line for line in tab_b.lines() if line[0]]
        assert messages_b == [["alice:", "hello from A"], ["bob:", "hi A, B here ✓"],
                              ["<i>mallory</i>:", markup]]

        tab_b.close()
        tab_a.wait_for("document.getElementById('log').textContent.includes('someone left')")
    finally:
        browser.close()


def worker_of(tab: Tab) -> int:
    """The pid of the worker serving the tab's socket: the page shows 'connected to worker N'."""
    line = tab.wait_for("Array.from(document.querySelectorAll('#log li.system')).map(li => li.textContent)"
                        ".find(t => t.startsWith('connected to worker '))")
    return int(line.rsplit(" ", 1)[1])


def talk(tab_a: Tab, tab_b: Tab) -> None:
    """Both tabs in the room (only members get a join), then each hears the other."""
    for tab in (tab_a, tab_b):
        tab.wait_for("document.getElementById('log').textContent.includes('someone joined')")
    tab_a.say("alice", "hello from A")
    tab_b.wait_for(tab_b.has_line("alice", "hello from A"))
    tab_b.say("bob", "hi A, B here ✓")
    tab_a.wait_for(tab_a.has_line("bob", "hi A, B here ✓"))
    tab_b.close()
    tab_a.wait_for("document.getElementById('log').textContent.includes('someone left')")


@pytest.mark.timeout(1200)
def test_two_tabs_on_different_workers_share_one_room(chromium, fresh_redis):
    """--workers 4 on the Redis layer: two tabs whose sockets two different workers serve."""
    server = GunicornServer("chat:chat", "--workers", "4", cwd=ROOT / "examples",
                            env={"ASGIWORKER_CHANNEL_LAYER": fresh_redis.url})
    browser = Browser(chromium)
    try:
        workers = set(server.worker_pids())
        assert len(workers) == 4
        url = f"http://127.0.0.1:{server.port}/"
        first = browser.open_tab(url)
        first_pid = worker_of(first)
        assert first_pid in workers
        other = None
        for _ in range(24):  # the kernel picks the worker: open tabs until one lands elsewhere
            tab = browser.open_tab(url)
            pid = worker_of(tab)
            if pid != first_pid:
                other = tab
                break
            tab.close()
        assert other is not None, "24 tabs in a row were served by the same worker"
        assert worker_of(other) in workers
        talk(first, other)
    finally:
        browser.close()
        server.stop()


@pytest.mark.timeout(1200)
def test_two_tabs_on_two_masters_share_one_room(chromium, fresh_redis):
    """Two gunicorn masters on two ports (two "hosts") sharing one Redis."""
    env = {"ASGIWORKER_CHANNEL_LAYER": fresh_redis.url}
    one = GunicornServer("chat:chat", cwd=ROOT / "examples", env=env)
    two = GunicornServer("chat:chat", cwd=ROOT / "examples", env=env)
    browser = Browser(chromium)
    try:
        tab_a = browser.open_tab(f"http://127.0.0.1:{one.port}/")
        tab_b = browser.open_tab(f"http://127.0.0.1:{two.port}/")
        assert worker_of(tab_a) in one.worker_pids() and worker_of(tab_b) in two.worker_pids()
        talk(tab_a, tab_b)
    finally:
        browser.close()
        one.stop()
        two.stop()
