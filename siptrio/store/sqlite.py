"""The durable copy of the location index, in one SQLite file.

The in-memory :class:`~siptrio.core.location.Location` is what the proxy reads; this
module owns only the file that lets it survive a restart: the schema and its
migrations, the grouped commit of registrar changes, and the reload at start-up.

It uses blocking stdlib ``sqlite3`` and never imports trio: the Trio shell calls it
from a worker thread (``await trio.to_thread.run_sync(store.apply, upserts,
deletes)``), so a slow fsync stalls one thread, not the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from ..core.location import Binding
from ..core.types import Transport
from . import cdrs
from .base import LoadResult, StoreError

__all__ = ["SCHEMA_VERSION", "LoadResult", "SqliteStore", "StoreError"]

log = logging.getLogger(__name__)

# One entry per schema version: _MIGRATIONS[n] takes a file from version n to n + 1.
# Append, never edit: files written by released versions must keep migrating.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE bindings (
            aor            TEXT    NOT NULL,
            key            TEXT    NOT NULL,
            contact_uri    TEXT    NOT NULL,
            contact_params TEXT    NOT NULL,
            q              REAL,
            expires_at     REAL    NOT NULL,
            call_id        TEXT    NOT NULL,
            cseq           INTEGER NOT NULL,
            instance       TEXT,
            reg_id         INTEGER,
            path           TEXT    NOT NULL,  -- JSON array of Path header values
            user_agent     TEXT,
            transport      TEXT    NOT NULL,  -- Transport.value
            source_host    TEXT    NOT NULL,
            source_port    INTEGER NOT NULL,
            local_host     TEXT    NOT NULL,
            local_port     INTEGER NOT NULL,
            flow_id        TEXT,
            registered_at  REAL    NOT NULL,
            updated_at     REAL    NOT NULL,
            PRIMARY KEY (aor, key)
        )
        """,
        "CREATE INDEX bindings_expires_at ON bindings (expires_at)",
        "CREATE INDEX bindings_flow_id ON bindings (flow_id)",
    ),
    (
        # Digest users: HA1 per algorithm (RFC 8760), never the password itself.
        """
        CREATE TABLE users (
            username    TEXT NOT NULL,
            realm       TEXT NOT NULL,
            ha1_md5     TEXT NOT NULL,
            ha1_sha256  TEXT NOT NULL,
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            PRIMARY KEY (username, realm)
        )
        """,
    ),
    # Cluster: which node holds a binding's flow.
    ("ALTER TABLE bindings ADD COLUMN node TEXT",),
    # Fewer B-trees to write per REGISTER. expires_at was indexed for load()'s one
    # DELETE at start-up, which reads the whole table anyway, yet every refresh
    # moved its entry; most bindings (UDP, TCP without outbound) have no flow_id,
    # and the flow index now holds only those that do. Bulk upserts cost about 12
    # us a row before and 10 after; refreshes 10.5 and 7.5.
    (
        "DROP INDEX bindings_expires_at",
        "DROP INDEX bindings_flow_id",
        "CREATE INDEX bindings_flow_id ON bindings (flow_id) WHERE flow_id IS NOT NULL",
    ),
    # Routing by the RFCs: whether the binding is behind NAT (reached at its source).
    # Bindings written before it were all reached at their source: they keep that.
    (
        "ALTER TABLE bindings ADD COLUMN nat INTEGER NOT NULL DEFAULT 0",
        "UPDATE bindings SET nat = 1",
    ),
    # Call records, one per call attempt (store/cdrs.py).
    cdrs.MIGRATION,
)
SCHEMA_VERSION = len(_MIGRATIONS)
BUSY_TIMEOUT_MS = 5000  # how long a write waits for another process holding the lock

_COLUMNS = tuple(f.name for f in fields(Binding))
_KEY_COLUMNS = ("aor", "key")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM bindings"
_UPSERT = (
    f"INSERT INTO bindings ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    f"ON CONFLICT (aor, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in _KEY_COLUMNS)
)
_DELETE = "DELETE FROM bindings WHERE aor = ? AND key = ?"

# SQLite's own words for "this file is not (or no longer) a database we can read".
_BAD_FILE_ERRORS = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


class SqliteStore:
    """Bindings in SQLite, written in caller-grouped transactions.

    Each method takes a lock: worker threads may overlap, and a shared connection
    must never interleave two transactions.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        in_memory = self.path in ("", ":memory:")
        if not in_memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot create directory {parent}: {exc}") from exc
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            self._configure(conn, in_memory=in_memory)
            self._check_integrity(conn)
            self._migrate(conn)
        except BaseException as exc:
            conn.close()
            self._conn = None
            if isinstance(exc, sqlite3.Error):
                raise self._error("cannot open", exc) from exc
            raise

    # -- opening ---------------------------------------------------------------

    @staticmethod
    def _configure(conn: sqlite3.Connection, *, in_memory: bool) -> None:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        # WAL: readers (admin, backups) never block the registrar's commits.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if not in_memory and str(mode).lower() != "wal":
            log.warning("sqlite store: journal_mode is %s, not wal", mode)
        # FULL: a 200 OK to REGISTER promises the binding survives SIGKILL and power
        # loss; the caller groups many REGISTERs per commit, so the fsync is shared.
        conn.execute("PRAGMA synchronous = FULL")

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        # A damaged page would otherwise surface later as a failed REGISTER; the
        # table is small, so checking at start-up costs about as much as load().
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            detail = "; ".join(str(p) for p in problems[:3])
            raise StoreError(
                f"{self.path}: the database is corrupt ({detail}); "
                f"move the file away and restart to begin with an empty store"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = self._user_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} was written by a newer siptrio "
                f"(this one knows up to {SCHEMA_VERSION}); upgrade siptrio or use another file"
            )
        if version == SCHEMA_VERSION:
            return
        with _write_transaction(conn):
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = self._user_version(conn)
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @staticmethod
    def _user_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        if getattr(exc, "sqlite_errorname", None) in _BAD_FILE_ERRORS:
            return StoreError(
                f"{self.path}: not a usable SQLite database ({exc}); "
                f"move the file away and restart to begin with an empty store"
            )
        return StoreError(f"{self.path}: {doing}: {exc}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._conn

    # -- operations -------------------------------------------------------------

    def load(self, now: float) -> LoadResult:
        """Drop what cannot be used after a restart and return the rest.

        Bindings with a flow_id point at a connection of the previous process; it is
        gone and can never be reused, so routing to them would only fail (RFC 5626:
        a binding whose flow no longer exists is not used). Deleting them here keeps
        the file and the index in agreement.
        """
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn):
                    expired = conn.execute(
                        "DELETE FROM bindings WHERE expires_at <= ?", (now,)
                    ).rowcount
                    stale = conn.execute("DELETE FROM bindings WHERE flow_id IS NOT NULL").rowcount
                    rows = conn.execute(_SELECT).fetchall()
            except sqlite3.Error as exc:
                raise self._error("load failed", exc) from exc
        return LoadResult(bindings=[_from_row(r) for r in rows], expired=expired, stale_flows=stale)

    def apply(self, upserts: Sequence[Binding], deletes: Sequence[tuple[str, str]]) -> None:
        """Make a batch durable in one transaction, deletes first, all or nothing.

        The caller groups the changes of many REGISTERs into one call so a single
        fsync covers them; it answers those REGISTERs only after this returns.
        """
        if not upserts and not deletes:
            return
        rows = [_to_row(b) for b in upserts]  # before BEGIN: keep the write lock short
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn):
                    conn.executemany(_DELETE, deletes)
                    conn.executemany(_UPSERT, rows)
            except sqlite3.Error as exc:
                raise self._error(
                    f"batch of {len(upserts)} upserts and {len(deletes)} deletes rolled back",
                    exc,
                ) from exc

    def stage(self, upserts: Sequence[Binding], deletes: Sequence[tuple[str, str]]) -> bool:
        """Do a batch's CPU work now, on the calling thread, if that cannot block.

        The event loop calls this: BEGIN and the row writes run here, and only
        :meth:`commit_staged` (the WAL write and its fsync) goes to a worker thread.
        Running the row writes in a worker made the two threads trade the GIL on every
        row (sqlite3 releases it around each step), thousands of futex calls a second;
        here they are uncontended. Returns False, having done nothing, when the lock
        or the database is busy: the caller then uses :meth:`apply` in a thread.
        """
        if not upserts and not deletes:
            return False
        rows = [_to_row(b) for b in upserts]
        conn = self._connection()
        if not self._lock.acquire(blocking=False):
            return False
        try:
            conn.execute("PRAGMA busy_timeout = 0")  # another writer: back off, never wait
            # Busy (or worse): apply() in a thread waits for it, or reports it.
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        except BaseException:
            self._finish(conn, commit=False)
            raise
        if not conn.in_transaction:
            self._lock.release()
            return False
        try:
            conn.executemany(_DELETE, deletes)
            conn.executemany(_UPSERT, rows)
        except BaseException as exc:
            self._finish(conn, commit=False)
            if isinstance(exc, sqlite3.Error):
                raise self._error(
                    f"batch of {len(upserts)} upserts and {len(deletes)} deletes rolled back",
                    exc,
                ) from exc
            raise
        return True

    def commit_staged(self) -> None:
        """COMMIT what :meth:`stage` wrote (this is the fsync: call it from a thread)."""
        self._finish(self._connection(), commit=True)

    def _finish(self, conn: sqlite3.Connection, *, commit: bool) -> None:
        try:
            if commit:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise self._error("commit failed, batch rolled back", exc) from exc
        finally:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                self._lock.release()

    # -- users (digest authentication) --------------------------------------------

    def set_user(
        self, username: str, realm: str, ha1_md5: str, ha1_sha256: str, now: float
    ) -> bool:
        """Add or replace a user's HA1s; True when the user is new."""
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn):
                    old = conn.execute(
                        "SELECT 1 FROM users WHERE username = ? AND realm = ?", (username, realm)
                    ).fetchone()
                    conn.execute(
                        "INSERT INTO users"
                        " (username, realm, ha1_md5, ha1_sha256, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (username, realm) DO UPDATE SET"
                        " ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256,"
                        " updated_at = excluded.updated_at",
                        (username, realm, ha1_md5, ha1_sha256, now, now),
                    )
            except sqlite3.Error as exc:
                raise self._error(f"storing user {username}", exc) from exc
        return old is None

    def remove_user(self, username: str, realm: str) -> bool:
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn):
                    n = conn.execute(
                        "DELETE FROM users WHERE username = ? AND realm = ?", (username, realm)
                    ).rowcount
            except sqlite3.Error as exc:
                raise self._error(f"removing user {username}", exc) from exc
        return n > 0

    def users(self, realm: str) -> dict[str, dict[str, str]]:
        """username -> {"MD5": HA1, "SHA-256": HA1} for one realm."""
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT username, ha1_md5, ha1_sha256 FROM users"
                        " WHERE realm = ? ORDER BY username",
                        (realm,),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._error("reading users", exc) from exc
        return {u: {"MD5": md5, "SHA-256": sha} for u, md5, sha in rows}

    def user_rows(self) -> list[tuple[str, str, float, float]]:
        """(username, realm, created_at, updated_at) of every user: for listing."""
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT username, realm, created_at, updated_at FROM users"
                        " ORDER BY realm, username"
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._error("reading users", exc) from exc
        return [(str(a), str(b), float(c), float(d)) for a, b, c, d in rows]

    def data_version(self) -> int:
        """Changes whenever another connection (``siptrio users``) commits to the file."""
        with self._lock:
            try:
                return int(self._connection().execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise self._error("reading data_version", exc) from exc

    def count(self) -> int:
        with self._lock:
            try:
                return int(
                    self._connection().execute("SELECT count(*) FROM bindings").fetchone()[0]
                )
            except sqlite3.Error as exc:
                raise self._error("count failed", exc) from exc

    def all(self) -> list[Binding]:
        """Every stored binding, expired or not, in (aor, key) order: for tests and admin."""
        with self._lock:
            try:
                rows = self._connection().execute(_SELECT + " ORDER BY aor, key").fetchall()
            except sqlite3.Error as exc:
                raise self._error("read failed", exc) from exc
        return [_from_row(r) for r in rows]

    # -- call records (store/cdrs.py) ---------------------------------------------

    def add_cdrs(self, records: Sequence[cdrs.CallRecord]) -> None:
        if not records:
            return
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn):
                    cdrs.sqlite_add(conn, records)
            except sqlite3.Error as exc:
                raise self._error(f"storing {len(records)} call records", exc) from exc

    def cdrs(self, query: cdrs.CdrQuery) -> cdrs.CdrPage:
        with self._lock:
            try:
                return cdrs.sqlite_query(self._connection(), query)
            except sqlite3.Error as exc:
                raise self._error("reading call records", exc) from exc

    def purge_cdrs(self, before: float) -> int:
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn):
                    return cdrs.sqlite_purge(conn, before)
            except sqlite3.Error as exc:
                raise self._error("deleting old call records", exc) from exc

    def close(self) -> None:
        """Fold the WAL back into the file so a copy of the file alone is complete."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            self._conn = None
            try:
                conn.execute("PRAGMA optimize")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                # The data is already durable in the WAL; the next open replays it.
                log.warning("sqlite store %s: housekeeping on close failed: %s", self.path, exc)
            finally:
                conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error, a failed COMMIT included.

    IMMEDIATE takes the write lock up front, so a busy database fails at BEGIN
    (after busy_timeout) rather than halfway through a batch.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


_ATTRIBUTES = operator.attrgetter(*_COLUMNS)  # one C call for the whole row
_TRANSPORT_AT = _COLUMNS.index("transport")
_PATH_AT = _COLUMNS.index("path")


def _to_row(binding: Binding) -> tuple[Any, ...]:
    """Positional, in _COLUMNS order: binding by position is cheaper than by name."""
    row = list(_ATTRIBUTES(binding))
    row[_TRANSPORT_AT] = binding.transport.value
    row[_PATH_AT] = json.dumps(list(binding.path), ensure_ascii=False) if binding.path else "[]"
    return tuple(row)


def _from_row(row: Sequence[Any]) -> Binding:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["transport"] = Transport(values["transport"])
    values["path"] = tuple(json.loads(values["path"]))
    values["nat"] = bool(values["nat"])
    return Binding(**values)
