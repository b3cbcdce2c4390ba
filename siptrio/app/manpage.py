"""``siptrio manpage``: the siptrio(1) man page, written from the command line parser.

The page is the ``--help`` of every command in roff, with the sections a man page
has and a help screen does not (signals, files, environment, exit status), so the
two never drift apart. ``docs/siptrio.1`` is its output (a test keeps it current):

    siptrio manpage > /usr/local/share/man/man1/siptrio.1
"""

from __future__ import annotations

import argparse
import datetime
import re

from .. import __version__

__all__ = ["render"]

SECTIONS = {
    "SIGNALS": [
        "SIGTERM and SIGINT stop the server cleanly: open WebSocket connections are closed "
        "and the store is flushed; the exit status is 0.",
        "SIGHUP reloads: the config file is read again (with the same --set overrides) and "
        "what can change while running is applied; keys that need a restart are named in "
        "a warning and keep their running value; a file that does not pass check-config "
        "is refused and the running config stays. The log file ([logging] file) is "
        "reopened, for logrotate. `systemctl reload`, `siptrio reload` and POST /reload "
        "do the same. Under --workers the supervisor passes SIGHUP on to every worker.",
    ],
    "FILES": [
        "config.ini: the settings (examples/config.ini lists every key with its default).",
        "$XDG_STATE_HOME/siptrio/siptrio.sqlite (default ~/.local/state/siptrio/"
        "siptrio.sqlite): bindings, users and call records ([registrar] database).",
        "$XDG_RUNTIME_DIR/siptrio/control.sock (default /tmp/siptrio-UID/control.sock): "
        "the control socket of siptrio-tui and the client commands ([control] socket).",
        "certs/: what `siptrio certs` writes (ca.pem, ca.key, server.pem, server.key, client.pem).",
    ],
    "ENVIRONMENT": [
        "XDG_STATE_HOME and XDG_RUNTIME_DIR place the store and the control socket when "
        "the config does not.",
    ],
    "EXIT STATUS": [
        "0 after a clean stop (SIGINT, SIGTERM) or a command that succeeded; 1 when the "
        "server cannot start (port in use, missing certificate files, unreadable store) or "
        "a command failed (a server that cannot be reached, a reload refused, a call not "
        "answered); 2 for a bad config file or command line (the message names the file, "
        "line, section and key).",
    ],
    "SEE ALSO": [
        "siptrio-tui(1) (`siptrio-tui --help`); README.md (commands, config keys, admin "
        "API routes, TUI keys), SECURITY.md, docs/control-protocol.md.",
    ],
}


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                metavar = action.metavar
                names += " " + (metavar if isinstance(metavar, str) else action.dest.upper())
        else:
            names = action.metavar if isinstance(action.metavar, str) else action.dest
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        out += [".TP", f"\\fB{_roff(names)}\\fR", _roff(help_text)]
    return out


def render(parser: argparse.ArgumentParser) -> str:
    """The whole page for ``parser`` (the ``siptrio`` command and its subcommands)."""
    today = datetime.date.today().isoformat()
    lines = [
        f'.TH SIPTRIO 1 "{today}" "siptrio {__version__}" "User Commands"',
        ".SH NAME",
        "siptrio \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS",
        f".B {_roff(_usage(parser))}",
        ".SH DESCRIPTION",
        _roff(
            "A SIP registrar and stateful proxy (UDP, TCP, TLS, WS, WSS) with an admin "
            "HTTP API, a control socket and a terminal monitor. Each command below has its "
            "own --help."
        ),
        ".SH OPTIONS",
        *_options(parser),
        ".SH COMMANDS",
    ]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        lines += [
            f".SS {_roff(name)}",
            _roff(helps.get(name) or ""),
            ".PP",
            f".B {_roff(_usage(sub))}",
        ]
        if sub.description:
            lines += [".PP", _roff(sub.description)]
        lines += _options(sub)
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for group in nested:
            nested_help = {c.dest: c.help for c in group._choices_actions}
            for action_name, action_parser in group.choices.items():
                lines += [
                    ".TP",
                    f"\\fB{_roff(name)} {_roff(action_name)}\\fR",
                    _roff((nested_help.get(action_name) or "") + ": " + _usage(action_parser)),
                ]
    for title, paragraphs in SECTIONS.items():
        lines.append(f".SH {title}")
        for i, paragraph in enumerate(paragraphs):
            if i:
                lines.append(".PP")
            lines.append(_roff(paragraph))
    return "\n".join(lines) + "\n"
