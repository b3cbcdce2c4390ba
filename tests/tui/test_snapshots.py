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


async def fake_server(path: str) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((json.dumps(SNAPSHOT) + "\n").encode())
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
