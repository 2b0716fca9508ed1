"""Command line of the load generator: ``mqttd-bench <scenario> [options]`` (also
``python -m mqttd.bench``).

Each scenario is a sub-command; options shared by every scenario (target, timing, placement,
output, comparison) are added by ``_common_options`` so a new scenario only declares its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable

from mqttd.bench import hotloop, scenarios
from mqttd.bench.idle import Idle
from mqttd.bench.mqtt import BenchError
from mqttd.bench.report import compare, format_comparison, format_run, run_any, run_line
from mqttd.bench.runner import Options, RunResult, Scenario

VERSIONS = {"3.1.1": 4, "4": 4, "311": 4, "5": 5, "5.0": 5}

DESCRIPTION = textwrap.fill(
    "Load generator for any MQTT broker over TCP. Reports delivered messages/s, loss, "
    "reordering, the QoS 1 acknowledgement flow, latency percentiles or idle-connection "
    "memory, and the CPU of the generator and (with --broker-pid) of the broker. Progress goes "
    "to stderr once a second (not with --json or --quiet). --compare HOST:PORT runs the "
    "scenario against two brokers in turn (A B A B ...) and prints the ratios. "
    "'mqttd-bench SCENARIO --help' lists a scenario's options.",
    96,
)

SCENARIOS = {
    "fanin": (
        "many publishers -> one subscriber",
        "Fan-in: N publishers (--publishers, default 8) each publish to their own topic "
        "PREFIX/i as fast as the broker reads them (or at --rate msg/s in all); one subscriber "
        "subscribes to PREFIX/+ (or PREFIX/#) and counts every message. Reports delivered msg/s, "
        "loss and reordering per publisher.",
    ),
    "fanout": (
        "one publisher -> many subscribers on one topic",
        "Fan-out: one publisher (--publishers to have more) publishes to a single topic that N "
        "subscribers (--subscribers, default 50) all subscribe to. Every subscriber must get "
        "every message: delivered msg/s counts every copy (N x the publish rate when nothing is "
        "dropped); loss and reordering are counted per subscriber and publisher.",
    ),
    "p2p": (
        "N independent publisher -> subscriber pairs",
        "Point-to-point: N pairs (--pairs, default 16); publisher i publishes to PREFIX/i and "
        "only subscriber i subscribes to it (exact topic, no wildcard). Measures the routing of "
        "many independent flows; delivered msg/s is the sum over the pairs.",
    ),
    "latency": (
        "fixed-rate publishing, receive - send time percentiles",
        "Latency at a fixed rate: one publisher (--publishers for more) sends --rate msg/s in "
        "all (default 20,000) in bursts of rate/1000, each payload carrying its send time "
        "(CLOCK_MONOTONIC ns, shared by all processes); one subscriber records receive - send "
        "for every message of the window. Reports p50/p90/p99/p99.9/max in microseconds; "
        "--compare divides the p99s. A broker that cannot keep up shows published < rate.",
    ),
    "idle": (
        "hold many idle connections, broker memory per connection",
        "Idle connections: opens --connections TCP connections (default 10,000), sends each "
        "a CONNECT with --keepalive, counts the CONNACKs, then holds them open for warm-up + "
        "duration seconds (PINGREQ every keepalive/2 if that long). With --broker-pid it reads "
        "the broker's VmRSS from /proc/PID/status before and at the end of the hold and "
        "reports KiB per connection; --compare divides the RSS. The generator raises its "
        "RLIMIT_NOFILE soft limit to the hard limit; the broker needs as many descriptors "
        "(ulimit -n before starting it).",
    ),
}


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
        "--broker-pid",
        type=int,
        default=None,
        help="read the broker's CPU and memory from /proc (Linux)",
    )
    g.add_argument("--label", default="", help="name of the broker in the report")
    g.add_argument(
        "--transport",
        choices=("tcp", "ws"),
        default="tcp",
        help="tcp (default), or ws: MQTT over WebSocket to the port (and --compare's)",
    )
    g.add_argument("--ws-path", default="/mqtt", help="the WebSocket path with --transport ws")
    g = p.add_argument_group("timing and load")
    g.add_argument("--duration", type=float, default=5.0, help="measured window, s")
    g.add_argument("--warmup", type=float, default=1.0, help="s before the window opens")
    g.add_argument(
        "--procs",
        type=int,
        default=1,
        help="1: all clients in one process (default, lightest); N: the side with more clients "
        "spread over N-1 processes, the other side in one",
    )
    g.add_argument("--batch", type=int, default=65536, help="bytes per publisher send")
    g.add_argument("--sndbuf", type=int, default=131072, help="publisher SO_SNDBUF, bytes")
    g.add_argument("--inflight", type=int, default=1000, help="QoS>0 unacked window per pub")
    g.add_argument(
        "--rcvlowat", type=int, default=32768, help="QoS 0 subscriber SO_RCVLOWAT (1 = off)"
    )
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print JSON instead of text")
    g.add_argument(
        "--quiet", "-q", action="store_true", help="no progress lines on stderr while it runs"
    )
    g.add_argument("--quiet-publishers", action="store_true", help="no per-publisher table")
    g = p.add_argument_group("comparison")
    g.add_argument(
        "--compare",
        type=_hostport,
        metavar="HOST:PORT",
        help="run the same scenario against a second broker B, alternating A B A B, and print "
        "the ratio B/A of the medians",
    )
    g.add_argument("--compare-pid", type=int, default=None, help="pid of broker B (CPU, RSS)")
    g.add_argument("--compare-label", default="", help="name of broker B in the report")
    g.add_argument("--rounds", type=int, default=3, help="rounds of A B with --compare")


def _flow_options(p: argparse.ArgumentParser, rate: float, rate_help: str) -> None:
    g = p.add_argument_group("messages")
    g.add_argument("--payload", type=int, default=64, help="bytes (>= 12; latency: >= 20)")
    g.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    g.add_argument("--rate", type=float, default=rate, help=rate_help)
    g.add_argument("--topic-prefix", default=None, help="default: bench/<scenario>/<random>")


def build_parser() -> argparse.ArgumentParser:
    epilog = "scenarios:\n" + "\n".join(
        f"  {name:8} {text}" for name, (_, text) in SCENARIOS.items()
    )
    parser = argparse.ArgumentParser(
        prog="mqttd-bench",
        description=DESCRIPTION,
        epilog=_wrap_epilog(epilog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    def add(name: str) -> argparse.ArgumentParser:
        short, text = SCENARIOS[name]
        return sub.add_parser(name, help=short, description=text)

    max_rate = "total msg/s over all publishers; 0 = as fast as the broker reads"
    f = add("fanin")
    f.add_argument("--publishers", "--clients", type=int, default=8, dest="publishers")
    f.add_argument("--wildcard", choices=("+", "#"), default="+")
    _flow_options(f, 0.0, max_rate)
    _common_options(f)
    f = add("fanout")
    f.add_argument("--subscribers", "--clients", type=int, default=50, dest="subscribers")
    f.add_argument("--publishers", type=int, default=1)
    _flow_options(f, 0.0, max_rate)
    _common_options(f)
    f = add("p2p")
    f.add_argument("--pairs", "--clients", type=int, default=16, dest="pairs")
    _flow_options(f, 0.0, max_rate)
    _common_options(f)
    f = add("latency")
    f.add_argument("--publishers", "--clients", type=int, default=1, dest="publishers")
    _flow_options(f, 20000.0, "total msg/s (fixed; default 20,000)")
    _common_options(f)
    f = add("idle")
    f.add_argument("--connections", "--clients", type=int, default=10000, dest="connections")
    f.add_argument("--keepalive", type=int, default=60, help="s, in each CONNECT")
    f.add_argument("--parallel", type=int, default=200, help="handshakes in flight at once")
    f.add_argument("--connect-timeout", type=float, default=60.0, help="s to open them all")
    _common_options(f)
    return parser


def _wrap_epilog(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("  "):
            out.extend(textwrap.wrap(line, 96, subsequent_indent=" " * 11))
        else:
            out.append(line)
    return "\n".join(out)


def factory(args: argparse.Namespace) -> Callable[[], Scenario | Idle]:
    """A builder of fresh scenario specs (new topics and client ids for each run)."""
    a = args
    if a.scenario == "fanin":
        return lambda: scenarios.fanin(
            a.publishers, a.payload, a.qos, a.rate, a.topic_prefix, a.wildcard
        )
    if a.scenario == "fanout":
        return lambda: scenarios.fanout(
            a.subscribers, a.payload, a.qos, a.rate, a.topic_prefix, a.publishers
        )
    if a.scenario == "p2p":
        return lambda: scenarios.p2p(a.pairs, a.payload, a.qos, a.rate, a.topic_prefix)
    if a.scenario == "latency":
        return lambda: scenarios.latency(a.rate, a.payload, a.qos, a.publishers, a.topic_prefix)
    if a.scenario == "idle":
        return lambda: Idle(a.connections, a.keepalive, a.parallel, a.connect_timeout)
    raise SystemExit(f"unknown scenario {a.scenario}")


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
        ws_path=args.ws_path if args.transport == "ws" else "",
        broker_pid=pid,
        label=label,
        progress=not (args.json or args.quiet),
    )


def _ok(r: RunResult) -> bool:
    return r.integrity_ok and not r.errors


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 all right; 1 a run had errors or failed its check (QoS >= 1 loss,
    reordering, missing acknowledgements, idle connections refused or dropped); 2 no run."""
    args = build_parser().parse_args(argv)
    make = factory(args)
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
                    print(f"round {rnd} {which}: {run_line(r)}", flush=True)

            cmp = compare(make, opt_a, opt_b, args.rounds, on_run=progress)
            if args.json:
                print(json.dumps(cmp.to_dict(), indent=2))
            else:
                print(format_comparison(cmp))
            ok = all(_ok(r) for r in cmp.a + cmp.b)
        else:
            r = run_any(make(), opt_a)
            if args.json:
                print(json.dumps(r.to_dict(), indent=2))
            else:
                print(format_run(r, per_publisher=not args.quiet_publishers))
            ok = _ok(r)
    except (BenchError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1
