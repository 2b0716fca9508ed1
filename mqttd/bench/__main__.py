"""``python -m mqttd.bench``: the load generator's command line (see mqttd/bench/cli.py)."""

from mqttd.bench.cli import main

raise SystemExit(main())
