"""deploy/ (issue 15, item 6): the example configuration and the Dockerfile's MQTTD_* settings
are ones mqttd accepts (the unit and the image themselves cannot run here: no systemd, no Docker).
"""

from __future__ import annotations

import re
from pathlib import Path

from mqttd import options

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_example_toml_is_accepted() -> None:
    values = {**options.defaults(), **options.load_file(DEPLOY / "mqttd.toml")}
    cfg = options.broker_config(values)
    assert cfg.persistence_file == "/var/lib/mqttd/mqttd.db" and cfg.metrics_port == 9883


def test_dockerfile_environment_is_accepted() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    env = dict(re.findall(r"(MQTTD_[A-Z_]+)=(\S+)", text.split("ENV", 1)[1].split("\n#", 1)[0]))
    assert env, "no MQTTD_* settings found in the Dockerfile's ENV"
    cfg = options.broker_config({**options.defaults(), **options.from_env(env)})
    assert cfg.host == "0.0.0.0" and cfg.persistence_file == "/var/lib/mqttd/mqttd.db"


def test_unit_reloads_with_sighup_and_stops_with_sigterm() -> None:
    unit = (DEPLOY / "mqttd.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "KillSignal=SIGTERM" in unit
    assert re.search(r"^ExecStart=\S*mqttd --config /etc/mqttd/mqttd.toml$", unit, re.M)
