"""The log as an operator reads it: JSON lines that parse one by one and carry Call-IDs,
a line per registration, call and refusal, and a log file that follows logrotate."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import httpx
import trio
from support.client import SipClient
from support.server import ServerProcess
from support.ua import SDP, UA

from siptrio.app.logs import JsonFormatter, TextFormatter

BASE = [
    "--set", "sip.listen_addr=127.0.0.1",
    "--set", "sip.udp_port=0",
    "--set", "sip.tcp_port=0",
    "--set", "sip.domains=example.com",
    "--set", "sip_websocket.enable=false",
    "--set", "admin.listen_port=0",
    "--set", "control.enable=false",
]  # fmt: skip


def test_json_lines_carry_the_fields_and_the_exception() -> None:
    record = logging.LogRecord("siptrio.calls", logging.INFO, __file__, 1, "call %s", ("x",), None)
    record.call_id = "abc@host"
    record.status = 486
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["event"] == "call x" and data["logger"] == "siptrio.calls"
    assert data["level"] == "INFO" and data["call_id"] == "abc@host" and data["status"] == 486
    assert data["time"].endswith("Z")
    try:
        raise ValueError("boom\nwith lines")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter(worker=2).format(record))
    assert "ValueError: boom" in data["exc"] and data["worker"] == 2


def test_text_lines_keep_a_traced_message_under_the_line() -> None:
    record = logging.LogRecord("siptrio.trace", logging.INFO, __file__, 1, "recv UDP", (), None)
    record.sip = "OPTIONS sip:x SIP/2.0\r\nCall-ID: 1"
    text = TextFormatter().format(record)
    assert text.endswith("siptrio.trace: recv UDP\nOPTIONS sip:x SIP/2.0\r\nCall-ID: 1")


async def answer(bob: UA) -> None:
    invite = await bob.expect_request("INVITE")
    await bob.reply(invite, 180, "Ringing")
    await bob.reply(invite, 200, "OK", body=SDP)
    await bob.expect_request("ACK")
    bye = await bob.expect_request("BYE", timeout=10)
    await bob.reply(bye, 200, "OK")


async def test_json_log_parses_line_by_line_and_follows_a_call(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    args = [
        "serve", *BASE, "--sip-trace",
        "--set", "logging.format=json",
        "--set", f"registrar.database={tmp_path / 'db.sqlite'}",
    ]  # fmt: skip
    proc = ServerProcess(args, log_path=tmp_path / "server.log")
    try:
        # the harness reads "listening on <transport> <addr>:<port>" from the events
        listeners = await trio.to_thread.run_sync(proc.wait_ready, 2)
        admin = next(
            json.loads(li)["event"] for li in proc.output().splitlines() if "admin API on" in li
        )
        base = admin.rsplit(" ", 1)[1]
        bob = UA(await SipClient.connect("udp", *listeners["udp"]), "bob")
        await bob.register()
        nursery.start_soon(answer, bob)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            answered = await http.post(
                "/simulateCall?wait=true", json={"to": "bob", "duration": 0.3}
            )
            failed = await http.post("/simulateCall?wait=true", json={"to": "nobody"})
        call_id, failed_id = answered.json()["call_id"], failed.json()["call_id"]
        assert failed.json()["final_status"] == 404
    finally:
        assert proc.stop() == 0
    lines = [json.loads(line) for line in proc.output().splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "event"} <= set(li) for li in lines)
    ours = [li for li in lines if li.get("call_id") == call_id]
    calls = [li["call"] for li in ours if li["logger"] == "siptrio.calls"]
    assert calls == ["setup", "answered", "ended"]
    ended = next(li for li in ours if li.get("call") == "ended")
    assert ended["ended_by"] == "caller" and ended["status"] == 200 and ended["duration"] >= 0.3
    # every message of the call is one trace line, its text one field
    traced = [li for li in ours if li["logger"] == "siptrio.trace"]
    firsts = [li["sip"].split("\r\n", 1)[0] for li in traced]
    assert any(f.startswith("INVITE sip:bob@") for f in firsts)
    assert any(f.startswith("BYE ") for f in firsts) and "SIP/2.0 200 OK" in firsts
    assert all(li["direction"] in ("recv", "send") and li["transport"] == "udp" for li in traced)
    (refusal,) = [
        li for li in lines if li.get("call_id") == failed_id and li["logger"] == "siptrio.calls"
    ]
    assert refusal["call"] == "failed" and refusal["status"] == 404
    assert refusal["ended_by"] == "proxy" and refusal["reason"]
    registered = [li for li in lines if li["logger"] == "siptrio.registrar"]
    assert registered[0]["aor"] == "sip:bob@example.com" and registered[0]["change"] == "added"


def wait_in(path: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in (content := path.read_text()):
            return content
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path}: {path.read_text() if path.exists() else '-'}")


async def test_log_file_is_reopened_on_sighup_and_the_format_follows(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "siptrio.log"
    log_file.parent.mkdir()
    config = tmp_path / "siptrio.ini"
    config.write_text("[logging]\nfile = logs/siptrio.log\n[sip]\ndomains = example.com\n")
    args = [
        "serve",
        "--config",
        str(config),
        *BASE,
        "--set",
        f"registrar.database={tmp_path / 'db'}",
    ]
    proc = ServerProcess(args, log_path=tmp_path / "stderr.log")
    try:
        text = await trio.to_thread.run_sync(wait_in, log_file, "listening on udp")
        udp = text.split("listening on udp ")[1].split()[0]
        host, port = udp.rsplit(":", 1)
        log_file.rename(tmp_path / "logs" / "siptrio.log.1")  # what logrotate does
        config.write_text(
            "[logging]\nfile = logs/siptrio.log\nformat = json\n[sip]\ndomains = example.com\n"
        )
        proc.proc.send_signal(signal.SIGHUP)
        text = await trio.to_thread.run_sync(wait_in, log_file, "reloaded")
        c = await SipClient.connect("udp", host, int(port))
        assert (await c.request(c.register("alice"))).status == 200
        await c.aclose()
        text = await trio.to_thread.run_sync(wait_in, log_file, "registered")
        lines = [json.loads(li) for li in text.splitlines()]
        assert any(li["logger"] == "siptrio.registrar" for li in lines)
        assert any("[logging] format: text -> json" in li["event"] for li in lines)
        old = (tmp_path / "logs" / "siptrio.log.1").read_text()
        assert "listening on udp" in old and "registered" not in old
        assert proc.output() == ""  # nothing on stderr: the file has it all
    finally:
        assert proc.stop() == 0
