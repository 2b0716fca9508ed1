"""MQTTApp in a program's own ``asyncio.run`` (issue 15, item 5): ``@app.on_startup`` runs once
the broker serves, ``@app.on_shutdown`` before its clients go, and ``serve_forever()`` stops on
SIGTERM as ``app.run()`` does: MQTT 5 clients get DISCONNECT 0x8B, exit status 0, in bounded
time."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conformance import mqtt_raw as R

PROGRAM = textwrap.dedent(
    """
    import asyncio
    from mqttd import MQTTApp

    app = MQTTApp(host="127.0.0.1", port=0)

    @app.on_startup
    async def online() -> None:
        await app.publish("svc/state", b"online", retain=True)
        print("PORT", app.port, flush=True)

    @app.on_shutdown
    async def offline() -> None:
        await app.publish("svc/state", b"offline", retain=True)
        print("SHUTDOWN HOOK", flush=True)

    async def main() -> None:
        await app.serve_forever()
        print("RETURNED", flush=True)

    asyncio.run(main())
    """
)


def test_own_asyncio_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    proc = subprocess.Popen(
        [sys.executable, str(prog)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        port = int(line.split()[1])
        c = R.connected(("127.0.0.1", port), "watcher", 5)
        c.subscribe("svc/state", 1)
        assert c.recv_publish().payload == b"online"  # retained by on_startup
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert c.recv_publish().payload == b"offline"  # on_shutdown, before clients go
        p = c.expect(R.DISCONNECT)
        assert R.parse_disconnect(p) == 0x8B  # Server shutting down
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert time.monotonic() - started < 10
        assert "SHUTDOWN HOOK" in out and "RETURNED" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_failing_on_startup_stops_the_start() -> None:
    import asyncio

    import pytest

    from mqttd import MQTTApp

    app = MQTTApp(host="127.0.0.1", port=0)

    @app.on_startup
    def broken() -> None:
        raise RuntimeError("no database")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="no database"):
            await app.start()
        assert app._node is None  # shut down again: nothing left listening

    asyncio.run(main())
