"""Calls crossing WebRTC and plain RTP are bridged through a real rtpengine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.client import SipClient
from support.ports import free_media_port
from support.rtpengine import Rtpengine
from support.server import RunningServer, running_server
from support.ua import UA

from siptrio.app.metrics import metrics_registry
from siptrio.app.simcall import PLAIN_SDP, WEBRTC_SDP

PHONE_ANSWER = (
    "v=0\r\no=phone 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 41000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


@pytest.fixture
async def server(tmp_path: Path, rtpengine: Rtpengine) -> AsyncIterator[RunningServer]:
    overrides = {
        "sip.domains": "example.com",
        "sip_websocket.enable": "true",
        "media.rtpengine": rtpengine.spec,
        "media.timeout": "1",
    }
    async with running_server(tmp_path, overrides) as rs:
        yield rs


async def ua(server: RunningServer, nursery: trio.Nursery, transport: str, user: str) -> UA:
    u = UA(await SipClient.connect(transport, *server.addr(transport), nursery=nursery), user)
    await u.register()
    return u


def dialog(server: RunningServer, call_id: str):  # type: ignore[no-untyped-def]
    return next(d for d in server.server.dialogs if d.call_id == call_id)


def rtpengine_metrics(server: RunningServer) -> dict[tuple[str, str], float]:
    """``/metrics``' rtpengine samples, by (sample name, its one label's value)."""
    text = generate_latest(metrics_registry(server.server)).decode()
    return {
        (s.name, next(iter(s.labels.values()), "")): s.value
        for f in text_string_to_metric_families(text)
        if f.name.startswith("siptrio_rtpengine_")
        for s in f.samples
        if "le" not in s.labels
    }


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_browser_calls_phone_both_offers_rewritten(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery
) -> None:
    browser = await ua(server, nursery, "ws", "alice")
    phone = await ua(server, nursery, "udp", "bob")
    invite, call_id = browser.invite("bob", body=WEBRTC_SDP)
    await browser.client.send(invite)

    got = await phone.expect_request("INVITE")
    sdp = got.body.decode()
    assert "RTP/AVP" in sdp and "SAVPF" not in sdp  # plain RTP towards the phone
    assert "a=ice-" not in sdp and "a=fingerprint" not in sdp and "a=candidate" not in sdp
    port = int(sdp.split("m=audio ")[1].split()[0])
    assert rtpengine.ports[0] <= port <= rtpengine.ports[1]  # media goes through rtpengine
    assert got.first("content-length") == str(len(got.body))

    await phone.reply(got, 180, "Ringing")
    await phone.reply(got, 200, "OK", body=PHONE_ANSWER)
    ok = await browser.expect_response("INVITE")
    answer = ok.body.decode()
    assert ok.status == 200 and "UDP/TLS/RTP/SAVPF" in answer
    assert "a=ice-ufrag" in answer and "a=fingerprint" in answer and "a=rtcp-mux" in answer
    assert "a=crypto" not in answer  # SDES off
    assert dialog(server, call_id).bridged
    assert call_id in rtpengine.calls()

    d = browser.uac_dialog(invite, ok)
    await browser.client.send(browser.ack(d))
    await phone.expect_request("ACK")
    await browser.client.send(browser.in_dialog(d, "BYE"))
    bye = await phone.expect_request("BYE")
    await phone.reply(bye, 200, "OK")
    assert (await browser.expect_response("BYE")).status == 200
    await until(lambda: call_id not in rtpengine.calls())


async def test_phone_calls_browser_gets_a_webrtc_offer(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery
) -> None:
    phone = await ua(server, nursery, "udp", "bob")
    browser = await ua(server, nursery, "ws", "alice")
    invite, call_id = phone.invite("alice", body=PLAIN_SDP)
    await phone.client.send(invite)
    got = await browser.expect_request("INVITE")
    offer = got.body.decode()
    assert "UDP/TLS/RTP/SAVPF" in offer and "a=ice-ufrag" in offer and "a=fingerprint" in offer
    assert "a=rtcp-mux" in offer
    await browser.reply(got, 200, "OK", body=WEBRTC_SDP)
    ok = await phone.expect_response("INVITE")
    assert "RTP/AVP" in ok.body.decode() and "SAVPF" not in ok.body.decode()
    d = phone.uac_dialog(invite, ok)
    await phone.client.send(phone.ack(d))
    await browser.expect_request("ACK")
    # the callee hangs up: the rtpengine session goes too
    bd = browser.uas_dialog(got)
    await browser.client.send(browser.in_dialog(bd, "BYE"))
    bye = await phone.expect_request("BYE")
    await phone.reply(bye, 200, "OK")
    await until(lambda: call_id not in rtpengine.calls())


@pytest.mark.parametrize("pair", [("udp", "udp"), ("ws", "ws")])
async def test_same_kind_legs_are_not_bridged_in_auto_mode(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery, pair: tuple[str, str]
) -> None:
    caller = await ua(server, nursery, pair[0], "alice")
    callee = await ua(server, nursery, pair[1], "bob")
    sdp = PLAIN_SDP if pair[0] == "udp" else WEBRTC_SDP
    invite, call_id = caller.invite("bob", body=sdp)
    await caller.client.send(invite)
    got = await callee.expect_request("INVITE")
    assert got.body == sdp.encode()  # untouched
    await callee.reply(got, 200, "OK", body=sdp)
    ok = await caller.expect_response("INVITE")
    assert ok.body == sdp.encode()
    assert not dialog(server, call_id).bridged and rtpengine.calls() == []


async def test_late_offer_offer_in_200_answer_in_ack(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery
) -> None:
    phone = await ua(server, nursery, "udp", "bob")
    browser = await ua(server, nursery, "ws", "alice")
    invite, _call_id = phone.invite("alice", body="")
    invite = invite.replace(b"Content-Type: application/sdp\r\n", b"")
    await phone.client.send(invite)
    got = await browser.expect_request("INVITE")
    assert got.body == b""
    await browser.reply(got, 200, "OK", body=WEBRTC_SDP)  # the browser's offer
    ok = await phone.expect_response("INVITE")
    assert "RTP/AVP" in ok.body.decode() and "a=fingerprint" not in ok.body.decode()
    d = phone.uac_dialog(invite, ok)
    ack = phone.ack(d).replace(b"Content-Length: 0\r\n\r\n", b"")
    ack += f"Content-Type: application/sdp\r\nContent-Length: {len(PHONE_ANSWER)}\r\n\r\n{PHONE_ANSWER}".encode()
    await phone.client.send(ack)
    got_ack = await browser.expect_request("ACK")
    assert (
        "UDP/TLS/RTP/SAVPF" in got_ack.body.decode()
    )  # the phone's answer, rewritten for the browser


@pytest.mark.parametrize("how", ["cancel", "486"])
async def test_failed_calls_leave_no_session(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery, how: str
) -> None:
    browser = await ua(server, nursery, "ws", "alice")
    phone = await ua(server, nursery, "udp", "bob")
    invite, call_id = browser.invite("bob", body=WEBRTC_SDP)
    await browser.client.send(invite)
    got = await phone.expect_request("INVITE")
    assert call_id in rtpengine.calls()
    if how == "486":
        await phone.reply(got, 486, "Busy Here")
    else:
        await phone.reply(got, 180, "Ringing")
        await browser.expect_response("INVITE", final=False)
        head = invite.split(b"\r\n\r\n")[0].decode()
        cancel = head.replace("INVITE sip:", "CANCEL sip:", 1).replace(" INVITE\r\n", " CANCEL\r\n")
        cancel = "\r\n".join(
            x for x in cancel.split("\r\n") if not x.startswith(("Content-", "Contact"))
        )
        await browser.client.send((cancel + "\r\nContent-Length: 0\r\n\r\n").encode())
        c = await phone.expect_request("CANCEL")
        await phone.reply(c, 200, "OK")
        await phone.reply(got, 487, "Request Terminated")
    final = await browser.expect_response("INVITE")
    assert final.status in (486, 487)
    await until(lambda: call_id not in rtpengine.calls())


async def test_rtpengine_down_gives_503_and_no_dialog(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery
) -> None:
    rtpengine.stop()
    browser = await ua(server, nursery, "ws", "alice")
    phone = await ua(server, nursery, "udp", "bob")
    invite, call_id = browser.invite("bob", body=WEBRTC_SDP)
    await browser.client.send(invite)
    final = await browser.expect_response("INVITE", timeout=10)
    assert final.status == 503 and "media relay" in final.reason
    assert not [d for d in server.server.dialogs if d.call_id == call_id]
    with pytest.raises(trio.TooSlowError):
        await phone.expect_request("INVITE", timeout=0.5)  # nothing reached the phone
    metrics = rtpengine_metrics(server)
    assert metrics[("siptrio_rtpengine_requests_total", "offer")] == 1
    assert metrics[("siptrio_rtpengine_failures_total", "timeout")] == 1
    assert metrics[("siptrio_rtpengine_request_seconds_count", "offer")] == 0  # no answer


async def test_passthrough_when_configured(tmp_path: Path, nursery: trio.Nursery) -> None:
    # nobody listens on this engine port
    overrides = {
        "sip.domains": "example.com",
        "sip_websocket.enable": "true",
        "media.rtpengine": "udp:127.0.0.1:9",
        "media.timeout": "0.5",
        "media.on_failure": "passthrough",
    }
    async with running_server(tmp_path, overrides) as server:
        browser = await ua(server, nursery, "ws", "alice")
        phone = await ua(server, nursery, "udp", "bob")
        invite, _ = browser.invite("bob", body=WEBRTC_SDP)
        await browser.client.send(invite)
        got = await phone.expect_request("INVITE", timeout=5)
        assert got.body == WEBRTC_SDP.encode()


async def test_api_shows_media_and_packet_counts(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery
) -> None:
    import httpx

    from siptrio.app.admin import create_app

    browser = await ua(server, nursery, "ws", "alice")
    phone = await ua(server, nursery, "udp", "bob")
    invite, call_id = browser.invite("bob", body=WEBRTC_SDP)
    await browser.client.send(invite)
    got = await phone.expect_request("INVITE")
    relay_port = int(got.body.decode().split("m=audio ")[1].split()[0])
    # the phone's RTP socket: a free port, the one its answer names
    rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await rtp.bind(("127.0.0.1", free_media_port()))
    answer = PHONE_ANSWER.replace("m=audio 41000 ", f"m=audio {rtp.getsockname()[1]} ")
    await phone.reply(got, 200, "OK", body=answer)
    ok = await browser.expect_response("INVITE")
    await browser.client.send(browser.ack(browser.uac_dialog(invite, ok)))
    # the phone streams plain RTP (PCMU, 20 ms) to the relay address rtpengine gave it
    for seq in range(25):
        header = (
            bytes([0x80, 0x00])
            + seq.to_bytes(2, "big")
            + (seq * 160).to_bytes(4, "big")
            + b"\x12\x34\x56\x78"
        )
        await rtp.sendto(header + b"\xff" * 160, ("127.0.0.1", relay_port))
        await trio.sleep(0.005)
    rtp.close()
    d = dialog(server, call_id)
    app = create_app(server.server)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin"
    ) as http:
        listed = {x["call_id"]: x for x in (await http.get("/dialogs")).json()}
        assert listed[call_id]["media"] == "bridged"
        media = (await http.get(f"/dialogs/{d.id}/media")).json()
        assert media["media"] == "bridged"
        assert media["from_callee"]["packets"] >= 20 and media["from_callee"]["bytes"] >= 20 * 172
        assert (await http.get("/dialogs/nope/media")).status_code == 404
    metrics = rtpengine_metrics(server)
    for command in ("offer", "answer", "query"):
        assert metrics[("siptrio_rtpengine_requests_total", command)] >= 1, command
        assert metrics[("siptrio_rtpengine_request_seconds_count", command)] >= 1, command
    assert metrics[("siptrio_rtpengine_failures_total", "timeout")] == 0


async def test_reinvite_in_a_bridged_dialog_is_rewritten_too(
    server: RunningServer, rtpengine: Rtpengine, nursery: trio.Nursery
) -> None:
    browser = await ua(server, nursery, "ws", "alice")
    phone = await ua(server, nursery, "udp", "bob")
    invite, call_id = browser.invite("bob", body=WEBRTC_SDP)
    await browser.client.send(invite)
    got = await phone.expect_request("INVITE")
    await phone.reply(got, 200, "OK", body=PHONE_ANSWER)
    ok = await browser.expect_response("INVITE")
    d = browser.uac_dialog(invite, ok)
    await browser.client.send(browser.ack(d))
    await phone.expect_request("ACK")
    # the phone puts the call on hold: a re-INVITE with plain SDP towards the browser
    pd = phone.uas_dialog(got)
    reinvite = phone.in_dialog(pd, "INVITE").replace(b"Content-Length: 0\r\n\r\n", b"")
    hold = PHONE_ANSWER.replace("a=sendrecv", "a=sendonly")
    reinvite += f"Contact: {phone.contact}\r\nContent-Type: application/sdp\r\nContent-Length: {len(hold)}\r\n\r\n{hold}".encode()
    await phone.client.send(reinvite)
    re_got = await browser.expect_request("INVITE")
    assert "UDP/TLS/RTP/SAVPF" in re_got.body.decode() and "a=fingerprint" in re_got.body.decode()
    await browser.reply(re_got, 200, "OK", body=WEBRTC_SDP.replace("a=sendrecv", "a=recvonly"))
    re_ok = await phone.expect_response("INVITE")
    assert (
        re_ok.status == 200
        and "RTP/AVP" in re_ok.body.decode()
        and "a=fingerprint" not in re_ok.body.decode()
    )
    assert call_id in rtpengine.calls()
