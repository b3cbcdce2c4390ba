"""The simulated client places real calls through the proxy to real test UAs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.server import RunningServer, running_server
from support.ua import UA

from siptrio.app.simcall import SimCallError


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    overrides = {"sip.domains": "example.com", "sip_websocket.enable": "true"}
    async with running_server(tmp_path, overrides) as rs:
        yield rs


async def callee(
    server: RunningServer, nursery: trio.Nursery, transport: str, user: str = "bob"
) -> UA:
    ua = UA(await SipClient.connect(transport, *server.addr(transport), nursery=nursery), user)
    await ua.register()
    return ua


@pytest.mark.parametrize("transport", ["udp", "tcp", "ws"])
async def test_answered_and_hung_up_after_duration(
    server: RunningServer, nursery: trio.Nursery, transport: str
) -> None:
    ua = await callee(server, nursery, transport)
    call = await server.server.simulator.start_call(to="bob", duration=0.5, answer_timeout=5)
    invite = await ua.expect_request("INVITE")
    sdp = invite.body.decode()
    assert ("UDP/TLS/RTP/SAVPF" in sdp) == (transport == "ws")  # browsers get a WebRTC offer
    await ua.reply(invite, 180, "Ringing")
    await ua.reply(invite, 200, "OK", body="v=0\r\n")
    ack = await ua.expect_request("ACK")
    bye = await ua.expect_request("BYE", timeout=3)
    await ua.reply(bye, 200, "OK")
    with trio.fail_after(3):
        await call.done.wait()
    assert call.state == "ended" and call.answered and call.ended_by == "simulator"
    assert call.final_status == 200 and call.ringing_at is not None
    assert ack.call_id == bye.call_id == call.call_id
    assert 0.4 <= call.ended_at - call.answered_at <= 2  # type: ignore[operator]


async def test_callee_hangs_up_first(server: RunningServer, nursery: trio.Nursery) -> None:
    ua = await callee(server, nursery, "udp")
    call = await server.server.simulator.start_call(
        to="sip:bob@example.com", duration=30, answer_timeout=5
    )
    invite = await ua.expect_request("INVITE")
    await ua.reply(invite, 200, "OK", body="v=0\r\n")
    await ua.expect_request("ACK")
    await ua.client.send(ua.in_dialog(ua.uas_dialog(invite), "BYE"))
    assert (await ua.expect_response("BYE")).status == 200
    with trio.fail_after(3):
        await call.done.wait()
    assert call.ended_by == "callee" and call.state == "ended"


async def test_unregistered_user_404(server: RunningServer) -> None:
    call = await server.server.simulator.start_call(to="nobody", duration=1, answer_timeout=5)
    with trio.fail_after(3):
        await call.done.wait()
    assert call.state == "failed" and call.final_status == 404 and not call.answered


async def test_busy_486(server: RunningServer, nursery: trio.Nursery) -> None:
    ua = await callee(server, nursery, "tcp")
    call = await server.server.simulator.start_call(to="bob", duration=1, answer_timeout=5)
    invite = await ua.expect_request("INVITE")
    await ua.reply(invite, 486, "Busy Here")
    with trio.fail_after(3):
        await call.done.wait()
    assert call.final_status == 486 and call.state == "failed"


@pytest.mark.parametrize("rings", [True, False])
async def test_never_answered_is_cancelled_487(
    server: RunningServer, nursery: trio.Nursery, rings: bool
) -> None:
    ua = await callee(server, nursery, "udp")
    call = await server.server.simulator.start_call(to="bob", duration=1, answer_timeout=0.5)
    invite = await ua.expect_request("INVITE")
    if rings:
        await ua.reply(invite, 180, "Ringing")
        cancel = await ua.expect_request("CANCEL", timeout=3)
        await ua.reply(cancel, 200, "OK")
        await ua.reply(invite, 487, "Request Terminated")
    with trio.fail_after(3):
        await call.done.wait()
    assert call.final_status == 487 and call.cancelled and not call.answered


async def test_bad_input_is_refused(server: RunningServer) -> None:
    sim = server.server.simulator
    for kwargs in (
        {"to": ""},
        {"to": "bob", "duration": 0},
        {"to": "bob", "answer_timeout": -1},
        {"to": "tel:123"},
    ):
        with pytest.raises(SimCallError):
            await sim.start_call(**{"duration": 1, "answer_timeout": 1, **kwargs})  # type: ignore[arg-type]
