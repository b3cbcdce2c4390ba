"""The admin HTTP API over real HTTP against an in-process server with real SIP clients."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import trio
from admin_support import ops_server
from prometheus_client.parser import text_string_to_metric_families
from support.server import running_server
from support.ua import SDP, UA

from siptrio.app.admin import create_app, serve_admin
from siptrio.app.errors import StartupError

TRANSPORTS = ["udp", "tcp", "ws"]


async def place_call(caller: UA, callee: UA) -> str:
    """A whole call, caller hangs up: INVITE, 180, 200, ACK, BYE, 200."""
    invite, call_id = caller.invite(callee.user)
    await caller.client.send(invite)
    got = await callee.expect_request("INVITE")
    await callee.reply(got, 180, "Ringing")
    await callee.reply(got, 200, "OK", body=SDP)
    ok = await caller.expect_response("INVITE")
    assert ok.status == 200
    d = caller.uac_dialog(invite, ok)
    await caller.client.send(caller.ack(d))
    await callee.expect_request("ACK")
    await caller.client.send(caller.in_dialog(d, "BYE"))
    bye = await callee.expect_request("BYE")
    await callee.reply(bye, 200, "OK")
    assert (await caller.expect_response("BYE")).status == 200
    return call_id


async def test_list_clients_and_connections_show_each_transport(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with ops_server(tmp_path) as ops:
        uas = {t: await ops.ua(nursery, t, f"user-{t}") for t in TRANSPORTS}
        async with ops.http() as http:
            r = await http.get("/listClients")
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            clients = {c["aor"]: c for c in r.json()}
            r = await http.get("/connections")
            flows = {f["id"]: f for f in r.json()}
        assert set(clients) == {f"sip:user-{t}@example.com" for t in TRANSPORTS}
        for t, ua in uas.items():
            c = clients[f"sip:user-{t}@example.com"]
            assert c["transport"] == t
            assert c["contact"] == ua.contact.strip("<>")
            assert 590 <= c["expires_in"] <= 600
            assert c["registered_at"].endswith("Z") and c["updated_at"].endswith("Z")
            if t == "udp":
                assert c["flow"] is None
                assert c["source"] == "{}:{}".format(*ua.client.local)
            else:
                flow = flows[c["flow"]]
                assert flow["transport"] == t
                assert flow["bindings"] == [{"aor": c["aor"], "contact": c["contact"]}]
                assert flow["peer"] == c["source"] and flow["age"] >= 0
                if t == "tcp":
                    assert c["source"] == "{}:{}".format(*ua.client.local)
        assert {f["transport"] for f in flows.values()} == {"tcp", "ws"}


async def test_health_dialogs_and_metrics(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        alice = await ops.ua(nursery, "udp", "alice")
        bob = await ops.ua(nursery, "ws", "bob")
        call_id = await place_call(alice, bob)
        async with ops.http() as http:
            health = (await http.get("/health")).json()
            dialogs = (await http.get("/dialogs")).json()
            metrics = await http.get("/metrics")
        assert health["status"] == "ok" and health["uptime"] >= 0
        assert {li["transport"] for li in health["listeners"]} == {"udp", "tcp", "ws"}
        (d,) = [d for d in dialogs if d["call_id"] == call_id]
        assert d["state"] == "terminated" and d["ended_by"] == "caller"
        assert d["caller"] == "sip:alice@example.com" and d["callee"] == "sip:bob@example.com"
        assert d["caller_transport"] == "udp" and d["callee_transport"] == "ws"
        assert d["caller_flow"] is None and d["callee_flow"].startswith("ws-")
        assert d["answered_at"] and d["ended_at"] and d["duration"] >= 0

        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.text)
            for s in family.samples
        }
        assert samples[("siptrio_sip_requests_received_total", (("method", "REGISTER"),))] == 2
        assert samples[("siptrio_sip_requests_received_total", (("method", "INVITE"),))] == 1
        regs = (("method", "REGISTER"), ("status", "200"))
        assert samples[("siptrio_sip_responses_sent_total", regs)] == 2
        assert samples[("siptrio_bindings", (("transport", "ws"),))] == 1
        assert samples[("siptrio_bindings", (("transport", "udp"),))] == 1
        assert samples[("siptrio_dialogs", (("state", "terminated"),))] == 1
        assert samples[("siptrio_flows", (("transport", "ws"),))] == 1
        assert ("siptrio_transactions", (("kind", "server"),)) in samples
        assert ("siptrio_transactions", (("kind", "client"),)) in samples
        assert samples[("siptrio_sip_parse_errors_total", ())] == 0
        assert samples[("siptrio_keepalive_failures_total", ())] == 0
        assert samples[("siptrio_flows_opened_total", (("transport", "ws"),))] == 1
        assert samples[("siptrio_info", (("version", health["version"]),))] == 1
        udp = "{}:{}".format(*ops.rs.addr("udp"))
        assert samples[("siptrio_udp_receive_drops_total", (("listener", udp),))] == 0
        state = {
            labels[0][1]: value
            for (name, labels), value in samples.items()
            if name == "siptrio_state_entries"
        }
        # the call just ended: its dialog lingers, its transactions run their timers
        assert state["dialogs"] == 1 and state["bindings"] == 2 and state["flows"] == 1
        assert state["transactions"] >= 1 and state["timer_heap"] >= 1
        assert state["deadline_heap"] >= 1 and state["binding_expiry_heap"] >= 2
        assert {"cache_via", "cache_uris", "cache_header_lines", "rate_limiter"} <= set(state)


async def test_metrics_count_parse_errors_and_handshake_rejections(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with ops_server(tmp_path) as ops:
        host, port = ops.rs.addr("udp")
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
            await s.sendto(b"garbage that is not SIP\r\n\r\n", (host, port))
        # a WebSocket upgrade without the sip subprotocol is rejected with a reason
        ws_host, ws_port = ops.rs.addr("ws")
        stream = await trio.open_tcp_stream(ws_host, ws_port)
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with trio.fail_after(5):
            assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 4")
        await stream.aclose()
        async with ops.http() as http:
            with trio.fail_after(5):
                while True:
                    text = (await http.get("/metrics")).text
                    families = {f.name: f for f in text_string_to_metric_families(text)}
                    if families["siptrio_sip_parse_errors"].samples[0].value >= 1:
                        break
                    await trio.sleep(0.05)
        rejected = families["siptrio_ws_handshake_rejections"].samples
        assert rejected and all(s.labels["reason"] for s in rejected)


async def test_delete_bindings_kicks(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with ops_server(tmp_path) as ops:
        carol = await ops.ua(nursery, "tcp", "carol")  # kept: a dropped client closes its flow
        udp = await ops.ua(nursery, "udp", "dave")
        async with ops.http() as http:
            r = await http.delete("/bindings/sip:carol@example.com")
            assert r.status_code == 200, r.text
            (removed,) = r.json()["removed"]
            assert removed["aor"] == "sip:carol@example.com" and removed["transport"] == "tcp"
            r = await http.delete("/bindings/sip:carol@example.com")
            assert r.status_code == 404 and r.json()["error"]
            # one contact of an AOR, named by the bare user name
            r = await http.delete("/bindings/dave", params={"contact": "sip:nobody@1.2.3.4"})
            assert r.status_code == 404
            r = await http.delete("/bindings/dave", params={"contact": udp.contact.strip("<>")})
            assert r.status_code == 200 and len(r.json()["removed"]) == 1
            assert (await http.get("/listClients")).json() == []
        assert len(ops.server.location) == 0
        await carol.client.aclose()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b'{"to": "bob", "durations": 5}', 422, "durations"),
        (b'{"to": "bob", "duration": "five"}', 422, "duration"),
        (b'{"to": "bob", "duration": 0}', 422, "duration"),
        (b'{"to": "bob", "duration": 3601}', 422, "duration"),
        (b'{"to": 42}', 422, "to"),
        (b'{"duration": 5}', 422, "to"),
        (b'["to", "bob"]', 422, "body"),
        (b"", 422, "body"),
        (b'{"to": "bob", "answer_timeout": -1}', 422, "answer_timeout"),
        (b'{"to": "bob", "sdp": 7}', 422, "sdp"),
    ],
)
async def test_bad_input_is_json_naming_the_field(
    tmp_path: Path, body: bytes, status: int, field: str
) -> None:
    async with ops_server(tmp_path) as ops, ops.http() as http:
        r = await http.post(
            "/simulateCall", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == status, r.text
        err = r.json()
        assert (err["field"] == field and field in err["error"]) or status == 400
        assert err["error"]


async def test_unknown_routes_and_calls_are_json(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops, ops.http() as http:
        r = await http.get("/nope")
        assert r.status_code == 404 and r.json()["error"]
        r = await http.get("/calls/c-unknown")
        assert r.status_code == 404 and r.json()["field"] == "call_id"
        r = await http.put("/health")
        assert r.status_code == 405 and r.json()["error"]
        r = await http.get("/openapi.json")
        paths = r.json()["paths"]
        for route in (
            "/listClients", "/dialogs", "/connections", "/health", "/metrics",
            "/simulateCall", "/calls", "/calls/{call_id}", "/bindings/{aor}",
        ):  # fmt: skip
            assert route in paths


async def test_token_is_enforced(tmp_path: Path) -> None:
    async with ops_server(tmp_path, {"admin.token": "s3cret"}) as ops:
        for token in (None, "wrong", "s3cret2", ""):
            async with ops.http(token) as http:
                for path in ("/health", "/listClients", "/openapi.json", "/metrics"):
                    r = await http.get(path)
                    assert r.status_code == 401 and r.json()["error"], (token, path)
                    assert r.headers["www-authenticate"].startswith("Bearer")
        async with ops.http("s3cret") as http:
            assert (await http.get("/health")).status_code == 200
            schema = (await http.get("/openapi.json")).json()
            assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        async with ops.http() as http:
            r = await http.get("/health", headers={"Authorization": "Basic czNjcmV0"})
            assert r.status_code == 401
            # the webphone's static files stay public: a browser cannot send the token
            assert (await http.get("/phone/")).status_code != 401


async def test_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    overrides = {"admin.listen_addr": "0.0.0.0", "admin.listen_port": "0"}
    async with running_server(tmp_path, overrides) as rs:
        before = _listening_tcp_ports()
        with pytest.raises(StartupError, match=r"\[admin\] token"):
            await serve_admin(rs.server, rs.server.config)
        assert _listening_tcp_ports() <= before  # refused before binding anything


def _listening_tcp_ports() -> set[int]:
    """TCP ports this process listens on (other programs on the machine do not count)."""
    import os

    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in ours:  # LISTEN, and our socket's inode
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_admin_port_closed_after_shutdown(tmp_path: Path) -> None:
    async with ops_server(tmp_path) as ops:
        port = int(ops.base_url.rsplit(":", 1)[1])
        assert port in _listening_tcp_ports()
        async with ops.http() as http:
            assert (await http.get("/health")).status_code == 200
    assert port not in _listening_tcp_ports()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


async def test_webphone_directory_is_served_under_phone(tmp_path: Path) -> None:
    (tmp_path / "phone").mkdir()
    (tmp_path / "phone" / "index.html").write_text("<title>webphone</title>")
    async with running_server(tmp_path) as rs:
        app = create_app(rs.server, webphone_dir=tmp_path / "phone")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            r = await http.get("/phone/")
            assert r.status_code == 200 and "webphone" in r.text
            assert (await http.get("/phone/missing.js")).status_code == 404
            assert (await http.get("/health")).json()["status"] == "ok"
