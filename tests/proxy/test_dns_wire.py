"""RFC 3263 through a running server, against a real DNS server (dnsmasq) on loopback.

Every name in the zone ``siptrio.test`` points at 127.0.0.1 ports where the test's own
sockets listen; dnsmasq answers nothing else and forwards nothing.
"""

from __future__ import annotations

from pathlib import Path

import trio
from support.client import SipClient, udp_at
from support.dnsmasq import Dns, dnsmasq
from support.ports import free_port
from support.server import RunningServer, running_server
from support.ua import UA

from siptrio.sip import Request

ZONE = "siptrio.test"


async def udp_peer(server: RunningServer) -> SipClient:
    return await SipClient.connect("udp", *server.addr("udp"))


def port_of(client: SipClient) -> int:
    return int(client.local[1])


def settings(dns: Dns, **more: str) -> dict[str, str]:
    return {"sip.domains": "example.com", "dns.servers": dns.server, **more}


async def caller(server: RunningServer) -> UA:
    return UA(await udp_peer(server), "alice")


async def test_naptr_then_srv_then_a_reaches_the_gateway(tmp_path: Path) -> None:
    gw_port = free_port()
    records = [
        f"--naptr-record=svc.{ZONE},10,10,s,SIP+D2U,,_sip._udp.svc.{ZONE}",
        f"--srv-host=_sip._udp.svc.{ZONE},gw1.{ZONE},{gw_port},10,0",
        f"--host-record=gw1.{ZONE},127.0.0.1",
    ]
    with dnsmasq(tmp_path, zone=ZONE, records=records) as dns:
        rules = {"routes.trunk": f"domain svc.{ZONE} -> sip:svc.{ZONE}"}
        async with running_server(tmp_path, settings(dns, **rules)) as server:
            gw = UA(await udp_peer_at(server, gw_port), "gw")
            alice = await caller(server)
            invite, _ = alice.invite("+15551234567", uri=f"sip:+15551234567@svc.{ZONE}")
            await alice.client.send(invite)
            got = await gw.expect_request("INVITE")
            assert got.uri_text == f"sip:+15551234567@svc.{ZONE}"
            await gw.reply(got, 200, "OK")
            assert (await alice.expect_response("INVITE", final=True)).status == 200
        assert dns.queries(f"svc.{ZONE}", "NAPTR") == 1
        assert dns.queries(f"_sip._udp.svc.{ZONE}", "SRV") == 1
        assert dns.queries(f"gw1.{ZONE}", "A") == 1


async def udp_peer_at(server: RunningServer, port: int) -> SipClient:
    """A UDP peer on a chosen port (the one the DNS names), talking to the server."""
    return await udp_at(server.addr("udp"), port)


async def test_a_503_moves_to_the_next_srv_target(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    records = [
        f"--srv-host=_sip._udp.pool.{ZONE},a.{ZONE},{first},10,0",
        f"--srv-host=_sip._udp.pool.{ZONE},b.{ZONE},{second},20,0",
        f"--host-record=a.{ZONE},127.0.0.1",
        f"--host-record=b.{ZONE},127.0.0.1",
    ]
    with dnsmasq(tmp_path, zone=ZONE, records=records) as dns:
        overrides = settings(dns, **{"routes.pool": f"prefix +1 -> sip:pool.{ZONE}"})
        async with running_server(tmp_path, overrides) as server:
            busy = UA(await udp_peer_at(server, first), "a")
            good = UA(await udp_peer_at(server, second), "b")
            alice = await caller(server)
            invite, call_id = alice.invite("+15551234567")
            await alice.client.send(invite)
            got = await busy.expect_request("INVITE")
            await busy.reply(got, 503, "Service Unavailable")
            ack = await busy.expect_request("ACK")  # the hop-by-hop ACK of its 503
            assert ack.call_id == call_id
            got = await good.expect_request("INVITE")
            assert got.call_id == call_id
            assert got.uri_text == f"sip:+15551234567@pool.{ZONE}"  # the gateway's domain
            await good.reply(got, 180, "Ringing")
            await good.reply(got, 200, "OK")
            final = await alice.expect_response("INVITE", final=True)
            assert final.status == 200
            statuses = [m.status for m in alice.inbox if not isinstance(m, Request)]
            assert 503 not in statuses


async def test_a_target_not_listening_over_tcp_is_skipped(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    open_port = listener.socket.getsockname()[1]
    records = [
        f"--srv-host=_sip._tcp.tcp.{ZONE},a.{ZONE},{closed},10,0",
        f"--srv-host=_sip._tcp.tcp.{ZONE},b.{ZONE},{open_port},20,0",
        f"--host-record=a.{ZONE},127.0.0.1",
        f"--host-record=b.{ZONE},127.0.0.1",
    ]
    with dnsmasq(tmp_path, zone=ZONE, records=records) as dns:
        overrides = settings(dns, **{"proxy.allowed_destinations": "127.0.0.0/8"})
        async with running_server(tmp_path, overrides) as server:
            alice = await caller(server)
            invite, call_id = alice.invite("bob", uri=f"sip:bob@tcp.{ZONE};transport=tcp")
            await alice.client.send(invite)
            with trio.fail_after(10):
                stream = await listener.accept()
            callee = SipClient("tcp")
            callee.stream = stream
            got = await callee.receive()
            assert isinstance(got, Request) and got.method == "INVITE"
            assert got.call_id == call_id
            await UA(callee, "bob").reply(got, 486, "Busy Here")
            assert (await alice.expect_response("INVITE", final=True)).status == 486
    await listener.aclose()


async def test_answers_are_cached_for_their_ttl_then_asked_again(tmp_path: Path) -> None:
    gw_port = free_port()
    records = [f"--host-record=gw.{ZONE},127.0.0.1"]
    with dnsmasq(tmp_path, zone=ZONE, records=records, ttl=2) as dns:
        rules = {"routes.gw": f"prefix +44 -> sip:gw.{ZONE}:{gw_port}"}
        async with running_server(tmp_path, settings(dns, **rules)) as server:
            gw = UA(await udp_peer_at(server, gw_port), "gw")
            alice = await caller(server)

            async def call() -> None:
                invite, _ = alice.invite("+4420123")
                await alice.client.send(invite)
                got = await gw.expect_request("INVITE")
                await gw.reply(got, 486, "Busy Here")
                assert (await alice.expect_response("INVITE", final=True)).status == 486

            await call()
            await call()
            assert dns.queries(f"gw.{ZONE}", "A") == 1  # the second from the cache
            await trio.sleep(2.5)  # the TTL is over
            await call()
            assert dns.queries(f"gw.{ZONE}", "A") == 2


async def test_an_unknown_name_gets_404_saying_so(tmp_path: Path) -> None:
    with dnsmasq(tmp_path, zone=ZONE, records=[]) as dns:
        overrides = settings(dns, **{"routes.gw": f"prefix +1 -> sip:nowhere.{ZONE}"})
        async with running_server(tmp_path, overrides) as server:
            alice = await caller(server)
            invite, _ = alice.invite("+15551234567")
            await alice.client.send(invite)
            final = await alice.expect_response("INVITE", final=True)
            assert final.status == 404
            assert f"nowhere.{ZONE}" in final.reason and "DNS" in final.reason


async def test_a_name_outside_the_allowed_destinations_is_not_relayed(tmp_path: Path) -> None:
    records = [f"--host-record=far.{ZONE},127.0.0.9"]
    with dnsmasq(tmp_path, zone=ZONE, records=records) as dns:
        overrides = settings(dns, **{"proxy.allowed_destinations": "127.0.0.1/32"})
        async with running_server(tmp_path, overrides) as server:
            alice = await caller(server)
            invite, _ = alice.invite("bob", uri=f"sip:bob@far.{ZONE}")
            await alice.client.send(invite)
            final = await alice.expect_response("INVITE", final=True)
            assert final.status == 403 and "127.0.0.9" in final.reason
