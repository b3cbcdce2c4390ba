"""Browsers and plain-RTP SIPp phones hear each other through siptrio and a real rtpengine.

One rtpengine (userspace, loopback, its own ng port and RTP port range) and one siptrio
process with ``[media] rtpengine`` pointing at it (``mode = auto``) for the module;
Chromium with its fake microphone runs the SIP.js webphone (alice, over WS) and the
JsSIP one (bob, over WSS); SIPp plays the desk phones with examples/sipp/uas-rtp.xml
(carol over UDP, answers PCMU; a UAS in server mode registered by a separate SIPp, the
standard way: sipp_helpers.py) and uac-rtp.xml (a PCMU caller), both streaming a PCMU
tone from a file.

* A browser calls the plain-RTP callee: SIPp gets a plain RTP/AVP offer from rtpengine,
  the browser a WebRTC answer; the browser's ``getStats()`` counts inbound audio growing
  and ``GET /dialogs/{id}/media`` (rtpengine's ``query``) counts packets both ways.
* The plain-RTP caller calls a browser: the page gets a WebRTC offer (ICE, fingerprint,
  UDP/TLS/RTP/SAVPF), answers, and audio flows the same way.
* Browser to browser and SIPp UDP to SIPp UDP are not bridged in auto mode: the SDP
  crosses untouched, the dialog's media is "direct" and rtpengine has no call.
Each bridged call's rtpengine session is gone once the call is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import (
    DOMAIN,
    SIPP_DIR,
    Phone,
    Siptrio,
    header_values,
    needs_browser,
    run_siptrio,
    two_phones,
    wait_for,
)
from media_helpers import (
    audio_port,
    body,
    candidate_ports,
    dialog_by_call_id,
    inbound_audio_grows,
    is_plain_sdp,
    is_webrtc_sdp,
    media_both_ways,
    new_dialog,
    write_pcmu_tone,
)
from sipp_helpers import Sipp, standard_callee, start_sipp
from support.rtpengine import Rtpengine, needs_rtpengine

pytestmark = [pytest.mark.slow, needs_browser(certutil=True, sipp=True), needs_rtpengine()]

CALLEE = "carol"  # the plain-RTP SIPp callee, over UDP


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rtpengine]:
    rtpengine = Rtpengine(tmp_path_factory.mktemp("rtpengine"))
    try:
        yield rtpengine
    finally:
        rtpengine.stop()


@pytest.fixture(scope="module")
def server(engine: Rtpengine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Siptrio]:
    overrides = {"media.rtpengine": engine.spec, "media.mode": "auto"}
    with run_siptrio(tmp_path_factory.mktemp("siptrio"), overrides) as s:
        yield s


@pytest.fixture(scope="module")
def phones(server: Siptrio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Phone]]:
    """alice (SIP.js over WS) and bob (JsSIP over WSS), registered."""
    with two_phones(server, tmp_path_factory.mktemp("chromium"), "alice", "bob") as (a, b):
        yield {"alice": a, "bob": b}


@pytest.fixture(scope="module")
def callee(server: Siptrio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sipp]:
    """carol: a SIPp UAS over UDP answering every call with uas-rtp.xml, registered by a
    separate SIPp."""
    out = tmp_path_factory.mktemp("sipp-callee")
    write_pcmu_tone(out)  # read from SIPp's working directory
    sipp = standard_callee(server.listeners, "udp", out, user=CALLEE, scenario="uas-rtp.xml")
    try:
        yield sipp
        assert sipp.stop() == 0, sipp.report()  # no call failed at SIPp
    finally:
        sipp.kill()


@pytest.fixture(autouse=True)
def no_sessions_left(engine: Rtpengine) -> Iterator[None]:
    """Every test starts and ends with rtpengine holding no call."""
    wait_for(lambda: engine.calls() == [], 5, lambda: f"no calls left: {engine.calls()}")
    yield
    wait_for(
        lambda: engine.calls() == [],
        5,
        lambda: f"rtpengine still has {engine.calls()}\n{engine.log_tail()}",
    )


def reporter(engine: Rtpengine, *sipps: Sipp) -> Any:
    return lambda: "\n".join(
        [f"--- rtpengine log ---\n{engine.log_tail(4000)}", *(s.report() for s in sipps)]
    )


def sipp_body(sipp: Sipp, direction: str, first_line: str, call_id: str) -> str:
    found = wait_for(
        lambda: sipp.find(direction, first_line, call_id),
        5,
        lambda: f"{first_line!r} {direction} by SIPp {sipp.name}\n{sipp.report()}",
    )
    return body(found[0])


def invite_200(messages: list[str]) -> str:
    """The first 200 for the INVITE (a UDP 200 is repeated until the ACK comes)."""
    found = [m for m in messages if "INVITE" in " ".join(header_values(m, "CSeq"))]
    assert found, messages
    return found[0]


# --- bridged calls --------------------------------------------------------------------------


def test_browser_calls_a_plain_rtp_phone(
    server: Siptrio, engine: Rtpengine, phones: dict[str, Phone], callee: Sipp
) -> None:
    alice = phones["alice"]
    report = reporter(engine, callee)
    known = {d["id"] for d in server.dialogs()}

    alice.call(CALLEE)
    alice.wait_call("established", timeout=15)
    dialog = new_dialog(server, known, alice.aor, "confirmed")
    call_id = dialog["call_id"]
    assert dialog["media"] == "bridged", dialog
    assert call_id in engine.calls()

    # SIPp was offered plain RTP, on an rtpengine port; the browser got a WebRTC answer
    offer = sipp_body(callee, "received", "INVITE ", call_id)
    assert is_plain_sdp(offer), offer
    assert engine.owns(audio_port(offer)), offer
    pc = alice.peer_connection()
    assert pc is not None and pc["remote"]["type"] == "answer", pc
    answer = pc["remote"]["sdp"]
    assert is_webrtc_sdp(answer) and "a=rtcp-mux" in answer, answer
    assert "a=crypto" not in answer, answer  # SDES off
    assert candidate_ports(answer) and all(engine.owns(p) for p in candidate_ports(answer)), answer

    # SIPp's tone reaches the browser; rtpengine relays both ways
    inbound_audio_grows(alice, report)
    media = media_both_ways(server, dialog["id"], report)
    assert media["media"] == "bridged", media

    alice.hangup()
    ended = alice.wait_call("ended")
    assert ended["endedBy"] == "local", ended
    wait_for(lambda: callee.find("received", "BYE ", call_id), 5, report)
    assert dialog_by_call_id(server, call_id, "terminated")["ended_by"] == "caller"
    wait_for(lambda: call_id not in engine.calls(), 5, report)


def test_plain_rtp_phone_calls_a_browser(
    server: Siptrio, engine: Rtpengine, phones: dict[str, Phone], tmp_path: Path
) -> None:
    alice = phones["alice"]
    write_pcmu_tone(tmp_path)
    caller = start_sipp(
        server.listeners["udp"],
        "caller",
        "udp",
        tmp_path,
        [
            *("-sf", str(SIPP_DIR / "uac-rtp.xml")),
            *("-s", alice.user),
            *("-m", "1"),
            *("-timeout", "30s"),
            "-timeout_error",
        ],
    )
    report = reporter(engine, caller)
    try:
        alice.wait_call("incoming", timeout=10)
        assert alice.call_info["peer"] == f"sip:sipp@{DOMAIN}"
        invite = caller.find("sent", "INVITE ")[0]
        [call_id] = header_values(invite, "Call-ID")
        assert call_id in engine.calls()

        alice.answer()
        alice.wait_call("established", acked=True, timeout=15)
        # the page was offered WebRTC: ICE, a fingerprint, SAVPF, rtcp-mux, rtpengine's ports
        pc = alice.peer_connection()
        assert pc is not None and pc["remote"]["type"] == "offer", pc
        offer = pc["remote"]["sdp"]
        assert is_webrtc_sdp(offer) and "a=rtcp-mux" in offer, offer
        assert "a=crypto" not in offer, offer
        assert candidate_ports(offer) and all(engine.owns(p) for p in candidate_ports(offer))
        # and SIPp got a plain answer back
        answer = body(invite_200(caller.find("received", "SIP/2.0 200", call_id)))
        assert is_plain_sdp(answer) and engine.owns(audio_port(answer)), answer

        dialog = dialog_by_call_id(server, call_id, "confirmed")
        assert dialog["media"] == "bridged", dialog
        inbound_audio_grows(alice, report)
        media_both_ways(server, dialog["id"], report)

        alice.hangup()
        ended = alice.wait_call("ended")
        assert ended["endedBy"] == "local", ended
        assert caller.wait(10) == 0, caller.report()
    finally:
        caller.kill()
    assert dialog_by_call_id(server, call_id, "terminated")["ended_by"] == "callee"
    wait_for(lambda: call_id not in engine.calls(), 5, report)


# --- calls that are not bridged -------------------------------------------------------------


def test_browser_to_browser_is_not_bridged(
    server: Siptrio, engine: Rtpengine, phones: dict[str, Phone]
) -> None:
    alice, bob = phones["alice"], phones["bob"]
    known = {d["id"] for d in server.dialogs()}
    alice.call(bob.user)
    bob.wait_call("incoming")
    bob.answer()
    bob.wait_call("established", acked=True)
    alice.wait_call("established")
    dialog = new_dialog(server, known, alice.aor, "confirmed")
    call_id = dialog["call_id"]

    assert dialog["media"] == "direct", dialog
    assert server.get(f"/dialogs/{dialog['id']}/media")["media"] == "direct"
    assert engine.calls() == []
    # the SDP crossed siptrio untouched, both ways
    [offer_in] = server.traced("recv", "INVITE ", call_id)
    [offer_out] = server.traced("send", "INVITE ", call_id)
    assert is_webrtc_sdp(body(offer_in)) and body(offer_out) == body(offer_in)
    answer_in = invite_200(server.traced("recv", "SIP/2.0 200", call_id))
    answer_out = invite_200(server.traced("send", "SIP/2.0 200", call_id))
    assert is_webrtc_sdp(body(answer_in)) and body(answer_out) == body(answer_in)
    # and the browsers hear each other directly
    no_engine = lambda: "(rtpengine not involved)"  # noqa: E731
    inbound_audio_grows(alice, no_engine, over=1.0)
    inbound_audio_grows(bob, no_engine, over=1.0)
    assert engine.calls() == []

    alice.hangup()
    alice.wait_call("ended")
    bob.wait_call("ended")


def test_udp_to_udp_is_not_bridged(
    server: Siptrio, engine: Rtpengine, callee: Sipp, tmp_path: Path
) -> None:
    caller = start_sipp(
        server.listeners["udp"],
        "caller",
        "udp",
        tmp_path,
        [
            *("-sf", str(SIPP_DIR / "uac.xml")),
            *("-s", CALLEE),
            *("-d", "2000"),  # the call lasts 2 s
            *("-m", "1"),
            *("-timeout", "30s"),
            "-timeout_error",
        ],
    )
    try:
        invite = wait_for(lambda: caller.find("sent", "INVITE "), 5, caller.report)
        [call_id] = header_values(invite[0], "Call-ID")
        dialog = dialog_by_call_id(server, call_id, "confirmed")
        assert dialog["media"] == "direct", dialog
        assert server.get(f"/dialogs/{dialog['id']}/media")["media"] == "direct"
        assert engine.calls() == []
        assert caller.wait(15) == 0, caller.report()
    finally:
        caller.kill()

    # what one SIPp sent is what the other received, offer and answer
    offer = sipp_body(caller, "sent", "INVITE ", call_id)
    assert is_plain_sdp(offer) and sipp_body(callee, "received", "INVITE ", call_id) == offer
    answer = body(invite_200(callee.find("sent", "SIP/2.0 200", call_id)))
    assert is_plain_sdp(answer), answer
    assert body(invite_200(caller.find("received", "SIP/2.0 200", call_id))) == answer
    assert dialog_by_call_id(server, call_id, "terminated")["ended_by"] == "caller"
    assert engine.calls() == []
