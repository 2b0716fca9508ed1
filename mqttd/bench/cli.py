"""Command line of the load generator: ``python -m mqttd.bench <scenario> [options]``.

Each scenario is a sub-command; options shared by every scenario (target, timing, placement,
output, comparison) are added by ``_common_options`` so a new scenario only declares its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from mqttd.bench import hotloop, scenarios
from mqttd.bench.mqtt import BenchError
from mqttd.bench.report import compare, format_comparison, format_run
from mqttd.bench.runner import Options, RunResult, Scenario, run

VERSIONS = {"3.1.1": 4, "4": 4, "311": 4, "5": 5, "5.0": 5}


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


def _version(s: str) -> int:
    try:
        return VERSIONS[s]
    except KeyError:
        raise argparse.ArgumentTypeError("MQTT version must be 4 (3.1.1) or 5") from None


def _common_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=1883)
    g.add_argument(
        "--sub-port",
        type=int,
        default=0,
        help="subscribers connect to this port (another node of the same cluster)",
    )
    g.add_argument("--mqtt-version", type=_version, default=4, metavar="4|5")
    g.add_argument(
        "--broker-pid", type=int, default=None, help="read its CPU use from /proc (Linux)"
    )
    g.add_argument("--label", default="", help="name of the broker in the report")
    g = p.add_argument_group("timing and load")
    g.add_argument("--duration", type=float, default=5.0, help="measured window, s")
    g.add_argument("--warmup", type=float, default=1.0, help="s before the window opens")
    g.add_argument(
        "--procs",
        type=int,
        default=1,
        help="1: all clients in one process (default, lightest); N: subscribers + N-1 publisher processes",
    )
    g.add_argument("--batch", type=int, default=65536, help="bytes per publisher send")
    g.add_argument("--sndbuf", type=int, default=131072, help="publisher SO_SNDBUF, bytes")
    g.add_argument("--inflight", type=int, default=1000, help="QoS>0 unacked window per pub")
    g.add_argument(
        "--rcvlowat", type=int, default=32768, help="QoS 0 subscriber SO_RCVLOWAT (1 = off)"
    )
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print JSON instead of text")
    g.add_argument("--quiet-publishers", action="store_true", help="no per-publisher table")
    g = p.add_argument_group("comparison")
    g.add_argument(
        "--compare",
        type=_hostport,
        metavar="HOST:PORT",
        help="run the same scenario against a second broker B, alternating A B A B",
    )
    g.add_argument("--compare-pid", type=int, default=None, help="pid of broker B for CPU")
    g.add_argument("--compare-label", default="", help="name of broker B in the report")
    g.add_argument("--rounds", type=int, default=3, help="rounds of A B with --compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mqttd.bench",
        description="Load generator for any MQTT broker; reports delivered messages/s, loss, "
        "reordering and the CPU of the generator and (with --broker-pid) of the broker.",
    )
    sub = parser.add_subparsers(dest="scenario", required=True)
    f = sub.add_parser("fanin", help="N publishers -> 1 subscriber (prefix/+)")
    f.add_argument("--publishers", type=int, default=8)
    f.add_argument("--payload", type=int, default=64, help="bytes (>= 12)")
    f.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    f.add_argument("--rate", type=float, default=0.0, help="total msg/s; 0 = as fast as read")
    f.add_argument("--wildcard", choices=("+", "#"), default="+")
    f.add_argument("--topic-prefix", default=None)
    _common_options(f)
    return parser


def _factory(args: argparse.Namespace) -> Callable[[], Scenario]:
    if args.scenario == "fanin":
        return lambda: scenarios.fanin(
            publishers=args.publishers,
            payload=args.payload,
            qos=args.qos,
            rate=args.rate,
            prefix=args.topic_prefix,
            wildcard=args.wildcard,
        )
    raise SystemExit(f"unknown scenario {args.scenario}")


def _options(
    args: argparse.Namespace, host: str, port: int, pid: int | None, label: str
) -> Options:
    return Options(
        host=host,
        port=port,
        sub_port=args.sub_port,
        protocol_level=args.mqtt_version,
        warmup=args.warmup,
        duration=args.duration,
        procs=args.procs,
        batch_bytes=args.batch,
        sndbuf=args.sndbuf,
        inflight=args.inflight,
        rcvlowat=args.rcvlowat,
        broker_pid=pid,
        label=label,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    make = _factory(args)
    if not hotloop.COMPILED:
        print(
            "warning: compiled hot loop not available; the generator may be the bottleneck",
            file=sys.stderr,
        )
    opt_a = _options(args, args.host, args.port, args.broker_pid, args.label)
    try:
        if args.compare:
            host_b, port_b = args.compare
            opt_b = _options(args, host_b, port_b, args.compare_pid, args.compare_label)

            def progress(which: str, rnd: int, r: RunResult) -> None:
                if not args.json:
                    print(
                        f"round {rnd} {which} ({r.label}): {r.delivered_per_s:,.0f} msg/s "
                        f"delivered, lost {r.lost_total:,}",
                        flush=True,
                    )

            cmp = compare(make, opt_a, opt_b, args.rounds, on_run=progress)
            if args.json:
                print(json.dumps(cmp.to_dict(), indent=2))
            else:
                print(format_comparison(cmp))
            errors = [e for r in cmp.a + cmp.b for e in r.errors]
        else:
            r = run(make(), opt_a)
            if args.json:
                print(json.dumps(r.to_dict(), indent=2))
            else:
                print(format_run(r, per_publisher=not args.quiet_publishers))
            errors = r.errors
    except (BenchError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if errors else 0
