"""Call records in Redis: the same filters and pages as SQLite, one sorted set by start."""

from __future__ import annotations

import dataclasses

from cluster_support import Redis

from siptrio.store.cdrs import CallRecord, CdrQuery
from siptrio.store.redis_store import RedisStore

T0 = 1_780_000_000.0


def record(n: int, status: int, callee: str) -> CallRecord:
    return CallRecord(
        call_id=f"call-{n}", caller="sip:alice@example.com", callee=callee,
        caller_aor="sip:alice@example.com", callee_aor=callee, request_uri=callee,
        caller_transport="udp", callee_transport="tcp" if status == 200 else None,
        caller_peer="127.0.0.1:5070", callee_peer=None, started_at=T0 + n,
        answered_at=T0 + n if status == 200 else None, ended_at=T0 + n + 3,
        duration=3.0 if status == 200 else None, status=status, reason="x",
        ended_by="caller", end_reason=None, media="direct", node=f"node-{n % 2}",
    )  # fmt: skip


def test_stored_filtered_paged_and_purged(redis_server: Redis) -> None:
    with (
        RedisStore(redis_server.url, "node-a") as store,
        RedisStore(redis_server.url, "node-b") as other,
    ):
        store.add_cdrs(
            [record(1, 200, "sip:bob@example.com"), record(2, 404, "sip:nobody@example.com")]
        )
        other.add_cdrs([record(3, 486, "sip:bob@example.com")])  # every node sees every record
        page = store.cdrs(CdrQuery())
        assert [r.call_id for r in page.records] == [
            "call-3",
            "call-2",
            "call-1",
        ] and page.total == 3
        assert len({r.id for r in page.records}) == 3
        assert dataclasses.replace(page.records[2], id=None) == record(
            1, 200, "sip:bob@example.com"
        )
        assert [r.call_id for r in other.cdrs(CdrQuery(aor="bob", status_class=4)).records] == [
            "call-3"
        ]
        assert [r.call_id for r in store.cdrs(CdrQuery(since=T0 + 2, until=T0 + 3)).records] == [
            "call-2"
        ]
        paged = store.cdrs(CdrQuery(limit=1, offset=1))
        assert [r.call_id for r in paged.records] == ["call-2"] and paged.total == 3
        assert store.purge_cdrs(T0 + 2) == 1
        assert [r.call_id for r in store.cdrs(CdrQuery()).records] == ["call-3", "call-2"]
