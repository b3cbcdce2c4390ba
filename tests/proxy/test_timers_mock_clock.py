"""RFC 3261 timers on the wire, through the real server, on Trio's MockClock.

A final non-2xx answer to an INVITE over UDP is retransmitted by its server
transaction (RFC 3261 17.2.1, Timer G) at T1, 2·T1, 4·T1 ... capped at T2, until the
ACK comes (which the transaction absorbs) or Timer H (64·T1) ends it. Whichever part
of the server made the answer (the proxy's own 408 when Timer B gives up on a callee,
a callee's 486 relayed upstream, the server's own 404), the caller must see the same
schedule. The clock jumps ahead whenever every task waits (autojump), so 64 s of
timers take a moment; the sockets are real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from support.client import SipClient
from support.server import RunningServer, running_server
from support.ua import UA

from siptrio.sip import Request, Response

T1, T2 = 0.5, 4.0
# the answer's schedule after it is first sent: T1 doubling, capped at T2 (Timer G)
RETRANSMITS = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
TIMER_H = 64 * T1


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # a little real time to let datagrams on loopback arrive before the clock jumps
    return trio.testing.MockClock(autojump_threshold=0.02)


@pytest.fixture
async def server(tmp_path: Path, clock: trio.testing.MockClock) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path, {"sip.domains": "example.com"}) as rs:
        yield rs


async def finals(ua: UA, method: str, until: float) -> list[tuple[float, Response]]:
    """Every final response to ``method`` that arrives before ``until`` (trio time)."""
    got: list[tuple[float, Response]] = []
    with trio.move_on_after(until - trio.current_time()):
        while True:
            msg = await ua.client.receive(timeout=until)
            if isinstance(msg, Response) and msg.cseq.method == method and msg.status >= 200:
                got.append((trio.current_time(), msg))
    return got


def ack_for(invite: bytes, final: Response) -> bytes:
    """RFC 3261 17.1.1.3: the ACK to a non-2xx final, same branch as the INVITE."""
    head = invite.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    out = [lines[0].replace("INVITE", "ACK", 1)]
    for line in lines[1:]:
        name = line.split(":", 1)[0].lower()
        if name in ("via", "from", "call-id", "max-forwards"):
            out.append(line)
        elif name == "cseq":
            out.append(line.replace("INVITE", "ACK"))
        elif name == "to":
            out.append(f"To: {final.to.text}")
    out.append("Content-Length: 0")
    return ("\r\n".join(out) + "\r\n\r\n").encode()


async def callee_that_never_answers(server: RunningServer) -> UA:
    callee = UA(await SipClient.connect("udp", *server.addr("udp")), "bob")
    await callee.register()
    return callee


async def test_a_timer_b_408_is_retransmitted_until_the_ack(
    server: RunningServer, clock: trio.testing.MockClock
) -> None:
    await callee_that_never_answers(server)
    caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
    invite, _ = caller.invite("bob")
    start = trio.current_time()
    await caller.client.send(invite)
    got = await finals(caller, "INVITE", start + 32 + 8)  # Timer B, then 8 s of 408s
    times = [round(t - start, 3) for t, _ in got]
    assert all(r.status == 408 for _, r in got), [r.status for _, r in got]
    assert times == [32.0, 32.5, 33.5, 35.5, 39.5], times
    await caller.client.send(ack_for(invite, got[0][1]))
    after = await finals(caller, "INVITE", trio.current_time() + 10)
    assert after == []  # the ACK was absorbed: no more 408s
    assert server.server.core_stats["ack_absorbed"] == 1


async def test_without_an_ack_timer_h_ends_it(
    server: RunningServer, clock: trio.testing.MockClock
) -> None:
    await callee_that_never_answers(server)
    caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
    invite, _ = caller.invite("bob")
    start = trio.current_time()
    await caller.client.send(invite)
    got = await finals(caller, "INVITE", start + 32 + TIMER_H + 5)
    times = [round(t - start - 32, 3) for t, _ in got]
    assert times == [0.0, *RETRANSMITS], times
    # Timer H ended the transaction: a late ACK meets none (a 2xx-less ACK is dropped)
    await caller.client.send(ack_for(invite, got[0][1]))
    await trio.sleep(1)
    assert server.server.core_stats["ack_absorbed"] == 0


async def test_a_relayed_486_is_retransmitted_to_a_caller_that_does_not_ack(
    server: RunningServer, clock: trio.testing.MockClock
) -> None:
    callee = await callee_that_never_answers(server)
    caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
    invite, _ = caller.invite("bob")
    await caller.client.send(invite)
    got_invite = await callee.expect_request("INVITE")
    start = trio.current_time()
    await callee.reply(got_invite, 486, "Busy Here")
    got = await finals(caller, "INVITE", start + 12)
    times = [round(t - start, 1) for t, _ in got]
    assert all(r.status == 486 for _, r in got)
    assert times == [0.0, *RETRANSMITS[:5]], times


async def test_the_servers_own_404_is_retransmitted_too(
    server: RunningServer, clock: trio.testing.MockClock
) -> None:
    caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
    invite, _ = caller.invite("nobody")
    start = trio.current_time()
    await caller.client.send(invite)
    got = await finals(caller, "INVITE", start + 12)
    times = [round(t - start, 2) for t, _ in got]
    assert all(r.status == 404 for _, r in got)
    assert times == [0.0, *RETRANSMITS[:5]], times


async def test_a_register_answer_is_repeated_only_for_its_retransmission(
    server: RunningServer, clock: trio.testing.MockClock
) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    register = c.register("bob", expires=5)  # below min_expires: 423
    start = trio.current_time()
    first = await c.request(register)
    assert first.status == 423
    quiet: list[Request | Response] = []
    with trio.move_on_after(10):  # non-INVITE: no retransmission of its own
        quiet.append(await c.receive(timeout=20))
    assert quiet == []
    again = await c.request(register)  # the same branch, inside Timer J (64·T1)
    assert again.status == 423 and again.serialise() == first.serialise()
    assert trio.current_time() - start < 64 * T1
    assert server.server.core_stats["retransmissions_absorbed"] == 1
