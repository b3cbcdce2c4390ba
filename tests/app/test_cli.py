"""The ``siptrio`` command as a user runs it: real processes, real signals, real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.server import ServerProcess

from siptrio import __version__

BASE = [
    "--set", "sip.listen_addr=127.0.0.1",
    "--set", "sip.udp_port=0",
    "--set", "sip.tcp_port=0",
    "--set", "sip_websocket.enable=false",
    "--set", "admin.enable=false",
    "--set", "control.enable=false",
]  # fmt: skip


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siptrio", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def serve(tmp_path: Path, *extra: str, name: str = "server.log") -> ServerProcess:
    db = tmp_path / "location.sqlite"
    return ServerProcess(
        ["serve", *BASE, "--set", f"registrar.database={db}", *extra], log_path=tmp_path / name
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"siptrio {__version__}"


def test_check_config_reports_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[sip]\nudp_port = 5060\nudp_prot = 5061\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert (
        f"{bad}:3" in result.stderr
        and "udp_prot" in result.stderr
        and "unknown key" in result.stderr
    )
    good = tmp_path / "good.ini"
    good.write_text("[sip]\nudp_port = 5070\n")
    result = run_cli("check-config", str(good))
    assert result.returncode == 0 and '"udp_port": 5070' in result.stdout


def test_check_config_names_sections_as_files_do_and_refuses_one_port(tmp_path: Path) -> None:
    good = tmp_path / "good.ini"
    good.write_text("[sip_tls]\nenable = true\n[sip_websocket]\nlisten_port = 8081\n")
    result = run_cli("check-config", str(good))
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert (
        settings["sip_tls"]["enable"] is True and settings["sip_websocket"]["listen_port"] == 8081
    )
    assert "tls" not in settings and "websocket" not in settings
    one_port = tmp_path / "one-port.ini"
    one_port.write_text(
        "[sip]\ntcp_port = 5070\n[sip_websocket]\nlisten_port = 5070\n[admin]\nlisten_port = 5070\n"
    )
    result = run_cli("check-config", str(one_port))
    assert result.returncode == 2 and f"{one_port}:4: [sip_websocket] listen_port" in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[registrar]\nmin_expires = soon\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2 and f"{bad}:2" in result.stderr and "min_expires" in result.stderr


def test_serve_with_tls_but_no_certificates_exits_1(tmp_path: Path) -> None:
    result = run_cli(
        "serve", *BASE,
        "--set", f"registrar.database={tmp_path / 'db.sqlite'}",
        "--set", "sip_tls.enable=true",
        "--set", f"sip_tls.cert_file={tmp_path / 'nope.pem'}",
        "--set", "sip_tls.listen_port=0",
    )  # fmt: skip
    assert result.returncode == 1
    assert "nope.pem" in result.stderr and "siptrio certs" in result.stderr


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = run_cli(
            "serve",
            *BASE,
            "--set",
            f"sip.udp_port={port}",
            "--set",
            f"registrar.database={tmp_path / 'db'}",
        )
    assert result.returncode == 1 and f"cannot listen on udp 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_certs_command_writes_files(tmp_path: Path) -> None:
    result = run_cli("certs", "--dir", str(tmp_path / "c"))
    assert result.returncode == 0 and "certutil" in result.stdout
    assert {p.name for p in (tmp_path / "c").iterdir()} >= {"ca.pem", "server.pem", "server.key"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_status_0(tmp_path: Path, sig: int) -> None:
    proc = serve(tmp_path)
    listeners = proc.wait_ready(expect=2)
    assert set(listeners) == {"udp", "tcp"}
    assert proc.stop(sig) == 0
    assert "stopped" in proc.output() and "Traceback" not in proc.output()


async def register_once(addr: tuple[str, int], user: str, expires: int = 600) -> list[str]:
    c = await SipClient.connect("udp", *addr)
    r = await c.request(c.register(user, expires=expires))
    await c.aclose()
    assert r.status == 200
    return r.values("contact")


async def fetch(addr: tuple[str, int], user: str) -> list[str]:
    c = await SipClient.connect("udp", *addr)
    r = await c.request(c.register(user, contact="", expires=None))
    await c.aclose()
    return r.values("contact")


async def test_binding_survives_sigkill_right_after_200(tmp_path: Path) -> None:
    proc = serve(tmp_path)
    addr = (await trio.to_thread.run_sync(proc.wait_ready, 2))["udp"]
    contacts = await register_once(addr, "kill-me", expires=3600)
    proc.proc.send_signal(signal.SIGKILL)  # no chance to flush anything
    await trio.to_thread.run_sync(proc.proc.wait)
    proc.stop()

    again = serve(tmp_path, name="server2.log")
    addr = (await trio.to_thread.run_sync(again.wait_ready, 2))["udp"]
    try:
        found = await fetch(addr, "kill-me")
        assert [c.split(";expires=")[0] for c in found] == [
            c.split(";expires=")[0] for c in contacts
        ]
        remaining = int(found[0].split(";expires=")[1])
        assert 3590 <= remaining <= 3600
        assert "1 bindings loaded" in again.output()
    finally:
        assert again.stop() == 0


async def test_sip_trace_logs_both_directions(tmp_path: Path) -> None:
    proc = serve(tmp_path, "--sip-trace")
    addr = (await trio.to_thread.run_sync(proc.wait_ready, 2))["udp"]
    await register_once(addr, "traced")
    proc.stop()
    out = proc.output()
    assert "recv UDP" in out and "send UDP" in out and "REGISTER sip:example.com SIP/2.0" in out
    assert "SIP/2.0 200 OK" in out
