"""Browsers call each other through siptrio, and siptrio's simulated client calls them.

Two Chromium browsers on examples/webphone: alice with SIP.js over WS, bob with JsSIP
over WSS (the trustme CA in his NSS database), so every call crosses transports and
siptrio record-routes twice (RFC 5658). Each call: the caller presses Call, the callee's
page rings and its user presses Answer; both apply the other's SDP (the
RTCPeerConnection's remote description) and audio flows (Chromium's fake microphone,
over loopback); the callee sees the ACK; the caller hangs up; both pages end; the
admin API's /dialogs shows the dialog confirmed, then terminated by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser import (
    DOMAIN,
    Phone,
    Siptrio,
    header_values,
    needs_browser,
    run_siptrio,
    two_phones,
    wait_for,
)

pytestmark = [pytest.mark.slow, needs_browser(certutil=True)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Siptrio]:
    with run_siptrio(tmp_path_factory.mktemp("siptrio")) as s:
        yield s


@pytest.fixture(scope="module")
def phones(server: Siptrio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Phone]]:
    with two_phones(server, tmp_path_factory.mktemp("chromium"), "alice", "bob") as (a, b):
        yield {"sipjs": a, "jssip": b}


def new_dialog(server: Siptrio, known: set[str], caller: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        for d in server.dialogs():
            if d["id"] not in known and d["caller"] == caller:
                return d
        return None

    return wait_for(find, 5, f"a new dialog from {caller}")


def media_flowing(phone: Phone) -> dict[str, object]:
    """The peer connection once it has both descriptions and has received audio."""

    def check() -> dict[str, object] | None:
        pc = phone.peer_connection()
        return pc if pc and pc["packetsReceived"] > 0 else None

    try:
        return wait_for(check, 10, f"audio at {phone.user}")
    except AssertionError:
        raise AssertionError(f"{phone.peer_connection()}\n{phone.console_text()[-5000:]}") from None


@pytest.mark.parametrize(
    ("caller_lib", "callee_lib"),
    [("sipjs", "jssip"), ("jssip", "sipjs")],
    ids=["sipjs-calls-jssip", "jssip-calls-sipjs"],
)
def test_browser_calls_browser(
    server: Siptrio, phones: dict[str, Phone], caller_lib: str, callee_lib: str
) -> None:
    a, b = phones[caller_lib], phones[callee_lib]
    known = {d["id"] for d in server.dialogs()}

    a.call(b.user)
    b.wait_call("incoming")
    a.wait_call("ringing")  # the callee's library sent 180 by itself
    assert b.call_info["peer"] == a.aor
    assert "incoming" in b.shown("#call-state")
    assert b.page.is_enabled("#answer")

    b.answer()
    b.wait_call("established", acked=True)  # the ACK came back through siptrio to b
    a.wait_call("established")

    # Both applied the other's SDP: a has b's answer, b has a's offer; audio flows.
    pa, pb = media_flowing(a), media_flowing(b)
    assert pa["remote"]["type"] == "answer" and pb["remote"]["type"] == "offer"  # type: ignore[index]
    assert pa["signalingState"] == pb["signalingState"] == "stable"
    assert "UDP/TLS/RTP/SAVPF" in pa["remote"]["sdp"]  # type: ignore[index]

    dialog = new_dialog(server, known, a.aor)
    assert dialog["state"] == "confirmed", dialog
    assert dialog["callee"] == b.aor
    transports = {"sipjs": "ws", "jssip": "wss"}
    assert dialog["caller_transport"] == transports[caller_lib], dialog
    assert dialog["callee_transport"] == transports[callee_lib], dialog

    a.hangup()
    ended_a = a.wait_call("ended")
    ended_b = b.wait_call("ended")
    assert ended_a["endedBy"] == "local", ended_a
    assert ended_b["endedBy"] == "remote", ended_b

    def terminated() -> dict[str, object] | None:
        [d] = [d for d in server.dialogs() if d["id"] == dialog["id"]]
        return d if d["state"] == "terminated" else None

    final = wait_for(terminated, 5, "the dialog to end")
    assert final["ended_by"] == "caller", final

    # WS on one side, WSS on the other: two Record-Route entries (RFC 5658), in the
    # INVITE to the callee and the 200 to the caller; the caller's ACK and BYE come
    # back with that route set reversed (siptrio's --sip-trace shows what crossed).
    call_id = str(dialog["call_id"])
    rr = server.record_route(transports[callee_lib], transports[caller_lib])
    [invite] = server.traced("send", "INVITE ", call_id)
    assert header_values(invite, "Record-Route") == rr, invite
    [ok] = [m for m in server.traced("send", "SIP/2.0 200", call_id) if "INVITE" in m]
    assert header_values(ok, "Record-Route") == rr, ok
    for method in ("ACK", "BYE"):
        [request] = server.traced("recv", f"{method} ", call_id)
        assert header_values(request, "Route") == rr[::-1], request
    assert final["duration"] is not None and final["duration"] > 0, final
    for phone in (a, b):
        assert phone.registration == "registered"
        assert not phone.errors(), phone.errors()


@pytest.mark.parametrize("library", ["sipjs", "jssip"])
def test_simulated_call_to_a_browser(
    server: Siptrio, phones: dict[str, Phone], library: str
) -> None:
    """POST /simulateCall: the browser rings, answers, and the simulator hangs up after 2 s."""
    phone = phones[library]
    duration = 2.0
    response = server.http.post(
        "/simulateCall",
        json={"to": f"{phone.user}@{DOMAIN}", "duration": duration, "answer_timeout": 15},
    )
    assert response.status_code == 201, response.text
    call = response.json()
    assert response.headers["location"] == f"/calls/{call['id']}"

    phone.wait_call("incoming")
    assert phone.call_info["peer"].startswith("sip:simulator@"), phone.call_info
    phone.answer()
    phone.wait_call("established", acked=True)
    pc = phone.peer_connection()
    assert pc is not None and pc["remote"]["type"] == "offer", pc  # the simulator's offer
    assert "UDP/TLS/RTP/SAVPF" in pc["remote"]["sdp"], pc  # WebRTC-shaped for a browser

    ended = phone.wait_call("ended", timeout=duration + 10)
    assert ended["endedBy"] == "remote", ended

    def finished() -> dict[str, object] | None:
        c = server.get(f"/calls/{call['id']}")
        return c if c["state"] == "ended" else None

    done = wait_for(finished, 5, "the simulated call to end")
    assert done["answered"] is True and done["final_status"] == 200, done
    assert done["ended_by"] == "simulator", done
    [dialog] = server.dialogs(done["call_id"])
    assert dialog["state"] == "terminated" and dialog["ended_by"] == "caller", dialog
    assert dialog["callee_transport"] == {"sipjs": "ws", "jssip": "wss"}[library], dialog
    assert duration - 0.5 <= dialog["duration"] <= duration + 1.5, dialog


@pytest.mark.parametrize(
    ("caller_lib", "callee_lib", "who"),
    [
        ("sipjs", "jssip", "caller"),
        ("jssip", "sipjs", "caller"),
        ("sipjs", "jssip", "callee"),
        ("jssip", "sipjs", "callee"),
    ],
    ids=["sipjs-cancels", "jssip-cancels", "jssip-declines", "sipjs-declines"],
)
def test_hang_up_while_ringing(
    server: Siptrio, phones: dict[str, Phone], caller_lib: str, callee_lib: str, who: str
) -> None:
    """Hang up before the answer: the caller's CANCEL (487), or the callee's 603 Decline."""
    a, b = phones[caller_lib], phones[callee_lib]
    known = {d["id"] for d in server.dialogs()}
    a.call(b.user)
    b.wait_call("incoming")
    a.wait_call("ringing")
    if who == "caller":
        a.hangup()
        a_end, b_end = a.wait_call("ended"), b.wait_call("ended")
        assert a_end["endedBy"] == "local" and b_end["endedBy"] == "remote", (a_end, b_end)
    else:
        b.hangup()
        b_end = b.wait_call("ended")
        a_end = a.wait_call("failed")
        assert b_end["endedBy"] == "local", b_end
        assert a_end["status"] == 603, a_end
    for phone in (a, b):
        assert phone.page.is_enabled("#call") and not phone.page.is_enabled("#hangup")
        assert not phone.errors(), phone.errors()
    # nothing was answered: no dialog of this call was ever confirmed
    for d in server.dialogs():
        if d["id"] not in known:
            assert d["answered_at"] is None and d["state"] != "confirmed", d
