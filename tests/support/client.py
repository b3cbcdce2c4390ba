"""A small real SIP client for tests: UDP, TCP and TLS sockets on loopback.

It builds requests the way phones do (Via with branch and rport, From tag,
Call-ID, CSeq) and parses what comes back with siptrio's own parser, so tests
assert on real bytes that crossed real sockets.
"""

from __future__ import annotations

import itertools
import ssl
import uuid

import trio
from trio_websocket import WebSocketConnection, connect_websocket

from siptrio.sip import KeepAlive, Request, Response, StreamFramer, parse_message_untrusted

_branches = itertools.count(1)


def new_branch() -> str:
    return f"z9hG4bK-test-{uuid.uuid4().hex[:12]}-{next(_branches)}"


class SipClient:
    """One socket to the server. ``transport`` is 'udp', 'tcp' or 'tls'."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.sock: trio.socket.SocketType | None = None
        self.stream: trio.abc.Stream | None = None
        self.ws: WebSocketConnection | None = None
        # browsers put a random .invalid host in Via and Contact (RFC 7118)
        self.invalid_host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.server: tuple[str, int] = ("127.0.0.1", 0)
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self._framer = StreamFramer(1 << 20)
        self.keepalives: list[KeepAlive] = []
        self.call_id = f"{uuid.uuid4().hex}@test"
        self.cseq = 0
        self.from_tag = uuid.uuid4().hex[:8]

    @classmethod
    async def connect(
        cls,
        transport: str,
        host: str,
        port: int,
        *,
        ca_file: str | None = None,
        server_hostname: str = "localhost",
        nursery: trio.Nursery | None = None,
        origin: str | None = "http://localhost:8088",
        subprotocols: tuple[str, ...] = ("sip",),
        local_host: str | None = None,
    ) -> SipClient:
        """Connect; WS and WSS need a ``nursery`` for the WebSocket reader task."""
        self = cls(transport)
        self.server = (host, port)
        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        if transport in ("ws", "wss"):
            assert nursery is not None, "WebSocket clients need a nursery"
            ctx = ssl.create_default_context(cafile=ca_file) if transport == "wss" else None
            headers = [(b"Origin", origin.encode())] if origin else []
            self.ws = await connect_websocket(
                nursery,
                server_hostname if transport == "wss" else host,
                port,
                "/",
                use_ssl=ctx if ctx is not None else False,
                subprotocols=list(subprotocols),
                extra_headers=headers,
            )
            self.local = (self.invalid_host, 0)
            return self
        if transport == "udp":
            sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
            await sock.bind((local_host or host, 0))
            await sock.connect((host, port))
            self.sock = sock
            self.local = sock.getsockname()[:2]
        else:
            tcp = await trio.open_tcp_stream(host, port)
            self.local = tcp.socket.getsockname()[:2]
            if transport == "tls":
                ctx = ssl.create_default_context(cafile=ca_file)
                tls = trio.SSLStream(tcp, ctx, server_hostname=server_hostname)
                await tls.do_handshake()
                self.stream = tls
            else:
                self.stream = tcp
        return self

    @property
    def via_transport(self) -> str:
        return self.transport.upper()

    @property
    def local_hostport(self) -> str:
        if self.ws is not None:
            return self.invalid_host
        host, port = self.local
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def send(self, data: bytes) -> None:
        if self.ws is not None:
            try:
                await self.ws.send_message(data.decode("utf-8"))
            except UnicodeDecodeError:
                await self.ws.send_message(data)
            return
        if self.sock is not None:
            await self.sock.send(data)
        else:
            assert self.stream is not None
            await self.stream.send_all(data)

    async def receive_raw(self, timeout: float = 5.0) -> bytes:
        with trio.fail_after(timeout):
            if self.ws is not None:
                m = await self.ws.get_message()
                return m.encode() if isinstance(m, str) else m
            if self.sock is not None:
                return await self.sock.recv(65536)
            assert self.stream is not None
            return await self.stream.receive_some(65536)

    async def receive(self, timeout: float = 5.0) -> Request | Response:
        """Next SIP message (stream keep-alives are collected in ``keepalives``)."""
        with trio.fail_after(timeout):
            if self.ws is not None:
                while True:
                    m = await self.ws.get_message()
                    data = m.encode() if isinstance(m, str) else m
                    if data.strip(b"\r\n"):
                        return parse_message_untrusted(data)
                    self.keepalives.append(
                        KeepAlive.PING if data == b"\r\n\r\n" else KeepAlive.PONG
                    )
            if self.sock is not None:
                while True:
                    data = await self.sock.recv(65536)
                    if data.strip(b"\r\n"):
                        return parse_message_untrusted(data)
            assert self.stream is not None
            while True:
                event = self._framer.next_event()
                if isinstance(event, bytes):
                    return parse_message_untrusted(event)
                if isinstance(event, KeepAlive):
                    self.keepalives.append(event)
                    continue
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self._framer.receive_data(data)

    async def expect_closed(self, timeout: float = 5.0) -> None:
        """Wait until the server closes a stream connection (reading past any replies)."""
        assert self.stream is not None
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return

    async def request(self, data: bytes, timeout: float = 5.0) -> Response:
        """Send a request and return its final response (1xx skipped)."""
        await self.send(data)
        while True:
            msg = await self.receive(timeout)
            if isinstance(msg, Response) and msg.status >= 200:
                return msg

    def build(
        self,
        method: str,
        uri: str,
        *,
        to: str,
        from_: str | None = None,
        headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        call_id: str | None = None,
        cseq: int | None = None,
        branch: str | None = None,
        content_length: bool = True,
    ) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.via_transport} {self.local_hostport};branch={branch or new_branch()};rport",
            "Max-Forwards: 70",
            f"From: {from_ or to};tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id or self.call_id}",
            f"CSeq: {cseq} {method}",
        ]
        lines += [f"{k}: {v}" for k, v in headers]
        if content_length:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def register(
        self,
        user: str,
        *,
        domain: str = "example.com",
        contact: str | None = None,
        expires: int | None = 600,
        headers: tuple[tuple[str, str], ...] = (),
        cseq: int | None = None,
        call_id: str | None = None,
    ) -> bytes:
        aor = f"<sip:{user}@{domain}>"
        if contact is None:
            tparam = "ws" if self.transport in ("ws", "wss") else self.transport
            contact = f"<sip:{user}@{self.local_hostport};transport={tparam}>"
        hdrs: list[tuple[str, str]] = []
        if contact:
            hdrs.append(("Contact", contact))
        if expires is not None:
            hdrs.append(("Expires", str(expires)))
        hdrs.extend(headers)
        return self.build(
            "REGISTER", f"sip:{domain}", to=aor, headers=hdrs, cseq=cseq, call_id=call_id
        )

    async def aclose(self) -> None:
        if self.ws is not None:
            await self.ws.aclose()
        if self.sock is not None:
            self.sock.close()
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)


async def udp_at(server: tuple[str, int], port: int, host: str = "127.0.0.1") -> SipClient:
    """A UDP client on a chosen local port (the one a DNS record or a route names)."""
    client = SipClient("udp")
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((host, port))
    await sock.connect(server)
    client.sock = sock
    client.server = server
    client.local = (host, port)
    return client
