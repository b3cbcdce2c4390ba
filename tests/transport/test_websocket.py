"""SIP over WebSocket (RFC 7118) on real sockets: handshake policy, framing, keep-alives."""

from __future__ import annotations

import contextlib
import resource
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import wsproto
import wsproto.events as wse
from support.client import SipClient
from support.server import RunningServer, ServerProcess, running_server
from trio_websocket import ConnectionClosed, ConnectionRejected

from siptrio.app.certs import write_dev_certs

SIPJS_CONTACT = "<sip:k3u8sq1r@{host};transport=ws>;expires=600"
JSSIP_CONTACT = (
    "<sip:8e1bqo6t@{host};transport=ws>;+sip.ice;reg-id=1;"
    '+sip.instance="<urn:uuid:3ba2c29a-a76b-4d86-92c3-2b1b0f6a6e35>";expires=600'
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    certs = write_dev_certs(tmp_path / "certs")
    overrides = {
        "sip_websocket.enable": "true",
        "sip_websocket.wss_enable": "true",
        "sip_websocket.wss_cert_file": str(certs.cert),
        "sip_websocket.wss_key_file": str(certs.key),
        "sip_websocket.allowed_origins": "http://localhost:8088, https://phone.example.org",
        "sip_websocket.keepalive_interval": "30",
    }
    async with running_server(tmp_path, overrides) as rs:
        rs.ca_file = str(certs.ca)  # type: ignore[attr-defined]
        yield rs


async def ws_client(
    server: RunningServer, nursery: trio.Nursery, transport: str = "ws", **kw: object
) -> SipClient:
    return await SipClient.connect(
        transport,
        *server.addr(transport),
        ca_file=getattr(server, "ca_file", None),
        nursery=nursery,
        **kw,  # type: ignore[arg-type]
    )


async def rejected(
    server: RunningServer, transport: str = "ws", **kw: object
) -> ConnectionRejected:
    """The HTTP rejection of a handshake (trio-websocket raises it from its reader task too)."""
    found: list[ConnectionRejected] = []
    try:
        async with trio.open_nursery() as n:
            c = await ws_client(server, n, transport, **kw)
            await c.aclose()
    except* ConnectionRejected as group:
        found.extend(e for e in group.exceptions if isinstance(e, ConnectionRejected))
    assert found, "the handshake was accepted"
    return found[0]


def sipjs_register(c: SipClient, user: str = "alice") -> tuple[bytes, str]:
    contact = SIPJS_CONTACT.format(host=c.invalid_host)
    return c.register(
        user, contact=contact, expires=None, headers=(("Supported", "outbound"),)
    ), contact


def jssip_register(c: SipClient, user: str = "bob") -> tuple[bytes, str]:
    contact = JSSIP_CONTACT.format(host=c.invalid_host)
    msg = c.register(
        user, contact=contact, expires=600, headers=(("Supported", "path, gruu, outbound"),)
    )
    return msg, contact


@pytest.mark.parametrize("transport", ["ws", "wss"])
@pytest.mark.parametrize("shape", ["sipjs", "jssip"])
async def test_register_like_browsers(
    server: RunningServer, nursery: trio.Nursery, transport: str, shape: str
) -> None:
    c = await ws_client(server, nursery, transport)
    assert c.ws is not None and c.ws.subprotocol == "sip"
    msg, contact = (sipjs_register if shape == "sipjs" else jssip_register)(c)
    assert f"SIP/2.0/{transport.upper()} {c.invalid_host};branch=".encode() in msg
    r = await c.request(msg)
    assert r.status == 200
    assert r.values("contact") == [contact]  # echoed exactly, parameters inside <> kept
    user = "alice" if shape == "sipjs" else "bob"
    (b,) = server.server.location.lookup(f"sip:{user}@example.com", 0)
    assert b.transport.value == transport and b.flow_id and b.flow_id.startswith(transport)
    assert b.flow_id in server.server.flows
    await c.aclose()


async def test_content_length_is_optional_on_websocket(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    c = await ws_client(server, nursery)
    msg, _ = sipjs_register(c)
    msg = msg.replace(b"Content-Length: 0\r\n", b"")
    assert (await c.request(msg)).status == 200


async def test_closing_the_websocket_removes_its_bindings(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    c = await ws_client(server, nursery)
    assert (await c.request(jssip_register(c, "carol")[0])).status == 200
    await c.aclose()
    with trio.fail_after(3):
        while server.server.location.lookup("sip:carol@example.com", 0):
            await trio.sleep(0.01)


async def test_origin_not_allowed_403(server: RunningServer, nursery: trio.Nursery) -> None:
    err = await rejected(server, origin="https://evil.example.net")
    assert err.status_code == 403 and b"evil.example.net" in (err.body or b"")
    assert not server.server.flows
    # an allowed origin other than the default one works
    c = await ws_client(server, nursery, origin="https://phone.example.org")
    assert (await c.request(sipjs_register(c)[0])).status == 200


async def test_missing_origin_allowed_by_default_refused_when_configured(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with running_server(tmp_path, {"sip_websocket.enable": "true"}) as server:
        c = await ws_client(server, nursery, origin=None)
        assert (await c.request(sipjs_register(c)[0])).status == 200
    async with running_server(
        tmp_path, {"sip_websocket.enable": "true", "sip_websocket.allow_missing_origin": "false"}
    ) as server:
        assert (await rejected(server, origin=None)).status_code == 403


async def test_without_sip_subprotocol_400(server: RunningServer, nursery: trio.Nursery) -> None:
    err = await rejected(server, subprotocols=("chat",))
    assert err.status_code == 400 and b"'sip' subprotocol" in (err.body or b"")


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: sip\r\nOrigin: http://localhost:8088\r\n\r\n"
)


@pytest.mark.parametrize(
    ("old", "new", "status", "why"),
    [
        (b"GET", b"POST", 400, b"GET"),
        (b"Version: 13", b"Version: 8", 426, b"Sec-WebSocket-Version"),
        (b"Upgrade: websocket\r\n", b"", 400, b"Upgrade: websocket"),
        (b"Connection: Upgrade\r\n", b"Bad Header\r\n", 400, b"header line"),
        # a head still unfinished past h11's 16 KiB
        (b"\r\n\r\n", b"\r\nX-Pad: " + b"a" * 20000, 431, b"too long"),
    ],
)
async def test_a_malformed_upgrade_is_refused_with_a_status_and_why(
    server: RunningServer, old: bytes, new: bytes, status: int, why: bytes
) -> None:
    """wsproto (h11) judges the request; the refusal's body says what was wrong."""
    stream = await trio.open_tcp_stream(*server.addr("ws"))
    await stream.send_all(UPGRADE.replace(old, new, 1))
    answer = b""
    with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
        while data := await stream.receive_some(65536):
            answer += data
    await stream.aclose()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert why in body
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in head
    assert not server.server.hub.flows


async def test_header_values_that_are_not_ascii_do_not_stop_the_server(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    """h11 lets obs-text through in a value; wsproto's handshake decoded the
    subprotocols as ASCII and its UnicodeDecodeError ended the listener."""
    stream = await trio.open_tcp_stream(*server.addr("ws"))
    await stream.send_all(UPGRADE.replace(b"Protocol: sip", b"Protocol: sip, \xe9t\xe9", 1))
    with trio.fail_after(5):
        answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    await stream.aclose()
    c = await ws_client(server, nursery)  # and the next browser is served
    msg, _ = sipjs_register(c)
    assert (await c.request(msg)).status == 200


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x81\x05hello", 1002),  # unmasked: a client must mask every frame
        (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),  # a text message that is not UTF-8
        (b"\x89\xfe\x00\x80\x00\x00\x00\x00" + b"p" * 128, 1002),  # a 128-byte ping
    ],
)
async def test_broken_frames_close_the_flow_with_the_protocol_error_code(
    server: RunningServer, frame: bytes, code: int
) -> None:
    raw = await RawWs.open(server.addr("ws"))
    await raw.stream.send_all(frame)
    events: list[wse.Event] = []
    with trio.fail_after(5):
        while not any(isinstance(e, wse.CloseConnection) for e in events):
            events += await raw.events()
    close = next(e for e in events if isinstance(e, wse.CloseConnection))
    assert close.code == code
    with trio.fail_after(3):
        while server.server.hub.flows:
            await trio.sleep(0.01)


async def test_wss_needs_the_ca(server: RunningServer, nursery: trio.Nursery) -> None:
    host, port = server.addr("wss")
    tcp = await trio.open_tcp_stream(host, port)
    untrusting = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname="localhost")
    with pytest.raises(trio.BrokenResourceError) as info:
        await untrusting.do_handshake()
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    await trio.aclose_forcefully(untrusting)
    c = await ws_client(server, nursery, "wss")
    assert (await c.request(sipjs_register(c)[0])).status == 200


async def test_crlf_ping_answered_with_crlf(server: RunningServer, nursery: trio.Nursery) -> None:
    c = await ws_client(server, nursery)
    await c.send(b"\r\n\r\n")
    assert await c.receive_raw() == b"\r\n"
    assert (await c.request(sipjs_register(c)[0])).status == 200


async def test_malformed_sip_gets_400_and_the_connection_stays(
    server: RunningServer, nursery: trio.Nursery
) -> None:
    c = await ws_client(server, nursery)
    bad = sipjs_register(c)[0].replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE")
    r = await c.request(bad)
    assert r.status == 400 and "CSeq" in r.reason
    assert (
        await c.request(c.register("dave", contact=f"<sip:d@{c.invalid_host};transport=ws>"))
    ).status == 200


async def test_oversized_message_closes_with_1009(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_server(
        tmp_path, {"sip_websocket.enable": "true", "sip_websocket.max_message_size": "4096"}
    ) as server:
        c = await ws_client(server, nursery)
        assert c.ws is not None
        await c.ws.send_message("x" * 10_000)
        with pytest.raises(ConnectionClosed) as info:
            await c.ws.get_message()
        assert info.value.reason is not None and info.value.reason.code == 1009


async def test_connection_cap_per_ip_503(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_server(
        tmp_path,
        {
            "sip_websocket.enable": "true",
            "sip_websocket.max_connections_per_ip": "2",
            # loopback is exempt from per-address caps by default
            "security.rate_limit_exempt": "192.0.2.0/24",
        },
    ) as server:
        a = await ws_client(server, nursery)
        b = await ws_client(server, nursery)
        assert (await rejected(server)).status_code == 503
        await a.aclose()
        with trio.fail_after(3):
            while True:
                if server.server.stats["flows_closed.ws"] >= 1:
                    c = await ws_client(server, nursery)
                    break
                await trio.sleep(0.05)
        assert (await c.request(sipjs_register(c)[0])).status == 200
        await b.aclose()


async def test_server_pings_every_interval(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_server(
        tmp_path, {"sip_websocket.enable": "true", "sip_websocket.keepalive_interval": "0.2"}
    ) as server:
        c = await ws_client(server, nursery)  # trio-websocket answers pings with pongs
        assert (await c.request(sipjs_register(c)[0])).status == 200
        await trio.sleep(1.1)
        sent = server.server.stats["keepalives_out.ws"]
        assert 4 <= sent <= 6
        # answered pings keep the flow and its binding
        assert server.server.location.lookup("sip:alice@example.com", 0)


async def test_server_crlf_keepalives_every_interval(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_server(
        tmp_path,
        {
            "sip_websocket.enable": "true",
            "sip_websocket.keepalive_interval": "0.2",
            "sip_websocket.keepalive_mechanism": "crlf",
        },
    ) as server:
        c = await ws_client(server, nursery)
        got = []
        with trio.move_on_after(1.1):
            while True:
                got.append(await c.receive_raw())
        assert 4 <= got.count(b"\r\n\r\n") <= 6


class RawWs:
    """A WebSocket client that answers nothing unless told: a tab that froze."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    @classmethod
    async def open(cls, addr: tuple[str, int]) -> RawWs:
        self = cls(await trio.open_tcp_stream(*addr))
        await self.stream.send_all(
            self.conn.send(
                wse.Request(
                    host="localhost",
                    target="/",
                    subprotocols=["sip"],
                    extra_headers=[(b"Origin", b"http://localhost:8088")],
                )
            )
        )
        events = await self.events()
        assert any(isinstance(e, wse.AcceptConnection) for e in events), events
        return self

    async def events(self) -> list[wse.Event]:
        data = await self.stream.receive_some(65536)
        self.conn.receive_data(data or None)
        return list(self.conn.events())

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.conn.send(wse.TextMessage(data=text)))


async def test_client_that_stops_answering_pings_is_dropped(tmp_path: Path) -> None:
    interval, timeout = 0.3, 0.3
    async with running_server(
        tmp_path,
        {
            "sip_websocket.enable": "true",
            "sip_websocket.keepalive_interval": str(interval),
            "sip_websocket.keepalive_timeout": str(timeout),
        },
    ) as server:
        raw = await RawWs.open(server.addr("ws"))
        helper = SipClient("ws")
        await raw.send_text(sipjs_register(helper, "frozen")[0].decode())
        texts = [e for e in await raw.events() if isinstance(e, wse.TextMessage)]
        assert texts and texts[0].data.startswith("SIP/2.0 200")
        assert server.server.location.lookup("sip:frozen@example.com", 0)
        start = trio.current_time()
        # never read again: pings go unanswered
        with trio.fail_after(interval + timeout + 1.0):
            while server.server.location.lookup("sip:frozen@example.com", 0):
                await trio.sleep(0.02)
        assert trio.current_time() - start <= interval + timeout + 0.5
        assert server.server.stats["keepalive_failures"] == 1


async def test_slowloris_handshake_dropped_while_others_register(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with running_server(
        tmp_path, {"sip_websocket.enable": "true", "sip_websocket.handshake_timeout": "1"}
    ) as server:
        slow = await trio.open_tcp_stream(*server.addr("ws"))
        request = (
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: sip\r\n\r\n"
        )
        dropped_after = None
        start = trio.current_time()

        async def dribble() -> None:
            nonlocal dropped_after
            try:
                for i in range(len(request)):
                    await slow.send_all(request[i : i + 1])
                    with trio.move_on_after(0.25):
                        if await slow.receive_some(1024) == b"":
                            break
            except trio.BrokenResourceError:
                pass
            dropped_after = trio.current_time() - start

        async with trio.open_nursery() as inner:
            inner.start_soon(dribble)
            ok = 0
            while dropped_after is None:
                c = await ws_client(server, nursery)
                if (await c.request(sipjs_register(c, f"user{ok}")[0])).status == 200:
                    ok += 1
                await c.aclose()
        assert dropped_after is not None and 0.9 <= dropped_after <= 2.0
        assert ok >= 3


async def test_shutdown_closes_websockets_with_1001(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with running_server(tmp_path, {"sip_websocket.enable": "true"}) as server:
        c = await ws_client(server, nursery)
        assert (await c.request(sipjs_register(c)[0])).status == 200
    assert c.ws is not None
    with pytest.raises(ConnectionClosed) as info:
        await c.ws.get_message()
    assert info.value.reason is not None and info.value.reason.code == 1001


async def test_tcp_flow_gets_crlf_keepalives_and_is_dropped_when_it_stops_answering(
    tmp_path: Path,
) -> None:
    async with running_server(
        tmp_path,
        {"sip_websocket.keepalive_interval": "0.2", "sip_websocket.keepalive_timeout": "0.2"},
    ) as server:
        c = await SipClient.connect("tcp", *server.addr("tcp"))
        assert (await c.request(c.register("tcpka"))).status == 200
        # answer the first keep-alive like JsSIP does: from then on answers are expected
        assert await c.receive_raw() == b"\r\n\r\n"
        await c.send(b"\r\n")
        with trio.fail_after(2):
            while server.server.location.lookup("sip:tcpka@example.com", 0):
                await trio.sleep(0.02)
        assert server.server.stats["keepalive_failures"] == 1


async def test_a_flows_binding_is_answered_without_the_disk(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A binding on a connection dies with it and a restart drops it: it never goes to disk.

    A UDP binding is committed before its 200 (it must survive a crash); one over a
    WebSocket is answered at once, and an older row of the same key is cleared.
    """
    import sqlite3

    async with running_server(tmp_path, {"sip_websocket.enable": "true"}) as server:
        udp = await SipClient.connect("udp", *server.addr("udp"))
        assert (await udp.request(udp.register("erin"))).status == 200
        c = await ws_client(server, nursery)
        assert (await c.request(sipjs_register(c, "erin")[0])).status == 200
        assert (await c.request(sipjs_register(c, "frank")[0])).status == 200
        assert len(server.server.location.lookup("sip:erin@example.com", 0)) == 2
        stats = server.server.stats
        assert stats["store_commits"] == 1  # the UDP binding's; new ones on a flow: none
        assert (await c.request(sipjs_register(c, "frank")[0])).status == 200  # a refresh
        with trio.fail_after(3):
            while stats["store_commits"] < 2:  # clears an older row of its key, if any
                await trio.sleep(0.01)
        db = sqlite3.connect(tmp_path / "location.sqlite")
        rows = db.execute("SELECT aor, transport FROM bindings").fetchall()
        db.close()
        assert rows == [("sip:erin@example.com", "udp")]


def test_the_server_raises_its_open_files_limit(tmp_path: Path) -> None:
    """A soft limit of 1,024 would refuse the 1,021st browser: serve lifts it to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"hard RLIMIT_NOFILE is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the child inherits it
    try:
        sets = ["sip.udp_port=0", "sip.tcp_port=0", "admin.enable=false", "control.enable=false"]
        sets += ["sip_websocket.enable=false", f"registrar.database={tmp_path / 'location.sqlite'}"]
        proc = ServerProcess(
            ["serve", "--log-level", "INFO", *(a for s in sets for a in ("--set", s))],
            log_path=tmp_path / "siptrio.log",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        proc.wait_ready(expect=2)
        limits = Path(f"/proc/{proc.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        got_soft = line.split()[3]
        assert got_soft == str(hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        proc.stop()


async def test_a_peer_gone_before_the_101_is_a_broken_stream_not_a_crash() -> None:
    """The 101 goes straight onto the socket: a reset there must read as a broken stream.

    At 50,000 set-ups, clients that gave up reset their connections between our read of
    the request and our 101; the error escaped as BrokenPipeError and stopped a worker.
    """
    import socket
    import struct

    from siptrio.transport.ws.flow import send_now

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()  # a reset, not a FIN
    await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(3):  # the first write may still be taken before the reset is seen
            await send_now(server, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    await server.aclose()
    await listeners[0].aclose()
