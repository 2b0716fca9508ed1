"""The ``mqttd`` command: run one broker node."""

from __future__ import annotations

import argparse
import sys

from mqttd import options
from mqttd.node import Node, run, serve, setup_logging
from mqttd.options import OPTIONS
from mqttd.version import version_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mqttd",
        description="A fast MQTT 3.1.1 / 5.0 broker. With no options it serves 127.0.0.1:1883 "
        "with in-process routing.",
        epilog="Every option can also be set in a TOML file (--config; flat name = value lines, "
        "e.g. max_connections = 1000) or as an MQTTD_<NAME> environment variable (MQTTD_PORT=1884); "
        "flags win over the environment, which wins over the file.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file of options (see below)")
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        if opt.type is bool:
            p.add_argument(flag, action="store_const", const=True, default=None, help=opt.help)
        else:
            p.add_argument(flag, type=opt.type, default=None, metavar=opt.metavar, help=opt.help)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(version_line())
        return 0
    values = options.defaults()
    try:
        if args.config:
            values.update(options.load_file(args.config))
        values.update(options.from_env())
        for o in options.OPTIONS:
            given = getattr(args, o.name)
            if given is not None:
                values[o.name] = options.convert(o.name, given, "--" + o.name.replace("_", "-"))
        config = options.broker_config(values)
    except (ValueError, TypeError) as exc:
        print(f"mqttd: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(str(values["log_level"]), sys.stdout)
    node = Node(config)
    return run(lambda: serve(node, host_hint="--host"))


if __name__ == "__main__":
    sys.exit(main())
