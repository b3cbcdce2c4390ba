"""Calls through a real siptrio process to a SIPp callee registered by another client.

The callee is set up the standard way (tests/interop/sipp_helpers.py,
examples/sipp/README.md): a SIPp UAS in server mode on its own port
(examples/sipp/uas.xml), registered as ``bob@example.com`` by a second SIPp
(examples/sipp/register-contact.xml, ``-key contact_port``) that sends from another
port and exits. siptrio reaches the binding at its Contact (RFC 3261 section 10.2):
over UDP at the UAS's port, over TCP through a connection it opens to that port, long
after the registering connection closed.

* 1,000 calls at 100 calls/s from a SIPp caller (examples/sipp/uac.xml): UDP to a UDP
  callee, UDP to a TCP callee, TCP to a TCP callee. The caller exits 0 with 1,000
  successful calls and none failed; the 200s carry siptrio's Record-Route (one entry
  when both sides share a transport, two when they differ, RFC 5658) and the ACKs and
  BYEs the matching Route set; the callee got every call's INVITE, ACK and BYE and
  exits 0 after its 1,000 calls. Then a second run of register-contact.xml with
  Expires 0 removes the binding, and siptrio still answers OPTIONS and exits cleanly.
* ``POST /simulateCall?wait=true`` (the admin API) reaches such a callee, UDP and TCP.
* sipsak's third-party registration, the command of issue 19:
  ``sipsak -U -i -C sip:bob@127.0.0.1:PORT -x 600 -s sip:bob@127.0.0.1:SERVERPORT``;
  ``siptrio call bob`` then rings the SIPp UAS at PORT.
* The other way (examples/sipp/uas-register.xml): one SIPp registers from its own port
  and answers, with uas.xml as its out-of-call scenario; over TCP the calls come down
  the connection that registered.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sipp_helpers import (
    DOMAIN,
    SIPP_DIR,
    Address,
    Sipp,
    fetch,
    header_values,
    needs_sipp,
    options,
    register_contact,
    standard_callee,
    start_sipp,
    start_uas,
    udp_request,
)
from support.server import ServerProcess

pytestmark = [pytest.mark.slow, needs_sipp]

CALLEE = "bob"
CALLS = 1000
RATE = 100  # calls per second: 1,000 calls in about 10 s
SIPP_TIMEOUT = 45  # seconds; the caller's global timeout, well inside a minute

needs_sipsak = pytest.mark.skipif(
    shutil.which("sipsak") is None, reason="sipsak missing: apt-get install -y sipsak"
)


# --- siptrio ----------------------------------------------------------------------------------


@dataclass
class Siptrio:
    proc: ServerProcess
    listeners: dict[str, Address]
    admin_url: str | None
    control: Path | None

    def stop_cleanly(self) -> None:
        """It answers OPTIONS, exits 0 on SIGTERM and logged no error."""
        assert options(self.listeners["udp"]) == 200
        assert self.proc.stop() == 0, self.proc.output()[-3000:]
        log = self.proc.output()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


_ADMIN = re.compile(r"admin API on (http://\S+)")


@contextmanager
def siptrio(
    tmp_path: Path, *, domains: str = DOMAIN, admin: bool = False, control: bool = False
) -> Iterator[Siptrio]:
    """``siptrio serve --sip-trace`` with UDP and TCP on 127.0.0.1 free ports, no
    WebSocket; the admin API (port 0) and the control socket when asked."""
    settings = {
        "sip.listen_addr": "127.0.0.1",
        "sip.udp_port": "0",
        "sip.tcp_port": "0",
        "sip.domains": domains,
        "sip_websocket.enable": "false",
        "admin.enable": str(admin).lower(),
        "admin.listen_port": "0",
        "control.enable": str(control).lower(),
        "control.socket": str(tmp_path / "control.sock"),
        "registrar.database": str(tmp_path / "location.sqlite"),
    }
    args = ["serve", "--sip-trace"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    proc = ServerProcess(args, log_path=tmp_path / "siptrio.log")
    try:
        listeners = proc.wait_ready(expect=2)
        admin_url = None
        if admin:
            deadline = time.monotonic() + 10
            while (m := _ADMIN.search(proc.output())) is None:
                assert time.monotonic() < deadline, proc.output()
                time.sleep(0.05)
            admin_url = m.group(1)
        yield Siptrio(proc, listeners, admin_url, tmp_path / "control.sock" if control else None)
    finally:
        proc.stop()


# --- checks -----------------------------------------------------------------------------------


def route_entry(server: Siptrio, transport: str) -> str:
    host, port = server.listeners[transport]
    if transport == "udp":
        return f"<sip:{host}:{port};lr>"
    return f"<sip:{host}:{port};transport={transport};lr>"


def check_routes(server: Siptrio, caller: Sipp, callee_transport: str, calls: int = CALLS) -> None:
    """siptrio's Record-Route in every 200 for an INVITE, and SIPp's Routes on ACK and BYE.

    One entry when both sides use one transport; otherwise two (RFC 5658), the top one
    facing the callee, the bottom one facing the caller. The caller's route set is that
    list reversed (RFC 3261 12.1.2), and its ACK and BYE carry it.
    """
    record_route = [route_entry(server, callee_transport)]
    if caller.transport != callee_transport:
        record_route.append(route_entry(server, caller.transport))
    counts: Counter[str] = Counter()
    for direction, message in caller.messages():
        first = message.split("\n", 1)[0].strip()
        cseq = " ".join(header_values(message, "CSeq"))
        if direction == "received" and first.startswith("SIP/2.0 200") and cseq.endswith("INVITE"):
            assert header_values(message, "Record-Route") == record_route, message
            counts["200 INVITE"] += 1
        elif direction == "sent" and first.split(" ", 1)[0] in ("ACK", "BYE"):
            assert header_values(message, "Route") == record_route[::-1], message
            counts[first.split(" ", 1)[0]] += 1
    assert counts["200 INVITE"] >= calls and counts["ACK"] >= calls, counts
    assert counts["BYE"] >= calls, counts


def check_contact(server: Siptrio, uas: Sipp) -> None:
    """bob's one binding is the UAS's port, though another port registered it."""
    [contact] = fetch(server.listeners["udp"], CALLEE)
    expected = f"<sip:{CALLEE}@127.0.0.1:{uas.port};transport={uas.transport.upper()}>"
    assert contact.startswith(expected + ";expires="), contact


def check_calls_at_callee(uas: Sipp, calls: int) -> None:
    """Every call's INVITE, ACK and BYE reached the UAS (repeats are absorbed by their call)."""
    received = {m: len(uas.received(m)) for m in ("INVITE", "ACK", "BYE")}
    assert received == dict.fromkeys(received, calls), f"{received}\n{uas.report()}"
    assert "unexpected" not in uas.errors().lower(), uas.report()


# --- 1,000 calls -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller_transport", "callee_transport"),
    [("udp", "udp"), ("udp", "tcp"), ("tcp", "tcp")],
    ids=["udp-to-udp", "udp-to-tcp", "tcp-to-tcp"],
)
def test_1000_calls_to_a_callee_registered_by_another_sipp(
    tmp_path: Path, caller_transport: str, callee_transport: str
) -> None:
    with siptrio(tmp_path) as server:
        uas = standard_callee(
            server.listeners,
            callee_transport,
            tmp_path,
            user=CALLEE,
            calls=CALLS,
            trace_messages=False,
        )
        try:
            # registered from another port; over TCP that connection is closed by now
            check_contact(server, uas)
            caller = start_sipp(
                server.listeners[caller_transport],
                "caller",
                caller_transport,
                tmp_path,
                [
                    *("-sf", str(SIPP_DIR / "uac.xml")),
                    *("-s", CALLEE),
                    *("-m", str(CALLS)),
                    *("-r", str(RATE)),
                    # a lost answer fails its call after 10 s instead of hanging the run
                    *("-recv_timeout", "10000"),
                    *("-timeout", f"{SIPP_TIMEOUT}s"),
                    "-timeout_error",
                ],
            )
            try:
                rc = caller.wait(SIPP_TIMEOUT + 10)
            finally:
                caller.kill()
            stats = caller.stats()
            summary = {
                k: stats.get(k)
                for k in ("SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)")
            }
            report = f"{summary}\n{caller.report()}\n{uas.report()}"
            assert rc == 0, f"caller exit status {rc}, {report}"
            assert int(stats["FailedCall(C)"]) == 0, report
            assert int(stats["SuccessfulCall(C)"]) == CALLS, report

            check_routes(server, caller, callee_transport)
            # the UAS ends by itself after its 1,000 calls (and 4 s of timewait), all good
            assert uas.wait(30) == 0, uas.report()
            check_calls_at_callee(uas, CALLS)
        finally:
            uas.kill()

        # the registering side removes the binding again: Expires 0 from another run
        register_contact(
            server.listeners[callee_transport],
            "unregister",
            callee_transport,
            tmp_path,
            user=CALLEE,
            contact_port=uas.port,
            expires=0,
        )
        assert fetch(server.listeners["udp"], CALLEE) == []
        server.stop_cleanly()


# --- the simulated client -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_simulate_call_reaches_a_callee_registered_by_another_sipp(
    tmp_path: Path, transport: str
) -> None:
    with siptrio(tmp_path, admin=True) as server:
        uas = standard_callee(server.listeners, transport, tmp_path, user=CALLEE, calls=1)
        try:
            assert server.admin_url is not None
            got = httpx.post(
                f"{server.admin_url}/simulateCall?wait=true",
                json={"to": CALLEE, "duration": 1, "answer_timeout": 10},
                timeout=30,
            )
            assert got.status_code == 200, got.text
            call = got.json()
            assert call["answered"] is True and call["final_status"] == 200, call
            assert call["ended_by"] == "simulator", call  # it hung up after 1 s
            assert uas.wait(15) == 0, uas.report()
            check_calls_at_callee(uas, 1)
            [invite] = uas.find("received", "INVITE ")
            assert invite.startswith(
                f"INVITE sip:{CALLEE}@127.0.0.1:{uas.port};transport={transport.upper()} "
            ), invite
        finally:
            uas.kill()
        server.stop_cleanly()


# --- sipsak -----------------------------------------------------------------------------------


@needs_sipsak
def test_sipsak_registers_a_contact_on_another_port_and_the_call_reaches_it(
    tmp_path: Path,
) -> None:
    """Issue 19's first symptom: sipsak registers bob with a Contact on another port than
    the one it sends from (``-C``), keeps it (``-i``: no INVITE test, no removal);
    ``siptrio call bob`` then rings the SIPp UAS on that port."""
    # no sip.domains: sipsak's own domain, 127.0.0.1, is served
    with siptrio(tmp_path, domains="", control=True) as server:
        host, port = server.listeners["udp"]
        uas = start_uas(server.listeners["udp"], "uas", "udp", tmp_path, user=CALLEE, calls=1)
        try:
            contact = f"sip:{CALLEE}@127.0.0.1:{uas.port}"
            sipsak = subprocess.run(
                ["sipsak", "-U", "-i", "-C", contact, "-x", "600", "-s", f"sip:bob@{host}:{port}"],
                capture_output=True,
                timeout=20,
                check=False,
            )
            assert sipsak.returncode == 0, sipsak
            [bound] = fetch(server.listeners["udp"], CALLEE, domain="127.0.0.1")
            assert bound.startswith(f"<{contact}>;expires="), bound

            assert server.control is not None
            siptrio_call = [sys.executable, "-m", "siptrio", "call", CALLEE, "--json"]
            siptrio_call += ["--socket", str(server.control), "--duration", "1"]
            call = subprocess.run(
                [*siptrio_call, "--answer-timeout", "10"],
                capture_output=True,
                timeout=30,
                check=False,
            )
            trace = server.proc.output()[-6000:]
            assert call.returncode == 0, f"{call}\n{uas.report()}\n{trace}"
            outcome = json.loads(call.stdout)
            assert outcome["answered"] is True and outcome["final_status"] == 200, outcome
            assert uas.wait(15) == 0, uas.report()
            check_calls_at_callee(uas, 1)
        finally:
            uas.kill()
        server.stop_cleanly()


# --- the other way: one SIPp registers and answers -----------------------------------------------


def test_one_sipp_registers_and_answers_over_tcp(tmp_path: Path) -> None:
    """examples/sipp/uas-register.xml with uas.xml as out-of-call scenario: its Contact
    names the connection it registers on, so the binding stays on that connection and
    the calls come down it. A MESSAGE with its Call-ID ends it (it unregisters, exit 0)."""
    calls = 20
    with siptrio(tmp_path) as server:
        callee = start_sipp(
            server.listeners["tcp"],
            "callee",
            "tcp",
            tmp_path,
            [
                *("-sf", str(SIPP_DIR / "uas-register.xml")),
                *("-oocsf", str(SIPP_DIR / "uas.xml")),
                *("-s", CALLEE),
                *("-cid_str", "callee-%u@%s"),
                *("-m", "1"),
            ],
        )
        try:
            deadline = time.monotonic() + 10
            while not (contacts := fetch(server.listeners["udp"], CALLEE)):
                assert callee.proc.poll() is None and time.monotonic() < deadline, callee.report()
                time.sleep(0.05)
            assert contacts[0].startswith(f"<sip:{CALLEE}@127.0.0.1:{callee.port};transport=TCP>")
            caller = start_sipp(
                server.listeners["udp"],
                "caller",
                "udp",
                tmp_path,
                [
                    *("-sf", str(SIPP_DIR / "uac.xml")),
                    *("-s", CALLEE),
                    *("-m", str(calls)),
                    *("-r", "10"),
                    *("-recv_timeout", "10000"),
                    *("-timeout", "30s"),
                    "-timeout_error",
                ],
            )
            try:
                assert caller.wait(40) == 0, f"{caller.report()}\n{callee.report()}"
            finally:
                caller.kill()
            assert int(caller.stats()["SuccessfulCall(C)"]) == calls, caller.report()
            check_routes(server, caller, "tcp", calls)
            assert len(callee.received("INVITE")) == calls, callee.report()
            stop = udp_request(
                server.listeners["udp"],
                "MESSAGE",
                f"sip:{CALLEE}@{DOMAIN}",
                [f"From: <sip:test@{DOMAIN}>;tag=stop", f"To: <sip:{CALLEE}@{DOMAIN}>"],
                call_id="callee-1@127.0.0.1",
            )
            assert stop.status == 200, stop
            assert callee.wait(15) == 0, callee.report()
        finally:
            callee.kill()
        assert fetch(server.listeners["udp"], CALLEE) == []
        server.stop_cleanly()
