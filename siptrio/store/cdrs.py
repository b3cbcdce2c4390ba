"""Call records (CDRs): what each call attempt was, kept beside the bindings.

One record per call attempt the proxy handled, answered or not (a 404, 486, 487 or
408 has one too: core/calls.py reports them, the dialog table never sees them). The
app layer (app/cdr.py) builds records from the core's events; this module owns their
shape, the query an operator asks (time range, address, status, a page) and how the
SQLite store keeps them (the table is one of sqlite.py's migrations). The Redis store
keeps them in one sorted set by start time (redis_store.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any, Protocol

__all__ = [
    "MAX_PAGE",
    "MIGRATION",
    "CallRecord",
    "CallRecordStore",
    "CdrPage",
    "CdrQuery",
    "sqlite_add",
    "sqlite_purge",
    "sqlite_query",
]

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    call_id: str
    caller: str  # From URI as sent
    callee: str  # To URI as sent
    caller_aor: str  # "sip:user@host": what an AOR filter matches
    callee_aor: str
    request_uri: str
    caller_transport: str
    callee_transport: str | None  # None: the call never left (refused, nobody to call)
    caller_peer: str  # "host:port" the INVITE came from
    callee_peer: str | None
    started_at: float  # wall clock: the INVITE reached the proxy
    answered_at: float | None
    ended_at: float | None  # None: answered, but its end was not seen (no Record-Route)
    duration: float | None  # seconds talking (answer to end); None if never answered
    status: int  # the caller's final answer (200 for an answered call)
    reason: str
    ended_by: str | None  # caller, callee, proxy, timeout
    end_reason: str | None  # "BYE (200)", "flow closed", "486" ...
    media: str  # direct or bridged (through rtpengine)
    node: str
    id: int | None = None  # given by the store


FIELDS = tuple(f.name for f in fields(CallRecord) if f.name != "id")


@dataclass(frozen=True, slots=True, kw_only=True)
class CdrQuery:
    since: float | None = None  # started at or after (wall clock)
    until: float | None = None  # started before
    aor: str | None = None  # caller or callee: "sip:bob@example.com", or a user "bob"
    status: int | None = None  # exact final status ...
    status_class: int | None = None  # ... or its class: 4 for 4xx
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class CdrPage:
    records: list[CallRecord]
    total: int  # matching records in all pages


class CallRecordStore(Protocol):
    """Blocking calls, made from a worker thread."""

    def add_cdrs(self, records: Sequence[CallRecord]) -> None: ...

    def cdrs(self, query: CdrQuery) -> CdrPage:
        """Newest first."""
        ...

    def purge_cdrs(self, before: float) -> int:
        """Delete records started before ``before``; how many went."""
        ...


def matches(record: CallRecord, query: CdrQuery) -> bool:
    """The query's filters in Python (the Redis store filters what it read)."""
    if query.since is not None and record.started_at < query.since:
        return False
    if query.until is not None and record.started_at >= query.until:
        return False
    if query.status is not None and record.status != query.status:
        return False
    if query.status_class is not None and record.status // 100 != query.status_class:
        return False
    if query.aor is not None:
        wanted = query.aor
        if "@" in wanted:
            return wanted in (record.caller_aor, record.callee_aor)
        return any(_user(a) == wanted for a in (record.caller_aor, record.callee_aor))
    return True


def _user(aor: str) -> str:
    return aor.partition(":")[2].partition("@")[0]


# --- SQLite --------------------------------------------------------------------------------

MIGRATION: tuple[str, ...] = (
    """
    CREATE TABLE cdrs (
        id               INTEGER PRIMARY KEY,
        call_id          TEXT    NOT NULL,
        caller           TEXT    NOT NULL,
        callee           TEXT    NOT NULL,
        caller_aor       TEXT    NOT NULL,
        callee_aor       TEXT    NOT NULL,
        request_uri      TEXT    NOT NULL,
        caller_transport TEXT    NOT NULL,
        callee_transport TEXT,
        caller_peer      TEXT    NOT NULL,
        callee_peer      TEXT,
        started_at       REAL    NOT NULL,
        answered_at      REAL,
        ended_at         REAL,
        duration         REAL,
        status           INTEGER NOT NULL,
        reason           TEXT    NOT NULL,
        ended_by         TEXT,
        end_reason       TEXT,
        media            TEXT    NOT NULL,
        node             TEXT    NOT NULL
    )
    """,
    "CREATE INDEX cdrs_started_at ON cdrs (started_at)",
    "CREATE INDEX cdrs_caller_aor ON cdrs (caller_aor)",
    "CREATE INDEX cdrs_callee_aor ON cdrs (callee_aor)",
)

_INSERT = f"INSERT INTO cdrs ({', '.join(FIELDS)}) VALUES ({', '.join('?' for _ in FIELDS)})"
_SELECT = f"SELECT id, {', '.join(FIELDS)} FROM cdrs"


def sqlite_add(conn: sqlite3.Connection, records: Sequence[CallRecord]) -> None:
    """Insert inside the caller's transaction."""
    conn.executemany(_INSERT, [astuple(r)[:-1] for r in records])


def _where(query: CdrQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if query.since is not None:
        clauses.append("started_at >= ?")
        args.append(query.since)
    if query.until is not None:
        clauses.append("started_at < ?")
        args.append(query.until)
    if query.status is not None:
        clauses.append("status = ?")
        args.append(query.status)
    if query.status_class is not None:
        clauses.append("status >= ? AND status < ?")
        args += [query.status_class * 100, query.status_class * 100 + 100]
    if query.aor is not None:
        if "@" in query.aor:
            clauses.append("(caller_aor = ? OR callee_aor = ?)")
            args += [query.aor, query.aor]
        else:  # a user name of any domain: sip:bob@... or sips:bob@...
            patterns = [f"{scheme}:{_escape(query.aor)}@%" for scheme in ("sip", "sips")]
            clauses.append(
                "(caller_aor LIKE ? ESCAPE '\\' OR caller_aor LIKE ? ESCAPE '\\' "
                "OR callee_aor LIKE ? ESCAPE '\\' OR callee_aor LIKE ? ESCAPE '\\')"
            )
            args += patterns + patterns
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def sqlite_query(conn: sqlite3.Connection, query: CdrQuery) -> CdrPage:
    where, args = _where(query)
    total = int(conn.execute(f"SELECT count(*) FROM cdrs{where}", args).fetchone()[0])
    rows = conn.execute(
        f"{_SELECT}{where} ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?",
        [*args, query.limit, query.offset],
    ).fetchall()
    return CdrPage([_from_row(r) for r in rows], total)


def sqlite_purge(conn: sqlite3.Connection, before: float) -> int:
    return int(conn.execute("DELETE FROM cdrs WHERE started_at < ?", (before,)).rowcount)


def _from_row(row: Sequence[Any]) -> CallRecord:
    values = dict(zip(("id", *FIELDS), row, strict=True))
    return CallRecord(**values)
