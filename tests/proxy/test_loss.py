"""UDP loss: calls still complete by retransmission, on a virtual clock.

The server runs under a MockClock that jumps ahead only after 50 ms of real idleness,
so loopback packets (microseconds) are never overtaken by a jump while RFC 3261's
half-second-and-up timers pass instantly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from support.client import SipClient
from support.server import running_server
from support.ua import SDP, UA

from siptrio.core.dialogs import DialogState


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_call_completes_despite_lost_messages(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running_server(tmp_path, {"sip.domains": "example.com"}) as server:
        caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
        callee = UA(await SipClient.connect("udp", *server.addr("udp")), "bob")
        await caller.register()
        await callee.register()

        invite, call_id = caller.invite("bob")
        start = trio.current_time()
        await caller.client.send(invite)
        first = await callee.expect_request("INVITE")  # lost: never answered
        again = await callee.expect_request("INVITE", timeout=10)
        assert again.top_via.branch == first.top_via.branch  # the proxy's Timer A retransmission
        assert 0.4 <= trio.current_time() - start <= 0.7  # T1 later

        await callee.reply(again, 180, "Ringing")
        await callee.reply(again, 200, "OK", body=SDP)
        lost_ok = await caller.expect_response("INVITE")  # the caller "loses" this 200
        assert lost_ok.status == 200
        await callee.reply(again, 200, "OK", body=SDP)  # the UAS retransmits its 2xx until ACKed
        ok = await caller.expect_response("INVITE")
        assert ok.status == 200  # RFC 6026: the proxy forwards 2xx retransmissions

        d = caller.uac_dialog(invite, ok)
        await caller.client.send(caller.ack(d))
        await callee.expect_request("ACK")

        bye = caller.in_dialog(d, "BYE")
        await caller.client.send(bye)
        lost_bye = await callee.expect_request("BYE")  # lost at the callee
        bye_again = await callee.expect_request("BYE", timeout=10)  # Timer E
        assert bye_again.top_via.branch == lost_bye.top_via.branch
        await callee.reply(bye_again, 200, "OK")
        await caller.expect_response("BYE")  # ... and suppose the caller lost that 200:
        await caller.client.send(bye)  # it retransmits the BYE,
        assert (
            await caller.expect_response("BYE")
        ).status == 200  # the proxy's transaction answers,
        with pytest.raises(trio.TooSlowError):  # and the callee sees no third BYE
            await callee.expect_request("BYE", timeout=2)

        (dialog,) = [x for x in server.server.dialogs if x.call_id == call_id]
        assert dialog.state is DialogState.TERMINATED and dialog.ended_by == "caller"


async def test_unanswered_invite_times_out_with_408(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running_server(tmp_path, {"sip.domains": "example.com"}) as server:
        caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
        callee = UA(await SipClient.connect("udp", *server.addr("udp")), "bob")
        await callee.register()
        invite, _ = caller.invite("bob")
        start = trio.current_time()
        await caller.client.send(invite)
        final = await caller.expect_response("INVITE", timeout=60)
        assert final.status == 408
        assert 31 <= trio.current_time() - start <= 34  # Timer B = 64*T1
        received = 0
        with trio.move_on_after(0.01):
            while True:
                await callee.expect_request("INVITE", timeout=1)
                received += 1
        assert received >= 6  # the original and Timer A's retransmissions reached the callee
