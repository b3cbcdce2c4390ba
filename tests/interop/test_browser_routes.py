"""A browser dials a number; a ``[routes]`` rule sends the call to SIPp gateways, with failover.

siptrio (browser.py's ``run_siptrio``) has one rule,
``us = prefix +1 -> sip:127.0.0.1:G1, sip:127.0.0.1:G2`` (numeric next hops: no DNS), and
SIP.js in Chromium is registered over WS as alice. The gateways are SIPp UASs in server
mode on G1 and G2 that nothing registers: the rule is the only way to them.

* G1 answers (examples/sipp/uas-webrtc.xml): alice dials ``+15551234567`` and the call is
  established through G1, whose INVITE has the Request-URI
  ``sip:+15551234567@127.0.0.1:G1`` (a number dialled at our domain takes the first
  hop's host) and siptrio's two Record-Route entries (UDP towards the gateway, WS towards
  the browser); G2 gets nothing. The browser hangs up; G1 gets the BYE.
* G1 is out of service (examples/sipp/uas-503.xml): it gets the INVITE and answers 503,
  siptrio ACKs that and sends the INVITE on to G2 (RFC 3263 section 4.3), where the call
  is established; the browser never hears of the 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import (
    DOMAIN,
    Phone,
    Siptrio,
    chromium,
    header_values,
    needs_browser,
    run_siptrio,
    wait_for,
)
from sipp_helpers import Sipp, start_uas
from support.ports import free_port

pytestmark = [pytest.mark.slow, needs_browser(sipp=True)]

NUMBER = "+15551234567"


@pytest.fixture(scope="module")
def gateway_ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def server(
    gateway_ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Siptrio]:
    g1, g2 = gateway_ports
    rule = f"prefix +1 -> sip:127.0.0.1:{g1}, sip:127.0.0.1:{g2}"
    with run_siptrio(tmp_path_factory.mktemp("siptrio"), {"routes.us": rule}) as s:
        yield s


@pytest.fixture(scope="module")
def alice(server: Siptrio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phone]:
    """SIP.js over WS, registered."""
    with chromium(tmp_path_factory.mktemp("chromium")) as browsers:
        phone = Phone(browsers.launch("alice"), server, library="sipjs", user="alice")
        phone.register()
        phone.wait_registration("registered")
        yield phone


@pytest.fixture
def gateways(
    server: Siptrio, gateway_ports: tuple[int, int], tmp_path: Path
) -> Iterator[dict[str, Sipp]]:
    """Started by each test (``start``); each must end with exit status 0."""
    running: dict[str, Sipp] = {}
    yield running
    try:
        for sipp in running.values():
            assert sipp.stop() == 0, sipp.report()
    finally:
        for sipp in running.values():
            sipp.kill()


def start_gateway(
    server: Siptrio, gateways: dict[str, Sipp], name: str, port: int, scenario: str, out: Path
) -> Sipp:
    gateways[name] = start_uas(
        server.listeners["udp"], name, "udp", out, user=name, scenario=scenario, port=port
    )
    return gateways[name]


def dialog_of(server: Siptrio, call_id: str, state: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        found = server.dialogs(call_id)
        return found[0] if found and found[0]["state"] == state else None

    return wait_for(find, 5, lambda: f"dialog {call_id} {state}\n{server.dialogs()}")


def call_and_hang_up(server: Siptrio, alice: Phone, gateway: Sipp) -> str:
    """alice dials the number, the gateway answers, alice hangs up; the INVITE it got."""
    alice.call(NUMBER)
    alice.wait_call("established", timeout=15)
    [invite] = wait_for(lambda: gateway.find("received", "INVITE "), 5, gateway.report)
    [call_id] = header_values(invite, "Call-ID")
    assert header_values(invite, "Record-Route") == server.record_route("udp", "ws"), invite
    wait_for(lambda: gateway.find("received", "ACK ", call_id), 5, gateway.report)
    assert dialog_of(server, call_id, "confirmed")["callee_transport"] == "udp"
    alice.hangup()
    assert alice.wait_call("ended")["endedBy"] == "local"
    wait_for(lambda: gateway.find("received", "BYE ", call_id), 5, gateway.report)
    assert dialog_of(server, call_id, "terminated")["ended_by"] == "caller"
    return invite


def test_a_number_reaches_the_first_gateway_of_its_route(
    server: Siptrio,
    alice: Phone,
    gateways: dict[str, Sipp],
    gateway_ports: tuple[int, int],
    tmp_path: Path,
) -> None:
    g1 = start_gateway(server, gateways, "gw1", gateway_ports[0], "uas-webrtc.xml", tmp_path)
    g2 = start_gateway(server, gateways, "gw2", gateway_ports[1], "uas-webrtc.xml", tmp_path)
    routed = server.metric("siptrio_routed_requests_total", route="us")

    invite = call_and_hang_up(server, alice, g1)
    assert invite.startswith(f"INVITE sip:{NUMBER}@127.0.0.1:{g1.port} SIP/2.0\n"), invite
    assert header_values(invite, "To") == [f"<sip:{NUMBER}@{DOMAIN}>"], invite
    assert g2.find("received", "INVITE ") == [], g2.report()
    assert server.metric("siptrio_routed_requests_total", route="us") == routed + 1


def test_a_503_from_the_first_gateway_moves_the_call_to_the_second(
    server: Siptrio,
    alice: Phone,
    gateways: dict[str, Sipp],
    gateway_ports: tuple[int, int],
    tmp_path: Path,
) -> None:
    g1 = start_gateway(server, gateways, "gw1", gateway_ports[0], "uas-503.xml", tmp_path)
    g2 = start_gateway(server, gateways, "gw2", gateway_ports[1], "uas-webrtc.xml", tmp_path)
    failovers = server.metric("siptrio_failovers_total")

    invite = call_and_hang_up(server, alice, g2)
    assert invite.startswith(f"INVITE sip:{NUMBER}@127.0.0.1:"), invite
    [call_id] = header_values(invite, "Call-ID")
    # the first gateway had the INVITE first, said 503 and got siptrio's ACK for it
    assert len(g1.find("received", "INVITE ", call_id)) == 1, g1.report()
    assert g1.find("sent", "SIP/2.0 503 ", call_id), g1.report()
    assert g1.find("received", "ACK ", call_id), g1.report()
    assert server.metric("siptrio_failovers_total") == failovers + 1
    # the browser saw the call ring or answer, never fail
    assert not [e for e in alice.events() if "503" in str(e)], alice.events()
