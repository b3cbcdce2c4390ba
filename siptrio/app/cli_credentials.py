"""``siptrio credentials USER [--ttl S]``: a time-limited credential, as POST /credentials has it.

Computed here from the config file rather than asked of a running server: whoever
can read the file holds the secrets and could compute it anyway, and this way a web
app's backend (or an operator) gets one with no server running and no admin token.
The answer is the admin API's, from the same function; only ``uris`` differ, as this
names the configured WebSocket ports rather than bound ones (a port 0 is left out).

Exit status: 0 with the JSON on standard output, 2 for a bad config, user or TTL, or
a config without ``[auth] ephemeral_secrets``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["add_subcommand", "run"]


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "credentials",
        help="print a time-limited SIP credential for a user (as POST /credentials)",
    )
    p.add_argument("user", help='the user part of the address ("alice"), or alice@domain')
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="lifetime (default 3600, capped)")
    p.add_argument(
        "--config", "-c", metavar="FILE", help="config.ini with [auth] ephemeral_secrets"
    )


def run(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .credentials import CredentialError, configured_websocket_uris, issue_credential
    from .server import realm_of

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 2
    try:
        issued = issue_credential(
            config,
            realm_of(config),
            args.user,
            args.ttl,
            time.time(),
            configured_websocket_uris(config),
        )
    except CredentialError as e:
        where = f" in {args.config}" if args.config and e.status == 409 else ""
        print(f"siptrio: {e}{where}", file=sys.stderr)
        return 2
    if issued["capped"]:
        print(f"siptrio: {issued['message']}", file=sys.stderr)
    print(json.dumps(issued, indent=2))
    return 0
