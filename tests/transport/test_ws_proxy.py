"""siptrio behind a real reverse proxy: HAProxy (PROXY protocol v1/v2) and nginx (X-Forwarded-For).

Everything is on loopback, where Linux routes all of 127/8 to ``lo``: the proxy
connects to siptrio from its own address (127.0.0.2 for HAProxy, 127.0.0.3 for nginx,
the ``trusted_proxies``), and each client binds an address of its own (127.0.0.10 and
up), which is what siptrio must see as the client: in bindings, flows, caps, bans.
Loopback is exempt from per-address caps by default, so these tests narrow
``[security] rate_limit_exempt`` to one address, 127.0.0.250.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import wsproto
import wsproto.events as wse
from support.client import SipClient
from support.digest import authorization, challenges
from support.ports import free_port
from support.server import RunningServer, running_server

from siptrio.sip import Response, parse_message_untrusted

pytestmark = pytest.mark.skipif(
    not (shutil.which("haproxy") and shutil.which("nginx")), reason="needs haproxy and nginx"
)

HAPROXY_SOURCE = "127.0.0.2"
NGINX_SOURCE = "127.0.0.3"
EXEMPT = "127.0.0.250"


class Tab:
    """A browser tab's SIP-over-WebSocket connection from a chosen loopback address."""

    def __init__(self, stream: trio.SocketStream, local: str) -> None:
        self.stream = stream
        self.local = local
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.sip = SipClient("ws")  # builds SIP.js-shaped requests
        self.texts: list[str] = []
        self.refused: int | None = None

    @classmethod
    async def open(
        cls, addr: tuple[str, int], local: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> Tab:
        stream = await trio.open_tcp_stream(*addr, local_address=local)
        self = cls(stream, local)
        await stream.send_all(
            self.conn.send(
                wse.Request(
                    host="localhost",
                    target="/",
                    subprotocols=["sip"],
                    extra_headers=[(b"Origin", b"http://localhost:8088"), *headers],
                )
            )
        )
        with trio.fail_after(10):
            while True:
                for event in await self._events():
                    if isinstance(event, wse.AcceptConnection):
                        return self
                    if isinstance(event, wse.RejectConnection):
                        self.refused = event.status_code
                        return self

    async def _events(self) -> list[wse.Event]:
        data = await self.stream.receive_some(65536)
        self.conn.receive_data(data or None)
        return list(self.conn.events())

    async def register(self, user: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        contact = f"<sip:{user}@{self.sip.invalid_host};transport=ws>"
        msg = self.sip.register(user, contact=contact, expires=600, headers=headers)
        await self.stream.send_all(self.conn.send(wse.TextMessage(data=msg.decode())))
        with trio.fail_after(10):
            while True:
                for event in await self._events():
                    if isinstance(event, wse.TextMessage):
                        r = parse_message_untrusted(event.data.encode())
                        assert isinstance(r, Response)
                        return r

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"proxy not listening on {port}")


@contextmanager
def haproxy(tmp_path: Path, ws_port: int, send_proxy: str) -> Iterator[int]:
    """HAProxy in TCP mode, passing the client on with ``send-proxy`` or ``send-proxy-v2``."""
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"""global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend ws
    bind 127.0.0.1:{port}
    default_backend siptrio
backend siptrio
    server s1 127.0.0.1:{ws_port} {send_proxy} source {HAPROXY_SOURCE}
"""
    )
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=out, stderr=out)
    try:
        _wait_port(port, proc, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def nginx(tmp_path: Path, ws_port: int) -> Iterator[int]:
    """nginx proxying the upgrade as README.md shows, plus ``proxy_bind`` for the test."""
    port = free_port()
    root = tmp_path / "nginx"
    root.mkdir()
    temps = "\n".join(
        f"    {name}_temp_path {root / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(
        f"""daemon off;
master_process off;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{}}
http {{
    access_log off;
{temps}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{ws_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_bind {NGINX_SOURCE};
        }}
    }}
}}
"""
    )
    log = root / "stderr.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["nginx", "-p", str(root), "-c", str(root / "nginx.conf")], stdout=out, stderr=out
        )
    try:
        _wait_port(port, proc, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


OVERRIDES = {
    "sip_websocket.enable": "true",
    "sip_websocket.trusted_proxies": f"{HAPROXY_SOURCE}/32, {NGINX_SOURCE}/32",
    "sip_websocket.max_connections_per_ip": "60",
    "security.rate_limit_exempt": f"{EXEMPT}/32",
    "security.rate_limit": "1000",
    "security.rate_burst": "1000",
}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path, OVERRIDES) as rs:
        yield rs


def sources(server: RunningServer) -> dict[str, str]:
    """The source address of each binding, by AOR user."""
    return {b.aor.split(":")[1].split("@")[0]: b.source_host for b in server.server.location}


async def open_and_register(
    addr: tuple[str, int], clients: list[tuple[str, str]], tabs: list[Tab]
) -> None:
    """Open a tab per (local address, user) at once, each REGISTERing its user."""
    limiter = trio.CapacityLimiter(50)

    async def one(local: str, user: str) -> None:
        async with limiter:
            tab = await Tab.open(addr, local)
            tabs.append(tab)
            assert tab.refused is None, f"{user} from {local} refused {tab.refused}"
            r = await tab.register(user)
            assert r.status == 200
            # received (RFC 3581) names the client, not the proxy
            assert f"received={local}" in r.values("via")[0]

    async with trio.open_nursery() as n:
        for local, user in clients:
            n.start_soon(one, local, user)


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
async def test_200_clients_through_haproxy_each_seen_as_itself(
    server: RunningServer, tmp_path: Path, send_proxy: str
) -> None:
    clients = [(f"127.0.0.{10 + i % 4}", f"hp{i}") for i in range(200)]
    tabs: list[Tab] = []
    with haproxy(tmp_path, server.addr("ws")[1], send_proxy) as port:
        try:
            await open_and_register(("127.0.0.1", port), clients, tabs)
            # all 200 open at once, 50 per client address: 200 > the cap of 60 per address
            # that the proxy's own address would hit
            assert len(server.server.flows) == 200
            seen = sources(server)
            assert all(seen[user] == local for local, user in clients)
            remotes = {f.remote for f in server.server.flows.values()}
            assert {host for host, _ in remotes} == {f"127.0.0.{10 + i}" for i in range(4)}
            # the PROXY header names the client's port too: every flow has its own
            assert len(remotes) == 200
            assert server.counters()["ws_handshake_rejected.per_ip"] == 0
        finally:
            for tab in tabs:
                await tab.aclose()


async def test_200_clients_through_nginx_each_seen_as_itself(
    server: RunningServer, tmp_path: Path
) -> None:
    clients = [(f"127.0.0.{20 + i % 4}", f"ng{i}") for i in range(200)]
    tabs: list[Tab] = []
    with nginx(tmp_path, server.addr("ws")[1]) as port:
        try:
            await open_and_register(("127.0.0.1", port), clients, tabs)
            assert len(server.server.flows) == 200
            seen = sources(server)
            assert all(seen[user] == local for local, user in clients)
        finally:
            for tab in tabs:
                await tab.aclose()


async def test_per_ip_cap_applies_to_the_forwarded_address(
    tmp_path: Path,
) -> None:
    overrides = {
        "sip_websocket.enable": "true",
        "sip_websocket.trusted_proxies": f"{HAPROXY_SOURCE}/32, {NGINX_SOURCE}/32",
        "sip_websocket.max_connections_per_ip": "3",
        "security.rate_limit_exempt": f"{EXEMPT}/32",
    }
    async with running_server(tmp_path, overrides) as server:
        tabs: list[Tab] = []
        ws_port = server.addr("ws")[1]
        with haproxy(tmp_path, ws_port, "send-proxy-v2") as hp, nginx(tmp_path, ws_port) as ng:
            try:
                for port in (hp, ng):  # 127.0.0.30 reaches its cap of 3 through either proxy
                    tabs.append(await Tab.open(("127.0.0.1", port), "127.0.0.30"))
                tabs.append(await Tab.open(("127.0.0.1", hp), "127.0.0.30"))
                assert all(t.refused is None for t in tabs)
                for port in (hp, ng):
                    over = await Tab.open(("127.0.0.1", port), "127.0.0.30")
                    assert over.refused == 503
                    await over.aclose()
                assert server.counters()["ws_handshake_rejected.per_ip"] == 2
                # other clients behind the same proxies are not held back by it ...
                other = await Tab.open(("127.0.0.1", ng), "127.0.0.31")
                tabs.append(other)
                assert other.refused is None and (await other.register("other")).status == 200
                # ... and an exempt network is not capped at all
                for _ in range(4):
                    tab = await Tab.open(("127.0.0.1", hp), EXEMPT)
                    tabs.append(tab)
                    assert tab.refused is None
            finally:
                for tab in tabs:
                    await tab.aclose()


async def test_spoofed_forwarding_from_an_untrusted_address_is_ignored(
    server: RunningServer, tmp_path: Path
) -> None:
    addr = server.addr("ws")
    # straight to siptrio, not through a trusted proxy: the header is a lie
    direct = await Tab.open(addr, "127.0.0.40", ((b"X-Forwarded-For", b"127.0.0.99"),))
    assert (await direct.register("liar")).status == 200
    forwarded = await Tab.open(addr, "127.0.0.41", ((b"Forwarded", b"for=127.0.0.98"),))
    assert (await forwarded.register("liar2")).status == 200
    with nginx(tmp_path, addr[1]) as port:
        # through nginx, which appends the real address: the claim before it is not believed
        through = await Tab.open(
            ("127.0.0.1", port), "127.0.0.42", ((b"X-Forwarded-For", b"127.0.0.97"),)
        )
        assert (await through.register("liar3")).status == 200
        seen = sources(server)
        assert seen["liar"] == "127.0.0.40"
        assert seen["liar2"] == "127.0.0.41"
        assert seen["liar3"] == "127.0.0.42"
        for tab in (direct, forwarded, through):
            await tab.aclose()
    # a PROXY header from an untrusted address is not HTTP: refused, never believed
    stream = await trio.open_tcp_stream(*addr, local_address="127.0.0.43")
    await stream.send_all(b"PROXY TCP4 127.0.0.96 127.0.0.1 5000 8080\r\n")
    with trio.fail_after(5):
        answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    await stream.aclose()


async def test_a_banned_client_behind_the_proxy_is_refused_alone(tmp_path: Path) -> None:
    """Wrong passwords sent through HAProxy ban the client behind it, not HAProxy."""
    overrides = {**OVERRIDES, "auth.enable": "true", "security.ban_after": "3"}
    async with running_server(tmp_path, overrides) as server:
        with haproxy(tmp_path, server.addr("ws")[1], "send-proxy-v2") as port:
            guesser = await Tab.open(("127.0.0.1", port), "127.0.0.50")
            for _ in range(3):
                first = await guesser.register("alice")
                assert first.status == 401
                answer = authorization(
                    challenges(first.values("www-authenticate"))["MD5"],
                    method="REGISTER",
                    uri="sip:example.com",
                    user="alice",
                    password="guess",
                )
                wrong = await guesser.register("alice", (("Authorization", answer),))
                assert wrong.status == 401
            await guesser.aclose()
            assert server.counters()["auth_bans"] == 1
            banned = await Tab.open(("127.0.0.1", port), "127.0.0.50")
            assert banned.refused == 403
            fine = await Tab.open(("127.0.0.1", port), "127.0.0.51")
            assert fine.refused is None
            assert (await fine.register("bob")).status == 401  # challenged, not refused
            assert server.counters()["ws_handshake_rejected.banned"] == 1
            await banned.aclose()
            await fine.aclose()
