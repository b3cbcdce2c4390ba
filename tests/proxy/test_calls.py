"""Calls through the proxy across every transport pair, checked at both ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.server import RunningServer, running_server
from support.ua import SDP, UA

from siptrio.app.certs import write_dev_certs
from siptrio.core.dialogs import DialogState
from siptrio.sip import Request

TRANSPORTS = ["udp", "tcp", "tls", "ws", "wss"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    certs = write_dev_certs(tmp_path / "certs")
    overrides = {
        "sip.domains": "example.com",
        "sip_tls.enable": "true",
        "sip_tls.cert_file": str(certs.cert),
        "sip_tls.key_file": str(certs.key),
        "sip_websocket.enable": "true",
        "sip_websocket.wss_enable": "true",
        "sip_websocket.wss_cert_file": str(certs.cert),
        "sip_websocket.wss_key_file": str(certs.key),
    }
    async with running_server(tmp_path, overrides) as rs:
        rs.ca_file = str(certs.ca)  # type: ignore[attr-defined]
        yield rs


async def make_ua(server: RunningServer, nursery: trio.Nursery, transport: str, user: str) -> UA:
    client = await SipClient.connect(
        transport,
        *server.addr(transport),
        ca_file=getattr(server, "ca_file", None),
        nursery=nursery,
    )
    ua = UA(client, user)
    await ua.register()
    return ua


async def ring(
    server: RunningServer, nursery: trio.Nursery, callee_transport: str
) -> tuple[UA, UA, bytes, str, Request]:
    """alice (UDP) INVITEs bob (on ``callee_transport``) until bob's phone rings."""
    caller = await make_ua(server, nursery, "udp", "alice")
    callee = await make_ua(server, nursery, callee_transport, "bob")
    invite, call_id = caller.invite("bob")
    await caller.client.send(invite)
    got = await callee.expect_request("INVITE")
    return caller, callee, invite, call_id, got


def dialog_state(server: RunningServer, call_id: str) -> DialogState | None:
    for d in server.server.dialogs:
        if d.call_id == call_id:
            return d.state
    return None


def cancel_of(invite: bytes) -> bytes:
    """The CANCEL for an INVITE (RFC 3261 section 9.1): same Via, Call-ID and CSeq number."""
    head = invite.split(b"\r\n\r\n")[0].decode()
    head = head.replace("INVITE sip:", "CANCEL sip:", 1).replace(" INVITE\r\n", " CANCEL\r\n")
    lines = [line for line in head.split("\r\n") if not line.startswith(("Content-", "Contact"))]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def answer_call(callee: UA) -> tuple[object, object]:
    invite = await callee.expect_request("INVITE")
    await callee.reply(invite, 180, "Ringing")
    await callee.reply(invite, 200, "OK", body=SDP)
    return invite, callee.uas_dialog(invite)


@pytest.mark.parametrize("callee_t", TRANSPORTS)
@pytest.mark.parametrize("caller_t", TRANSPORTS)
async def test_call_matrix(
    server: RunningServer, nursery: trio.Nursery, caller_t: str, callee_t: str
) -> None:
    caller = await make_ua(server, nursery, caller_t, "alice")
    callee = await make_ua(server, nursery, callee_t, "bob")

    invite, call_id = caller.invite("bob")
    await caller.client.send(invite)
    trying = await caller.expect_response("INVITE", final=False)
    assert trying.status == 100

    got = await callee.expect_request("INVITE")
    # our Via on top of the caller's; Max-Forwards decremented; R-URI is bob's Contact
    assert len(got.vias) == 2 and got.vias[0].transport == callee_t.upper()
    assert got.max_forwards == 69
    assert got.uri_text == callee.contact.strip("<>")
    rr = got.record_routes
    # RFC 5658: one Record-Route per side when the sides differ, one when they match
    assert len(rr) == (1 if caller_t == callee_t else 2)
    assert got.body == SDP.encode()

    await callee.reply(got, 180, "Ringing")
    ringing = await caller.expect_response("INVITE", final=False)
    while ringing.status == 100:
        ringing = await caller.expect_response("INVITE", final=False)
    assert ringing.status == 180 and len(ringing.vias) == 1
    assert dialog_state(server, call_id) is DialogState.EARLY

    await callee.reply(got, 200, "OK", body=SDP)
    ok = await caller.expect_response("INVITE")
    assert ok.status == 200 and ok.body == SDP.encode() and len(ok.vias) == 1
    assert dialog_state(server, call_id) is DialogState.CONFIRMED

    caller_dialog = caller.uac_dialog(invite, ok)
    await caller.client.send(caller.ack(caller_dialog))
    ack = await callee.expect_request("ACK")
    assert ack.call_id == call_id and ack.to.tag == callee.tag

    # the callee hangs up on odd pairs, the caller on even ones: both directions are covered
    if (TRANSPORTS.index(caller_t) + TRANSPORTS.index(callee_t)) % 2:
        d = callee.uas_dialog(got)
        await callee.client.send(callee.in_dialog(d, "BYE"))
        bye = await caller.expect_request("BYE")
        await caller.reply(bye, 200, "OK")
        assert (await callee.expect_response("BYE")).status == 200
        ended_by = "callee"
    else:
        await caller.client.send(caller.in_dialog(caller_dialog, "BYE"))
        bye = await callee.expect_request("BYE")
        await callee.reply(bye, 200, "OK")
        assert (await caller.expect_response("BYE")).status == 200
        ended_by = "caller"
    assert dialog_state(server, call_id) is DialogState.TERMINATED
    (d,) = [d for d in server.server.dialogs if d.call_id == call_id]
    assert d.ended_by == ended_by
    assert d.caller.transport.value == caller_t and d.callee.transport.value == callee_t


async def test_cancel_before_answer(server: RunningServer, nursery: trio.Nursery) -> None:
    caller, callee, invite, call_id, got = await ring(server, nursery, "ws")
    await callee.reply(got, 180, "Ringing")
    while (await caller.expect_response("INVITE", final=False)).status != 180:
        pass  # the proxy's 100 Trying may come first; cancel once the 180 is through
    await caller.client.send(cancel_of(invite))
    assert (await caller.expect_response("CANCEL")).status == 200
    c = await callee.expect_request("CANCEL")
    await callee.reply(c, 200, "OK")
    await callee.reply(got, 487, "Request Terminated")
    final = await caller.expect_response("INVITE")
    assert final.status == 487
    await callee.expect_request("ACK")  # the proxy ACKs the 487 hop by hop
    assert dialog_state(server, call_id) is DialogState.TERMINATED


async def test_cancel_before_the_callee_rings_leaves_no_early_dialog(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    caller, callee, invite, call_id, got = await ring(server, nursery, "ws")
    await caller.client.send(cancel_of(invite))
    assert (await caller.expect_response("CANCEL")).status == 200
    assert (await caller.expect_response("INVITE")).status == 487  # no need to wait for bob
    # bob's 180 only now: the proxy cancels him then, and makes no dialog of it
    await callee.reply(got, 180, "Ringing")
    c = await callee.expect_request("CANCEL")
    await callee.reply(c, 200, "OK")
    await callee.reply(got, 487, "Request Terminated")
    await callee.expect_request("ACK")
    assert dialog_state(server, call_id) in (None, DialogState.TERMINATED)


async def test_forking_one_answers_other_cancelled(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    caller = await make_ua(server, nursery, "udp", "alice")
    phone = await make_ua(server, nursery, "tcp", "bob")
    browser = await make_ua(server, nursery, "ws", "bob")
    invite, call_id = caller.invite("bob")
    await caller.client.send(invite)
    inv_phone = await phone.expect_request("INVITE")
    inv_browser = await browser.expect_request("INVITE")
    await phone.reply(inv_phone, 180, "Ringing")
    await browser.reply(inv_browser, 180, "Ringing")
    await browser.reply(inv_browser, 200, "OK", body=SDP)
    ok = await caller.expect_response("INVITE")
    assert ok.status == 200 and ok.to.tag == browser.tag
    cancel = await phone.expect_request("CANCEL")
    assert cancel.top_via.branch == inv_phone.top_via.branch
    await phone.reply(cancel, 200, "OK")
    await phone.reply(inv_phone, 487, "Request Terminated")
    await phone.expect_request("ACK")
    d = caller.uac_dialog(invite, ok)
    await caller.client.send(caller.ack(d))
    await browser.expect_request("ACK")
    states = {d.callee.tag: d.state for d in server.server.dialogs if d.call_id == call_id}
    assert states == {browser.tag: DialogState.CONFIRMED, phone.tag: DialogState.TERMINATED}


async def test_busy_callee_486(server: RunningServer, nursery: trio.Nursery) -> None:
    caller = await make_ua(server, nursery, "tcp", "alice")
    callee = await make_ua(server, nursery, "udp", "bob")
    invite, _ = caller.invite("bob")
    await caller.client.send(invite)
    got = await callee.expect_request("INVITE")
    await callee.reply(got, 486, "Busy Here")
    assert (await caller.expect_response("INVITE")).status == 486
    await callee.expect_request("ACK")


async def test_unknown_user_404_and_unregistered_user_480(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    caller = await make_ua(server, nursery, "udp", "alice")
    invite, _ = caller.invite("nobody")
    await caller.client.send(invite)
    assert (await caller.expect_response("INVITE")).status == 404
    gone = await make_ua(server, nursery, "ws", "carol")
    await gone.client.aclose()  # the flow closes: carol's binding goes with it
    with trio.fail_after(3):
        while server.server.location.lookup("sip:carol@example.com", 1e12 * 0):
            await trio.sleep(0.01)
    invite, _ = caller.invite("carol")
    await caller.client.send(invite)
    assert (await caller.expect_response("INVITE")).status == 480


async def test_request_delivered_over_the_ws_flow(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    """A MESSAGE from UDP reaches the browser over its WebSocket, never via its .invalid host."""
    sender = await make_ua(server, nursery, "udp", "alice")
    browser = await make_ua(server, nursery, "ws", "bob")
    msg = sender.client.build(
        "MESSAGE", "sip:bob@example.com", to="<sip:bob@example.com>", from_="<sip:alice@example.com>",
        headers=(("Content-Type", "text/plain"),), body=b"hello",
    )  # fmt: skip
    await sender.client.send(msg)
    got = await browser.expect_request("MESSAGE")
    assert got.body == b"hello" and got.uri_text.endswith(".invalid;transport=ws")
    await browser.reply(got, 200, "OK")
    assert (await sender.expect_response("MESSAGE")).status == 200


async def test_callee_ws_flow_closing_mid_dialog(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    caller, callee, invite, call_id, got = await ring(server, nursery, "ws")
    await callee.reply(got, 200, "OK", body=SDP)
    ok = await caller.expect_response("INVITE")
    d = caller.uac_dialog(invite, ok)
    await caller.client.send(caller.ack(d))
    await callee.expect_request("ACK")
    await callee.client.aclose()
    with trio.fail_after(3):
        while dialog_state(server, call_id) is not DialogState.TERMINATED:
            await trio.sleep(0.01)
    await caller.client.send(caller.in_dialog(d, "BYE"))
    assert (await caller.expect_response("BYE")).status == 430


async def test_max_forwards_zero_483_and_no_open_relay(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    ua = await make_ua(server, nursery, "udp", "alice")
    msg = ua.client.build("OPTIONS", "sip:bob@example.com", to="<sip:bob@example.com>").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0"
    )
    assert (await ua.client.request(msg)).status == 483
    # a foreign domain is never relayed unless its address is allowed
    msg = ua.client.build("MESSAGE", "sip:victim@192.0.2.7", to="<sip:victim@192.0.2.7>")
    r = await ua.client.request(msg)
    assert r.status == 403 and r.reason == "Relaying denied"
    # nor through a forged Route
    msg = ua.client.build(
        "MESSAGE", "sip:victim@example.net", to="<sip:victim@example.net>",
        headers=(("Route", "<sip:192.0.2.7;lr>"),),
    )  # fmt: skip
    assert (await ua.client.request(msg)).status == 403
    # an in-dialog request for a dialog the proxy never saw
    msg = ua.client.build("BYE", "sip:x@192.0.2.7", to="<sip:bob@example.com>;tag=nope")
    assert (await ua.client.request(msg)).status == 481


async def test_proxy_require_unknown_420(server: RunningServer, nursery: trio.Nursery) -> None:
    ua = await make_ua(server, nursery, "udp", "alice")
    msg = ua.client.build(
        "OPTIONS",
        "sip:bob@example.com",
        to="<sip:bob@example.com>",
        headers=(("Proxy-Require", "foo"),),
    )
    r = await ua.client.request(msg)
    assert r.status == 420 and r.first("unsupported") == "foo"


async def test_relay_to_allowed_destination(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_server(tmp_path, {"proxy.allowed_destinations": "127.0.0.0/8"}) as server:
        # a "foreign" UA on loopback, not registered: reachable because 127.0.0.0/8 is allowed
        target = await SipClient.connect("udp", "127.0.0.1", server.addr("udp")[1])
        peer = UA(target, "ext", domain="127.0.0.1")
        sender = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
        host, port = target.local
        msg = sender.client.build(
            "MESSAGE", f"sip:ext@{host}:{port}", to=f"<sip:ext@{host}:{port}>", body=b"hi"
        )
        await sender.client.send(msg)
        got = await peer.expect_request("MESSAGE")
        await peer.reply(got, 202, "Accepted")
        assert (await sender.expect_response("MESSAGE")).status == 202


async def test_advertised_address_names_the_proxy(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_server(
        tmp_path, {"sip.domains": "example.com", "sip.advertised_address": "sip.example.com"}
    ) as server:
        caller, callee, invite, call_id, got = await ring(server, nursery, "tcp")
        assert got.vias[0].host == "sip.example.com"
        assert [r.uri.host for r in got.record_routes] == ["sip.example.com", "sip.example.com"]  # type: ignore[union-attr]
        await callee.reply(got, 200, "OK", body=SDP)
        ok = await caller.expect_response("INVITE")
        d = caller.uac_dialog(invite, ok)
        await caller.client.send(caller.ack(d))
        await callee.expect_request("ACK")  # Routes naming sip.example.com were recognised as ours
        await caller.client.send(caller.in_dialog(d, "BYE"))
        bye = await callee.expect_request("BYE")
        await callee.reply(bye, 200, "OK")
        assert (await caller.expect_response("BYE")).status == 200
        assert dialog_state(server, call_id) is DialogState.TERMINATED


async def test_slow_reader_is_disconnected_not_waited_for(
    server: RunningServer, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that stops reading fills its flow's queue and is dropped; others go on."""
    import siptrio.transport.hub as hub

    monkeypatch.setattr(hub, "FLOW_QUEUE_LIMIT", 8)
    sleeper = await make_ua(server, nursery, "tcp", "bob")  # registers, then never reads again
    sleeper.client.stream.socket.setsockopt(  # type: ignore[union-attr]
        trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096
    )
    sender = await make_ua(server, nursery, "udp", "alice")
    other = await make_ua(server, nursery, "ws", "carol")
    payload = b"x" * 4000
    with trio.fail_after(20):
        while server.server.location.lookup("sip:bob@example.com", 0):
            msg = sender.client.build(
                "MESSAGE", "sip:bob@example.com", to="<sip:bob@example.com>", body=payload
            )
            await sender.client.send(msg)
            await trio.sleep(0.001)
    assert server.server.stats["flows_closed.tcp"] >= 1
    # everyone else is still served
    msg = sender.client.build(
        "MESSAGE", "sip:carol@example.com", to="<sip:carol@example.com>", body=b"hi"
    )
    await sender.client.send(msg)
    got = await other.expect_request("MESSAGE")
    await other.reply(got, 200, "OK")


async def test_outbound_client_whose_flow_closed_gets_430(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    """RFC 5626: a client that registered with reg-id and +sip.instance: 430 Flow Failed."""
    browser = UA(await SipClient.connect("ws", *server.addr("ws"), nursery=nursery), "dora")
    contact = f'<sip:dora@{browser.client.invalid_host};transport=ws>;reg-id=1;+sip.instance="<urn:uuid:0f0e>"'
    r = await browser.client.request(browser.client.register("dora", contact=contact))
    assert r.status == 200
    await browser.client.aclose()
    with trio.fail_after(3):
        while server.server.location.lookup("sip:dora@example.com", 0):
            await trio.sleep(0.01)
    caller = await make_ua(server, nursery, "udp", "alice")
    invite, _ = caller.invite("dora")
    await caller.client.send(invite)
    assert (await caller.expect_response("INVITE")).status == 430
