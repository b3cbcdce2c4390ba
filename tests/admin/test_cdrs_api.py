"""Call records through a running server: GET /cdrs and ``siptrio cdrs`` list every call
attempt, answered, refused (404), busy (486) or cancelled (487), with its legs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import trio
from admin_support import OpsServer, ops_server
from support.ua import SDP, UA


async def answer_once(bob: UA) -> None:
    invite = await bob.expect_request("INVITE")
    await bob.reply(invite, 180, "Ringing")
    await bob.reply(invite, 200, "OK", body=SDP)
    await bob.expect_request("ACK")
    bye = await bob.expect_request("BYE", timeout=10)
    await bob.reply(bye, 200, "OK")


async def busy_once(bob: UA) -> None:
    invite = await bob.expect_request("INVITE")
    await bob.reply(invite, 486, "Busy Here")
    await bob.expect_request("ACK")


async def ring_until_cancelled(bob: UA) -> None:
    invite = await bob.expect_request("INVITE")
    await bob.reply(invite, 180, "Ringing")
    cancel = await bob.expect_request("CANCEL")
    await bob.reply(cancel, 200, "OK")
    await bob.reply(invite, 487, "Request Terminated")
    await bob.expect_request("ACK")


async def place(ops: OpsServer, **body: object) -> dict:
    async with ops.http() as http:
        r = await http.post("/simulateCall?wait=true", json=body)
        assert r.status_code == 200, r.text
        return r.json()


async def test_cdrs_list_answered_and_failed_calls(tmp_path: Path, nursery: trio.Nursery) -> None:
    started = time.time()
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, "ws", "bob")
        nursery.start_soon(answer_once, bob)
        answered = await place(ops, to="bob", duration=0.4)
        nobody = await place(ops, to="nobody")
        nursery.start_soon(busy_once, bob)
        busy = await place(ops, to="bob")
        nursery.start_soon(ring_until_cancelled, bob)
        cancelled = await place(ops, to="bob", answer_timeout=0.3)
        assert [c["final_status"] for c in (answered, nobody, busy, cancelled)] == [
            200,
            404,
            486,
            487,
        ]
        async with ops.http() as http:
            everything = (await http.get("/cdrs")).json()
            failed = (await http.get("/cdrs", params={"status": "4xx"})).json()
            not_found = (await http.get("/cdrs", params={"status": "404"})).json()
            to_bob = (await http.get("/cdrs", params={"aor": "bob@example.com"})).json()
            page = (await http.get("/cdrs", params={"limit": 2, "offset": 1})).json()
            window = (
                await http.get("/cdrs", params={"since": started - 1, "until": "2000-01-01"})
            ).json()
            bad = await http.get("/cdrs", params={"status": "4x4"})
            bad_time = await http.get("/cdrs", params={"since": "yesterday"})
    records = everything["records"]
    assert everything["total"] == 4
    assert [r["call_id"] for r in records] == [
        c["call_id"] for c in (cancelled, busy, nobody, answered)
    ]  # newest first
    talk, refused, rejected, gave_up = records[3], records[2], records[1], records[0]
    assert (
        talk["status"] == 200 and talk["ended_by"] == "caller" and talk["end_reason"] == "BYE (200)"
    )
    assert talk["caller_transport"] == "udp" and talk["callee_transport"] == "ws"
    assert talk["answered_at"] and talk["ended_at"] and 0.3 <= talk["duration"] < 5
    assert talk["media"] == "direct" and talk["node"] and talk["callee"] == "sip:bob@example.com"
    assert refused["status"] == 404 and refused["ended_by"] == "proxy"
    assert refused["callee_transport"] is None and refused["answered_at"] is None
    assert refused["duration"] is None and refused["ended_at"]
    assert rejected["status"] == 486 and rejected["ended_by"] == "callee"
    assert rejected["reason"] == "Busy Here" and rejected["callee_transport"] == "ws"
    assert gave_up["status"] == 487 and gave_up["ended_by"] == "caller"
    assert [r["status"] for r in failed["records"]] == [487, 486, 404] and failed["total"] == 3
    assert [r["status"] for r in not_found["records"]] == [404]
    assert {r["status"] for r in to_bob["records"]} == {200, 486, 487}
    assert page["total"] == 4 and [r["status"] for r in page["records"]] == [486, 404]
    assert window["total"] == 0
    assert bad.status_code == 422 and bad.json()["field"] == "status"
    assert bad_time.status_code == 422 and bad_time.json()["field"] == "since"

    # the same records from the store, with no server running
    config = tmp_path / "cli.ini"
    config.write_text(f"[registrar]\ndatabase = {tmp_path / 'location.sqlite'}\n")
    cli = [sys.executable, "-m", "siptrio", "cdrs", "--config", str(config)]
    as_csv = subprocess.run([*cli, "--csv"], capture_output=True, text=True, timeout=60)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [int(r["status"]) for r in rows] == [487, 486, 404, 200]
    assert rows[3]["call_id"] == answered["call_id"] and rows[3]["ended_by"] == "caller"
    table = subprocess.run([*cli, "--status", "404"], capture_output=True, text=True, timeout=60)
    assert "404 Not Found" in table.stdout and "1-1 of 1 call record(s)" in table.stdout
    as_json = subprocess.run(
        [*cli, "--json", "--aor", "nobody"], capture_output=True, text=True, timeout=60
    )
    assert json.loads(as_json.stdout)["total"] == 1
    wrong = subprocess.run([*cli, "--status", "ok"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "status" in wrong.stderr
