"""Service under attack: while each attack runs, a legitimate user still registers and calls.

And no call reaches a paid destination (toll fraud) without credentials. Every test runs an in-process siptrio with loopback *not* exempt from the rate limit.
The attacker is 127.0.0.1; the legitimate users are elsewhere on loopback (the caller
on TCP from 127.0.0.2, the callee on UDP from 127.0.0.3), so per-address limits bite
the attacker only. Each attack is underway before the call starts and still going
when it ends; where the attacker can observe siptrio's answer (silence, a closed
connection, 400, 413, WebSocket close 1009) the test checks it is the documented one.
"""

from __future__ import annotations

import contextlib
import random
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
from support.client import SipClient, new_branch
from support.digest import authorization, challenges
from support.server import RunningServer, running_server
from support.ua import SDP, UA
from trio_websocket import ConnectionClosed, connect_websocket

from siptrio.sip import Response
from siptrio.sip.digest import ha1
from siptrio.store.sqlite import SqliteStore

DOMAIN = "example.com"
ATTACKER = "127.0.0.1"
CALLER_HOST = "127.0.0.2"
CALLEE_HOST = "127.0.0.3"

BASE = {
    "sip.domains": DOMAIN,
    "security.rate_limit_exempt": "",
    "sip_websocket.enable": "true",
    "sip_websocket.handshake_timeout": "1",
    "sip.idle_timeout": "60",
}


@contextlib.asynccontextmanager
async def siptrio(tmp_path: Path, **overrides: str) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path, {**BASE, **overrides}) as rs:
        yield rs
    assert rs.counters()["internal_errors"] == 0


# --- the legitimate side ------------------------------------------------------------------------


async def tcp_client(server: RunningServer, local_host: str) -> SipClient:
    """A TCP SipClient whose connection comes from ``local_host``."""
    host, port = server.addr("tcp")
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((local_host, 0))
    await sock.connect((host, port))
    client = SipClient("tcp")
    client.stream = trio.SocketStream(sock)
    client.server = (host, port)
    client.local = sock.getsockname()[:2]
    return client


async def legit_call(server: RunningServer) -> None:
    """alice (TCP) and bob (UDP) register; alice calls bob: INVITE, 200, ACK, BYE, 200."""
    with trio.fail_after(15):
        callee = UA(
            await SipClient.connect("udp", *server.addr("udp"), local_host=CALLEE_HOST), "bob"
        )
        caller = UA(await tcp_client(server, CALLER_HOST), "alice")
        await callee.register()
        await caller.register()

        invite, call_id = caller.invite("bob")
        await caller.client.send(invite)
        got = await callee.expect_request("INVITE", timeout=10)
        assert got.call_id == call_id
        await callee.reply(got, 180, "Ringing")
        await callee.reply(got, 200, "OK", body=SDP)
        ok = await caller.expect_response("INVITE", timeout=10)
        assert ok.status == 200 and ok.body == SDP.encode()
        dialog = caller.uac_dialog(invite, ok)
        await caller.client.send(caller.ack(dialog))
        assert (await callee.expect_request("ACK", timeout=10)).call_id == call_id

        await caller.client.send(caller.in_dialog(dialog, "BYE"))
        bye = await callee.expect_request("BYE", timeout=10)
        await callee.reply(bye, 200, "OK")
        assert (await caller.expect_response("BYE", timeout=10)).status == 200
        await caller.client.aclose()
        await callee.client.aclose()


Attack = Callable[[trio.Event, trio.Event], Awaitable[None]]


async def call_during(server: RunningServer, *attacks: Attack) -> None:
    """Start the attacks, make the call once all are underway, wait for them to end.

    Each attack is called with two events: it sets ``underway`` once it is well
    started, and keeps going until ``call_done`` is set or siptrio cuts it off.
    """
    call_done = trio.Event()
    async with trio.open_nursery() as nursery:
        events = []
        for attack in attacks:
            underway = trio.Event()
            events.append(underway)
            nursery.start_soon(attack, underway, call_done)
        with trio.fail_after(20):
            for e in events:
                await e.wait()
        await legit_call(server)
        call_done.set()


# --- what the attacker sends ------------------------------------------------------------------


def register_request(via_host: str = "127.0.0.1:9", extra: bytes = b"") -> bytes:
    return (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP " + via_host.encode() + b";branch=" + new_branch().encode() + b"\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:mallory@example.com>;tag=m1\r\n"
        b"To: <sip:mallory@example.com>\r\n"
        b"Call-ID: attack-" + new_branch().encode() + b"\r\n"
        b"CSeq: 1 REGISTER\r\n" + extra + b"Content-Length: 0\r\n\r\n"
    )


async def attacker_tcp(server: RunningServer) -> trio.SocketStream:
    return await trio.open_tcp_stream(*server.addr("tcp"))


async def closed_by_server(stream: trio.abc.Stream, timeout: float) -> bytes:
    """Read until the server closes; everything it sent before closing."""
    got = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return got
            if not data:
                return got
            got += data


# --- (a) a flood of garbage datagrams -----------------------------------------------------------

FLOOD = 20_000


async def test_garbage_udp_flood(tmp_path: Path) -> None:
    async with siptrio(tmp_path) as server:
        stats = server.server.stats
        rng = random.Random(4475)
        junk = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))) for _ in range(64)]
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind((ATTACKER, 0))
        await sock.connect(server.addr("udp"))
        sent = 0

        async def flood(underway: trio.Event, call_done: trio.Event) -> None:
            nonlocal sent
            for i in range(FLOOD):
                await sock.send(b"\x16\x03" + junk[i % len(junk)])  # never parses as SIP
                sent += 1
                if i == 2_000:
                    underway.set()
                if i % 50 == 0:
                    await trio.sleep(0.001)  # about 20,000 datagrams in a few seconds
            assert call_done.is_set(), "the flood ended before the call did"

        await call_during(server, flood)
        assert sent == FLOOD
        await trio.sleep(0.5)
        # dropped without an answer: the attacker's socket received nothing
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.3):
            await sock.recv(65536)
        sock.close()
        # whatever the kernel did not drop reached siptrio and was dropped there
        stats = server.counters()
        assert stats["dropped.unaddressable"] >= FLOOD // 2
        assert stats["dropped.unaddressable"] == stats["parse_errors"]
        assert stats["parse_error_replies.400"] == 0


# --- (b) 2,000 idle TCP connections ---------------------------------------------------------------

IDLE = 2_000
PER_IP = 100  # the default [security] max_connections_per_ip


async def test_two_thousand_idle_tcp_connections(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * IDLE:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * IDLE), hard))
    async with siptrio(tmp_path, **{"security.first_message_timeout": "6"}) as server:
        stats = server.server.stats
        streams: list[trio.SocketStream] = []

        async def idle_connections(underway: trio.Event, call_done: trio.Event) -> None:
            for _ in range(IDLE):
                streams.append(await attacker_tcp(server))
            underway.set()
            await call_done.wait()
            # the hundred let in were all still open (and idle) during the call
            held = [f for f in server.server.flows.values() if f.remote[0] == ATTACKER]
            assert len(held) == PER_IP

        try:
            await call_during(server, idle_connections)
            with trio.fail_after(5):
                while stats["connections_refused.per_ip"] < IDLE - PER_IP:
                    await trio.sleep(0.05)
            assert stats["connections_refused.per_ip"] == IDLE - PER_IP
            # refused connections are closed at once, without a word
            assert await closed_by_server(streams[-1], timeout=2) == b""
            # the hundred that were let in are closed for never sending a SIP message
            with trio.fail_after(8):
                while stats["flows_closed.no_valid_message"] < PER_IP:
                    await trio.sleep(0.1)
            assert await closed_by_server(streams[0], timeout=2) == b""
            # and the service is whole afterwards
            await legit_call(server)
        finally:
            for s in streams:
                await trio.aclose_forcefully(s)


# --- (c) slowloris over TCP and WebSocket ------------------------------------------------------

DRIBBLE = 0.05  # seconds between bytes


async def dribble(stream: trio.abc.Stream, data: bytes, interval: float = DRIBBLE) -> float:
    """Send one byte at a time until the server hangs up; how long that took."""
    start = trio.current_time()
    closed = trio.Event()

    async def watch() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(65536):
                pass
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        for i in range(len(data)):
            if closed.is_set():
                break
            try:
                await stream.send_all(data[i : i + 1])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            with trio.move_on_after(interval):
                await closed.wait()
        else:
            raise AssertionError("the whole message went through a byte at a time")
        await closed.wait()
    return trio.current_time() - start


WS_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: sip\r\n" + b"X-Pad: " + b"p" * 200 + b"\r\n\r\n"
)


async def test_slowloris_tcp_and_websocket(tmp_path: Path) -> None:
    first_message_timeout = 1.0
    handshake_timeout = 1.0  # BASE
    overrides = {"security.first_message_timeout": str(first_message_timeout)}
    async with siptrio(tmp_path, **overrides) as server:
        stats = server.server.stats
        host, port = server.addr("ws")
        took: dict[str, float] = {}

        async def slow_sip(underway: trio.Event, call_done: trio.Event) -> None:
            stream = await attacker_tcp(server)
            underway.set()
            took["tcp"] = await dribble(stream, register_request(extra=b"X-Pad: " + b"p" * 400))
            await trio.aclose_forcefully(stream)

        async def slow_upgrade(underway: trio.Event, call_done: trio.Event) -> None:
            stream = await trio.open_tcp_stream(host, port)
            underway.set()
            took["ws upgrade"] = await dribble(stream, WS_UPGRADE)
            await trio.aclose_forcefully(stream)

        async def slow_frame(underway: trio.Event, call_done: trio.Event) -> None:
            # a completed handshake, then one SIP message dribbled inside a text frame
            async with trio.open_nursery() as nursery:
                ws = await connect_websocket(
                    nursery, host, port, "/", use_ssl=False, subprotocols=["sip"]
                )
                underway.set()
                message = register_request(extra=b"X-Pad: " + b"p" * 100)
                start = trio.current_time()
                # trio-websocket sends whole messages: build the frame by hand (FIN, text,
                # masked with key 0 so the payload goes as is) and dribble it straight
                # onto the TCP stream under the WebSocket
                frame = bytes([0x81, 0x80 | 126]) + len(message).to_bytes(2, "big")
                frame += b"\x00\x00\x00\x00" + message
                raw = ws._stream  # the only way to send part of a frame
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    for i in range(len(frame)):
                        await raw.send_all(frame[i : i + 1])
                        await trio.sleep(DRIBBLE)
                        if ws.closed:
                            break
                with trio.fail_after(5):
                    while not ws.closed:
                        await trio.sleep(0.05)
                took["ws frame"] = trio.current_time() - start
                nursery.cancel_scope.cancel()

        await call_during(server, slow_sip, slow_upgrade, slow_frame)
        # each was cut off at its timeout (plus scheduling), long before it finished; the
        # server's clock starts at accept, a moment before ours (hence the slack below)
        assert first_message_timeout - 0.25 <= took["tcp"] < first_message_timeout + 1.5, took
        assert handshake_timeout - 0.25 <= took["ws upgrade"] < handshake_timeout + 1.5, took
        assert took["ws frame"] < first_message_timeout + 1.5, took
        assert stats["flows_closed.no_valid_message"] == 2  # the TCP one and the WS one
        await legit_call(server)


async def test_slowloris_that_opens_with_a_keepalive(tmp_path: Path) -> None:
    async with siptrio(tmp_path, **{"security.first_message_timeout": "1"}) as server:
        stream = await attacker_tcp(server)
        await stream.send_all(b"\r\n\r\n")
        with trio.fail_after(2):
            assert await stream.receive_some(10) == b"\r\n"  # the pong
        # a whole message at this pace takes about 6 s; it should be cut off after ~1 s
        with trio.fail_after(10):
            took = await dribble(stream, register_request(), interval=0.025)
        assert took < 2.5
        await trio.aclose_forcefully(stream)


# --- (d) a 1 MB message -----------------------------------------------------------------------

MEGABYTE = register_request(extra=b"X-Big: " + b"x" * (1 << 20) + b"\r\n")


async def send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    """The server may answer and close before it has all of it."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def test_one_megabyte_messages(tmp_path: Path) -> None:
    async with siptrio(tmp_path) as server:
        host, port = server.addr("ws")
        answers: list[bytes] = []
        codes: list[int | None] = []

        async def big_over_tcp(underway: trio.Event, call_done: trio.Event) -> None:
            while not call_done.is_set() or not answers:
                stream = await attacker_tcp(server)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_quietly, stream, MEGABYTE)
                    answers.append(await closed_by_server(stream, timeout=10))
                    nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)
                underway.set()

        async def big_over_websocket(underway: trio.Event, call_done: trio.Event) -> None:
            while not call_done.is_set() or not codes:
                async with trio.open_nursery() as nursery:
                    ws = await connect_websocket(
                        nursery, host, port, "/", use_ssl=False, subprotocols=["sip"]
                    )
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send_message(MEGABYTE.decode())
                    with trio.fail_after(5), contextlib.suppress(ConnectionClosed):
                        while True:
                            await ws.get_message()
                    codes.append(ws.closed.code if ws.closed else None)
                    nursery.cancel_scope.cancel()
                underway.set()

        await call_during(server, big_over_tcp, big_over_websocket)
        # TCP: 413 and the connection closed; WebSocket: closed with 1009 (message too big)
        assert answers and all(a.startswith(b"SIP/2.0 413 ") for a in answers), answers[:1]
        assert all(a.count(b"SIP/2.0 ") == 1 for a in answers)  # that one answer only
        assert codes and all(c == 1009 for c in codes), codes


# --- (e) 10,000 header fields ----------------------------------------------------------------------

TEN_THOUSAND = register_request(extra=b"a:b\r\n" * 10_000)


async def test_ten_thousand_headers(tmp_path: Path) -> None:
    async with siptrio(tmp_path) as server:
        replies: dict[str, list[Response]] = {"udp": [], "tcp": [], "ws": []}

        async def keep_sending(
            client: SipClient, via: bytes, underway: trio.Event, call_done: trio.Event
        ) -> None:
            got = replies[client.transport]
            while not call_done.is_set() or len(got) < 3:
                got.append(await client.request(TEN_THOUSAND.replace(b"/TCP ", via)))
                underway.set()
            # the message was framed (UDP: one datagram; TCP: Content-Length; WS: one
            # message), so the same socket or connection is still served
            assert (await client.request(client.register("mallory"))).status == 200
            await client.aclose()

        async def over_udp(underway: trio.Event, call_done: trio.Event) -> None:
            c = await SipClient.connect("udp", *server.addr("udp"), local_host=ATTACKER)
            await keep_sending(c, b"/UDP ", underway, call_done)

        async def over_tcp(underway: trio.Event, call_done: trio.Event) -> None:
            await keep_sending(await tcp_client(server, ATTACKER), b"/TCP ", underway, call_done)

        async def over_websocket(underway: trio.Event, call_done: trio.Event) -> None:
            async with trio.open_nursery() as nursery:
                c = await SipClient.connect("ws", *server.addr("ws"), nursery=nursery)
                await keep_sending(c, b"/WS ", underway, call_done)
                nursery.cancel_scope.cancel()

        await call_during(server, over_udp, over_tcp, over_websocket)
        for transport, got in replies.items():
            assert got and all(
                r.status == 400 and "Too many header fields" in r.reason for r in got
            ), (transport, {(r.status, r.reason) for r in got})


# --- toll fraud ---------------------------------------------------------------------------------

GATEWAY = "127.0.0.9"  # a PSTN gateway the operator lets siptrio reach


@pytest.mark.parametrize(
    "from_",
    [
        pytest.param("<sip:alice@example.com>", id="our-user-without-credentials"),
        pytest.param("<sip:mallory@evil.invalid>", id="foreign-from"),
    ],
)
async def test_no_call_reaches_the_gateway_without_credentials(tmp_path: Path, from_: str) -> None:
    """With auth on, only an authenticated user of ours gets through to allowed_destinations.

    A From in a foreign domain is the caller's own claim: it must not open the way to
    the gateway (today it does, see the foreign-from case).
    """
    with SqliteStore(str(tmp_path / "location.sqlite")) as store:
        md5, sha256 = (ha1("alice", DOMAIN, "wonderland", a) for a in ("MD5", "SHA-256"))
        store.set_user("alice", DOMAIN, md5, sha256, 0.0)
    gateway = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await gateway.bind((GATEWAY, 0))
    target = f"sip:+15551234@{GATEWAY}:{gateway.getsockname()[1]}"
    overrides = {"auth.enable": "true", "proxy.allowed_destinations": f"{GATEWAY}/32"}
    async with siptrio(tmp_path, **overrides) as server:
        caller = await SipClient.connect("udp", *server.addr("udp"), local_host=CALLER_HOST)

        await caller.send(
            caller.build(
                "INVITE",
                target,
                to=f"<{target}>",
                from_=from_,
                headers=(("Contact", f"<sip:x@{caller.local_hostport}>"),),
            )
        )
        with trio.move_on_after(1):
            data, _ = await gateway.recvfrom(65536)
            raise AssertionError(f"reached the gateway unauthenticated: {data[:60]!r}")
        answer = await caller.receive(2)
        assert isinstance(answer, Response)
        assert answer.status in (403, 407, 481), f"{answer.status} {answer.reason}"

        # control: alice with her credentials does get through
        alice = await SipClient.connect("udp", *server.addr("udp"), local_host=CALLEE_HOST)
        first = await alice.request(
            alice.build("INVITE", target, to=f"<{target}>", from_="<sip:alice@example.com>")
        )
        assert first.status == 407
        auth = authorization(
            challenges(first.values("proxy-authenticate"))["MD5"],
            method="INVITE",
            uri=target,
            user="alice",
            password="wonderland",
        )
        await alice.send(
            alice.build(
                "INVITE",
                target,
                to=f"<{target}>",
                from_="<sip:alice@example.com>",
                headers=(("Proxy-Authorization", auth),),
            )
        )
        with trio.fail_after(3):
            data, _ = await gateway.recvfrom(65536)
        assert data.startswith(f"INVITE {target} SIP/2.0".encode())
        gateway.close()
