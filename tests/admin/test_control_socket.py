"""The control socket over a real Unix socket: snapshot, live events, commands, slow clients."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from admin_support import ControlClient, ops_server
from test_admin_api import place_call

import siptrio.app.control as control
from siptrio.app.errors import StartupError


async def test_snapshot_then_register_call_hangup_events_in_order(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with ops_server(tmp_path) as ops:
        early = await ops.ua(nursery, "udp", "early")
        ctl = await ControlClient.connect(ops.socket_path)
        snap = await ctl.read()
        assert snap["type"] == "snapshot"
        assert snap["server"]["version"] and snap["server"]["listeners"]
        assert [b["aor"] for b in snap["bindings"]] == ["sip:early@example.com"]
        assert snap["dialogs"] == [] and snap["flows"] == []
        assert snap["counters"]["requests_in.REGISTER"] == 1

        alice = await ops.ua(nursery, "tcp", "alice")
        bob = await ops.ua(nursery, "ws", "bob")
        call_id = await place_call(alice, bob)

        def interesting(m: dict[str, Any]) -> bool:
            return m["type"] in ("binding", "dialog") or (
                m["type"] == "flow" and m["event"] == "opened"
            )

        got: list[dict[str, Any]] = []
        with trio.fail_after(10):
            while len(got) < 7:
                m = await ctl.read()
                if interesting(m):
                    got.append(m)

        def summary(m: dict[str, Any]) -> tuple[str, str, str]:
            if m["type"] == "dialog":
                return m["type"], m["event"], m["dialog"]["state"]
            return m["type"], m["event"], m[m["type"]]["transport"]

        assert [summary(m) for m in got] == [
            ("flow", "opened", "tcp"),
            ("binding", "added", "tcp"),
            ("flow", "opened", "ws"),
            ("binding", "added", "ws"),
            ("dialog", "created", "early"),
            ("dialog", "state_changed", "confirmed"),
            ("dialog", "ended", "terminated"),
        ]
        assert got[1]["binding"]["aor"] == "sip:alice@example.com"
        assert got[1]["binding"]["flow"] == got[0]["flow"]["id"]
        assert all(m["dialog"]["call_id"] == call_id for m in got[4:])
        assert got[6]["dialog"]["ended_by"] == "caller"

        # counters arrive once a second
        counters = await ctl.until(lambda m: m["type"] == "counters", timeout=3)
        assert counters["counters"]["requests_in.INVITE"] == 1
        assert counters["gauges"]["bindings"] == 3

        # a closed flow is an event too, with its bindings going
        await alice.client.aclose()
        closed = await ctl.until(lambda m: m["type"] == "flow" and m["event"] == "closed")
        assert closed["flow"]["transport"] == "tcp"
        gone = await ctl.until(lambda m: m["type"] == "binding")
        assert gone["event"] == "flow_closed" and gone["binding"]["aor"] == "sip:alice@example.com"
        await ctl.aclose()
        del early


async def test_commands_kick_snapshot_and_errors(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, "tcp", "bob")
        ctl = await ControlClient.connect(ops.socket_path)
        await ctl.read()  # the snapshot

        reply = await ctl.command("snapshot")
        assert reply["ok"] and reply["cmd"] == "snapshot"
        assert [m["type"] for m in ctl.seen[-2:]] == ["snapshot", "reply"]

        reply = await ctl.command("kick", aor="nobody")
        assert not reply["ok"] and reply["removed"] == [] and "nobody" in reply["error"]
        reply = await ctl.command("kick", aor="bob")
        assert reply["ok"] and [b["aor"] for b in reply["removed"]] == ["sip:bob@example.com"]
        removed = await ctl.until(lambda m: m["type"] == "binding")
        assert removed["event"] == "removed"
        assert len(ops.server.location) == 0

        reply = await ctl.command("kick", aor=5)
        assert not reply["ok"] and reply["field"] == "aor"
        reply = await ctl.command("reboot")
        assert not reply["ok"] and reply["field"] == "cmd" and "kick" in reply["commands"]
        reply = await ctl.command("call", to="bob", duration="long")
        assert not reply["ok"] and reply["field"] == "duration"
        reply = await ctl.command("call", to="bob", color="red")
        assert not reply["ok"] and reply["field"] == "color"
        reply = await ctl.command("subscribe_trace", full="yes")
        assert not reply["ok"] and reply["field"] == "full"

        await ctl.stream.send_all(b"this is not json\n[1, 2]\n")
        bad = await ctl.until(lambda m: m["type"] == "reply")
        assert not bad["ok"] and bad["id"] is None and "JSON" in bad["error"]
        bad = await ctl.until(lambda m: m["type"] == "reply")
        assert not bad["ok"] and "object" in bad["error"]
        # the connection still works after bad input
        assert (await ctl.command("snapshot"))["ok"]
        await ctl.aclose()
        await bob.client.aclose()


async def test_trace_subscription(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        ctl = await ControlClient.connect(ops.socket_path)
        await ctl.read()
        assert (await ctl.command("subscribe_trace", full=False))["ok"]
        carol = await ops.ua(nursery, "udp", "carol")
        recv = await ctl.until(lambda m: m["type"] == "sip")
        assert recv["direction"] == "recv" and recv["transport"] == "udp"
        assert recv["first_line"] == "REGISTER sip:example.com SIP/2.0"
        assert recv["call_id"] == carol.client.call_id and recv["cseq"] == "1 REGISTER"
        assert recv["peer"] == "{}:{}".format(*carol.client.local) and "text" not in recv
        sent = await ctl.until(lambda m: m["type"] == "sip")
        assert sent["direction"] == "send" and sent["first_line"] == "SIP/2.0 200 OK"

        assert (await ctl.command("subscribe_trace", full=True))["ok"]
        await carol.register()
        recv = await ctl.until(lambda m: m["type"] == "sip")
        assert recv["text"].startswith("REGISTER sip:example.com SIP/2.0\r\n")
        assert "Contact: " in recv["text"]

        assert (await ctl.command("unsubscribe_trace"))["ok"]
        await carol.register()
        with trio.move_on_after(0.5):
            m = await ctl.until(lambda m: m["type"] == "sip")
            raise AssertionError(f"trace after unsubscribing: {m}")
        assert ops.server.hub.taps == []
        await ctl.aclose()


async def test_a_client_that_never_reads_is_dropped(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "QUEUE_LIMIT", 8)
    async with ops_server(tmp_path) as ops:
        sleeper = await ControlClient.connect(ops.socket_path)  # never reads
        await sleeper.send({"cmd": "subscribe_trace", "full": True})
        reader = await ControlClient.connect(ops.socket_path)
        await reader.read()
        dave = await ops.ua(nursery, "udp", "dave")
        # each REGISTER is two full trace messages for the sleeper: its socket buffer
        # fills, then its queue of 8, and it is dropped; the server never waits for it
        with trio.fail_after(20):
            while ops.server.stats["control.subscribers_dropped"] == 0:
                await dave.register()
        assert ops.server.stats["control.subscribers_dropped"] == 1
        # the sleeper's connection is closed (after whatever the kernel had buffered)
        with trio.fail_after(5):
            while True:
                data = await sleeper.stream.receive_some(1 << 20)
                if not data:
                    break
        assert ops.server.hub.taps == []
        # the server and the other subscriber carry on
        erin = await ops.ua(nursery, "udp", "erin")
        added = await reader.until(
            lambda m: m["type"] == "binding" and m["binding"]["aor"] == "sip:erin@example.com"
        )
        assert added["event"] == "added"
        assert (await reader.command("snapshot"))["ok"]
        await reader.aclose()
        del erin


async def test_socket_file_mode_stale_file_and_cleanup(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = run / "control.sock"
    run.mkdir(mode=0o755)
    # a socket file left by a server that died: nothing listens on it
    import socket as stdsocket

    stale = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    async with ops_server(tmp_path) as ops:
        st = os.stat(ops.socket_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        # a second server on the same path refuses to start
        with pytest.raises(StartupError, match="in use"):
            await control.serve_control(ops.server, ops.server.config)
        assert os.path.exists(ops.socket_path)
    assert not path.exists()


async def test_directory_is_created_0700(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops:
        directory = Path(ops.socket_path).parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_refuses_a_path_that_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "control.sock").write_text("precious")
    with pytest.raises(BaseExceptionGroup) as group:
        async with ops_server(tmp_path):
            pass
    assert group.group_contains(StartupError, match="not a socket")
    assert (tmp_path / "run" / "control.sock").read_text() == "precious"
