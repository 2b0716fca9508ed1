"""/ready follows the Redis link (issue 15, item 3): a node whose Redis is gone is alive (/health
200) but not ready (/ready 503, mqttd_redis_up 0), and ready again once Redis is back."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.ops.test_metrics import get


def test_ready_is_503_while_redis_is_away(redis_server, start_nodes) -> None:  # type: ignore[no-untyped-def]
    (node,) = start_nodes(redis_server, 1, "--metrics-port", "0")
    base = node.urls["http"].removesuffix("/metrics")
    assert get(base + "/ready") == (200, "ready\n")
    redis_server.kill()
    deadline = time.monotonic() + 30
    while get(base + "/ready")[0] != 503:
        assert time.monotonic() < deadline, "/ready did not notice that Redis is gone"
        time.sleep(0.1)
    assert get(base + "/ready")[1] == "Redis unreachable\n"
    assert get(base + "/health")[0] == 200
    families = {f.name: f for f in text_string_to_metric_families(get(base + "/metrics")[1])}
    assert families["mqttd_redis_up"].samples[0].value == 0
    redis_server.start()
    deadline = time.monotonic() + 30
    while get(base + "/ready")[0] != 200:
        assert time.monotonic() < deadline, "/ready did not notice that Redis is back"
        time.sleep(0.1)
