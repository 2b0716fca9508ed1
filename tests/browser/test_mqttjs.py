"""A real browser talks to mqttd (issue 14): headless Chromium opens a page served by this test
that loads MQTT.js (installed from the npm registry by the test, no CDN), connects over
ws://, subscribes and publishes; a TCP client (mosquitto_pub/sub) is on the other side. The
test reads what the page saw from its title, through Chromium's DevTools HTTP endpoint."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BrokerProc, require_program, start_broker, stop_broker

#: where MQTT.js is installed once and reused (npm install takes a few seconds)
NPM_DIR = Path(os.environ.get("MQTTD_TEST_CACHE", Path.home() / ".cache" / "mqttd-tests")) / "npm"
MQTTJS_VERSION = "5"

PAGE = """<!doctype html>
<html><head><title>loading</title><script src="mqtt.min.js"></script></head>
<body><script>
const client = mqtt.connect("WS_URL", {clientId: "browser-1", protocolVersion: 5});
client.on("connect", () => {
  document.title = "connected";
  client.subscribe("browser/in", {qos: 1}, (err, granted) => {
    if (err) { document.title = "error:" + err; return; }
    document.title = "subscribed";
    client.publish("browser/out", "hello from the browser", {qos: 1});
  });
});
client.on("message", (topic, payload) => { document.title = "got:" + payload.toString(); });
client.on("error", (err) => { document.title = "error:" + err; });
</script></body></html>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def mqttjs() -> Path:
    """mqtt.min.js from the npm registry."""
    bundle = NPM_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
    if not bundle.exists():
        npm = require_program("npm")
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", f"mqtt@{MQTTJS_VERSION}"],
            cwd=NPM_DIR, check=True, timeout=300,
        )  # fmt: skip
    assert bundle.exists(), bundle
    return bundle


@pytest.fixture
def site(tmp_path: Path, mqttjs: Path) -> Iterator[tuple[Path, int]]:
    """A local web server for the page and the bundle: (its folder, its port)."""
    shutil.copy(mqttjs, tmp_path / "mqtt.min.js")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield tmp_path, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def ws_broker() -> Iterator[BrokerProc]:
    b = start_broker("--ws-port", "0")
    try:
        yield b
    finally:
        stop_broker(b)


class Browser:
    """Headless Chromium on one page; ``title()`` through the DevTools HTTP endpoint."""

    def __init__(self, url: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--disable-dev-shm-usage", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.proc.poll() is None, "Chromium exited"
            assert time.monotonic() < deadline, "Chromium opened no DevTools port"
            time.sleep(0.1)
        self.devtools = int(port_file.read_text().split()[0])

    def title(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.devtools}/json/list", timeout=5) as r:
            pages = [p for p in json.load(r) if p.get("type") == "page"]
        return str(pages[0]["title"]) if pages else ""

    def wait_title(self, want: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.title()
            if seen == want or seen.startswith("error:"):
                break
            time.sleep(0.1)
        return seen

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def test_mqttjs_in_chromium_exchanges_messages_with_a_tcp_client(
    ws_broker: BrokerProc, site: tuple[Path, int], tmp_path: Path
) -> None:
    """The page subscribes to browser/in and publishes to browser/out: a TCP subscriber gets
    the page's message, and the page gets what mosquitto_pub publishes."""
    from mqtt_raw import Client

    pub_tool = require_program("mosquitto_pub")
    folder, http_port = site
    (folder / "index.html").write_text(PAGE.replace("WS_URL", ws_broker.urls["ws"]))
    with Client((ws_broker.host, ws_broker.port), level=4, timeout=30) as tcp:
        tcp.connect("tcp-side")
        tcp.subscribe("browser/out", qos=1)  # SUBACK: subscribed before the page loads
        browser = Browser(f"http://127.0.0.1:{http_port}/index.html", tmp_path / "profile")
        try:
            got = tcp.recv_publish(timeout=60)
            assert (got.topic, got.payload) == ("browser/out", b"hello from the browser")
            assert browser.wait_title("subscribed") == "subscribed"
            subprocess.run(
                [pub_tool, "-h", "127.0.0.1", "-p", str(ws_broker.port), "-t", "browser/in",
                 "-q", "1", "-m", "hello from tcp"],
                check=True, timeout=30,
            )  # fmt: skip
            assert browser.wait_title("got:hello from tcp") == "got:hello from tcp"
        finally:
            browser.close()
