"""Load shedding through a running server: new calls refused, calls in progress served."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import trio
from support.client import SipClient
from support.server import RunningServer, running_server
from support.ua import SDP, UA

from siptrio.sip import Response, parse_message_untrusted

MAX_FLOOD = 200_000  # INVITEs at most (the test stops the flood long before)


async def make_ua(server: RunningServer, nursery: trio.Nursery, user: str) -> UA:
    client = await SipClient.connect("udp", *server.addr("udp"), nursery=nursery)
    ua = UA(client, user)
    await ua.register()
    return ua


def flood_invite(port: int, n: int) -> bytes:
    branch = f"z9hG4bK-flood-{uuid.uuid4().hex[:12]}"
    return (
        "INVITE sip:carol@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:flood@example.com>;tag=f{n}\r\n"
        "To: <sip:carol@example.com>\r\n"
        f"Call-ID: flood-{n}-{branch}\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:flood@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_excess_invites_get_503_while_a_bye_still_gets_through(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # The queueing delay allowed before new calls are refused, forced down to 5 ms.
    overrides = {"sip.domains": "example.com", "security.overload_delay": "0.005"}
    async with running_server(tmp_path, overrides) as rs:
        alice = await make_ua(rs, nursery, "alice")
        bob = await make_ua(rs, nursery, "bob")
        await make_ua(rs, nursery, "carol")  # the flood's callee, who never reads

        # a call is up: INVITE, 200, ACK (should the server have measured a delay while
        # starting and refuse it, it is tried again once the server is idle)
        for _attempt in range(3):
            invite, _ = alice.invite("bob")
            await alice.client.send(invite)
            first = await alice.expect_response("INVITE", final=False)
            if first.status != 503:
                break
            await trio.sleep(1.2)  # longer than an idle server keeps shedding
        else:
            raise AssertionError("the call could not be set up")
        got = await bob.expect_request("INVITE")
        await bob.reply(got, 200, "OK", body=SDP)
        final = await alice.expect_response("INVITE")
        assert final.status == 200
        d = alice.uac_dialog(invite, final)
        await alice.client.send(alice.ack(d))
        await bob.expect_request("ACK")

        # The flood: INVITEs from another thread, some 10,000 a second, until the BYE
        # below is through. The server falls behind and stays behind (a standing queue):
        # from then on new calls are refused.
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        flood.bind(("127.0.0.1", 0))
        port = flood.getsockname()[1]
        target = rs.addr("udp")
        stop = threading.Event()

        def send_flood() -> None:
            n = 0
            while not stop.is_set() and n < MAX_FLOOD:
                with contextlib.suppress(BlockingIOError):  # our socket's buffer is full
                    flood.sendto(flood_invite(port, n), target)
                n += 1
                if n % 100 == 0:
                    time.sleep(0.01)  # ~10,000/s: more calls than it takes, fewer than it refuses

        # Every INVITE that reached the server (the kernel drops what its queue cannot
        # hold) is answered: 100 Trying (taken, forwarded to carol, who never answers)
        # or 503 (refused). The answers are read as they come.
        answers: dict[str, Response] = {}
        flood.setblocking(False)

        async def collect() -> None:
            while True:
                await trio.lowlevel.wait_readable(flood)
                try:
                    data = flood.recv(65536)
                except BlockingIOError:
                    continue
                m = parse_message_untrusted(data)
                assert isinstance(m, Response)
                answers.setdefault(m.call_id, m)

        stats = rs.server.dispatcher.stats
        async with trio.open_nursery() as flooding:
            flooding.start_soon(collect)
            flooding.start_soon(
                partial(trio.to_thread.run_sync, send_flood, abandon_on_cancel=True)
            )
            with trio.fail_after(30):
                while not stats["overload_refused.new"]:
                    await trio.sleep(0.01)

            # Refusing new calls now; the BYE of the call in progress still gets through.
            # Should the socket's queue be full, the kernel drops what does not fit, a BYE
            # or its 200 as well as INVITEs: like any UA, alice sends it again every
            # 0.5 s (RFC 3261 Timer E) and bob answers each one that reaches him.
            async def bob_answers() -> None:
                while True:
                    bye = await bob.expect_request("BYE", timeout=60)
                    await bob.reply(bye, 200, "OK")

            flooding.start_soon(bob_answers)
            bye = alice.in_dialog(d, "BYE")
            ok: Response | None = None
            with trio.fail_after(30):
                while ok is None:
                    await alice.client.send(bye)
                    with trio.move_on_after(0.5):
                        ok = await alice.expect_response("BYE", timeout=1)
            assert ok.status == 200
            stop.set()
            await trio.sleep(1)  # the answers to the last INVITEs
            flooding.cancel_scope.cancel()
        flood.close()
        refused = [m for m in answers.values() if m.status == 503]
        taken = [m for m in answers.values() if m.status == 100]
        assert len(refused) + len(taken) == len(answers)
        assert refused and taken
        assert all(m.first("retry-after") == "5" for m in refused)
        assert all("overloaded" in m.reason for m in refused)
        assert stats["overload_refused.new"] >= len(refused)
        # the refused ones made no transaction; the calls taken have theirs (carol never
        # answers them)
        calls = {t.request.call_id for t in rs.server.dispatcher.layer.servers.values()}
        assert not any(m.call_id in calls for m in refused)
        assert all(m.call_id in calls for m in taken)
