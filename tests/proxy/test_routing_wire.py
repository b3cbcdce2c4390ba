"""Routing by the RFCs through a running server: Contacts, Path, NAT detection, the guard.

A binding is reached at its Contact (RFC 3261 10.2: one party may register another's
address), over its Path when it has one (RFC 3327 5.4), and at its source address only
when NAT is detected. Every peer here is a real socket on loopback; the NAT test, whose
messages name a private address, runs in a loopback-only network namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient, new_branch, udp_at
from support.digest import authorization, challenges
from support.server import RunningServer, running_server
from support.ua import UA

from siptrio.sip import Request
from siptrio.sip.digest import ha1
from siptrio.store.sqlite import SqliteStore


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path, {"sip.domains": "example.com"}) as rs:
        yield rs


async def udp(server: RunningServer, host: str = "127.0.0.1") -> SipClient:
    return await SipClient.connect("udp", *server.addr("udp"), local_host=host)


class TcpPeer:
    """A listening TCP socket: the callee or edge proxy the server must connect to."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self.listener = listener
        self.port: int = listener.socket.getsockname()[1]

    @classmethod
    async def open(cls) -> TcpPeer:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        return cls(listener)

    async def accept(self, timeout: float = 5.0) -> SipClient:
        with trio.fail_after(timeout):
            stream = await self.listener.accept()
        client = SipClient("tcp")
        client.stream = stream
        client.local = ("127.0.0.1", self.port)
        return client


def third_party_register(
    registrar: SipClient, user: str, contact: str, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A REGISTER from one socket for a Contact somewhere else (RFC 3261 10.2)."""
    return registrar.register(user, contact=contact, headers=headers)


async def nothing_arrives(client: SipClient, within: float = 0.5) -> None:
    with trio.move_on_after(within):
        msg = await client.receive(timeout=within + 1)
        raise AssertionError(f"unexpected message at {client.local}: {msg.start_line}")


async def call_and_answer(caller: UA, callee: UA) -> tuple[Request, str]:
    """alice calls bob; bob answers 200; alice ACKs along the route set; BYE, 200."""
    invite, call_id = caller.invite("bob")
    await caller.client.send(invite)
    got = await callee.expect_request("INVITE")
    await callee.reply(got, 180, "Ringing")
    await callee.reply(got, 200, "OK")
    final = await caller.expect_response("INVITE", final=True)
    assert final.status == 200
    d = caller.uac_dialog(invite, final)
    await caller.client.send(caller.ack(d))
    await callee.expect_request("ACK")
    await caller.client.send(caller.in_dialog(d, "BYE"))
    bye = await callee.expect_request("BYE")
    await callee.reply(bye, 200, "OK")
    assert (await caller.expect_response("BYE")).status == 200
    return got, call_id


# --- the Contact ----------------------------------------------------------------------------


async def test_a_contact_registered_by_another_socket_gets_the_call_udp(
    server: RunningServer,
) -> None:
    registrar = await udp(server)
    callee = UA(await udp(server), "bob")
    r = await registrar.request(
        third_party_register(registrar, "bob", f"<sip:bob@{callee.client.local_hostport}>")
    )
    assert r.status == 200
    caller = UA(await udp(server), "alice")
    got, _ = await call_and_answer(caller, callee)
    assert got.uri_text == f"sip:bob@{callee.client.local_hostport}"
    await nothing_arrives(registrar)
    (b,) = server.server.location.bindings("sip:bob@example.com").values()
    assert not b.nat and b.source_port == registrar.local[1]


async def test_a_tcp_contact_on_another_port_is_reached_by_a_new_connection(
    server: RunningServer,
) -> None:
    listening = await TcpPeer.open()
    registrar = await SipClient.connect("tcp", *server.addr("tcp"))
    contact = f"<sip:bob@127.0.0.1:{listening.port};transport=tcp>"
    assert (await registrar.request(registrar.register("bob", contact=contact))).status == 200
    await registrar.aclose()  # the registering connection goes: the binding stays
    await trio.sleep(0.2)
    (b,) = server.server.location.bindings("sip:bob@example.com").values()
    assert b.flow_id is None
    caller = UA(await udp(server), "alice")
    invite, _ = caller.invite("bob")
    await caller.client.send(invite)
    callee = UA(await listening.accept(), "bob")
    got = await callee.expect_request("INVITE")
    assert got.uri_text == f"sip:bob@127.0.0.1:{listening.port};transport=tcp"
    await callee.reply(got, 486, "Busy Here")
    assert (await caller.expect_response("INVITE", final=True)).status == 486


async def test_the_simulated_client_reaches_a_third_party_contact(
    server: RunningServer,
) -> None:
    registrar = await udp(server)
    callee = UA(await udp(server), "bob")
    contact = f"<sip:bob@{callee.client.local_hostport}>"
    assert (await registrar.request(registrar.register("bob", contact=contact))).status == 200
    call = await server.server.simulator.start_call(to="bob", duration=0.2, answer_timeout=5)
    invite = await callee.expect_request("INVITE")
    await callee.reply(invite, 200, "OK", body="v=0\r\n")
    await callee.expect_request("ACK")
    bye = await callee.expect_request("BYE", timeout=3)
    await callee.reply(bye, 200, "OK")
    with trio.fail_after(3):
        await call.done.wait()
    assert call.answered and call.final_status == 200


async def test_a_contact_aimed_at_another_address_is_refused(server: RunningServer) -> None:
    registrar = await udp(server)
    r = await registrar.request(registrar.register("bob", contact="<sip:bob@127.0.0.2:5070>"))
    assert r.status == 403
    assert "127.0.0.2" in r.reason and "allowed_destinations" in r.reason
    assert not server.server.location.bindings("sip:bob@example.com")


async def test_an_allowed_contact_address_is_honoured(tmp_path: Path) -> None:
    overrides = {"sip.domains": "example.com", "proxy.allowed_destinations": "127.0.0.0/8"}
    async with running_server(tmp_path, overrides) as server:
        registrar = await udp(server)
        callee = UA(await udp(server, host="127.0.0.2"), "bob")
        contact = f"<sip:bob@{callee.client.local_hostport}>"
        assert (await registrar.request(registrar.register("bob", contact=contact))).status == 200
        caller = UA(await udp(server), "alice")
        await call_and_answer(caller, callee)


async def test_authenticated_contacts_are_honoured(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path / "location.sqlite")) as store:
        h = (ha1("bob", "example.com", "builder", a) for a in ("MD5", "SHA-256"))
        store.set_user("bob", "example.com", *h, 0.0)
    overrides = {"sip.domains": "example.com", "auth.enable": "true"}
    async with running_server(tmp_path, overrides) as server:
        c = await udp(server)
        contact = "<sip:bob@127.0.0.2:5070>"  # not where the REGISTER comes from
        first = await c.request(c.register("bob", contact=contact))
        assert first.status == 401
        auth = authorization(
            challenges(first.values("www-authenticate"))["MD5"],
            method="REGISTER",
            uri="sip:example.com",
            user="bob",
            password="builder",
            algorithm="MD5",
        )
        r = await c.request(c.register("bob", contact=contact, headers=(("Authorization", auth),)))
        assert r.status == 200
        (b,) = server.server.location.bindings("sip:bob@example.com").values()
        assert b.contact_uri == "sip:bob@127.0.0.2:5070" and not b.nat


# --- Path ------------------------------------------------------------------------------------


async def test_path_is_the_route_set_and_its_first_hop_the_next_hop_udp(
    server: RunningServer,
) -> None:
    registrar = await udp(server)
    edge = await udp(server)
    far = await udp(server)  # the Contact: only named in the Request-URI
    path = f"<sip:edge@{edge.local_hostport};lr>, <sip:core@127.0.0.1:9;lr>"
    r = await registrar.request(
        registrar.register(
            "bob",
            contact=f"<sip:bob@{far.local_hostport}>",
            headers=(("Path", path), ("Supported", "path")),
        )
    )
    assert r.status == 200 and [p.text for p in r.paths] == path.split(", ")
    caller = UA(await udp(server), "alice")
    invite, _ = caller.invite("bob")
    await caller.client.send(invite)
    got = await edge.receive()
    assert isinstance(got, Request) and got.method == "INVITE"
    assert got.uri_text == f"sip:bob@{far.local_hostport}"
    assert [r.text for r in got.routes] == path.split(", ")
    await nothing_arrives(far)
    await nothing_arrives(registrar)


async def test_path_over_tcp(server: RunningServer) -> None:
    edge = await TcpPeer.open()
    registrar = await SipClient.connect("tcp", *server.addr("tcp"))
    path = f"<sip:edge@127.0.0.1:{edge.port};transport=tcp;lr>"
    r = await registrar.request(
        registrar.register(
            "bob",
            contact="<sip:bob@127.0.0.1:9;transport=tcp>",
            headers=(("Path", path), ("Supported", "path")),
        )
    )
    assert r.status == 200
    caller = UA(await udp(server), "alice")
    invite, _ = caller.invite("bob")
    await caller.client.send(invite)
    hop = await edge.accept()
    got = await hop.receive()
    assert isinstance(got, Request) and got.method == "INVITE"
    assert [r.text for r in got.routes] == [path]
    assert got.uri_text == "sip:bob@127.0.0.1:9;transport=tcp"


# --- NAT ---------------------------------------------------------------------------------------


def raw_register(client: SipClient, user: str, via_host: str, contact: str) -> bytes:
    """A REGISTER whose Via and Contact name what the phone believes its address is."""
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host};branch={new_branch()};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@example.com>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:{user}@example.com>",
        f"Call-ID: {uuid.uuid4().hex}@phone",
        "CSeq: 1 REGISTER",
        f"Contact: {contact}",
        "Expires: 600",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.loopback_netns
async def test_nat_is_detected_and_a_natted_phone_reached_at_its_source(tmp_path: Path) -> None:
    overrides = {"sip.domains": "example.com", "admin.enable": "true", "admin.listen_port": "0"}
    async with running_server(tmp_path, overrides) as server:
        phone = await udp(server)  # behind NAT: it believes it is 192.168.1.10:5060
        r = await phone.request(
            raw_register(phone, "bob", "192.168.1.10:5060", "<sip:bob@192.168.1.10:5060>")
        )
        assert r.status == 200
        lan = await udp(server)
        third = await udp(server)  # registered for by `lan`, on the same host
        r = await lan.request(
            raw_register(lan, "carol", lan.local_hostport, f"<sip:carol@{third.local_hostport}>")
        )
        assert r.status == 200
        caller = UA(await udp(server), "alice")
        bob = UA(phone, "bob")
        invite, _ = caller.invite("bob")
        await caller.client.send(invite)
        got = await bob.expect_request("INVITE")
        assert got.uri_text == "sip:bob@192.168.1.10:5060"
        await bob.reply(got, 486, "Busy Here")
        assert (await caller.expect_response("INVITE", final=True)).status == 486
        carol = UA(third, "carol")
        invite, _ = caller.invite("carol")
        await caller.client.send(invite)
        got = await carol.expect_request("INVITE")
        await carol.reply(got, 486, "Busy Here")
        await nothing_arrives(lan)
        clients = await list_clients(server)
        by_aor = {c["aor"]: c for c in clients}
        assert by_aor["sip:bob@example.com"]["nat"] is True
        assert by_aor["sip:bob@example.com"]["received"] == phone.local_hostport
        assert by_aor["sip:carol@example.com"]["nat"] is False


async def list_clients(server: RunningServer) -> list[dict[str, object]]:
    import httpx

    port = server.server.ops.admin_port
    async with httpx.AsyncClient() as http:
        got = await http.get(f"http://127.0.0.1:{port}/listClients")
    data: list[dict[str, object]] = got.json()
    return data


# --- [routes] ------------------------------------------------------------------------------


async def test_each_gateway_gets_its_own_request_uri_on_failover(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"sip.domains": "example.com"}) as probe:
        first, second = await udp(probe), await udp(probe)
        ports = (first.local[1], second.local[1])
        await first.aclose()
        await second.aclose()
    overrides = {
        "sip.domains": "example.com",
        "routes.us": f"prefix +1 -> sip:127.0.0.1:{ports[0]}, sip:127.0.0.1:{ports[1]}",
    }
    async with running_server(tmp_path / "run", overrides) as server:
        gw1 = UA(await udp_at(server.addr("udp"), ports[0]), "gw1")
        gw2 = UA(await udp_at(server.addr("udp"), ports[1]), "gw2")
        alice = UA(await udp(server), "alice")
        invite, _ = alice.invite("+15551234567")
        await alice.client.send(invite)
        got = await gw1.expect_request("INVITE")
        assert got.uri_text == f"sip:+15551234567@127.0.0.1:{ports[0]}"
        await gw1.reply(got, 503, "Service Unavailable")
        got = await gw2.expect_request("INVITE")
        assert got.uri_text == f"sip:+15551234567@127.0.0.1:{ports[1]}"
        await gw2.reply(got, 200, "OK")
        assert (await alice.expect_response("INVITE", final=True)).status == 200


async def test_a_number_routed_to_a_trunk_needs_authentication(tmp_path: Path) -> None:
    """A call from outside to a number of our domain that goes out to a trunk is toll
    fraud waiting to happen: with [auth] on it is challenged like any call leaving."""
    with SqliteStore(str(tmp_path / "location.sqlite")) as store:
        h = (ha1("bob", "example.com", "builder", a) for a in ("MD5", "SHA-256"))
        store.set_user("bob", "example.com", *h, 0.0)
    overrides = {
        "sip.domains": "example.com",
        "auth.enable": "true",
        "routes.us": "prefix +1 -> sip:127.0.0.1:9",
    }
    async with running_server(tmp_path, overrides) as server:
        mallory = await udp(server)
        invite = mallory.build(
            "INVITE",
            "sip:+15551234567@example.com",
            to="<sip:+15551234567@example.com>",
            from_="<sip:mallory@evil.example>",
            headers=[("Contact", f"<sip:mallory@{mallory.local_hostport}>")],
        )
        assert (await mallory.request(invite)).status == 407
        # a call from outside to a registered user of ours is not challenged
        callee = UA(await udp(server), "bob")
        first = await callee.client.request(callee.client.register("bob"))
        auth = authorization(
            challenges(first.values("www-authenticate"))["MD5"],
            method="REGISTER",
            uri="sip:example.com",
            user="bob",
            password="builder",
            algorithm="MD5",
        )
        r = await callee.client.request(
            callee.client.register("bob", headers=(("Authorization", auth),))
        )
        assert r.status == 200
        call = mallory.build(
            "INVITE",
            "sip:bob@example.com",
            to="<sip:bob@example.com>",
            from_="<sip:mallory@evil.example>",
            headers=[("Contact", f"<sip:mallory@{mallory.local_hostport}>")],
        )
        await mallory.send(call)
        got = await callee.expect_request("INVITE")
        assert got.call_id


async def test_outbound_proxy_takes_other_domains_and_rules_come_first(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"sip.domains": "example.com"}) as probe:
        sockets = [await udp(probe) for _ in range(3)]
        ports = [s.local[1] for s in sockets]
        for s in sockets:
            await s.aclose()
    outbound, partner, voicemail = ports
    overrides = {
        "sip.domains": "example.com",
        "proxy.outbound_proxy": f"sip:127.0.0.1:{outbound}",
        "routes.partner": f"domain *.partner.test -> sip:127.0.0.1:{partner}",
        "routes.vm": f"unregistered -> sip:127.0.0.1:{voicemail}",
    }
    async with running_server(tmp_path / "run", overrides) as server:
        at = {port: UA(await udp_at(server.addr("udp"), port), str(port)) for port in ports}
        alice = UA(await udp(server), "alice")
        for uri, port in (
            ("sip:bob@elsewhere.test", outbound),  # no rule: the outbound proxy
            ("sip:carol@sbc.partner.test", partner),  # a rule before the outbound proxy
            ("sip:nobody@example.com", voicemail),  # ours, unregistered: the rule says so
        ):
            invite, _ = alice.invite("x", uri=uri)
            await alice.client.send(invite)
            got = await at[port].expect_request("INVITE")
            # another domain's Request-URI is sent as it is; ours takes the hop's host
            if uri.endswith("example.com"):
                assert got.uri_text == f"sip:nobody@127.0.0.1:{port}"
            else:
                assert got.uri_text == uri
            await at[port].reply(got, 486, "Busy Here")
            assert (await alice.expect_response("INVITE", final=True)).status == 486


async def test_an_unregistered_user_does_not_fall_through_to_other_rules(tmp_path: Path) -> None:
    overrides = {
        "sip.domains": "example.com",
        "routes.out": "nonlocal -> sip:127.0.0.1:9",
        "proxy.outbound_proxy": "sip:127.0.0.1:9",
    }
    async with running_server(tmp_path, overrides) as server:
        alice = UA(await udp(server), "alice")
        invite, _ = alice.invite("nobody")
        await alice.client.send(invite)
        assert (await alice.expect_response("INVITE", final=True)).status == 404
