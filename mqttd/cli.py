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
    p = argparse.ArgumentParser(
        prog="mqttd",
        description="A fast MQTT 3.1.1 / 5.0 broker. With no options it serves 127.0.0.1:1883 "
        "with in-process routing.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, local clients only; "
        "0.0.0.0 accepts remote clients)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=1883,
        help="TCP port (default 1883; 0 picks a free port and prints it)",
    )
    p.add_argument(
        "--max-packet-size",
        type=int,
        default=1024 * 1024,
        metavar="BYTES",
        help="largest packet accepted (default 1048576, at most 268435460)",
    )
    p.add_argument(
        "--max-queued-messages",
        type=int,
        default=1000,
        metavar="N",
        help="QoS 1/2 messages queued per offline or busy session (default 1000)",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=65535,
        metavar="N",
        help="QoS 1/2 messages in flight to each client (default 65535; an MQTT 5 "
        "client's Receive Maximum lowers it)",
    )
    p.add_argument(
        "--receive-maximum",
        type=int,
        default=65535,
        metavar="N",
        help="QoS 2 messages a client may have awaiting PUBREL (default 65535)",
    )
    p.add_argument(
        "--topic-alias-maximum",
        type=int,
        default=10,
        metavar="N",
        help="topic aliases an MQTT 5 client may use (default 10; 0 refuses them)",
    )
    p.add_argument(
        "--max-keepalive",
        type=int,
        default=0,
        metavar="SECONDS",
        help="longest keepalive granted (default 0: as the client asks)",
    )
    p.add_argument(
        "--sys-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between $SYS/broker updates (default 10; 0 turns them off)",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help="join other mqttd nodes through Redis: redis://[:password@]host:port/db, "
        "rediss:// (TLS) or unix:///path; redis+cluster://host:port (a seed node of a Redis "
        "Cluster, sharded pub/sub, Redis 7+; rediss+cluster:// for TLS) "
        "(default: this node only)",
    )
    p.add_argument(
        "--redis-prefix",
        default="",
        metavar="PREFIX",
        help="prefix of the Redis channels, to keep deployments sharing one Redis "
        "apart (default empty: topic a/b is channel a/b)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def version_line() -> str:
    from mqttd._speedups import describe

    return f"mqttd {__version__} ({describe()}), Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s mqttd[%(process)d] %(levelname)s: %(message)s",
        stream=sys.stdout,
    )
    if args.version:
        print(version_line())
        return 0

    from mqttd.broker import Broker, BrokerConfig

    config = BrokerConfig(
        host=args.host,
        port=args.port,
        max_packet_size=args.max_packet_size,
        max_queued_messages=args.max_queued_messages,
        max_inflight=args.max_inflight,
        receive_maximum=args.receive_maximum,
        topic_alias_maximum=args.topic_alias_maximum,
        max_keepalive=args.max_keepalive,
        sys_interval=args.sys_interval,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
    )
    try:
        config.validate()
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
        return runner(_serve(Broker(config)))
    except KeyboardInterrupt:
        return 0


async def _serve(broker: object) -> int:
    from mqttd.broker import Broker

    assert isinstance(broker, Broker)
    cfg = broker.config
    from mqttd.redis_bridge import RedisUnavailable

    try:
        await broker.start()
    except RedisUnavailable as exc:
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
    log.info("%s listening on %s:%d (pid %d)%s", version_line(), host, port, os.getpid(), hint)
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
