"""The routing module, sans-IO: RFC 3263 location, the DNS cache, NAT, [routes] rules."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from support.peers import TCP, UDP

from siptrio.core.events import Resolve
from siptrio.core.routing import (
    Answer,
    Candidate,
    LocateError,
    MatchKind,
    NaptrRecord,
    NatMode,
    QType,
    Resolver,
    ResolverConfig,
    SrvRecord,
    ViaFacts,
    classify,
    parse_rule,
)
from siptrio.core.routing.rfc3263 import locate, order_srv
from siptrio.core.types import Clock, Peer, Transport
from siptrio.sip.uri import SipUri, parse_uri_untrusted

ALL = (Transport.UDP, Transport.TCP, Transport.TLS)
Zone = dict[tuple[str, QType], Answer]


def uri(text: str) -> SipUri:
    u = parse_uri_untrusted(text)
    assert isinstance(u, SipUri)
    return u


def run(text: str, zone: Zone, *, supported: tuple[Transport, ...] = ALL, ipv6: bool = False):  # type: ignore[no-untyped-def]
    """Drive the procedure with a dictionary for a DNS; returns (candidates, questions)."""
    asked: list[tuple[str, QType]] = []
    steps = locate(uri(text), supported=supported, ipv6=ipv6, rng=random.Random(1))
    answer = None
    while True:
        try:
            q = steps.send(answer)  # type: ignore[arg-type]
        except StopIteration as stop:
            return stop.value, asked
        asked.append((q.name, q.qtype))
        answer = zone.get((q.name, q.qtype), Answer(error="nxdomain"))


def a(*addresses: str, ttl: float = 60) -> Answer:
    return Answer(records=addresses, ttl=ttl)


def srv(*records: tuple[int, int, int, str]) -> Answer:
    return Answer(records=tuple(SrvRecord(p, w, port, t) for p, w, port, t in records), ttl=60)


def naptr(*records: tuple[int, int, str, str]) -> Answer:
    return Answer(
        records=tuple(NaptrRecord(o, p, "s", svc, "", repl) for o, p, svc, repl in records),
        ttl=60,
    )


# --- RFC 3263 -------------------------------------------------------------------------------


def test_numeric_host_needs_no_dns() -> None:
    found, asked = run("sip:bob@127.0.0.1:5070", {})
    assert found == [Candidate(Transport.UDP, "127.0.0.1", 5070, None)]
    assert asked == []
    found, _ = run("sips:bob@[::1]", {})
    assert found == [Candidate(Transport.TLS, "::1", 5061, None)]
    found, _ = run("sip:bob@127.0.0.1;transport=tcp", {})
    assert found == [Candidate(Transport.TCP, "127.0.0.1", 5060, None)]


def test_explicit_port_skips_naptr_and_srv() -> None:
    zone = {("gw.test", QType.A): a("127.0.0.7")}
    found, asked = run("sip:gw.test:5099", zone)
    assert found == [Candidate(Transport.UDP, "127.0.0.7", 5099, "gw.test")]
    assert asked == [("gw.test", QType.A)]


def test_transport_parameter_skips_naptr() -> None:
    zone = {
        ("_sip._tcp.gw.test", QType.SRV): srv((10, 0, 5080, "host.gw.test")),
        ("host.gw.test", QType.A): a("127.0.0.8"),
    }
    found, asked = run("sip:gw.test;transport=tcp", zone)
    assert found == [Candidate(Transport.TCP, "127.0.0.8", 5080, "gw.test")]
    assert ("gw.test", QType.NAPTR) not in asked


def test_naptr_then_srv_then_a_in_order_and_preference() -> None:
    zone = {
        ("example.test", QType.NAPTR): naptr(
            (20, 10, "SIP+D2U", "_sip._udp.example.test"),
            (10, 20, "SIP+D2T", "_sip._tcp.example.test"),
            (10, 10, "SIPS+D2T", "_sips._tcp.example.test"),
            (5, 1, "SIP+D2W", "_sip._ws.example.test"),  # not ours to open
        ),
        ("_sips._tcp.example.test", QType.SRV): srv((1, 0, 5061, "tls.example.test")),
        ("_sip._tcp.example.test", QType.SRV): srv((1, 0, 5060, "tcp.example.test")),
        ("_sip._udp.example.test", QType.SRV): srv((1, 0, 5060, "udp.example.test")),
        ("tls.example.test", QType.A): a("127.0.0.3"),
        ("tcp.example.test", QType.A): a("127.0.0.2"),
        ("udp.example.test", QType.A): a("127.0.0.1"),
    }
    found, asked = run("sip:alice@example.test", zone)
    assert [(c.transport, c.host) for c in found] == [
        (Transport.TLS, "127.0.0.3"),
        (Transport.TCP, "127.0.0.2"),
        (Transport.UDP, "127.0.0.1"),
    ]
    assert asked[0] == ("example.test", QType.NAPTR)
    assert all(c.server_name == "example.test" for c in found)  # RFC 5922: the domain


def test_sips_takes_only_secure_services() -> None:
    zone = {
        ("example.test", QType.NAPTR): naptr(
            (10, 10, "SIP+D2U", "_sip._udp.example.test"),
            (20, 10, "SIPS+D2T", "_sips._tcp.example.test"),
        ),
        ("_sips._tcp.example.test", QType.SRV): srv((1, 0, 5061, "tls.example.test")),
        ("tls.example.test", QType.A): a("127.0.0.3"),
    }
    found, _ = run("sips:alice@example.test", zone)
    assert found == [Candidate(Transport.TLS, "127.0.0.3", 5061, "example.test")]


def test_no_naptr_asks_srv_per_transport_and_no_srv_falls_back_to_a() -> None:
    zone = {
        ("_sip._tcp.example.test", QType.SRV): srv((1, 0, 5070, "h.example.test")),
        ("h.example.test", QType.A): a("127.0.0.9"),
    }
    found, asked = run("sip:alice@example.test", zone)
    assert found == [Candidate(Transport.TCP, "127.0.0.9", 5070, "example.test")]
    assert ("_sip._udp.example.test", QType.SRV) in asked
    found, asked = run("sip:alice@plain.test", {("plain.test", QType.A): a("127.0.0.4")})
    assert found == [Candidate(Transport.UDP, "127.0.0.4", 5060, "plain.test")]
    assert asked[-1] == ("plain.test", QType.A)


def test_srv_priority_first_and_dead_targets_skipped() -> None:
    zone = {
        ("_sip._udp.example.test", QType.SRV): srv(
            (20, 0, 5062, "second.example.test"),
            (10, 0, 5061, "gone.example.test"),
            (10, 0, 5060, "first.example.test"),
        ),
        ("first.example.test", QType.A): a("127.0.0.1"),
        ("second.example.test", QType.A): a("127.0.0.2"),
    }
    found, _ = run("sip:alice@example.test;transport=udp", zone)
    assert [(c.host, c.port) for c in found] == [("127.0.0.1", 5060), ("127.0.0.2", 5062)]


def test_srv_weights_share_the_first_place() -> None:
    records = [SrvRecord(10, 90, 1, "heavy"), SrvRecord(10, 10, 2, "light")]
    rng = random.Random(7)
    firsts = Counter(order_srv(list(records), rng)[0].target for _ in range(2000))
    assert 0.8 < firsts["heavy"] / 2000 < 0.97


def test_unknown_name_is_404_and_a_failing_dns_503() -> None:
    with pytest.raises(LocateError) as e:
        run("sip:alice@nowhere.test", {})
    assert e.value.status == 404 and "nowhere.test" in e.value.reason
    zone = {("broken.test", QType.NAPTR): Answer(error="timeout")}
    with pytest.raises(LocateError) as e:
        run("sip:alice@broken.test", zone)
    assert e.value.status == 503 and "timeout" in e.value.reason


def test_websocket_and_unknown_transports_are_refused() -> None:
    with pytest.raises(LocateError) as e:
        run("sip:alice@127.0.0.1;transport=ws", {})
    assert e.value.status == 503
    with pytest.raises(LocateError):
        run("sip:alice@127.0.0.1;transport=sctp", {})


def test_ipv6_asks_aaaa_too() -> None:
    zone = {("h.test", QType.A): a("127.0.0.1"), ("h.test", QType.AAAA): a("::1")}
    found, _ = run("sip:h.test:5060", zone, ipv6=True)
    assert [c.host for c in found] == ["127.0.0.1", "::1"]


# --- the resolver's cache ---------------------------------------------------------------------


class Driver:
    """A Resolver with a dictionary zone answering its Resolve actions on demand."""

    def __init__(self, zone: Zone, **config: float) -> None:
        self.zone = zone
        self.stats: Counter[str] = Counter()
        self.resolver = Resolver(ResolverConfig(**config), stats=self.stats)  # type: ignore[arg-type]
        self.results: list[object] = []
        self.pending: list[Resolve] = []

    def locate(self, text: str, now: float) -> None:
        actions = self.resolver.locate(
            uri(text), supported=ALL, ipv6=False, clock=Clock.at(now), done=self._done
        )
        self.pending += [a for a in actions if isinstance(a, Resolve)]

    def _done(self, result: object, clock: Clock) -> list:  # type: ignore[type-arg]
        self.results.append(result)
        return []

    def answer_all(self, now: float) -> None:
        while self.pending:
            r = self.pending.pop(0)
            answer = self.zone.get((r.name, QType(r.qtype)), Answer(error="nxdomain"))
            actions = self.resolver.resolved(r.op, answer, Clock.at(now))
            self.pending += [a for a in actions if isinstance(a, Resolve)]


ZONE: Zone = {
    ("gw.test", QType.A): a("127.0.0.5", ttl=30),
}


def test_cached_for_the_ttl_then_asked_again() -> None:
    d = Driver(ZONE)
    d.locate("sip:gw.test:5070", 0.0)
    assert len(d.pending) == 1
    d.answer_all(0.0)
    assert d.results == [[Candidate(Transport.UDP, "127.0.0.5", 5070, "gw.test")]]
    for t in (1.0, 10.0, 29.9):
        d.locate("sip:gw.test:5070", t)
        assert d.pending == []  # answered from the cache, at once
    assert d.stats["dns_cache_hits"] == 3
    d.locate("sip:gw.test:5070", 30.0)  # the TTL is over
    assert len(d.pending) == 1 and d.stats["dns_queries"] == 2


def test_questions_in_flight_are_asked_once() -> None:
    d = Driver(ZONE)
    for _ in range(5):
        d.locate("sip:gw.test:5070", 0.0)
    assert len(d.pending) == 1
    d.answer_all(0.0)
    assert len(d.results) == 5 and d.stats["dns_queries"] == 1


def test_negative_answers_are_kept_failures_are_not() -> None:
    d = Driver({}, negative_ttl=5.0)
    d.locate("sip:nowhere.test:5070", 0.0)
    d.answer_all(0.0)
    assert isinstance(d.results[-1], LocateError) and d.results[-1].status == 404
    d.locate("sip:nowhere.test:5070", 4.0)
    assert d.pending == [] and isinstance(d.results[-1], LocateError)
    failing = Driver({("bad.test", QType.A): Answer(error="timeout")})
    failing.locate("sip:bad.test:5070", 0.0)
    failing.answer_all(0.0)
    failing.locate("sip:bad.test:5070", 0.1)
    assert len(failing.pending) == 1  # asked again: a timeout is not an answer


def test_the_cache_is_bounded() -> None:
    zone = {(f"h{i}.test", QType.A): a(f"127.0.1.{i}") for i in range(50)}
    d = Driver(zone, max_entries=10)
    for i in range(50):
        d.locate(f"sip:h{i}.test:5060", 0.0)
        d.answer_all(0.0)
    assert len(d.resolver) == 10


# --- NAT ---------------------------------------------------------------------------------------


def reach(contact: str, via: ViaFacts, peer: Peer = UDP, mode: NatMode = NatMode.AUTO, **kw):  # type: ignore[no-untyped-def]
    return classify(
        contact=parse_uri_untrusted(contact),
        outbound=kw.get("outbound", False),
        path=kw.get("path", ()),
        via=via,
        peer=peer,
        mode=mode,
    )


def test_nat_is_detected_not_assumed() -> None:
    same = ViaFacts(host="127.0.0.1", port=5070, rport=True)
    assert not reach("sip:bob@127.0.0.1:5070", same).nat
    assert not reach("sip:bob@127.0.0.1:15062", same).nat  # another port: third party
    private = ViaFacts(host="192.168.1.10", port=5060, rport=True)
    assert reach("sip:bob@192.168.1.10:5060", private).nat  # Via names another host
    moved = ViaFacts(host="127.0.0.1", port=5060, rport=True)
    assert reach("sip:bob@127.0.0.1:5060", moved).nat  # rport, and the port differs
    no_rport = ViaFacts(host="127.0.0.1", port=5060, rport=False)
    assert not reach("sip:bob@127.0.0.1:5060", no_rport).nat  # (a port alone is no proof)
    for private_contact in ("10.1.2.3", "172.16.0.9", "100.64.0.1", "[fd00::1]"):
        assert reach(f"sip:bob@{private_contact}:5060", same).nat, private_contact
    assert not reach("sip:bob@203.0.113.9:5060", same).nat  # public: aimed elsewhere
    assert reach("sip:bob@x1y2.invalid;transport=ws", same).nat
    assert not reach("sip:bob@192.168.1.10", private, mode=NatMode.CONTACT).nat
    assert reach("sip:bob@127.0.0.1:5070", same, mode=NatMode.SOURCE).nat


def test_a_contact_on_another_port_of_the_source_host_is_no_sign_of_nat() -> None:
    """sipsak -U -i -C sip:bob@127.0.0.1:15062: it sends from one port (5070 here), names
    another in its Via with rport, and registers bob at a third. The Contact is where
    bob answers; the port sipsak sent from reaches sipsak, if anything."""
    sipsak = ViaFacts(host="127.0.0.1", port=35224, rport=True)
    assert not reach("sip:bob@127.0.0.1:15062", sipsak).nat
    assert reach("sip:bob@127.0.0.1:35224", sipsak).nat  # its own Via port: NAT, as before
    assert reach("sip:bob@127.0.0.1:5070", sipsak).nat  # the source port: one place either way
    assert reach("sip:bob@127.0.0.2:15062", sipsak).nat  # another host: the tests as before
    behind_nat = ViaFacts(host="192.168.1.10", port=5060, rport=True)
    assert reach("sip:bob@127.0.0.1:15062", behind_nat).nat  # the Via's host still decides


def test_flows_are_kept_where_only_they_reach() -> None:
    via = ViaFacts(host="127.0.0.1", port=40000, rport=False)
    assert reach("sip:bob@127.0.0.1:40000;transport=tcp", via, TCP).flow_bound
    assert not reach("sip:bob@127.0.0.1:5099;transport=tcp", via, TCP).flow_bound
    assert reach("sip:bob@127.0.0.1:5099;transport=tcp", via, TCP, outbound=True).flow_bound
    assert reach("sip:bob@phone.example.com;transport=tcp", via, TCP).flow_bound
    assert not reach("sip:bob@127.0.0.1:5070", via, UDP).flow_bound
    edge = reach(
        "sip:bob@10.0.0.1", via, TCP, path=("<sip:edge@127.0.0.1:40000;transport=tcp;lr>",)
    )
    assert edge.flow_bound  # the edge's own connection reaches its Path
    elsewhere = reach("sip:bob@10.0.0.1", via, TCP, path=("<sip:edge@127.0.0.1:5090;lr>",))
    assert not elsewhere.flow_bound  # its Path names another port: connect there
    token = reach("sip:bob@10.0.0.1", via, TCP, path=("<sip:tok@127.0.0.1:5090;lr;ob>",))
    assert token.flow_bound


# --- [routes] rules ----------------------------------------------------------------------------


def test_rules_parse_and_match() -> None:
    us = parse_rule("us", "prefix +1 -> sip:gw1.test;transport=tcp, sip:gw2.test")
    assert us.kind is MatchKind.PREFIX and [str(h) for h in us.hops] == [
        "sip:gw1.test;transport=tcp",
        "sip:gw2.test",
    ]
    assert us.matches(uri("sip:+15551234567@example.com"), local=True)
    assert not us.matches(uri("sip:alice@example.com"), local=True)
    intl = parse_rule("intl", "user ^00[1-9] -> sip:127.0.0.1:5090")
    assert intl.matches(uri("sip:0044123@x.test"), local=False)
    assert not intl.matches(uri("sip:0001@x.test"), local=False)
    other = parse_rule("other", "nonlocal -> sip:trunk.test")
    assert other.matches(uri("sip:a@elsewhere.test"), local=False)
    assert not other.matches(uri("sip:a@example.com"), local=True)
    partner = parse_rule("p", "domain *.partner.test -> sip:sbc.test")
    assert partner.matches(uri("sip:a@x.partner.test"), local=False)
    assert not partner.matches(uri("sip:a@partner.test.evil"), local=False)
    vm = parse_rule("vm", "unregistered -> sip:vm.test")
    assert vm.matches(uri("sip:a@example.com"), local=True)
    assert not vm.matches(uri("sip:a@elsewhere.test"), local=False)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("prefix +1", "expected MATCH -> NEXT-HOP"),
        ("prefix -> sip:gw.test", "prefix needs a value"),
        ("nonlocal x -> sip:gw.test", "takes no value"),
        ("sometimes -> sip:gw.test", "unknown match 'sometimes'"),
        ("user ([ -> sip:gw.test", "not a regular expression"),
        ("nonlocal -> http://gw.test", "not a sip: or sips: URI"),
        ("nonlocal -> sip:gw.test;transport=ws", "only UDP, TCP and TLS"),
        ("nonlocal ->", "at least one next hop"),
    ],
)
def test_bad_rules_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace("+", r"\+")):
        parse_rule("r", text)
