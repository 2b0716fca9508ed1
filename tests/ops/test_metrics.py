"""The metrics endpoint (issue 15, item 3): ``--metrics-port`` serves Prometheus's text format
through prometheus-client, parsed here with prometheus-client's own parser; the figures move
when traffic flows; /health and /ready answer, and /ready says 503 while Redis is away."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BrokerProc, start_broker, stop_broker


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProc]:
    b = start_broker("--metrics-port", "0")
    try:
        yield b
    finally:
        stop_broker(b)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(b: BrokerProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels."""
    status, text = get(b.urls["http"])
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_parse_and_move_with_traffic(broker: BrokerProc) -> None:
    before = scrape(broker)
    assert before[("mqttd_up", ())] == 1
    with socket.create_connection((broker.host, broker.port), timeout=5) as s:
        s.sendall(b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02m1")  # CONNECT "m1"
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(b"\x82\x08\x00\x01\x00\x03m/t\x01")  # SUBSCRIBE m/t QoS 1
        assert s.recv(5)[0] == 0x90
        s.sendall(b"\x30\x07\x00\x03m/thi" * 10)  # 10 x PUBLISH QoS 0 "hi"
        got = b""
        while got.count(b"m/thi") < 10:
            chunk = s.recv(4096)
            assert chunk, "closed by the broker"
            got += chunk
        during = scrape(broker)
        assert during[("mqttd_connections", ())] == before[("mqttd_connections", ())] + 1
        assert during[("mqttd_subscriptions", ())] >= 1
    after = scrape(broker)
    assert (
        after[("mqttd_messages_received_total", ())]
        == before[("mqttd_messages_received_total", ())] + 10
    )
    assert (
        after[("mqttd_messages_sent_total", ())] >= before[("mqttd_messages_sent_total", ())] + 10
    )
    assert after[("mqttd_received_bytes_total", ())] > before[("mqttd_received_bytes_total", ())]
    assert ("mqttd_event_loop_lag_seconds", ()) in after
    assert ("mqttd_build_info", ()) not in after  # (labelled)
    assert any(name == "mqttd_build_info" for name, _ in after)


def test_health_and_ready(broker: BrokerProc) -> None:
    base = broker.urls["http"].removesuffix("/metrics")
    assert get(base + "/health") == (200, "ok\n")
    assert get(base + "/ready") == (200, "ready\n")


def test_a_taken_metrics_port_is_one_line() -> None:
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "mqttd", "--port", "0", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"mqttd: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    )


def test_messages_by_qos_and_refusals_by_reason(broker: BrokerProc) -> None:
    before = scrape(broker)

    def value(s: dict, name: str, **labels: str) -> float:
        return s.get((name, tuple(sorted(labels.items()))), 0.0)

    with socket.create_connection((broker.host, broker.port), timeout=5) as s:
        s.sendall(b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02q2")  # CONNECT "q2"
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(b"\x82\x08\x00\x01\x00\x03q/t\x02")  # SUBSCRIBE q/t QoS 2
        assert s.recv(5)[0] == 0x90
        s.sendall(b"\x34\x09\x00\x03q/t\x00\x07hi")  # PUBLISH QoS 2, id 7, "hi"
        got = b""
        while b"hi" not in got or b"\x50\x02\x00\x07" not in got:  # the PUBLISH and PUBREC
            chunk = s.recv(4096)
            assert chunk, "closed by the broker"
            got += chunk
    # A CONNECT with an empty client id and CleanSession 0: refused 0x02 [MQTT-3.1.3-8]
    with socket.create_connection((broker.host, broker.port), timeout=5) as s:
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00")
        assert s.recv(4) == b"\x20\x02\x00\x02"
    after = scrape(broker)
    qos2 = "mqttd_messages_received_by_qos_total"
    assert value(after, qos2, qos="2") == value(before, qos2, qos="2") + 1
    sent = "mqttd_messages_sent_by_qos_total"
    assert value(after, sent, qos="2") == value(before, sent, qos="2") + 1
    payload = "mqttd_received_payload_bytes_by_qos_total"
    assert value(after, payload, qos="2") == value(before, payload, qos="2") + 2
    refused = "mqttd_connections_refused_total"
    reason = "client_identifier_not_valid"
    assert value(after, refused, reason=reason) == value(before, refused, reason=reason) + 1


def test_grafana_dashboard_queries_metrics_the_node_serves(tmp_path) -> None:
    """docs/grafana-dashboard.json asks only for metrics a node serves: those of a node with a
    persistence file, and the Redis ones (mqttd.metrics, served by a node joined to Redis)."""
    import json
    import re
    from pathlib import Path

    from mqttd.metrics import REDIS_COUNTERS

    dash = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(mqttd_[a-z0-9_]+)", e)}
    b = start_broker("--metrics-port", "0", "--persistence-file", str(tmp_path / "p.db"))
    try:
        status, text = get(b.urls["http"])
        assert status == 200
    finally:
        stop_broker(b)
    # every family, also one without samples yet (no refusal so far)
    served = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(text)
    }
    served |= {f"mqttd_redis_{k}_total" for k in REDIS_COUNTERS}
    served |= {"mqttd_redis_up", "mqttd_redis_rtt_seconds"}
    missing = used - served
    assert not missing, f"the dashboard asks for metrics nobody serves: {sorted(missing)}"
    assert len(used) >= 20
