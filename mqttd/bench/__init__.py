"""mqttd's load generator: drives any MQTT broker at HOST:PORT and measures what it delivers.

Layout:

- ``_loadgen.pyx`` / ``_loadgen_py.py``: the hot loops (batch PUBLISH fill, frame counter),
  compiled and pure twins, picked once by ``hotloop``.
- ``mqtt``: a tiny client-side encoder and blocking handshake (not mqttd's codec, on purpose).
- ``engine``: the worker process's epoll loop (publishers, subscribers, pacing, timeline).
- ``runner``: process placement, start signal, progress, CPU sampling, result assembly.
- ``scenarios``: scenario builders (``fanin``, ``fanout``, ``p2p``, ``latency``).
- ``idle``: the idle-connections scenario (its own epoll loop; no messages).
- ``report`` and ``cli``: text/JSON output, A/B comparison, ``mqttd-bench`` /
  ``python -m mqttd.bench``.
"""

from __future__ import annotations

from mqttd.bench.idle import Idle, run_idle
from mqttd.bench.report import Comparison, compare, run_any
from mqttd.bench.runner import Options, RunResult, Scenario, run
from mqttd.bench.scenarios import fanin, fanout, latency, p2p

__all__ = [
    "Comparison",
    "Idle",
    "Options",
    "RunResult",
    "Scenario",
    "compare",
    "fanin",
    "fanout",
    "latency",
    "p2p",
    "run",
    "run_any",
    "run_idle",
]
