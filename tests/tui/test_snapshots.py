"""Snapshots of the main screens, fed by a fake control socket with fixed data and a fixed clock."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tui.app import MonitorApp

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
T = "2026-01-01T00:00:00.000Z"


def _at(seconds: float) -> str:
    import datetime

    return (
        datetime.datetime.fromtimestamp(NOW + seconds, datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


SNAPSHOT: dict[str, Any] = {
    "type": "snapshot",
    "time": T,
    "server": {
        "version": "0.1.0",
        "started_at": _at(-3725),
        "uptime": 3725,
        "config": "/etc/siptrio/config.ini",
        "domains": ["example.com"],
        "listeners": [
            {"transport": "udp", "host": "127.0.0.1", "port": 5060},
            {"transport": "tcp", "host": "127.0.0.1", "port": 5060},
            {"transport": "ws", "host": "127.0.0.1", "port": 8080},
        ],
    },
    "bindings": [
        {
            "aor": "sip:alice@example.com",
            "contact": "sip:alice@192.0.2.10:5062;transport=udp",
            "transport": "udp",
            "source": "127.0.0.1:5062",
            "flow": None,
            "expires_at": _at(583),
            "expires_in": 583,
            "user_agent": "Yealink T46U",
        },
        {
            "aor": "sip:bob@example.com",
            "contact": "sip:k3u8sq1r@0kbc0ovlj2vf.invalid;transport=ws",
            "transport": "ws",
            "source": "127.0.0.1:40112",
            "flow": "ws-ab12cd-3",
            "expires_at": _at(597),
            "expires_in": 597,
            "user_agent": "SIP.js/0.21.2",
        },
    ],
    "dialogs": [
        {
            "id": "d1",
            "call_id": "a84b4c76e66710@pc33",
            "state": "confirmed",
            "caller": "sip:alice@example.com",
            "callee": "sip:bob@example.com",
            "caller_transport": "udp",
            "callee_transport": "ws",
            "created_at": _at(-75),
            "answered_at": _at(-72),
            "ended_at": None,
            "ended_by": None,
        },
        {
            "id": "d2",
            "call_id": "77ff0c2e@sipp",
            "state": "early",
            "caller": "sip:carol@example.com",
            "callee": "sip:alice@example.com",
            "caller_transport": "tcp",
            "callee_transport": "udp",
            "created_at": _at(-3),
            "answered_at": None,
            "ended_at": None,
            "ended_by": None,
        },
    ],
    "flows": [
        {
            "id": "ws-ab12cd-3",
            "transport": "ws",
            "peer": "127.0.0.1:40112",
            "local": "127.0.0.1:8080",
            "opened_at": _at(-120),
            "age": 120,
            "last_keepalive_age": 4.0,
            "bindings": [
                {
                    "aor": "sip:bob@example.com",
                    "contact": "sip:k3u8sq1r@0kbc0ovlj2vf.invalid;transport=ws",
                }
            ],
        },
    ],
    "gauges": {"bindings": 2, "dialogs": 2, "flows": 1},
    "state": {
        "transactions": 3,
        "timer_heap": 5,
        "deadline_heap": 2,
        "binding_expiry_heap": 2,
        "cache_via": 12,
        "cache_uris": 7,
    },
    "counters": {"requests_in.INVITE": 2, "responses_in": 4},
}

TRACE = [
    ("recv", "udp", "127.0.0.1:5062", "INVITE sip:bob@example.com SIP/2.0", -75.0),
    ("send", "udp", "127.0.0.1:5062", "SIP/2.0 100 Trying", -74.99),
    (
        "send",
        "ws",
        "127.0.0.1:40112",
        "INVITE sip:k3u8sq1r@0kbc0ovlj2vf.invalid;transport=ws SIP/2.0",
        -74.98,
    ),
    ("recv", "ws", "127.0.0.1:40112", "SIP/2.0 180 Ringing", -74.5),
    ("send", "udp", "127.0.0.1:5062", "SIP/2.0 180 Ringing", -74.49),
    ("recv", "ws", "127.0.0.1:40112", "SIP/2.0 200 OK", -72.0),
    ("send", "udp", "127.0.0.1:5062", "SIP/2.0 200 OK", -71.99),
    (
        "recv",
        "udp",
        "127.0.0.1:5062",
        "ACK sip:k3u8sq1r@0kbc0ovlj2vf.invalid;transport=ws SIP/2.0",
        -71.9,
    ),
    (
        "send",
        "ws",
        "127.0.0.1:40112",
        "ACK sip:k3u8sq1r@0kbc0ovlj2vf.invalid;transport=ws SIP/2.0",
        -71.89,
    ),
]


# Node A of two: node B's dialogs and flows come in the snapshot's cluster view, then in
# the view each counters message carries (B's call to dave answered, a new one ringing).
_REMOTE_DIALOG = {
    "id": "d1",  # B numbers its dialogs too: the same id as one of A's
    "call_id": "5c1e77@node-b",
    "state": "early",
    "caller": "sip:erin@example.com",
    "callee": "sip:dave@example.com",
    "caller_transport": "tls",
    "callee_transport": "wss",
    "created_at": _at(-40),
    "answered_at": None,
    "ended_at": None,
    "ended_by": None,
    "node": "node-b",
}
_REMOTE_FLOW = {
    "id": "wss-9f00aa-1",
    "transport": "wss",
    "peer": "127.0.0.1:41999",
    "local": "127.0.0.1:8443",
    "opened_at": _at(-300),
    "age": 300,
    "last_keepalive_age": 12.0,
    "bindings": [{"aor": "sip:dave@example.com", "contact": "sip:x@y.invalid;transport=ws"}],
    "node": "node-b",
}
CLUSTER_SNAPSHOT: dict[str, Any] = {
    **SNAPSHOT,
    "cluster": {
        "node": "node-a",
        "nodes": ["node-a", "node-b"],
        "dialogs": [_REMOTE_DIALOG],
        "flows": [_REMOTE_FLOW],
    },
}
CLUSTER_COUNTERS: dict[str, Any] = {
    "type": "counters",
    "time": T,
    "gauges": SNAPSHOT["gauges"],
    "counters": SNAPSHOT["counters"],
    "cluster": {
        "node": "node-a",
        "nodes": ["node-a", "node-b"],
        "dialogs": [
            {**_REMOTE_DIALOG, "state": "confirmed", "answered_at": _at(-38)},
            {
                **_REMOTE_DIALOG,
                "id": "d2",
                "call_id": "0ab3@node-b",
                "caller": "sip:frank@example.com",
                "created_at": _at(-1),
            },
        ],
        "flows": [_REMOTE_FLOW],
    },
}


async def fake_server(
    path: str, snapshot: dict[str, Any] = SNAPSHOT, *then: dict[str, Any]
) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((json.dumps(snapshot) + "\n").encode())
        for msg in then:
            writer.write((json.dumps(msg) + "\n").encode())
        for direction, transport, peer, first, at in TRACE:
            msg = {"type": "sip", "time": _at(at), "direction": direction, "transport": transport, "peer": peer,
                   "local": "127.0.0.1:5060", "first_line": first, "call_id": "a84b4c76e66710@pc33",
                   "text": first + "\r\nCall-ID: a84b4c76e66710@pc33\r\n"}  # fmt: skip
            writer.write((json.dumps(msg) + "\n").encode())
        await writer.drain()
        await reader.read()  # stay connected

    return await asyncio.start_unix_server(client, path)


# The status line shows the socket path, so it must not depend on pytest's tmp_path.
SOCKET = "/tmp/siptrio-tui-snapshot.sock"


@pytest.fixture(autouse=True)
def fixed_place_and_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    Path(SOCKET).unlink(missing_ok=True)
    yield
    Path(SOCKET).unlink(missing_ok=True)
    monkeypatch.undo()
    time.tzset()


def app_for(tmp_path: Path) -> MonitorApp:
    return MonitorApp(SOCKET, retry=0.05, clock=lambda: NOW)


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start the fake control server inside the app's own loop, then let it connect."""

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        pilot.app._fake = await fake_server(SOCKET)
        for _ in range(100):
            if pilot.app.connected and pilot.app.state.trace:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.2)

    return run_before


def test_bindings_screen(snap_compare, tmp_path: Path, served) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app_for(tmp_path), terminal_size=(150, 24), run_before=served)


def test_dialogs_screen(snap_compare, tmp_path: Path, served) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served(pilot)
        await pilot.press("2")
        await pilot.pause(0.2)

    assert snap_compare(app_for(tmp_path), terminal_size=(150, 24), run_before=before)


def test_flows_screen(snap_compare, tmp_path: Path, served) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served(pilot)
        await pilot.press("4")
        await pilot.pause(0.2)

    assert snap_compare(app_for(tmp_path), terminal_size=(150, 24), run_before=before)


def test_ladder_screen(snap_compare, tmp_path: Path, served) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served(pilot)
        await pilot.press("2")
        await pilot.pause(0.1)
        await pilot.press("l")
        await pilot.pause(0.3)

    assert snap_compare(app_for(tmp_path), terminal_size=(150, 30), run_before=before)


def test_disconnected_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = MonitorApp("/tmp/siptrio-tui-nobody.sock", retry=5, clock=lambda: NOW)

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        for _ in range(100):  # the first attempt fails with a message naming the fixed path
            if app.last_error:
                break
            await pilot.pause(0.02)
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(100, 12), run_before=before)


def test_cluster_dialogs_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Node A's monitor lists node B's dialogs too, with a Node column, kept current by
    the view each counters message carries."""
    app = app_for(tmp_path)
    rows: dict[str, list[str]] = {}

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        pilot.app._fake = await fake_server(SOCKET, CLUSTER_SNAPSHOT, CLUSTER_COUNTERS)
        for _ in range(100):
            if len(app.state.remote_dialogs) == 2:
                break
            await pilot.pause(0.05)
        await pilot.press("2")
        await pilot.pause(0.2)
        table = app.query_one("#dialogs-table")
        for key in table.rows:  # type: ignore[attr-defined]
            rows[str(key.value)] = [str(c) for c in table.get_row(key)]  # type: ignore[attr-defined]

    assert snap_compare(app, terminal_size=(170, 24), run_before=before)
    assert set(rows) == {"d1", "d2", "node-b|d1", "node-b|d2"}
    assert rows["d1"][-1] == "node-a" and rows["node-b|d1"][-1] == "node-b"
    assert rows["node-b|d1"][3] == "confirmed"  # as the counters message had it, not the snapshot
    assert rows["node-b|d2"][0] == "sip:frank@example.com"


def test_a_dialog_of_another_node_says_where_its_trace_is(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = app_for(tmp_path)
        async with app.run_test(size=(170, 30)) as pilot:
            pilot.app._fake = await fake_server(SOCKET, CLUSTER_SNAPSHOT, CLUSTER_COUNTERS)  # type: ignore[attr-defined]
            for _ in range(100):
                if len(app.state.remote_dialogs) == 2:
                    break
                await pilot.pause(0.05)
            await pilot.press("2")
            table = app.query_one("#dialogs-table")
            table.move_cursor(row=table.get_row_index("node-b|d1"))  # type: ignore[attr-defined]
            await pilot.press("l")
            await pilot.pause(0.2)
            assert app.query_one("#tabs").active == "ladder"  # type: ignore[attr-defined]
            text = str(app.query_one("#ladder-view").content)  # type: ignore[attr-defined]
            assert text == (
                "5c1e77@node-b is held by node node-b: its SIP messages are traced on "
                "that node's control socket."
            )
            # our own dialog still gets its ladder
            await pilot.press("2")
            table.move_cursor(row=table.get_row_index("d1"))  # type: ignore[attr-defined]
            await pilot.press("l")
            await pilot.pause(0.2)
            assert "INVITE" in str(app.query_one("#ladder-view").content)  # type: ignore[attr-defined]

    asyncio.run(scenario())


# --- history, transactions, the call form, the filter, flows that follow ------------------


def _sip(call_id: str, at: float, direction: str, first: str, *, cseq: str, frm: str, to: str,
         transport: str = "udp", peer: str = "127.0.0.1:5062") -> dict[str, Any]:  # fmt: skip
    text = f"{first}\r\nFrom: <{frm}>;tag=1\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n\r\n"
    return {"type": "sip", "time": _at(at), "direction": direction, "transport": transport,
            "peer": peer, "local": "127.0.0.1:5060", "first_line": first, "call_id": call_id,
            "text": text}  # fmt: skip


ALICE, BOB, NOBODY = "sip:alice@example.com", "sip:bob@example.com", "sip:nobody@example.com"
TRANSACTIONS = [
    _sip("reg-1@h", -50, "recv", "REGISTER sip:example.com SIP/2.0", cseq="1 REGISTER", frm=ALICE, to=ALICE),
    _sip("reg-1@h", -49.99, "send", "SIP/2.0 401 Unauthorized", cseq="1 REGISTER", frm=ALICE, to=ALICE),
    _sip("reg-1@h", -49.9, "recv", "REGISTER sip:example.com SIP/2.0", cseq="2 REGISTER", frm=ALICE, to=ALICE),
    _sip("reg-1@h", -49.89, "send", "SIP/2.0 200 OK", cseq="2 REGISTER", frm=ALICE, to=ALICE),
    _sip("opt-1@h", -30, "recv", "OPTIONS sip:127.0.0.1 SIP/2.0", cseq="7 OPTIONS", frm=ALICE, to="sip:127.0.0.1"),
    _sip("opt-1@h", -29.99, "send", "SIP/2.0 200 OK", cseq="7 OPTIONS", frm=ALICE, to="sip:127.0.0.1"),
    _sip("msg-1@h", -20, "recv", "MESSAGE sip:bob@example.com SIP/2.0", cseq="1 MESSAGE", frm=ALICE, to=BOB),
    _sip("msg-1@h", -19.99, "send", "MESSAGE sip:k3u8sq1r@0kbc0ovlj2vf.invalid;transport=ws SIP/2.0",
         cseq="1 MESSAGE", frm=ALICE, to=BOB, transport="ws", peer="127.0.0.1:40112"),
    _sip("msg-1@h", -19.9, "recv", "SIP/2.0 200 OK", cseq="1 MESSAGE", frm=ALICE, to=BOB,
         transport="ws", peer="127.0.0.1:40112"),
    _sip("msg-1@h", -19.89, "send", "SIP/2.0 200 OK", cseq="1 MESSAGE", frm=ALICE, to=BOB),
    _sip("inv-404@h", -10, "recv", "INVITE sip:nobody@example.com SIP/2.0", cseq="1 INVITE", frm=ALICE, to=NOBODY),
    _sip("inv-404@h", -9.99, "send", "SIP/2.0 404 Not Found", cseq="1 INVITE", frm=ALICE, to=NOBODY),
    _sip("inv-404@h", -9.98, "recv", "ACK sip:nobody@example.com SIP/2.0", cseq="1 ACK", frm=ALICE, to=NOBODY),
]  # fmt: skip


def _call(event: str, call_id: str, started: float, **fields: Any) -> dict[str, Any]:
    call = {"call_id": call_id, "caller": ALICE, "callee": BOB, "caller_transport": "udp",
            "callee_transport": "ws", "started_at": _at(started), "at": _at(started + 1),
            "media": "direct", **fields}  # fmt: skip
    return {"type": "call", "event": event, "time": T, "call": call}


CALLS = [
    _call("setup", "a84b4c76e66710@pc33", -75.5),
    _call("answered", "a84b4c76e66710@pc33", -75.5, status=200, reason="OK"),
    _call("failed", "inv-404@h", -10, callee=NOBODY, callee_transport=None, status=404,
          reason="Not Found", ended_by="proxy"),
    _call("failed", "0c1d@pc33", -5, status=487, reason="Request Terminated", ended_by="caller"),
    # the answered call ends: its dialog moves to the history once it has shown a while
    {"type": "dialog", "event": "ended", "time": T,
     "dialog": {**SNAPSHOT["dialogs"][0], "state": "terminated", "ended_at": _at(-2),
                "ended_by": "callee", "end_reason": "BYE (200)"}},
]  # fmt: skip


def served_with(*extra: dict[str, Any]):  # type: ignore[no-untyped-def]
    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        pilot.app._fake = await fake_server(SOCKET, SNAPSHOT, *extra)
        for _ in range(100):  # the fake server sends TRACE last: then all the rest came
            if len(pilot.app.state.messages_for("a84b4c76e66710@pc33")) == len(TRACE):
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)

    return run_before


def test_history_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every ended call with when it started and its final status, a dialog or not."""
    now = [NOW]
    app = MonitorApp(SOCKET, retry=0.05, clock=lambda: now[0])

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served_with(*CALLS)(pilot)
        now[0] = NOW + 11  # the ended dialog has shown for long enough
        app.tick()
        await pilot.press("3")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(170, 24), run_before=before)
    assert [h["status"] for h in app.state.history] == [200, 487, 404]


def test_transactions_screen(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every traced Call-ID, newest first: REGISTER, OPTIONS, MESSAGE, a failed INVITE."""

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served_with(*TRANSACTIONS)(pilot)
        pilot.app.tick()
        await pilot.press("5")
        await pilot.pause(0.2)

    assert snap_compare(app_for(tmp_path), terminal_size=(150, 24), run_before=before)


def test_a_failed_invite_has_its_ladder(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = app_for(tmp_path)

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served_with(*TRANSACTIONS)(pilot)
        app.tick()
        await pilot.press("5")
        table = app.query_one("#transactions-table")
        table.move_cursor(row=table.get_row_index("inv-404@h"))  # type: ignore[attr-defined]
        await pilot.press("enter")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(150, 30), run_before=before)
    assert app.ladder_call == "inv-404@h"


def test_the_filter_finds_an_aor_in_every_table(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = app_for(tmp_path)
    kept: dict[str, int] = {}

    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served_with(*TRANSACTIONS)(pilot)
        app.tick()
        await pilot.press("5")
        await pilot.press("slash")
        for key in "nobody":
            await pilot.press(key)
        await pilot.pause(0.2)
        for table in ("bindings", "flows", "transactions"):
            kept[table] = app.query_one(f"#{table}-table").row_count  # type: ignore[attr-defined]

    assert snap_compare(app, terminal_size=(150, 24), run_before=before)
    assert kept == {"bindings": 0, "flows": 0, "transactions": 1}


def test_the_call_form_has_labels(snap_compare, tmp_path: Path, served) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await served(pilot)
        await pilot.press("c")
        await pilot.pause(0.2)

    assert snap_compare(app_for(tmp_path), terminal_size=(100, 30), run_before=before)


def test_flows_follow_the_clock_and_the_bindings(tmp_path: Path) -> None:
    """Ages grow at every tick; a binding gone from a flow leaves its row at once."""
    now = [NOW]

    async def scenario() -> None:
        app = MonitorApp(SOCKET, retry=0.05, clock=lambda: now[0])
        removed = {
            "type": "binding",
            "event": "removed",
            "time": T,
            "binding": SNAPSHOT["bindings"][1],
        }
        async with app.run_test(size=(150, 24)) as pilot:
            await served_with()(pilot)
            await pilot.press("4")
            table = app.query_one("#flows-table")

            def row() -> list[str]:
                return [str(c) for c in table.get_row("ws-ab12cd-3")]  # type: ignore[attr-defined]

            assert row()[2:6] == ["2:00", "4 s ago", "1", BOB]
            now[0] = NOW + 61
            app.tick()
            assert row()[2] == "3:01"
            app.receive(removed)
            assert row()[4:6] == ["0", "-"]

    asyncio.run(scenario())
