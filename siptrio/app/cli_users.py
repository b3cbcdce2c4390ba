"""``siptrio users add|remove|list|passwd``: the digest user store, from the shell.

Users live in the location store beside the bindings (the SQLite file, or Redis
when ``[registrar] backend = redis``, shared by a cluster), as HA1 digests (MD5 and
SHA-256, RFC 8760) for the configured realm: the password itself is never stored.
A running server notices the change within a second.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import TYPE_CHECKING

from ..sip.digest import ha1

if TYPE_CHECKING:
    from ..store.redis_store import RedisStore
    from ..store.sqlite import SqliteStore
    from .config import Config

__all__ = ["add_subcommand", "run"]


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = sub.add_parser("users", help="manage digest authentication users")
    users.add_argument("--config", "-c", metavar="FILE", help="config.ini (database and realm)")
    actions = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    for name, text in (("add", "add a user"), ("passwd", "set a user's password")):
        p = actions.add_parser(name, help=text)
        p.add_argument("username")
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input",
        )
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("username")
    actions.add_parser("list", help="list users")


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        return line or None
    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("again: ") != first:
        print("siptrio: the passwords differ", file=sys.stderr)
        return None
    return first or None


def _open_store(config: Config) -> SqliteStore | RedisStore:
    if config.registrar.backend == "redis":
        from ..store.redis_store import RedisStore

        return RedisStore(config.registrar.redis_url, node="siptrio-users")
    from ..store.sqlite import SqliteStore

    return SqliteStore(config.registrar.database)


def run(args: argparse.Namespace) -> int:
    from ..store.base import StoreError
    from .config import ConfigError, load_config
    from .server import realm_of

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 2
    realm = realm_of(config)
    action = args.users_command
    username: str = getattr(args, "username", None) or ""
    if action != "list" and (
        not username or any(c in username for c in ':"\\@ \t') or len(username) > 128
    ):
        print(f"siptrio: {username!r} is not a usable user name", file=sys.stderr)
        return 2
    try:
        with _open_store(config) as store:
            if action == "list":
                rows = store.user_rows()
                for name, user_realm, _created, updated in rows:
                    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(updated))
                    print(f"{name}\t{user_realm}\tupdated {stamp} UTC")
                if not rows:
                    print("no users", file=sys.stderr)
                return 0
            if action == "remove":
                if store.remove_user(username, realm):
                    print(f"removed {username} from realm {realm!r}")
                    return 0
                print(f"siptrio: no user {username} in realm {realm!r}", file=sys.stderr)
                return 1
            exists = username in store.users(realm)
            if action == "add" and exists:
                print(f"siptrio: {username} exists in realm {realm!r}; use passwd", file=sys.stderr)
                return 1
            if action == "passwd" and not exists:
                print(f"siptrio: no user {username} in realm {realm!r}; use add", file=sys.stderr)
                return 1
            password = _password(args)
            if password is None:
                print("siptrio: an empty password is not allowed", file=sys.stderr)
                return 2
            store.set_user(
                username,
                realm,
                ha1(username, realm, password, "MD5"),
                ha1(username, realm, password, "SHA-256"),
                time.time(),
            )
            print(f"{'added' if action == 'add' else 'updated'} {username} in realm {realm!r}")
            return 0
    except StoreError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 1
