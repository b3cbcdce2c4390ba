"""SIPp and browsers call each other through siptrio, across transports.

* SIPp over UDP calls a browser (examples/sipp/uac-webrtc.xml: a WebRTC-shaped offer,
  since browsers refuse plain RTP/AVP): siptrio record-routes twice (UDP towards SIPp,
  WS/WSS towards the browser, RFC 5658), the browser rings and answers, SIPp's ACK and
  the BYE (sent by the browser in one case, by SIPp in the other) follow that route.
* A browser calls a SIPp callee over UDP, and one over TCP, each set up the standard
  way (sipp_helpers.py): a UAS in server mode (examples/sipp/uas-webrtc.xml, a
  WebRTC-shaped answer) registered by a separate SIPp (register-contact.xml) from
  another port; siptrio reaches it at its Contact, over TCP through a connection of its
  own. The BYE again from either side.

Every call is checked from both ends (the page's state; SIPp's message trace: the
Record-Route set, the Route on ACK and BYE) and from siptrio's /dialogs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
from sipp_helpers import Sipp, standard_callee, start_sipp

pytestmark = [pytest.mark.slow, needs_browser(certutil=True, sipp=True)]

HANGUP_WAIT = 3.0  # uac-webrtc.xml / uas-webrtc.xml wait this long for the browser's BYE


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Siptrio]:
    with run_siptrio(tmp_path_factory.mktemp("siptrio")) as s:
        yield s


@pytest.fixture(scope="module")
def phones(server: Siptrio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Phone]]:
    """dave (SIP.js over WS) and erin (JsSIP over WSS), registered."""
    with two_phones(server, tmp_path_factory.mktemp("chromium"), "dave", "erin") as (a, b):
        yield {"sipjs": a, "jssip": b}


@pytest.fixture(scope="module")
def callees(server: Siptrio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Sipp]]:
    """carol-udp and carol-tcp: SIPp UASs answering with uas-webrtc.xml, each registered
    by a separate SIPp with a Contact naming the UAS's port."""
    out = tmp_path_factory.mktemp("sipp-callees")
    running: dict[str, Sipp] = {}
    try:
        for t in ("udp", "tcp"):
            running[t] = standard_callee(
                server.listeners, t, out, user=f"carol-{t}", scenario="uas-webrtc.xml"
            )
        yield running
        for sipp in running.values():
            assert sipp.stop() == 0, sipp.report()  # no call failed at SIPp
    finally:
        for sipp in running.values():
            sipp.kill()


# --- checks ---------------------------------------------------------------------------------


def dialog_of(server: Siptrio, call_id: str, state: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        found = server.dialogs(call_id)
        return found[0] if found and found[0]["state"] == state else None

    return wait_for(find, 5, lambda: f"dialog {call_id} {state}\n{server.dialogs()}")


TRANSPORT = {"sipjs": "ws", "jssip": "wss"}


@pytest.mark.parametrize(
    ("library", "hangup"),
    [("sipjs", "browser"), ("jssip", "sipp")],
    ids=["sipjs-hangs-up", "sipp-hangs-up-on-jssip"],
)
def test_sipp_over_udp_calls_a_browser(
    server: Siptrio,
    phones: dict[str, Phone],
    tmp_path: Path,
    library: str,
    hangup: str,
) -> None:
    phone = phones[library]
    sipp = start_sipp(
        server.listeners["udp"],
        "caller",
        "udp",
        tmp_path,
        [
            *("-sf", str(SIPP_DIR / "uac-webrtc.xml")),
            *("-s", phone.user),
            *("-m", "1"),
            *("-timeout", "30s"),
            "-timeout_error",
        ],
    )
    try:
        phone.wait_call("incoming", timeout=10)
        assert phone.call_info["peer"] == f"sip:sipp@{DOMAIN}"
        phone.answer()
        phone.wait_call("established", acked=True)  # SIPp's ACK along the route set
        pc = phone.peer_connection()
        assert pc is not None and pc["remote"]["type"] == "offer", pc
        assert "a=ice-ufrag:SIPp" in pc["remote"]["sdp"], pc

        if hangup == "browser":
            phone.hangup()
            ended = phone.wait_call("ended")
            assert ended["endedBy"] == "local", ended
        else:
            ended = phone.wait_call("ended", timeout=HANGUP_WAIT + 5)
            assert ended["endedBy"] == "remote", ended
        assert sipp.wait(10) == 0, sipp.report()
    finally:
        sipp.kill()

    [ok] = sipp.find("received", "SIP/2.0 200 OK", None)[:1] or [""]
    assert "INVITE" in " ".join(header_values(ok, "CSeq")), sipp.report()
    rr = server.record_route(TRANSPORT[library], "udp")
    assert header_values(ok, "Record-Route") == rr, ok
    [call_id] = header_values(ok, "Call-ID")
    for method in ("ACK", "BYE") if hangup == "sipp" else ("ACK",):
        [sent] = sipp.find("sent", f"{method} ", call_id)
        assert header_values(sent, "Route") == rr[::-1], sent
    if hangup == "browser":
        [bye] = sipp.find("received", "BYE ", call_id)
        assert header_values(bye, "Record-Route") == [], bye

    dialog = dialog_of(server, call_id, "terminated")
    assert dialog["caller_transport"] == "udp", dialog
    assert dialog["callee_transport"] == TRANSPORT[library], dialog
    assert dialog["ended_by"] == ("callee" if hangup == "browser" else "caller"), dialog
    assert dialog["answered_at"] is not None


@pytest.mark.parametrize(
    ("transport", "library", "hangup"),
    [
        ("udp", "sipjs", "browser"),
        ("udp", "jssip", "sipp"),
        ("tcp", "sipjs", "sipp"),
        ("tcp", "jssip", "browser"),
    ],
    ids=["udp-sipjs-hangs-up", "udp-sipp-hangs-up", "tcp-sipp-hangs-up", "tcp-jssip-hangs-up"],
)
def test_browser_calls_a_sipp_callee(
    server: Siptrio,
    phones: dict[str, Phone],
    callees: dict[str, Sipp],
    transport: str,
    library: str,
    hangup: str,
) -> None:
    phone = phones[library]
    sipp = callees[transport]
    callee = f"carol-{transport}"
    invites_before = len(sipp.find("received", "INVITE "))

    phone.call(callee)
    phone.wait_call("established", timeout=10)
    pc = phone.peer_connection()
    assert pc is not None and pc["remote"]["type"] == "answer", pc
    assert "a=ice-ufrag:SIPp" in pc["remote"]["sdp"], pc

    invites = wait_for(
        lambda: sipp.find("received", "INVITE ")[invites_before:], 5, "the INVITE at SIPp"
    )
    [invite] = invites
    [call_id] = header_values(invite, "Call-ID")
    rr = server.record_route(transport, TRANSPORT[library])
    assert header_values(invite, "Record-Route") == rr, invite
    wait_for(
        lambda: sipp.find("received", "ACK ", call_id),
        5,
        lambda: f"the ACK at SIPp\n{sipp.report()}",
    )
    assert dialog_of(server, call_id, "confirmed")["callee_transport"] == transport

    if hangup == "browser":
        phone.hangup()
        ended = phone.wait_call("ended")
        assert ended["endedBy"] == "local", ended
        wait_for(
            lambda: sipp.find("received", "BYE ", call_id),
            5,
            lambda: f"the BYE at SIPp\n{sipp.report()}",
        )
    else:
        ended = phone.wait_call("ended", timeout=HANGUP_WAIT + 5)
        assert ended["endedBy"] == "remote", ended
        [bye] = sipp.find("sent", "BYE ", call_id)
        assert header_values(bye, "Route") == rr, bye  # the route set as received (12.1.1)
        wait_for(
            lambda: any(
                "BYE" in " ".join(header_values(m, "CSeq"))
                for m in sipp.find("received", "SIP/2.0 200", call_id)
            ),
            5,
            lambda: f"the 200 for SIPp's BYE\n{sipp.report()}",
        )

    dialog = dialog_of(server, call_id, "terminated")
    assert dialog["caller_transport"] == TRANSPORT[library], dialog
    assert dialog["ended_by"] == ("caller" if hangup == "browser" else "callee"), dialog
    assert sipp.proc.poll() is None, sipp.report()  # still registered, still answering
