"""SIPp and browsers call each other through siptrio, across transports.

* SIPp over UDP calls a browser (examples/sipp/uac-webrtc.xml: a WebRTC-shaped offer,
  since browsers refuse plain RTP/AVP): siptrio record-routes twice (UDP towards SIPp,
  WS/WSS towards the browser, RFC 5658), the browser rings and answers, SIPp's ACK and
  the BYE (sent by the browser in one case, by SIPp in the other) follow that route.
* A browser calls a SIPp callee registered over UDP, and one registered over TCP
  (examples/sipp/uas-register.xml with uas-webrtc.xml answering each call with a
  WebRTC-shaped answer), the BYE again from either side.

Every call is checked from both ends (the page's state; SIPp's message trace: the
Record-Route set, the Route on ACK and BYE) and from siptrio's /dialogs.
"""

from __future__ import annotations

import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
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
from support.ports import free_media_port, free_port

pytestmark = [pytest.mark.slow, needs_browser(certutil=True, sipp=True)]

HANGUP_WAIT = 3.0  # uac-webrtc.xml / uas-webrtc.xml wait this long for the browser's BYE


# --- SIPp ---------------------------------------------------------------------------------


@dataclass
class Sipp:
    name: str
    proc: subprocess.Popen[bytes]
    out: Path

    def messages(self) -> list[tuple[str, str]]:
        """("sent" or "received", message) from the -trace_msg file."""
        path = self.out / f"{self.name}_messages.log"
        if not path.exists():
            return []
        text = path.read_text(errors="replace")
        marks = list(re.finditer(r"^-{20,} .*\n\w+ message (sent|received) .*\n\n", text, re.M))
        found = []
        for mark, following in zip(marks, [*marks[1:], None], strict=True):
            end = following.start() if following else len(text)
            found.append((mark.group(1), text[mark.end() : end].replace("\r\n", "\n")))
        return found

    def find(self, direction: str, first_line: str, call_id: str | None = None) -> list[str]:
        return [
            m
            for d, m in self.messages()
            if d == direction
            and m.startswith(first_line)
            and (call_id is None or call_id in header_values(m, "Call-ID"))
        ]

    def report(self) -> str:
        parts = []
        for suffix in ("_screen.log", "_errors.log", ".stdout", "_messages.log"):
            path = self.out / f"{self.name}{suffix}"
            if path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIPp {self.name} still running\n{self.report()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_sipp(server: Siptrio, name: str, transport: str, out: Path, args: list[str]) -> Sipp:
    host, port = server.listeners[transport]
    command = [
        "sipp",
        f"{host}:{port}",
        *args,
        *("-key", "domain", DOMAIN),
        *("-i", "127.0.0.1"),
        *("-p", str(free_port())),
        *("-mp", str(free_media_port())),
        *("-t", "u1" if transport == "udp" else "t1"),
        *("-buff_size", "4194304"),
        "-nostdin",
        "-trace_msg",
        *("-message_file", str(out / f"{name}_messages.log")),
        "-trace_err",
        *("-error_file", str(out / f"{name}_errors.log")),
        "-trace_screen",
        *("-screen_file", str(out / f"{name}_screen.log")),
    ]
    stdout = (out / f"{name}.stdout").open("wb")
    proc = subprocess.Popen(
        command, cwd=out, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT
    )
    stdout.close()
    return Sipp(name, proc, out)


def wait_registered(server: Siptrio, aor: str, sipp: Sipp) -> None:
    wait_for(partial(server.bindings, aor), 10, lambda: f"{aor} to register\n{sipp.report()}")


def stop_callee(server: Siptrio, user: str) -> int:
    """The MESSAGE that ends uas-register.xml: through siptrio, with the callee's Call-ID."""
    host, port = server.listeners["udp"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        local = s.getsockname()
        body = b"stop"
        request = (
            f"MESSAGE sip:{user}@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:test@{DOMAIN}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{user}@{DOMAIN}>\r\n"
            "Call-ID: callee-1@127.0.0.1\r\n"
            "CSeq: 1 MESSAGE\r\n"
            "Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        s.sendto(request, (host, port))
        while True:
            status = int(s.recv(65536).split(b" ", 2)[1])
            if status >= 200:
                return status


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
    """One SIPp callee registered over UDP (carol-udp), one over TCP (carol-tcp)."""
    out = tmp_path_factory.mktemp("sipp-callees")
    running = {
        t: start_sipp(
            server,
            f"callee-{t}",
            t,
            out,
            [
                *("-sf", str(SIPP_DIR / "uas-register.xml")),
                *("-oocsf", str(SIPP_DIR / "uas-webrtc.xml")),
                *("-s", f"carol-{t}"),
                *("-cid_str", "callee-%u@%s"),
                *("-m", "1"),
            ],
        )
        for t in ("udp", "tcp")
    }
    try:
        for t, sipp in running.items():
            wait_registered(server, f"sip:carol-{t}@{DOMAIN}", sipp)
        yield running
        for t in running:
            assert stop_callee(server, f"carol-{t}") == 200
        for sipp in running.values():
            assert sipp.wait(15) == 0, sipp.report()
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
        server,
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
