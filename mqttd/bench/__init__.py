"""mqttd's load generator: drives any MQTT broker at HOST:PORT and measures what it delivers.

Layout:

- ``_loadgen.pyx`` / ``_loadgen_py.py``: the hot loops (batch PUBLISH fill, frame counter),
  compiled and pure twins, picked once by ``hotloop``.
- ``mqtt``: a tiny client-side encoder and blocking handshake (not mqttd's codec, on purpose).
- ``engine``: the worker process's epoll loop (publishers, subscribers, pacing, timeline).
- ``runner``: process placement, start signal, CPU sampling, result assembly.
- ``scenarios``: scenario builders (``fanin`` for now).
- ``report`` and ``cli``: text/JSON output and ``python -m mqttd.bench``.
"""

from __future__ import annotations

from mqttd.bench.runner import Options, RunResult, Scenario, run
from mqttd.bench.scenarios import fanin

__all__ = ["Options", "RunResult", "Scenario", "fanin", "run"]
