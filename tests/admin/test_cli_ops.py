"""``siptrio clients | dialogs | call | kick`` against a live server's control socket."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import trio
from admin_support import ops_server
from test_admin_api import place_call
from test_simulate_call import answer

from siptrio.app.cli_ops import add_subcommands, run


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="siptrio")
    add_subcommands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


async def cli(*argv: str) -> int:
    """Run a command in a thread: it blocks on its socket while the server runs here."""
    return await trio.to_thread.run_sync(run, parse(*argv))


async def test_clients_dialogs_kick_and_call(
    tmp_path: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    async with ops_server(tmp_path) as ops:
        sock = ("--socket", ops.socket_path)
        alice = await ops.ua(nursery, "udp", "alice")
        bob = await ops.ua(nursery, "ws", "bob")
        call_id = await place_call(alice, bob)
        capsys.readouterr()

        assert await cli("clients", *sock) == 0
        out = capsys.readouterr().out
        assert "sip:alice@example.com" in out and "sip:bob@example.com" in out
        assert out.splitlines()[0].split()[:3] == ["AOR", "CONTACT", "TRANSPORT"]
        assert "2 binding(s)" in out
        assert await cli("clients", *sock, "--json") == 0
        clients = json.loads(capsys.readouterr().out)
        assert {c["transport"] for c in clients} == {"udp", "ws"}

        assert await cli("dialogs", *sock, "--json") == 0
        (d,) = json.loads(capsys.readouterr().out)
        assert d["call_id"] == call_id and d["state"] == "terminated"
        assert await cli("dialogs", *sock) == 0
        assert "udp->ws" in capsys.readouterr().out

        nursery.start_soon(answer, bob)
        assert await cli("call", "bob", "--duration", "0.3", *sock, "--json") == 0
        call = json.loads(capsys.readouterr().out)
        assert call["state"] == "ended" and call["final_status"] == 200
        assert await cli("call", "nobody", "--duration", "1", *sock) == 1
        out = capsys.readouterr().out
        assert "404" in out and "failed" in out

        assert await cli("kick", "alice", *sock) == 0
        assert "removed 1 binding(s) of sip:alice@example.com" in capsys.readouterr().out
        assert await cli("kick", "alice", *sock) == 1
        assert "no binding" in capsys.readouterr().err
        assert [b.aor for b in ops.server.location] == ["sip:bob@example.com"]


async def test_no_server_and_config_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("clients", "--socket", str(tmp_path / "none.sock")) == 1
    assert "cannot connect to the control socket" in capsys.readouterr().err
    config = tmp_path / "config.ini"
    config.write_text(f"[control]\nsocket = {tmp_path / 'other.sock'}\n")
    assert await cli("dialogs", "--config", str(config)) == 1
    assert str(tmp_path / "other.sock") in capsys.readouterr().err
    config.write_text("[control]\nsockett = x\n")
    assert await cli("dialogs", "--config", str(config)) == 2
