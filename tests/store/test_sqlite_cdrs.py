"""Call records in SQLite: stored, filtered, paged, purged; an older file gains the table."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from siptrio.store.cdrs import CallRecord, CdrQuery, matches
from siptrio.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, SqliteStore

T0 = 1_780_000_000.0


def record(n: int, **changes: object) -> CallRecord:
    base = CallRecord(
        call_id=f"call-{n}",
        caller="sip:alice@example.com",
        callee="sip:bob@example.com;transport=tcp",
        caller_aor="sip:alice@example.com",
        callee_aor="sip:bob@example.com",
        request_uri="sip:bob@example.com",
        caller_transport="udp",
        callee_transport="ws",
        caller_peer="127.0.0.1:5070",
        callee_peer="127.0.0.1:40000",
        started_at=T0 + n,
        answered_at=T0 + n + 1,
        ended_at=T0 + n + 5,
        duration=4.0,
        status=200,
        reason="OK",
        ended_by="caller",
        end_reason="BYE (200)",
        media="direct",
        node="node-a",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


RECORDS = [
    record(1),
    record(2, status=404, reason="Not Found", callee="sip:nobody@example.com",
           callee_aor="sip:nobody@example.com", answered_at=None, duration=None,
           ended_by="proxy", end_reason=None, callee_transport=None, callee_peer=None),
    record(3, status=486, reason="Busy Here", answered_at=None, duration=None, ended_by="callee"),
    record(4, status=487, reason="Request Terminated", answered_at=None, duration=None,
           ended_by="caller", caller="sip:carol@example.org", caller_aor="sip:carol@example.org"),
]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(str(tmp_path / "db.sqlite"))
    s.add_cdrs(RECORDS)
    return s


def ids(page: object) -> list[str]:
    return [r.call_id for r in page.records]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (CdrQuery(), ["call-4", "call-3", "call-2", "call-1"]),
        (CdrQuery(status=404), ["call-2"]),
        (CdrQuery(status_class=4), ["call-4", "call-3", "call-2"]),
        (CdrQuery(aor="sip:bob@example.com"), ["call-4", "call-3", "call-1"]),
        (CdrQuery(aor="carol"), ["call-4"]),
        (CdrQuery(aor="bo_"), []),  # LIKE wildcards are plain text
        (CdrQuery(since=T0 + 2, until=T0 + 4), ["call-3", "call-2"]),
        (CdrQuery(limit=2, offset=1), ["call-3", "call-2"]),
    ],
)
def test_filters_and_pages_newest_first(
    store: SqliteStore, query: CdrQuery, expected: list[str]
) -> None:
    page = store.cdrs(query)
    assert ids(page) == expected
    everything = dataclasses.replace(query, limit=1000, offset=0)
    assert page.total == len(store.cdrs(everything).records)
    # the Redis store filters the same way, in Python
    assert [
        r.call_id for r in sorted(RECORDS, key=lambda r: -r.started_at) if matches(r, everything)
    ] == ids(store.cdrs(everything))


def test_a_record_comes_back_whole_with_an_id(store: SqliteStore) -> None:
    (got,) = store.cdrs(CdrQuery(status=404)).records
    assert got.id is not None and dataclasses.replace(got, id=None) == RECORDS[1]


def test_purge_deletes_records_started_before(store: SqliteStore) -> None:
    assert store.purge_cdrs(T0 + 3) == 2
    assert ids(store.cdrs(CdrQuery())) == ["call-4", "call-3"]


def test_a_file_of_version_5_gains_the_table_and_keeps_its_bindings(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path, isolation_level=None) as conn:
        for statements in _MIGRATIONS[:5]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
    conn.close()
    with SqliteStore(str(path)) as store:
        store.add_cdrs([record(9)])
        assert ids(store.cdrs(CdrQuery())) == ["call-9"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    conn.close()
