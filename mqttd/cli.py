"""The ``mqttd`` command: run one broker node."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys

from mqttd import __version__

log = logging.getLogger("mqttd")


def build_parser() -> argparse.ArgumentParser:
    from mqttd.options import OPTIONS

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


def version_line() -> str:
    from mqttd._speedups import describe

    return f"mqttd {__version__} ({describe()}), Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    from mqttd import options

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
    logging.basicConfig(
        level=getattr(logging, str(values["log_level"]).upper()),
        format="%(asctime)s mqttd[%(process)d] %(levelname)s: %(message)s",
        stream=sys.stdout,
    )
    from mqttd.broker import Broker

    try:
        broker = Broker(config)
    except ValueError as exc:
        print(f"mqttd: error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(_serve(broker))
    except KeyboardInterrupt:
        return 0


async def _serve(broker: object) -> int:
    from mqttd.broker import Broker

    assert isinstance(broker, Broker)
    cfg = broker.config
    from mqttd.redis_bridge import RedisUnavailable

    try:
        await broker.start()
    except (RedisUnavailable, ValueError) as exc:
        print(f"mqttd: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            msg = f"port {cfg.port} on {cfg.host} is already in use (another broker? pick --port)"
        else:
            msg = f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
        print(f"mqttd: error: {msg}", file=sys.stderr)
        return 1
    host, port = broker.addresses[0]
    hint = ""
    if cfg.host in ("127.0.0.1", "localhost", "::1"):
        hint = "; local clients only, use --host 0.0.0.0 to accept remote clients"
    tls = " with TLS" if broker.ssl_context is not None else ""
    log.info(
        "%s listening on %s:%d (pid %d)%s%s", version_line(), host, port, os.getpid(), tls, hint
    )
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
