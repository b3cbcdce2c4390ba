"""``siptrio clients | dialogs | call | kick | reload``: talk to a running server over its
control socket.

Plain blocking sockets: one connection, the snapshot the server sends on connect,
at most one command and its reply. Tables for people, ``--json`` for scripts.

Exit status: 0 on success, 1 when the server cannot be reached or the command
failed (no such binding; a call that was not answered), 2 for a bad config file.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["COMMANDS", "ControlError", "add_subcommands", "run"]

COMMANDS = ("clients", "dialogs", "call", "kick", "reload")
TIMEOUT = 10.0


class ControlError(Exception):
    """The server could not be reached, or broke the protocol."""


class ControlConnection:
    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ControlError(
                f"cannot connect to the control socket {path}: {e.strerror or e}; is "
                "`siptrio serve` running with [control] enable = true and this socket path?"
            ) from None
        self.file = self.sock.makefile("rwb")
        self.snapshot = self.read()
        if self.snapshot.get("type") != "snapshot":
            raise ControlError(f"{path} did not start with a snapshot: is it siptrio's?")

    def read(self) -> dict[str, Any]:
        try:
            line = self.file.readline()
        except TimeoutError:
            raise ControlError("the server did not answer in time") from None
        except OSError as e:
            raise ControlError(f"reading the control socket: {e.strerror or e}") from None
        if not line:
            raise ControlError("the server closed the control socket")
        try:
            msg = json.loads(line)
        except ValueError:
            raise ControlError(f"not JSON from the server: {line[:80]!r}") from None
        if not isinstance(msg, dict):
            raise ControlError(f"not a JSON object from the server: {line[:80]!r}")
        return msg

    def command(self, cmd: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        self.file.write(json.dumps({"cmd": cmd, "id": 1, **fields}).encode() + b"\n")
        self.file.flush()
        while True:
            msg = self.read()
            if msg.get("type") == "reply" and msg.get("id") == 1:
                return msg

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# --- the command line ----------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", "-s", metavar="PATH", help="the control socket")
    where.add_argument("--config", "-c", metavar="FILE", help="config.ini naming [control] socket")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_subcommands(subparsers: Any) -> None:
    """Add the four commands to the ``siptrio`` parser's subparsers."""
    p = subparsers.add_parser("clients", help="list the registered clients of a running server")
    _common(p)
    p = subparsers.add_parser("dialogs", help="list the dialogs of a running server")
    _common(p)
    p = subparsers.add_parser(
        "call",
        help="place a call from the simulated client and wait for its outcome",
        description="Exit status 0 when the call was answered, 1 otherwise.",
    )
    p.add_argument("to", metavar="TO", help="bob, bob@example.com or sip:bob@example.com")
    p.add_argument("--duration", type=float, default=5.0, metavar="S", help="talk time (5)")
    p.add_argument("--from", dest="from_", metavar="URI", help="the caller's URI")
    p.add_argument("--answer-timeout", type=float, default=30.0, metavar="S", help="ring time (30)")
    _common(p)
    p = subparsers.add_parser("kick", help="remove a client's bindings; its flow is told nothing")
    p.add_argument("aor", metavar="AOR", help="bob, bob@example.com or sip:bob@example.com")
    p.add_argument("--contact", metavar="URI", help="only the binding with this contact URI")
    _common(p)
    p = subparsers.add_parser(
        "reload",
        help="make a running server read its config file again (as SIGHUP does)",
        description=(
            "The server re-reads its config file (with its --set overrides), applies what "
            "can change while running, names the keys that need a restart, and reopens its "
            "log file. A file that does not pass check-config is refused and the running "
            "config stays. Exit status 0 when reloaded, 1 when refused or unreachable."
        ),
    )
    _common(p)


def socket_path(args: argparse.Namespace) -> str:
    """--socket, else the config's (or the defaults') [control] socket."""
    if getattr(args, "socket", None):
        return str(args.socket)
    from .config import load_config

    return load_config(getattr(args, "config", None)).control.socket


def run(args: argparse.Namespace) -> int:
    from .config import ConfigError

    try:
        path = socket_path(args)
    except ConfigError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 2
    try:
        conn = ControlConnection(path)
    except ControlError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 1
    try:
        return _COMMANDS[args.command](conn, args)
    except ControlError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()


def _clients(conn: ControlConnection, args: argparse.Namespace) -> int:
    bindings = conn.snapshot.get("bindings", [])
    if args.json:
        _print_json(bindings)
        return 0
    rows = [
        [
            b["aor"],
            b["contact"],
            b["transport"],
            b.get("received", b["source"]),
            "yes" if b.get("nat") else "no",
            b["flow"] or "-",
            f"{b['expires_in']}s",
            b["user_agent"] or "-",
        ]
        for b in bindings
    ]
    _print_table(
        ["AOR", "CONTACT", "TRANSPORT", "RECEIVED", "NAT", "FLOW", "EXPIRES", "USER-AGENT"], rows
    )
    print(f"{len(bindings)} binding(s)")
    return 0


def _dialogs(conn: ControlConnection, args: argparse.Namespace) -> int:
    dialogs = conn.snapshot.get("dialogs", [])
    if args.json:
        _print_json(dialogs)
        return 0
    rows = [
        [
            d["id"],
            d["state"],
            d["caller"],
            d["callee"],
            f"{d['caller_transport']}->{d['callee_transport']}",
            d["created_at"],
            "-" if d["duration"] is None else f"{d['duration']:.1f}s",
            d["ended_by"] or "-",
        ]
        for d in dialogs
    ]
    headers = ["ID", "STATE", "CALLER", "CALLEE", "TRANSPORTS", "CREATED", "TALK", "ENDED BY"]
    _print_table(headers, rows)
    print(f"{len(dialogs)} dialog(s)")
    return 0


def _call(conn: ControlConnection, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        "to": args.to,
        "duration": args.duration,
        "answer_timeout": args.answer_timeout,
        "wait": True,
    }
    if args.from_:
        fields["from"] = args.from_
    if not args.json:
        print(f"calling {args.to} (ring up to {args.answer_timeout:g}s, talk {args.duration:g}s)")
    reply = conn.command("call", timeout=args.answer_timeout + args.duration + 30, **fields)
    if not reply.get("ok"):
        return _failed(reply, args)
    call = reply["call"]
    if args.json:
        _print_json(call)
    else:
        keys = [
            *("id", "call_id", "to", "from", "state", "final_status", "final_reason"),
            *("answered", "cancelled", "ended_by", "created_at", "ringing_at"),
            *("answered_at", "ended_at", "talk_seconds", "error"),
        ]
        _print_table(["", ""], [[k, "-" if call.get(k) is None else call[k]] for k in keys])
    return 0 if call.get("answered") else 1


def _kick(conn: ControlConnection, args: argparse.Namespace) -> int:
    fields = (
        {"aor": args.aor} if args.contact is None else {"aor": args.aor, "contact": args.contact}
    )
    reply = conn.command("kick", **fields)
    if not reply.get("ok"):
        return _failed(reply, args)
    removed = reply["removed"]
    if args.json:
        _print_json(removed)
    else:
        print(f"removed {len(removed)} binding(s) of {reply['aor']}")
        _print_table(
            ["CONTACT", "TRANSPORT", "SOURCE", "FLOW"],
            [[b["contact"], b["transport"], b["source"], b["flow"] or "-"] for b in removed],
        )
    return 0


def _reload(conn: ControlConnection, args: argparse.Namespace) -> int:
    reply = conn.command("reload", timeout=60)
    if args.json:
        _print_json(reply)
        return 0 if reply.get("ok") else 1
    if not reply.get("ok"):
        print(f"siptrio: reload refused, the running config stays: {reply.get('error')}",
              file=sys.stderr)  # fmt: skip
        return 1
    changed = reply.get("changed") or []
    print(f"reloaded {reply.get('source') or '(no config file)'}: {len(changed)} change(s)")
    for item in changed:
        print(f"  {item}")
    for item in reply.get("certificates") or []:
        print(f"  certificate read again: {item}")
    for item in reply.get("restart_needed") or []:
        print(f"  needs a restart (the running value stays): {item}")
    return 0


_COMMANDS = {
    "clients": _clients,
    "dialogs": _dialogs,
    "call": _call,
    "kick": _kick,
    "reload": _reload,
}


def _failed(reply: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        _print_json(reply)
    else:
        print(f"siptrio: {reply.get('error', 'failed')}", file=sys.stderr)
    return 1


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [list(headers), *cells] if any(headers) else cells
    for row in lines:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
