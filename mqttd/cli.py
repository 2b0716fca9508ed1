"""The ``mqttd`` command: run one broker node."""

from __future__ import annotations

import argparse
import os
import sys

from mqttd import options, passwords
from mqttd.logs import setup_logging
from mqttd.node import Node, run, serve
from mqttd.options import OPTIONS
from mqttd.version import version_line


class _Help(argparse.HelpFormatter):
    """argparse's help, its width found without ``shutil``: argparse makes a formatter for every
    ``add_argument`` and imports ``shutil`` (with ``bz2`` and ``lzma``: 0.5 MB of every node's
    RSS, issue 16) for a width only ``--help`` uses. The width is ``shutil.get_terminal_size``'s:
    $COLUMNS, else the terminal's, else 80; less 2, as argparse does."""

    def __init__(self, prog: str, width: int | None = None, **kwargs: int) -> None:
        if width is None:
            try:
                width = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
                except (AttributeError, ValueError, OSError):
                    width = 80
            width -= 2
        super().__init__(prog, width=width, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mqttd",
        formatter_class=_Help,
        description="A fast MQTT 3.1.1 / 5.0 broker. With no options it serves 127.0.0.1:1883 "
        "with in-process routing. 'mqttd passwd FILE USER' writes a password file.",
        epilog="Every option can also be set in a TOML file (--config; flat name = value lines, "
        "e.g. max_connections = 1000) or as an MQTTD_<NAME> environment variable (MQTTD_PORT=1884); "
        "flags win over the environment, which wins over the file.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file of options (see below)")
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        if opt.type is bool:
            # --flag alone is true; --flag false says no (for the options whose default is true
            # or decided at start)
            p.add_argument(
                flag, nargs="?", const="true", default=None, metavar="true|false", help=opt.help
            )
        else:
            p.add_argument(flag, type=opt.type, default=None, metavar=opt.metavar, help=opt.help)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def passwd_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=_Help,
        prog="mqttd passwd",
        description="Add a user to (or change a password in, or delete a user from) a password "
        "file in Mosquitto's format: mqttd and mosquitto both read it. The password is asked "
        "twice without echo unless -b gives it.",
    )
    p.add_argument("-c", action="store_true", help="create the file (an existing one is replaced)")
    p.add_argument("-b", action="store_true", help="take the password from the command line")
    p.add_argument("-D", action="store_true", help="delete USER")
    p.add_argument(
        "-I",
        type=int,
        default=passwords.ITERATIONS,
        metavar="N",
        help=f"PBKDF2 iterations (default {passwords.ITERATIONS}; mosquitto_passwd uses 101)",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("user", metavar="USER")
    p.add_argument("password", metavar="PASSWORD", nargs="?")
    return p


def passwd_main(argv: list[str]) -> int:
    """``mqttd passwd [-c] [-b] [-D] FILE USER [PASSWORD]``, as mosquitto_passwd."""
    args = passwd_parser().parse_args(argv)
    why = passwords.check_user_name(args.user)
    if why:
        print(f"mqttd passwd: error: {why}", file=sys.stderr)
        return 2
    if args.b != (args.password is not None):
        print("mqttd passwd: error: give PASSWORD with -b, and only with -b", file=sys.stderr)
        return 2
    try:
        users = {} if args.c else passwords.load(args.file)
        if args.D:
            if users.pop(args.user, None) is None:
                print(f"mqttd passwd: error: no user {args.user!r} in {args.file}", file=sys.stderr)
                return 1
        else:
            password = args.password
            if password is None:
                import getpass

                password = getpass.getpass("Password: ")
                if getpass.getpass("Reenter password: ") != password:
                    print("mqttd passwd: error: the passwords do not match", file=sys.stderr)
                    return 1
            users[args.user] = passwords.make_hash(password.encode("utf-8"), args.I)
        passwords.write(args.file, users)
    except (ValueError, OSError) as exc:
        print(f"mqttd passwd: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["passwd"]:
        return passwd_main(argv[1:])
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
    try:
        setup_logging(
            str(values["log_level"]), sys.stdout, str(values["log_format"]), values["log_file"]
        )
    except OSError as exc:
        print(
            f"mqttd: error: log_file {values['log_file']}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    node = Node(config)
    return run(lambda: serve(node, host_hint="--host"))


if __name__ == "__main__":
    sys.exit(main())
