"""POST /simulateCall end to end: the simulated client calls real test UAs through the proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from admin_support import ControlClient, OpsServer, ops_server
from support.ua import UA


async def poll_until_done(ops: OpsServer, location: str, timeout: float = 10) -> dict:
    async with ops.http() as http:
        with trio.fail_after(timeout):
            while True:
                r = await http.get(location)
                assert r.status_code == 200
                call = r.json()
                if call["state"] in ("ended", "failed"):
                    return call
                await trio.sleep(0.05)


async def answer(ua: UA) -> None:
    invite = await ua.expect_request("INVITE")
    await ua.reply(invite, 180, "Ringing")
    await ua.reply(invite, 200, "OK", body="v=0\r\n")
    await ua.expect_request("ACK")
    bye = await ua.expect_request("BYE", timeout=5)
    await ua.reply(bye, 200, "OK")


@pytest.mark.parametrize("transport", ["udp", "tcp", "ws"])
async def test_answered_then_hung_up_after_duration(
    tmp_path: Path, nursery: trio.Nursery, transport: str
) -> None:
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, transport, "bob")
        nursery.start_soon(answer, bob)
        async with ops.http() as http:
            r = await http.post("/simulateCall", json={"to": "bob", "duration": 0.5})
        assert r.status_code == 201, r.text
        started = r.json()
        assert r.headers["location"] == f"/calls/{started['id']}"
        assert started["call_id"] and started["state"] in ("calling", "ringing", "answered")
        call = await poll_until_done(ops, r.headers["location"])
        assert call["state"] == "ended" and call["answered"] and call["final_status"] == 200
        assert call["ended_by"] == "simulator" and call["to"] == "sip:bob@example.com"
        assert call["answered_at"] and call["ended_at"] and call["ringing_at"]
        assert 0.4 <= call["talk_seconds"] <= 3
        async with ops.http() as http:
            listed = (await http.get("/calls")).json()
            by_call_id = await http.get(f"/calls/{call['call_id']}")
            dialogs = (await http.get("/dialogs")).json()
        assert [c["id"] for c in listed] == [call["id"]]
        assert by_call_id.json()["id"] == call["id"]
        (d,) = [d for d in dialogs if d["call_id"] == call["call_id"]]
        assert d["callee_transport"] == transport and d["caller_transport"] == "udp"
        assert d["state"] == "terminated" and d["ended_by"] == "caller"


async def test_wait_returns_the_outcome(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, "tcp", "bob")
        nursery.start_soon(answer, bob)
        async with ops.http() as http:
            r = await http.post(
                "/simulateCall",
                params={"wait": "true"},
                json={"to": "sip:bob@example.com", "from": "sip:tester@example.com",
                      "duration": 0.3, "answer_timeout": 5},
            )  # fmt: skip
        assert r.status_code == 200, r.text
        call = r.json()
        assert call["state"] == "ended" and call["final_status"] == 200
        assert call["from"] == "sip:tester@example.com"


async def test_unregistered_user_is_404(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops, ops.http() as http:
        r = await http.post("/simulateCall?wait=true", json={"to": "nobody", "duration": 1})
        assert r.status_code == 200
        call = r.json()
        assert call["state"] == "failed" and call["final_status"] == 404
        assert not call["answered"] and call["ended_by"] is None


async def test_busy_callee_is_486(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, "ws", "bob")

        async def busy() -> None:
            invite = await bob.expect_request("INVITE")
            await bob.reply(invite, 486, "Busy Here")

        nursery.start_soon(busy)
        async with ops.http() as http:
            r = await http.post("/simulateCall?wait=true", json={"to": "bob"})
        call = r.json()
        assert call["final_status"] == 486 and call["final_reason"] == "Busy Here"
        assert call["state"] == "failed" and not call["answered"]


async def test_unanswered_call_is_cancelled_487(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, "udp", "bob")
        seen: list[str] = []

        async def rings_forever() -> None:
            invite = await bob.expect_request("INVITE")
            await bob.reply(invite, 180, "Ringing")
            cancel = await bob.expect_request("CANCEL", timeout=5)
            seen.append("CANCEL")
            await bob.reply(cancel, 200, "OK")
            await bob.reply(invite, 487, "Request Terminated")

        nursery.start_soon(rings_forever)
        async with ops.http() as http:
            r = await http.post(
                "/simulateCall", json={"to": "bob", "answer_timeout": 0.5, "duration": 1}
            )
        call = await poll_until_done(ops, r.headers["location"])
        assert seen == ["CANCEL"]
        assert call["final_status"] == 487 and call["cancelled"] and not call["answered"]


async def test_bad_callee_is_422(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops, ops.http() as http:
        r = await http.post("/simulateCall", json={"to": "tel:+123"})
        assert r.status_code == 422 and r.json()["field"] == "to"


async def test_call_over_the_control_socket(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, "udp", "bob")
        nursery.start_soon(answer, bob)
        ctl = await ControlClient.connect(ops.socket_path)
        await ctl.read()
        reply = await ctl.command("call", to="bob", duration=0.3, wait=True)
        assert reply["ok"] and reply["call"]["state"] == "ended"
        reply = await ctl.command("call", to="tel:1")
        assert not reply["ok"] and "to" in reply["error"]
        await ctl.aclose()


def readme_curl_call() -> str:
    """The README's own line, run as written (the port is the test server's)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (line,) = [li for li in readme.splitlines() if li.startswith("curl") and "simulateCall" in li]
    return line


async def test_the_readme_curl_line_works_as_written(tmp_path: Path, nursery: trio.Nursery) -> None:
    """curl -d sends application/x-www-form-urlencoded: the API reads JSON all the same."""
    line = readme_curl_call()
    assert "-H" not in line and "localhost:8088/simulateCall?wait=true" in line
    async with ops_server(tmp_path) as ops:
        bob = await ops.ua(nursery, "udp", "bob")
        nursery.start_soon(answer, bob)
        command = line.replace("localhost:8088", ops.base_url.removeprefix("http://"))
        done = await trio.run_process(["sh", "-c", command], capture_stdout=True)
        call = json.loads(done.stdout)
        assert call["state"] == "ended" and call["answered"] and call["final_status"] == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_json_is_400_saying_send_json(
    tmp_path: Path, content_type: str | None
) -> None:
    async with ops_server(tmp_path) as ops, ops.http() as http:
        headers = {"content-type": content_type} if content_type else {}
        r = await http.post("/simulateCall", content=b"to=bob&duration=3", headers=headers)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["field"] == "body" and "not valid JSON" in body["error"]
        assert "Content-Type: application/json" in body["error"]
        # and a JSON body under any label is read as JSON
        r = await http.post("/simulateCall", content=b'{"to": "tel:1"}', headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "to"
