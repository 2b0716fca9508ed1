"""A short soak (``benchmarks/soak.py --duration 20``) against a real mqttd process: mixed QoS 0/1/2
traffic with pausing and stalled subscribers and connection churn. The run must pass (exit 0:
no QoS 1/2 message lost by a subscriber that kept up, RSS flat after warm-up, the broker alive),
and leave its CSV, PNG and JSON summary behind.

The broker comes from tests/conftest.py (``--port 0``, its pid checked) with ``--sys-interval 1``
so that the dropped counters reach the soak's ``$SYS`` subscriber within the run. It takes about
30 s. benchmarks/README.md describes the tool; the full run is ``--duration 600``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import start_broker, stop_broker

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "benchmarks" / "soak.py"
DURATION = 20


@pytest.mark.timeout(240)
def test_soak_short(tmp_path: Path) -> None:
    b = start_broker("--sys-interval", "1")
    try:
        run = subprocess.run(
            [sys.executable, str(SOAK), "--duration", str(DURATION), "--quiet"]
            + ["--port", str(b.port), "--broker-pid", str(b.proc.pid), "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        alive = b.alive()
    finally:
        stop_broker(b)
    out = run.stdout + run.stderr
    assert alive, "the broker died during the soak:\n" + out
    summary_path = tmp_path / "summary.json"
    assert summary_path.exists(), out
    summary = json.loads(summary_path.read_text())

    csv = (tmp_path / "soak.csv").read_text().splitlines()
    assert csv[0].startswith("t,rss_bytes,"), csv[:1]
    assert len(csv) > DURATION // 2, f"only {len(csv) - 1} samples in the CSV"
    png = tmp_path / "soak.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for q in ("0", "1", "2"):
        per = summary["qos"][q]
        assert per["published"] > 0 and per["delivered"] > 0, (q, per)
    for q in ("1", "2"):
        assert summary["qos"][q]["lost_kept_up"] == 0, (q, summary["lost_by_kept_up_subscriber"])
    assert summary["kept_up_disconnected"] == [], summary["kept_up_disconnected"]
    assert run.returncode == 0, out
