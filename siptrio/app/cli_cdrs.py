"""``siptrio cdrs``: the call records, read from the store (a running server need not be).

Newest first; a table for people, ``--csv`` for spreadsheets and billing scripts,
``--json`` for programs. The filters are ``GET /cdrs``'s. Records finish in the
store at most a second after their call ends.

Exit status: 0, 1 when the store cannot be read, 2 for a bad filter or config file.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

__all__ = ["add_subcommand", "run"]

CSV_FIELDS = (
    "id", "started_at", "answered_at", "ended_at", "duration", "status", "reason",
    "ended_by", "end_reason", "caller", "callee", "caller_transport", "callee_transport",
    "caller_peer", "callee_peer", "media", "node", "call_id", "request_uri",
)  # fmt: skip


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cdrs",
        help="list call records (one per call attempt, answered or not)",
        description=(
            "Call records from the store ([registrar] database, or Redis), newest first, "
            "as GET /cdrs serves them. Times are ISO-8601 (UTC unless an offset says "
            "otherwise) or epoch seconds."
        ),
    )
    p.add_argument("--config", "-c", metavar="FILE", help="config.ini (where the store is)")
    p.add_argument("--since", metavar="TIME", help="calls started at or after TIME")
    p.add_argument("--until", metavar="TIME", help="calls started before TIME")
    p.add_argument("--aor", metavar="AOR", help="calls from or to AOR (URI, user@host or user)")
    p.add_argument("--status", metavar="CODE", help="final status: 404, or a class: 4xx")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (100; 1..1000)")
    p.add_argument("--offset", type=int, default=0, metavar="N", help="skip the N newest")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print CSV with a header line")
    out.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from ..store.base import StoreError
    from .cdr import QueryError, parse_query
    from .cli_users import _open_store
    from .config import ConfigError, load_config
    from .views import cdr_view

    try:
        config = load_config(args.config)
        query = parse_query(
            since=args.since,
            until=args.until,
            aor=args.aor,
            status=args.status,
            limit=args.limit,
            offset=args.offset,
        )
    except (ConfigError, QueryError) as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 2
    try:
        with _open_store(config) as store:
            page = store.cdrs(query)
    except StoreError as e:
        print(f"siptrio: {e}", file=sys.stderr)
        return 1
    records = [cdr_view(r) for r in page.records]
    if args.json:
        print(json.dumps({"total": page.total, "records": records}, indent=2))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    else:
        _table(records, page.total, query.offset)
    return 0


def _table(records: list[dict[str, Any]], total: int, offset: int) -> None:
    headers = ["STARTED", "CALLER", "CALLEE", "STATUS", "TALK", "ENDED BY", "LEGS", "CALL-ID"]
    rows = [
        [
            (r["started_at"] or "-").replace("T", " ").removesuffix("Z"),
            r["caller"],
            r["callee"],
            f"{r['status']} {r['reason']}".strip(),
            "-" if r["duration"] is None else f"{r['duration']:.1f}s",
            r["ended_by"] or "-",
            f"{r['caller_transport']}->{r['callee_transport'] or '-'}",
            r["call_id"],
        ]
        for r in records
    ]
    widths = [max([len(h), *(len(str(row[i])) for row in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    shown = f"{offset + 1}-{offset + len(records)}" if records else "none"
    print(f"{shown} of {total} call record(s)")
