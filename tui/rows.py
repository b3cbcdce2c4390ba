"""What each table shows: its columns, and its rows built from ``MonitorState``.

Plain functions of the state, the clock and the filter, no widgets: the app puts the
rows into its tables (``MonitorApp.draw_*``), keyed so that they update in place.
``matches`` is the row filter: true when any of the values given contains the text
typed after ``/``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from rich.text import Text

from .state import MonitorState, parse_time

__all__ = [
    "BINDING_COLUMNS",
    "DIALOG_COLUMNS",
    "FLOW_COLUMNS",
    "HISTORY_COLUMNS",
    "TABLES",
    "TRANSACTION_COLUMNS",
    "binding_rows",
    "dialog_cells",
    "flow_cells",
    "history_rows",
    "summary_text",
    "transaction_rows",
]

Matches = Callable[..., bool]

TRANSPORT_STYLE = {
    "udp": "bold cyan",
    "tcp": "bold green",
    "tls": "bold bright_green",
    "ws": "bold magenta",
    "wss": "bold bright_magenta",
}
STATE_STYLE = {"early": "bold yellow", "confirmed": "bold green", "terminated": "dim red"}

# --- the tables: tab id -> table widget id, and each table's (label, key) columns ---------

TABLES = {
    "bindings": "#bindings-table",
    "dialogs": "#dialogs-table",
    "history": "#history-table",
    "flows": "#flows-table",
    "transactions": "#transactions-table",
}
BINDING_COLUMNS = [
    ("AOR", "aor"),
    ("Contact", "contact"),
    ("Transport", "transport"),
    ("Received", "received"),
    ("NAT", "nat"),
    ("Expires", "expires"),
    ("User agent", "user_agent"),
]
DIALOG_COLUMNS = [
    ("Caller", "caller"),
    ("Callee", "callee"),
    ("Legs", "legs"),
    ("State", "state"),
    ("Media", "media"),
    ("Duration", "duration"),
    ("Ended by", "ended_by"),
    ("Call-ID", "call_id"),
]
HISTORY_COLUMNS = [
    ("Started", "started"),
    ("Caller", "caller"),
    ("Callee", "callee"),
    ("Legs", "legs"),
    ("Final status", "status"),
    ("Talk", "duration"),
    ("Ended by", "ended_by"),
    ("Call-ID", "call_id"),
]
FLOW_COLUMNS = [
    ("Transport", "transport"),
    ("Peer", "peer"),
    ("Age", "age"),
    ("Last keep-alive", "keepalive"),
    ("Bindings", "bindings"),
    ("AORs", "aors"),
    ("Flow", "flow"),
]
TRANSACTION_COLUMNS = [
    ("First seen", "first"),
    ("Method", "method"),
    ("From", "from"),
    ("To", "to"),
    ("Final status", "status"),
    ("Msgs", "messages"),
    ("Call-ID", "call_id"),
]

# --- cells ----------------------------------------------------------------------------------


def _transport(t: str | None) -> Text:
    return Text((t or "?").upper(), style=TRANSPORT_STYLE.get(t or "", ""))


def _state(s: str | None) -> Text:
    return Text(s or "?", style=STATE_STYLE.get(s or "", ""))


def _clock_time(t: float | None) -> str:
    """Wall-clock seconds as local HH:MM:SS."""
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _status(status: int | None, text: str) -> Text:
    style = (
        "" if not status else ("green" if status < 300 else "bold red" if status < 500 else "red")
    )
    return Text(text, style=style)


def _count(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def _seconds(v: float | None) -> str:
    if v is None:
        return "-"
    v = max(0, int(v))
    h, rest = divmod(v, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# --- the summary above the tabs ---------------------------------------------------------------


def _tables_line(tables: dict[str, int]) -> str:
    """The server's state sizes: over a long run every one of them should stay flat."""
    if not tables:
        return " state: -"
    caches = sum(n for name, n in tables.items() if name.startswith("cache_"))
    shown = (
        ("transactions", tables.get("transactions", 0)),
        ("timer heap", tables.get("timer_heap", 0)),
        ("deadline heap", tables.get("deadline_heap", 0)),
        ("expiry heap", tables.get("binding_expiry_heap", 0)),
        ("caches", caches),
    )
    return " state: " + "  ".join(f"{name} {_count(n)}" for name, n in shown)


def summary_text(state: MonitorState, now: float) -> str:
    """Uptime, listeners, rates, live counts and state sizes: three lines."""
    server = state.server
    started = parse_time(server.get("started_at"))
    uptime = _seconds(now - started) if started else "-"
    listeners = ", ".join(
        f"{li['transport']} {li['host']}:{li['port']}" for li in server.get("listeners", [])
    )
    g = state.gauges
    rates = state.rates
    cluster = elsewhere = ""
    if state.node:
        cluster = f"   node {state.node}, {len(state.nodes)} in the cluster"
        elsewhere = (
            f" (+{len(state.remote_dialogs)} on other nodes)" if state.remote_dialogs else ""
        )
    return (
        f" up {uptime}   listening: {listeners or '-'}{cluster}\n"
        f" in {rates.get('in', 0):.0f}/s  out {rates.get('out', 0):.0f}/s   "
        f"bindings {g.get('bindings', len(state.bindings))}  "
        f"dialogs {g.get('dialogs', len(state.dialogs))}{elsewhere}  "
        f"flows {g.get('flows', len(state.flows))}\n"
        f"{_tables_line(state.tables)}"
    )


# --- rows of each table -------------------------------------------------------------------------


def binding_rows(state: MonitorState, now: float, matches: Matches) -> dict[str, list[Any]]:
    rows = {}
    for key, b in sorted(state.bindings.items()):
        if not matches(
            b.get("aor"), b.get("contact"), b.get("source"), b.get("user_agent"),
            b.get("call_id"), b.get("flow"),
        ):  # fmt: skip
            continue
        expires_at = parse_time(b.get("expires_at"))
        left = expires_at - now if expires_at else b.get("expires_in")
        rows[key] = [
            b.get("aor", ""),
            b.get("contact", ""),
            _transport(b.get("transport")),
            b.get("received", b.get("source", "")),
            "yes" if b.get("nat") else "",
            _seconds(left),
            b.get("user_agent") or "",
        ]
    return rows


def dialog_cells(
    d: dict[str, Any], node: str | None, now: float, matches: Matches
) -> list[Any] | None:
    """One dialog's row (ours or held by ``node``), or None when the filter hides it."""
    if not matches(d.get("caller"), d.get("callee"), d.get("call_id"), d.get("state"), node):
        return None
    answered = parse_time(d.get("answered_at"))
    ended = parse_time(d.get("ended_at"))
    duration = None if answered is None else (ended or now) - answered
    return [
        d.get("caller", ""),
        d.get("callee", ""),
        Text.assemble(
            _transport(d.get("caller_transport")), " > ", _transport(d.get("callee_transport"))
        ),
        _state(d.get("state")),
        Text(
            d.get("media") or "direct",
            style="bold cyan" if d.get("media") == "bridged" else "dim",
        ),
        _seconds(duration),
        d.get("ended_by") or "",
        d.get("call_id", ""),
    ]


def history_rows(
    state: MonitorState, matches: Matches
) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """Ended calls: how each ended, and when each started, by Call-ID (to sort by)."""
    rows = {}
    started: dict[str, float] = {}
    for d in state.history:
        status = d.get("status")
        final = f"{status} {d.get('reason') or ''}".strip() if status else "-"
        if not matches(d.get("caller"), d.get("callee"), d.get("call_id"), final):
            continue
        answered = parse_time(d.get("answered_at"))
        ended = parse_time(d.get("ended_at"))
        talk = None if answered is None or ended is None else ended - answered
        start = parse_time(d.get("started_at") or d.get("created_at"))
        started[str(d.get("call_id", ""))] = start or 0.0
        rows[d["id"]] = [
            _clock_time(start),
            d.get("caller", ""),
            d.get("callee", ""),
            Text.assemble(
                _transport(d.get("caller_transport")),
                " > ",
                _transport(d.get("callee_transport")) if d.get("callee_transport") else "-",
            ),
            _status(status, final),
            _seconds(talk),
            d.get("ended_by") or "",
            d.get("call_id", ""),
        ]
    return rows, started


def transaction_rows(
    state: MonitorState, matches: Matches
) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """Every traced Call-ID, and when each was first seen (to sort by)."""
    rows = {}
    first: dict[str, float] = {}
    for t in state.recent_transactions():
        first[t.call_id] = t.first
        final = f"{t.status} {t.reason}".strip() if t.status else "-"
        if not matches(t.call_id, t.from_, t.to, t.method, final):
            continue
        rows[t.call_id] = [
            _clock_time(t.first),
            t.method or "?",
            t.from_,
            t.to,
            _status(t.status, final),
            str(t.messages),
            t.call_id,
        ]
    return rows, first


def flow_cells(
    state: MonitorState, f: dict[str, Any], node: str | None, now: float, matches: Matches
) -> list[Any] | None:
    """One flow's row (ours or ``node``'s), or None when the filter hides it."""
    # ours: the bindings as they are now; another node's: as it published them
    mine = node == state.node or "node" not in f
    bound = state.flow_bindings(f.get("id", "")) if mine else f.get("bindings") or []
    aors = [b.get("aor") for b in bound]
    if not matches(f.get("peer"), f.get("transport"), f.get("id"), node, *aors):
        return None
    opened = parse_time(f.get("opened_at"))
    ka = f.get("last_keepalive_age")
    return [
        _transport(f.get("transport")),
        f.get("peer", ""),
        _seconds(now - opened if opened else f.get("age")),
        "-" if ka is None else f"{ka:.0f} s ago",
        str(len(bound)),
        ", ".join(a for a in aors if a) or "-",
        f.get("id", ""),
    ]
