"""A thousand browsers at once: SIP over WebSocket against a real siptrio process.

Each connection is a lean client (wsproto over a Trio socket stream, no reader task)
shaped like SIP.js 0.21: ``Sec-WebSocket-Protocol: sip``, a random ``.invalid`` host
in Via and Contact, ``Contact: <sip:user@host.invalid;transport=ws>;expires=600``.
All 1,000 stay open together while every binding is checked; once they close, the
bindings must be gone (a ``.invalid`` Contact is reachable only over its own flow).
"""

from __future__ import annotations

import resource
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import wsproto
import wsproto.events as wse
from support.server import ServerProcess

from siptrio.sip import Response, parse_message_untrusted

pytestmark = pytest.mark.slow

CONNECTIONS = 1_000
OPENING_AT_ONCE = 100  # handshakes in flight together; all connections still end up open at once
DOMAIN = "example.com"
FDS_NEEDED = CONNECTIONS + 200  # this process; the server child needs as many again


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server child inherits it


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    raise_fd_limit(FDS_NEEDED)
    sets = {
        "sip.listen_addr": "127.0.0.1",
        "sip.udp_port": "0",
        "sip.tcp_port": "0",
        "sip_websocket.enable": "true",
        "sip_websocket.listen_port": "0",
        "sip_websocket.max_connections_per_ip": "100000",
        "sip_websocket.max_connections": "100000",
        "admin.enable": "false",
        "control.enable": "false",
        "registrar.database": str(tmp_path / "location.sqlite"),
    }
    args = ["serve"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    proc = ServerProcess(args, log_path=tmp_path / "siptrio.log")
    try:
        proc.wait_ready(expect=3)  # udp, tcp, ws
        yield proc
    finally:
        proc.stop()
    assert proc.proc.returncode == 0, proc.output()


class LeanWs:
    """One browser-shaped SIP-over-WebSocket connection; messages are read on demand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.messages: deque[str] = deque()
        self._text: list[str] = []
        self.closed = False

    @classmethod
    async def open(cls, addr: tuple[str, int]) -> LeanWs:
        self = cls(await trio.open_tcp_stream(*addr))
        try:
            await self.stream.send_all(
                self.conn.send(
                    wse.Request(
                        host=f"{addr[0]}:{addr[1]}",
                        target="/",
                        subprotocols=["sip"],
                        extra_headers=[(b"Origin", b"http://localhost:8088")],
                    )
                )
            )
            while True:
                for event in await self._receive_events():
                    if isinstance(event, wse.AcceptConnection):
                        assert event.subprotocol == "sip"
                        return self
                    if isinstance(event, wse.RejectConnection):
                        raise AssertionError(f"handshake refused: {event.status_code}")
        except BaseException:
            await trio.aclose_forcefully(self.stream)
            raise

    async def _receive_events(self) -> list[wse.Event]:
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            raise EOFError("server closed the connection")
        self.conn.receive_data(data)
        events = list(self.conn.events())
        for event in events:
            match event:
                case wse.TextMessage():
                    self._text.append(event.data)
                    if event.message_finished:
                        self.messages.append("".join(self._text))
                        self._text.clear()
                case wse.BytesMessage():
                    self.messages.append(bytes(event.data).decode())
                case wse.Ping():
                    await self.stream.send_all(self.conn.send(event.response()))
                case wse.CloseConnection():
                    self.closed = True
        return events

    async def request(self, text: str, timeout: float = 10.0) -> Response:
        await self.stream.send_all(self.conn.send(wse.TextMessage(data=text)))
        with trio.fail_after(timeout):
            while True:
                while self.messages:
                    msg = parse_message_untrusted(self.messages.popleft().encode())
                    if isinstance(msg, Response) and msg.status >= 200:
                        return msg
                await self._receive_events()

    async def aclose(self) -> None:
        """A clean close: our Close frame, the server's answer (or a second), then FIN."""
        try:
            await self.stream.send_all(self.conn.send(wse.CloseConnection(code=1000)))
            with trio.move_on_after(1):
                while not self.closed:
                    await self._receive_events()
        except (trio.BrokenResourceError, EOFError, wsproto.utilities.LocalProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)


@dataclass
class Browser:
    """What SIP.js 0.21 puts in a REGISTER, one user per connection."""

    user: str
    ws: LeanWs
    call_id: str
    from_tag: str
    cseq: int = 0

    @property
    def contact_uri(self) -> str:
        return f"<sip:{self.user}@{self.ws.host};transport=ws>"

    def register(self, *, with_contact: bool = True, user: str | None = None) -> str:
        """A REGISTER for ``user`` (default: our own), or a fetch without Contact."""
        self.cseq += 1
        aor = f"sip:{user or self.user}@{DOMAIN}"
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/WS {self.ws.host};branch=z9hG4bK{uuid.uuid4().hex[:16]}",
            "Max-Forwards: 70",
            f"To: <{aor}>",
            f"From: <{aor}>;tag={self.from_tag}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
        ]
        if with_contact:
            lines.append(f"Contact: {self.contact_uri};expires=600")
        lines += [
            "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
            "Supported: outbound",
            "User-Agent: SIP.js/0.21.2",
            "Content-Length: 0",
        ]
        return "\r\n".join(lines) + "\r\n\r\n"


def contact_expires(values: list[str], uri: str) -> list[int]:
    """The ``expires`` of each Contact in ``values`` whose URI is exactly ``uri``."""
    found = []
    for value in values:
        if value.startswith(uri + ";"):
            params = dict(p.partition("=")[::2] for p in value[len(uri) + 1 :].split(";"))
            found.append(int(params["expires"]))
    return found


async def open_browser(addr: tuple[str, int], user: str) -> Browser:
    ws = await LeanWs.open(addr)
    return Browser(user=user, ws=ws, call_id=f"{uuid.uuid4().hex}", from_tag=uuid.uuid4().hex[:10])


async def test_thousand_websocket_flows_register_and_unregister_on_close(
    server: ServerProcess,
) -> None:
    addr = server.listeners["ws"]
    run = uuid.uuid4().hex[:6]
    users = [f"ws{run}u{i:04d}" for i in range(CONNECTIONS)]
    browsers: list[Browser] = []
    failures: list[str] = []
    opening = trio.CapacityLimiter(OPENING_AT_ONCE)
    started = trio.current_time()

    async def connect_and_register(user: str) -> None:
        async with opening:
            try:
                b = await open_browser(addr, user)
            except (OSError, EOFError, AssertionError) as e:
                failures.append(f"{user}: handshake failed: {e!r}")
                return
            browsers.append(b)
            r = await b.ws.request(b.register())
        if r.status != 200:
            failures.append(f"{user}: {r.status} {r.reason}")
        elif contact_expires(r.values("contact"), b.contact_uri) != [600]:
            failures.append(f"{user}: own Contact not echoed: {r.values('contact')}")

    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(connect_and_register, user)
    registered_in = trio.current_time() - started
    assert not failures, failures[:10]
    assert len(browsers) == CONNECTIONS
    assert all(not b.ws.closed for b in browsers)

    # all 1,000 open at once: every one fetches its own AOR and finds exactly its binding
    missing: list[str] = []

    async def fetch_own(b: Browser) -> None:
        async with opening:
            r = await b.ws.request(b.register(with_contact=False))
        expires = contact_expires(r.values("contact"), b.contact_uri)
        if r.status != 200 or len(r.values("contact")) != 1 or len(expires) != 1:
            missing.append(f"{b.user}: {r.status} {r.values('contact')}")
        elif not 0 < expires[0] <= 600:
            missing.append(f"{b.user}: expires {expires[0]}")

    async with trio.open_nursery() as nursery:
        for b in browsers:
            nursery.start_soon(fetch_own, b)
    assert not missing, missing[:10]

    # and another browser sees them too
    watcher = await open_browser(addr, f"ws{run}watcher")
    for b in browsers[:: CONNECTIONS // 50]:
        r = await watcher.ws.request(watcher.register(with_contact=False, user=b.user))
        assert r.status == 200 and len(contact_expires(r.values("contact"), b.contact_uri)) == 1

    # close all at once; the server must drop every binding with its flow
    async with trio.open_nursery() as nursery:
        for b in browsers:
            nursery.start_soon(b.ws.aclose)
    still_bound = list(browsers)
    with trio.fail_after(15):
        while still_bound:
            left = []
            for b in still_bound:
                r = await watcher.ws.request(watcher.register(with_contact=False, user=b.user))
                assert r.status == 200
                if r.values("contact"):
                    left.append(b)
            still_bound = left
            if still_bound:
                await trio.sleep(0.2)
    await watcher.ws.aclose()
    elapsed = trio.current_time() - started
    assert elapsed < 60, f"took {elapsed:.1f} s ({registered_in:.1f} s to register)"
