"""REGISTER over real UDP, TCP and TLS sockets on 127.0.0.1 against an in-process server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.server import RunningServer, running_server

from siptrio.app.certs import write_dev_certs

TRANSPORTS = ["udp", "tcp", "tls"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    certs = write_dev_certs(tmp_path / "certs")
    overrides = {
        "sip_tls.enable": "true",
        "sip_tls.cert_file": str(certs.cert),
        "sip_tls.key_file": str(certs.key),
        "registrar.min_expires": "60",
        "registrar.max_expires": "7200",
    }
    async with running_server(tmp_path, overrides) as rs:
        rs.ca_file = str(certs.ca)  # type: ignore[attr-defined]
        yield rs


async def connect(server: RunningServer, transport: str) -> SipClient:
    return await SipClient.connect(
        transport, *server.addr(transport), ca_file=getattr(server, "ca_file", None)
    )


def contacts(resp) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(resp.values("contact"))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_add_refresh_fetch_remove(server: RunningServer, transport: str) -> None:
    c = await connect(server, transport)
    mine = f"<sip:alice@{c.local_hostport};transport={transport}>"
    r = await c.request(c.register("alice", expires=600))
    assert r.status == 200
    assert contacts(r) == [f"{mine};expires=600"]
    assert r.to.tag and r.call_id == c.call_id and r.cseq.number == 1

    r = await c.request(c.register("alice", expires=1200))
    assert r.status == 200 and contacts(r) == [f"{mine};expires=1200"]

    # a second device of the same user over UDP
    other = await connect(server, "udp")
    r = await other.request(other.register("alice", expires=600))
    assert len(r.values("contact")) == 2

    # fetch: REGISTER without Contact lists both, changes nothing
    r = await c.request(c.register("alice", contact="", expires=None))
    assert r.status == 200 and len(r.values("contact")) == 2

    r = await c.request(c.register("alice", expires=0))
    assert r.status == 200 and r.values("contact") == [
        f"<sip:alice@{other.local_hostport};transport=udp>;expires=600"
    ]
    await c.aclose()
    await other.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_star_removes_all(server: RunningServer, transport: str) -> None:
    c = await connect(server, transport)
    for n in range(3):
        r = await c.request(c.register("bob", contact=f"<sip:bob{n}@{c.local_hostport}>"))
        assert r.status == 200
    assert len(r.values("contact")) == 3
    r = await c.request(c.register("bob", contact="*", expires=0))
    assert r.status == 200 and r.values("contact") == []
    r = await c.request(c.register("bob", contact="", expires=None))
    assert r.values("contact") == []
    await c.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_interval_too_brief(server: RunningServer, transport: str) -> None:
    c = await connect(server, transport)
    r = await c.request(c.register("carol", expires=10))
    assert r.status == 423 and r.first("min-expires") == "60"
    r = await c.request(c.register("carol", expires=99999))
    assert r.status == 200 and r.values("contact")[0].endswith(";expires=7200")
    await c.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_out_of_order_cseq(server: RunningServer, transport: str) -> None:
    c = await connect(server, transport)
    r = await c.request(c.register("dave", cseq=10))
    assert r.status == 200
    r = await c.request(c.register("dave", cseq=9))
    assert r.status == 400 and "CSeq" in r.reason
    r = await c.request(c.register("dave", cseq=10))
    assert r.status == 400
    r = await c.request(c.register("dave", cseq=11, expires=0))
    assert r.status == 200 and r.values("contact") == []
    await c.aclose()


async def test_expiry_removes_binding(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"registrar.min_expires": "1"}) as server:
        c = await connect(server, "udp")
        r = await c.request(c.register("erin", expires=1))
        assert r.status == 200 and r.values("contact")[0].endswith(";expires=1")
        await trio.sleep(2.5)  # the housekeeping tick purges once a second
        assert server.server.location.lookup("sip:erin@example.com", 0) == []
        assert server.server.store is not None
        rows = await trio.to_thread.run_sync(server.server.store.all)
        assert [b for b in rows if b.aor == "sip:erin@example.com"] == []
        r = await c.request(c.register("erin", contact="", expires=None))
        assert r.values("contact") == []
        await c.aclose()


async def test_udp_retransmission_gets_the_same_answer(server: RunningServer) -> None:
    c = await connect(server, "udp")
    msg = c.register("frank", expires=600)
    first = await c.request(msg)
    second = await c.request(msg)  # same branch, same CSeq: a retransmission
    assert first.status == second.status == 200
    assert first.serialise() == second.serialise()
    await c.aclose()


async def test_tcp_binding_removed_when_connection_closes(server: RunningServer) -> None:
    c = await connect(server, "tcp")
    assert (await c.request(c.register("gina"))).status == 200
    await c.aclose()
    with trio.fail_after(5):
        while server.server.location.lookup("sip:gina@example.com", 0):
            await trio.sleep(0.02)


async def test_ipv6_udp_and_tcp(tmp_path: Path) -> None:
    try:
        s = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
        await s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with running_server(tmp_path, {"sip.listen_addr": "::1, 127.0.0.1"}) as server:
        for transport in ("udp", "tcp"):
            c = await SipClient.connect(transport, *server.addr(transport, "::1"))
            r = await c.request(c.register("v6user", domain="[::1]"))
            assert r.status == 200, r.reason
            via = r.vias[0]
            assert via.host.startswith("[") and via.rport == str(c.local[1])
            await c.aclose()


async def test_keepalive_crlf_answered_on_tcp_and_tls(server: RunningServer) -> None:
    for transport in ("tcp", "tls"):
        c = await connect(server, transport)
        await c.send(b"\r\n\r\n")
        assert await c.receive_raw() == b"\r\n"
        # the connection still carries SIP afterwards
        assert (await c.request(c.register("henry"))).status == 200
        await c.aclose()


async def test_tls_client_without_the_ca_fails(server: RunningServer) -> None:
    host, port = server.addr("tls")
    with pytest.raises(trio.BrokenResourceError):
        await SipClient.connect("tls", host, port, ca_file=None)
    # and the server keeps serving
    c = await connect(server, "tls")
    assert (await c.request(c.register("ivy"))).status == 200
    await c.aclose()


async def test_idle_stream_without_binding_is_closed(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"sip.idle_timeout": "0.5"}) as server:
        idle = await connect(server, "tcp")
        registered = await connect(server, "tcp")
        assert (await registered.request(registered.register("jack"))).status == 200
        await idle.expect_closed(timeout=3)
        # the flow with a binding stays open past the idle timeout
        await trio.sleep(1.0)
        r = await registered.request(registered.register("jack", contact="", expires=None))
        assert r.status == 200 and len(r.values("contact")) == 1
        await registered.aclose()
