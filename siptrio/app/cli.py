"""The ``siptrio`` command: serve, check-config, certs.

Exit status: 0 on success and on a clean stop by SIGINT/SIGTERM, 2 for a bad
configuration or command line, 1 for a start-up failure (port in use, missing
certificates, unreadable store).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from .. import __version__

__all__ = ["main"]

log = logging.getLogger("siptrio")


EPILOG = """\
signals (serve): SIGTERM and SIGINT stop cleanly (exit 0); SIGHUP reloads the config
  file and reopens the log file (keys that need a restart are named in the log).
exit status: 0 success or clean stop; 1 cannot start or the command failed;
  2 bad config file or command line (the message names file, line and key).
files: the store $XDG_STATE_HOME/siptrio/siptrio.sqlite, the control socket
  $XDG_RUNTIME_DIR/siptrio/control.sock (both set in config.ini).
shell completion: siptrio completion bash|zsh|tcsh; man page: siptrio manpage.
Each command has its own --help."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="siptrio",
        description="SIP registrar and proxy on Trio",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"siptrio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the server",
        description=(
            "Run the registrar and proxy until SIGINT or SIGTERM; SIGHUP reloads the config "
            "file. Logs one `listening on <transport> <addr>:<port>` line per listener once "
            "all are bound."
        ),
    )
    serve.add_argument(
        "--config", "-c", metavar="FILE", help="config.ini (default: built-in defaults)"
    )
    serve.add_argument(
        "--sip-trace", action="store_true", help="log every SIP message sent and received"
    )
    serve.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level",
    )
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set sip.udp_port=5070 (repeatable)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes sharing the ports (needs [registrar] backend = redis)",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)

    check = sub.add_parser(
        "check-config",
        help="validate a config file and print the effective settings",
        description=(
            "Exit 0 and print every section and key as JSON, or exit 2 with the first "
            "problem (file, line, section and key)."
        ),
    )
    check.add_argument("file", metavar="FILE", help="the config file")

    certs = sub.add_parser(
        "certs",
        help="write a development CA and server certificate for TLS/WSS",
        description=(
            "Issue a server certificate (server.pem, server.key) and a client certificate "
            "(client.pem) from the development CA in DIR (ca.pem, its key ca.key), made on "
            "the first run and reused after, so clients that trust it need nothing new."
        ),
    )
    certs.add_argument("--dir", default="certs", help="output directory (default: certs)")
    certs.add_argument(
        "--hosts", default="localhost,127.0.0.1,::1", help="comma-separated names and addresses"
    )
    certs.add_argument(
        "--force",
        action="store_true",
        help="make a new CA even if DIR has one (clients must then trust the new one)",
    )
    from .cli_cdrs import add_subcommand as add_cdrs
    from .cli_credentials import add_subcommand as add_credentials
    from .cli_ops import add_subcommands
    from .cli_users import add_subcommand as add_users

    add_subcommands(sub)
    add_users(sub)
    add_credentials(sub)
    add_cdrs(sub)
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description=(
            "e.g. `siptrio completion bash > /etc/bash_completion.d/siptrio`, or "
            "`siptrio completion zsh > ~/.zfunc/_siptrio`"
        ),
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell")
    sub.add_parser(
        "manpage",
        help="print the siptrio(1) man page (roff)",
        description="e.g. `siptrio manpage > /usr/local/share/man/man1/siptrio.1`",
    )
    return p


def _overrides(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise SystemExit(f"siptrio: --set expects SECTION.KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "certs":
        return _certs(args.dir, args.hosts, force=args.force)
    if args.command == "users":
        from .cli_users import run as run_users

        return run_users(args)
    if args.command == "completion":
        import shtab

        print(shtab.complete(_parser(), args.shell))
        return 0
    if args.command == "manpage":
        from .manpage import render

        print(render(_parser()), end="")
        return 0
    if args.command == "cdrs":
        from .cli_cdrs import run as run_cdrs

        return run_cdrs(args)
    if args.command == "credentials":
        from .cli_credentials import run as run_credentials

        return run_credentials(args)
    from .cli_ops import COMMANDS

    if args.command in COMMANDS:
        from .cli_ops import run

        return run(args)
    _parser().print_help()
    return 2


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    overrides = _overrides(args.set)
    if args.sip_trace:
        overrides["logging.sip_trace"] = "true"
    if args.log_level:
        overrides["logging.level"] = args.log_level
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 2
    from .logs import LogSetup

    # Until the server's own handler is in place a SIGHUP must not kill the process
    # (its default): one sent while starting is ignored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        logs = LogSetup(config.logging, worker=args.worker_index)
    except OSError as e:
        print(
            f"siptrio: [logging] file = {config.logging.file}: cannot open: {e.strerror or e}",
            file=sys.stderr,
        )
        return 1
    if args.workers is not None:
        if args.workers < 1:
            print("siptrio: --workers needs a number of 1 or more", file=sys.stderr)
            return 2
        if config.registrar.backend != "redis":
            print(
                "siptrio: --workers needs a shared location: set [registrar] backend = redis "
                "(and redis_url)",
                file=sys.stderr,
            )
            return 2
        from .workers import supervise

        passed = ["--config", args.config] if args.config else []
        passed += ["--sip-trace"] if args.sip_trace else []
        passed += ["--log-level", args.log_level] if args.log_level else []
        for item in args.set:
            passed += ["--set", item]
        return supervise(config, args.workers, passed, reopen_log=logs.reopen)
    from ..store.base import StoreError
    from .server import Server, StartupError

    server = Server(config, worker=args.worker_index)
    server.reloader.logs = logs
    try:
        trio.run(_serve_until_signal, server)
    except BaseException as e:
        # Trio's nurseries wrap errors in exception groups: find ours inside.
        found = _find(e, (StartupError, StoreError))
        if found is None:
            raise
        log.error("%s", found)
        return 1
    return 0


def _find(e: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    if isinstance(e, kinds):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            hit = _find(inner, kinds)
            if hit is not None:
                return hit
    return None


async def _serve_until_signal(server: object) -> None:
    """Run until SIGINT or SIGTERM; SIGHUP reloads the config (and reopens the log)."""
    from .server import Server

    assert isinstance(server, Server)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)

            async def wait_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        nursery.start_soon(server.reloader.reload, "SIGHUP")
                        continue
                    log.info("received %s, shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_signal)


def _check_config(path: str) -> int:
    from .config import ConfigError, config_as_dict, load_config

    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 2
    print(json.dumps(config_as_dict(config), indent=2))
    print(f"{path}: OK", file=sys.stderr)
    return 0


def _certs(directory: str, hosts: str, *, force: bool) -> int:
    from .certs import CertError, trust_instructions, write_dev_certs

    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if not names:
        print("siptrio: --hosts needs at least one name or address", file=sys.stderr)
        return 2
    try:
        paths = write_dev_certs(directory, names, force=force)
    except CertError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 1
    print(trust_instructions(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
