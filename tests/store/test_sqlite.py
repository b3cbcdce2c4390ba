"""The SQLite location store against real database files: no mocks."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from siptrio.core.location import Binding
from siptrio.core.types import Transport
from siptrio.store.base import LoadResult, StoreError
from siptrio.store.sqlite import SCHEMA_VERSION, SqliteStore

REPO_ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0


def make_binding(**overrides: Any) -> Binding:
    values: dict[str, Any] = {
        "aor": "sip:alice@example.com",
        "key": "sip:alice@192.0.2.10:5060",
        "contact_uri": "sip:alice@192.0.2.10:5060;transport=udp",
        "contact_params": "",
        "q": None,
        "expires_at": NOW + 3600,
        "call_id": "a84b4c76e66710@pc33.example.com",
        "cseq": 1,
        "instance": None,
        "reg_id": None,
        "path": (),
        "user_agent": None,
        "transport": Transport.UDP,
        "source_host": "192.0.2.10",
        "source_port": 5060,
        "local_host": "192.0.2.1",
        "local_port": 5060,
        "flow_id": None,
        "registered_at": NOW,
        "updated_at": NOW,
    }
    values.update(overrides)
    return Binding(**values)


def rich_binding() -> Binding:
    """Every optional field set, with text that would break naive quoting."""
    return make_binding(
        aor="sip:b%00ob%40x@example.com",
        key='<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"/1',
        contact_uri="sip:bob@[2001:db8::7]:5061;transport=tls;ob",
        contact_params=';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>";reg-id=1',
        q=0.7,
        expires_at=NOW + 600.25,
        call_id="x'; DROP TABLE bindings; --",
        cseq=2**31 - 1,
        instance='<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"',
        reg_id=1,
        path=("<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr;ob>"),
        user_agent="Téléphone «Ω» 📞 1.0",
        transport=Transport.TLS,
        source_host="2001:db8::7",
        source_port=40123,
        local_host="2001:db8::1",
        local_port=5061,
        flow_id="tls-17",
        registered_at=NOW - 10.5,
        updated_at=NOW - 0.125,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "location.sqlite"


@pytest.fixture
def store(db_path: Path) -> Any:
    with SqliteStore(str(db_path)) as s:
        yield s


def test_schema_has_a_column_per_binding_field_and_a_version(
    store: SqliteStore, db_path: Path
) -> None:
    with sqlite3.connect(db_path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(bindings)")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        indexes = [(row[1], row[4]) for row in conn.execute("PRAGMA index_list(bindings)")]
    assert columns == [f.name for f in dataclasses.fields(Binding)]
    assert version == SCHEMA_VERSION == 6
    assert mode == "wal"
    # partial: only bindings that live on a flow are in it
    assert {name: partial for name, partial in indexes} == {
        "bindings_flow_id": 1,
        "sqlite_autoindex_bindings_1": 0,
    }


def test_round_trip_every_field(store: SqliteStore) -> None:
    plain = make_binding()
    rich = rich_binding()
    store.apply([plain, rich], [])
    assert store.all() == sorted([plain, rich], key=lambda b: (b.aor, b.key))
    assert store.count() == 2


@pytest.mark.parametrize("transport", list(Transport))
def test_round_trip_every_transport(store: SqliteStore, transport: Transport) -> None:
    binding = make_binding(transport=transport)
    store.apply([binding], [])
    assert store.all() == [binding]


def test_upsert_replaces_same_aor_and_key(store: SqliteStore) -> None:
    first = make_binding(cseq=1, expires_at=NOW + 60)
    other = make_binding(key="sip:alice@192.0.2.11:5060")
    store.apply([first, other], [])
    refreshed = dataclasses.replace(first, cseq=2, expires_at=NOW + 3600, q=0.5, path=("<sip:p>",))
    store.apply([refreshed], [])
    assert store.count() == 2
    assert store.all() == [refreshed, other]


def test_deletes_run_before_upserts(store: SqliteStore) -> None:
    a = make_binding(key="a")
    b = make_binding(key="b")
    store.apply([a, b], [])
    a2 = dataclasses.replace(a, cseq=9)
    store.apply([a2], [(a.aor, "a"), (b.aor, "b"), ("sip:nobody@example.com", "x")])
    assert store.all() == [a2]


def test_empty_batch_is_a_no_op(store: SqliteStore) -> None:
    store.apply([], [])
    assert store.count() == 0


def test_load_purges_expired_and_flow_bound_rows(store: SqliteStore) -> None:
    live_udp = make_binding(key="live")
    expired = make_binding(key="expired", expires_at=NOW - 1)
    expires_now = make_binding(key="edge", expires_at=NOW)
    on_flow = make_binding(key="flow", transport=Transport.WSS, flow_id="wss-3")
    expired_on_flow = make_binding(key="both", flow_id="tcp-1", expires_at=NOW - 5)
    store.apply([live_udp, expired, expires_now, on_flow, expired_on_flow], [])

    result = store.load(NOW)

    assert result == LoadResult(bindings=[live_udp], expired=3, stale_flows=1)
    assert store.all() == [live_udp]
    assert store.load(NOW) == LoadResult(bindings=[live_udp], expired=0, stale_flows=0)


def test_thousand_upserts_commit_all_or_nothing_for_a_concurrent_reader(
    store: SqliteStore, db_path: Path
) -> None:
    batch = [make_binding(aor=f"sip:user{i}@example.com", key=f"k{i}") for i in range(1000)]
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        with sqlite3.connect(db_path) as reader:
            while not stop.is_set():
                seen.add(reader.execute("SELECT count(*) FROM bindings").fetchone()[0])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        store.apply(batch, [])
    finally:
        stop.set()
        watcher.join()
    assert seen <= {0, 1000}
    assert store.count() == 1000


def test_failed_batch_rolls_back_entirely(store: SqliteStore, db_path: Path) -> None:
    kept = make_binding(key="kept")
    store.apply([kept], [])
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON bindings WHEN NEW.aor = 'sip:poison@x' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )
    batch = [make_binding(aor=f"sip:user{i}@example.com") for i in range(999)]
    batch.append(make_binding(aor="sip:poison@x"))

    with pytest.raises(StoreError, match="rolled back") as excinfo:
        store.apply(batch, [(kept.aor, kept.key)])

    assert isinstance(excinfo.value.__cause__, sqlite3.Error)
    assert store.all() == [kept]
    store.apply(batch[:3], [])  # the connection is not left inside a transaction
    assert store.count() == 4


def test_staged_batch_is_invisible_until_committed_from_another_thread(
    store: SqliteStore, db_path: Path
) -> None:
    old = make_binding(key="old")
    store.apply([old], [])
    new = [rich_binding(), make_binding(key="new")]

    assert store.stage(new, [(old.aor, old.key)]) is True
    with sqlite3.connect(db_path) as reader:
        assert reader.execute("SELECT key FROM bindings").fetchall() == [("old",)]
    worker = threading.Thread(target=store.commit_staged)
    worker.start()
    worker.join()

    assert store.all() == sorted(new, key=lambda b: (b.aor, b.key))
    store.apply([old], [])  # lock released and no transaction left open
    assert store.count() == 3


def test_stage_backs_off_instead_of_waiting_when_another_writer_holds_the_lock(
    store: SqliteStore, db_path: Path
) -> None:
    binding = make_binding()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # say, `siptrio users add` in another process
        assert store.stage([binding], []) is False
        other.execute("COMMIT")
    finally:
        other.close()
    assert store.count() == 0
    assert store.stage([binding], []) is True
    store.commit_staged()
    assert store.all() == [binding]


def test_stage_backs_off_while_a_thread_uses_the_connection(store: SqliteStore) -> None:
    assert store.stage([make_binding(key="a")], []) is True
    assert store.stage([make_binding(key="b")], []) is False  # still staged, not committed
    store.commit_staged()
    assert [b.key for b in store.all()] == ["a"]


def test_failed_stage_rolls_back_and_releases_the_lock(store: SqliteStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON bindings WHEN NEW.aor = 'sip:poison@x' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )
    batch = [make_binding(key="fine"), make_binding(aor="sip:poison@x")]
    with pytest.raises(StoreError, match="rolled back"):
        store.stage(batch, [])
    assert store.count() == 0
    store.apply(batch[:1], [])
    assert store.count() == 1


def test_data_survives_close_and_reopen(db_path: Path) -> None:
    binding = rich_binding()
    store = SqliteStore(str(db_path))
    store.apply([binding], [])
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.count()
    with SqliteStore(str(db_path)) as reopened:
        assert reopened.all() == [binding]


def test_a_file_of_schema_version_3_migrates_and_keeps_its_bindings(db_path: Path) -> None:
    from siptrio.store.sqlite import _COLUMNS, _MIGRATIONS, _to_row

    on_flow = rich_binding()
    plain = make_binding(flow_id=None)
    old_columns = [c for c in _COLUMNS if c != "nat"]  # as version 3 wrote them
    insert = (
        f"INSERT INTO bindings ({', '.join(old_columns)}) "
        f"VALUES ({', '.join('?' for _ in old_columns)})"
    )
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        for statements in _MIGRATIONS[:3]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 3")
        rows = [
            tuple(v for c, v in zip(_COLUMNS, _to_row(b), strict=True) if c != "nat")
            for b in (on_flow, plain)
        ]
        conn.executemany(insert, rows)
    conn.close()
    # Every binding written before NAT detection was reached at its source: it stays so.
    on_flow_then = dataclasses.replace(on_flow, nat=True)
    plain_then = dataclasses.replace(plain, nat=True)
    with SqliteStore(str(db_path)) as store:
        assert store.all() == sorted([on_flow_then, plain_then], key=lambda b: (b.aor, b.key))
        assert store.load(NOW).stale_flows == 1  # found through the new partial index
        assert store.all() == [plain_then]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {row[1] for row in conn.execute("PRAGMA index_list(bindings)")}
    conn.close()
    assert "bindings_expires_at" not in names


def test_nat_is_kept(store: SqliteStore) -> None:
    behind = make_binding(flow_id=None, nat=True)
    store.apply([behind], [])
    assert store.all() == [behind]


def test_creates_missing_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "siptrio" / "location.sqlite"
    with SqliteStore(str(path)) as store:
        store.apply([make_binding()], [])
    assert path.is_file()


def test_in_memory_database(tmp_path: Path) -> None:
    with SqliteStore(":memory:") as store:
        store.apply([make_binding()], [])
        assert store.count() == 1
    assert list(tmp_path.iterdir()) == []


def test_file_that_is_not_a_database_raises_store_error(db_path: Path) -> None:
    db_path.write_bytes(b"\x00garbage, not SQLite\xff" * 512)
    with pytest.raises(StoreError) as excinfo:
        SqliteStore(str(db_path))
    message = str(excinfo.value)
    assert str(db_path) in message
    assert "move the file away" in message


def test_corrupt_database_raises_store_error(db_path: Path) -> None:
    with SqliteStore(str(db_path)) as store:
        store.apply([make_binding(aor=f"sip:u{i}@example.com") for i in range(500)], [])
    page_size = 4096
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == page_size
        assert conn.execute("PRAGMA page_count").fetchone()[0] > 4
    with open(db_path, "r+b") as f:  # smash every page after the header page
        f.seek(page_size)
        size = db_path.stat().st_size
        f.write(b"\xde\xad\xbe\xef" * ((size - page_size) // 4))
    with pytest.raises(StoreError) as excinfo:
        SqliteStore(str(db_path))
    assert str(db_path) in str(excinfo.value)
    assert "move the file away" in str(excinfo.value)


def test_newer_schema_version_is_refused(db_path: Path) -> None:
    SqliteStore(str(db_path)).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer siptrio"):
        SqliteStore(str(db_path))


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from siptrio.core.location import Binding
    from siptrio.core.types import Transport
    from siptrio.store.sqlite import SqliteStore

    store = SqliteStore(sys.argv[1])
    store.apply(
        [
            Binding(
                aor="sip:carol@example.com", key="k", contact_uri="sip:carol@192.0.2.9",
                contact_params=";expires=60", q=1.0, expires_at=float(sys.argv[2]),
                call_id="c1", cseq=7, instance=None, reg_id=None, path=(), user_agent="kid",
                transport=Transport.UDP, source_host="192.0.2.9", source_port=5060,
                local_host="192.0.2.1", local_port=5060, flow_id=None,
                registered_at=1.0, updated_at=2.0,
            )
        ],
        [],
    )
    print("ok", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_applied_binding_survives_sigkill(db_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(db_path), str(NOW + 60)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout == "ok\n", child.stderr
    assert child.returncode == -signal.SIGKILL
    assert Path(f"{db_path}-wal").exists()  # never checkpointed: recovery reads the WAL

    with SqliteStore(str(db_path)) as store:
        result = store.load(NOW)
    assert [(b.aor, b.cseq, b.user_agent) for b in result.bindings] == [
        ("sip:carol@example.com", 7, "kid")
    ]
