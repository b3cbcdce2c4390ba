"""The REGISTER fast path against the general path: same bytes out, same state, always.

Two dispatchers with one configuration get the same messages at the same times: one
has the fast path on (``[registrar] fast_path``), the other has it off and only ever
takes the general path; both get the bytes through the one front door,
``Dispatcher.receive_datagram``. After every message the actions (the 200's
bytes included), the bindings, the transactions, the timers and the counters must
be equal. The tidy corpus checks that the fast path really takes what it is for;
the others that it gives back what it is not for; hypothesis mutates tidy
REGISTERs byte by byte to find a message where the two paths would part.
"""

from __future__ import annotations

import csv
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.digest import authorization, challenges
from support.peers import NOW, SECRET, TCP, UDP, UDP6

from siptrio.core.admission import AdmissionConfig
from siptrio.core.auth import AuthConfig
from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Action, Persist, Publish, Send
from siptrio.core.registrar import RegistrarConfig
from siptrio.core.types import Clock, Peer, Transport
from siptrio.sip.digest import ha1

TORTURE = Path(__file__).resolve().parents[1] / "data" / "torture"


def register(
    user: str = "alice",
    *,
    via: str = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{user}-{cseq};rport",
    contact: str = "<sip:{user}@127.0.0.1:5070;transport=udp>",
    expires: str | None = "3600",
    cseq: int = 1,
    call_id: str = "cid-{user}@127.0.0.1",
    to_tag: str = "",
    extra: tuple[str, ...] = (),
    ruri: str = "sip:example.com",
    names: dict[str, str] | None = None,
) -> bytes:
    """SIPp's register.xml shape; ``names`` respells header names ({"Via": "v"})."""
    names = names or {}
    fmt = {"user": user, "cseq": cseq}
    lines = [f"REGISTER {ruri} SIP/2.0"]
    fields = [
        ("Via", via.format(**fmt)),
        ("From", f"<sip:{user}@example.com>;tag=ft-{user}"),
        ("To", f"<sip:{user}@example.com>{to_tag}"),
        ("Call-ID", call_id.format(**fmt)),
        ("CSeq", f"{cseq} REGISTER"),
        ("Contact", contact.format(**fmt)),
        ("Max-Forwards", "70"),
    ]
    if expires is not None:
        fields.append(("Expires", expires))
    fields.append(("User-Agent", "SIPp"))
    lines += [f"{names.get(k, k)}: {v}" for k, v in fields]
    lines += list(extra)
    lines.append(f"{names.get('Content-Length', 'Content-Length')}: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _norm(action: Action) -> tuple[Any, ...]:
    if isinstance(action, Send):
        return ("send", action.data, action.peer, action.owner)
    if isinstance(action, Persist):
        return ("persist", action.upserts, action.deletes, action.txn_key)
    if isinstance(action, Publish):
        return ("publish", action.event)
    return ("other", repr(action))


def sent(out: list[tuple[Any, ...]]) -> list[bytes]:
    return [a[1] for a in out if a[0] in ("send", "reply")]


class Pair:
    """One dispatcher with the fast path in front, one without; same config, same clock."""

    def __init__(self, config: DispatcherConfig | None = None) -> None:
        config = config or DispatcherConfig()
        self.with_fast = Dispatcher(
            replace(config, admission=AdmissionConfig(fast_path=True)), secret=SECRET
        )
        self.general = Dispatcher(
            replace(config, admission=AdmissionConfig(fast_path=False)), secret=SECRET
        )
        for d in (self.with_fast, self.general):
            d.auth.users = {
                "alice": {
                    a: ha1("alice", config.auth.realm, "secret", a) for a in ("MD5", "SHA-256")
                }
            }

    @property
    def taken(self) -> int:
        return self.with_fast.stats["register_fast"]

    @staticmethod
    def _settle(d: Dispatcher, actions: list[Action], now: float) -> list[tuple[Any, ...]]:
        out = []
        for a in actions:
            out.append(_norm(a))
            if isinstance(a, Persist) and a.txn_key is not None:
                out += [
                    _norm(x) for x in d.committed(a.txn_key, True, Clock.at(now))
                ]  # the store: done
        return out

    def send(self, data: bytes, peer: Peer = UDP, now: float = NOW) -> list[tuple[Any, ...]]:
        """Both sides take ``data``; returns what they did, after checking it is the same."""
        before = self.taken
        fast = self._settle(
            self.with_fast, self.with_fast.receive_datagram(data, peer, Clock.at(now)), now
        )
        assert self.taken - before in (0, 1)
        general = self._settle(
            self.general, self.general.receive_datagram(data, peer, Clock.at(now)), now
        )
        assert self.general.stats["register_fast"] == 0
        assert fast == general
        self.assert_same_state()
        return general

    def tick(self, now: float) -> None:
        """Timers and housekeeping on both sides (Timer J ends the transactions)."""
        for d in (self.with_fast, self.general):
            d.fire_timers(Clock.at(now))
            d.tick(Clock.at(now))
        self.assert_same_state()

    def assert_same_state(self) -> None:
        a, b = self.with_fast, self.general

        def txns(d: Dispatcher) -> dict[Hashable, tuple[Any, ...]]:
            return {
                k: (t.state, t.last_response, t.last_status, t.dest, t.request.serialise())
                for k, t in d.layer.servers.items()
            }

        assert sorted(a.location, key=repr) == sorted(b.location, key=repr)
        assert txns(a) == txns(b)
        assert a.next_deadline() == b.next_deadline()
        assert a.awaiting_store() == b.awaiting_store()
        stats = a.stats.copy()
        stats.pop("register_fast", None)
        assert stats == b.stats
        # the same answers counted, the same REGISTER timings
        assert a.metrics.responses_sent == b.metrics.responses_sent
        assert a.metrics.register_answer.counts == b.metrics.register_answer.counts
        for method, h in a.metrics.server_transactions.items():
            assert h.counts == b.metrics.server_transactions[method].counts, method


# --- what the fast path is for -----------------------------------------------------------

TIDY = {
    "sipp": register(),
    "no-rport": register(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-x1"),
    "rport-given": register(via="SIP/2.0/UDP 127.0.0.1:5070;rport=5070;branch=z9hG4bKx2"),
    "received": register(via="SIP/2.0/UDP phone.example.com:5070;branch=z9hG4bK-x3"),
    "no-port": register(via="SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-x4;rport"),
    "RPORT": register(via="SIP/2.0/udp 127.0.0.1:5070;RPORT;Branch=z9hG4bK-x5"),
    "received-given": register(
        via="SIP/2.0/UDP 127.0.0.1:5070;received=10.0.0.9;branch=z9hG4bK-x6;rport"
    ),
    "two-rports": register(via="SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK-x7;rport=9"),
    "compact": register(
        names={
            "Via": "v",
            "From": "f",
            "To": "t",
            "Call-ID": "i",
            "Contact": "m",
            "Content-Length": "l",
        }
    ),
    "odd-case": register(names={"Via": "VIA", "Call-ID": "call-id", "CSeq": "cseq"}),
    "spaces": register(names={"Via": "Via  ", "Contact": "Contact\t"}),
    "no-expires": register(expires=None),
    "clamped": register(expires="99999"),
    "huge": register(expires="99999999999999"),
    "contact-expires": register(contact="<sip:{user}@127.0.0.1:5070>;expires=120"),
    "contact-q": register(contact='"Al" <sip:{user}@127.0.0.1:5070>;q=0.5;+sip.ice'),
    "to-tag": register(to_tag=";tag=already"),
    "ruri-user": register(ruri="sip:alice@example.com:5060;transport=udp"),
    "extras": register(
        extra=("Allow: INVITE, ACK, BYE", "Supported: path, gruu", "Allow-Events: x")
    ),
}


@pytest.mark.parametrize("name", list(TIDY))
def test_takes_the_tidy_shapes_and_answers_as_the_general_path(name: str) -> None:
    pair = Pair()
    out = pair.send(TIDY[name])
    assert pair.taken == 1
    answers = sent(out)
    assert len(answers) == 1 and answers[0].startswith(b"SIP/2.0 200 OK\r\n")


def test_ipv6_is_the_general_paths() -> None:
    pair = Pair()
    pair.send(register(via="SIP/2.0/UDP [::1]:5070;branch=z9hG4bK-v6;rport"), UDP6)
    assert pair.taken == 0


def test_refresh_retransmission_and_expiry() -> None:
    pair = Pair()
    first = pair.send(register())
    again = pair.send(register())  # a retransmission: the transaction answers it again
    assert pair.taken == 2
    assert sent(again) == sent(first) and len(sent(first)) == 1
    pair.send(register(cseq=2), now=NOW + 10)  # a refresh
    assert pair.taken == 3
    pair.send(register(cseq=1), now=NOW + 11)  # the old one, late: that transaction is alive
    pair.tick(NOW + 40)  # Timer J
    pair.send(register(cseq=1, via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-late"))  # 400
    assert pair.taken == 4
    pair.send(register("bob"), now=NOW + 50)
    pair.tick(NOW + 7300)  # every binding expired
    assert len(pair.general.location) == 0


def test_answer_waits_for_the_store() -> None:
    """A retransmission before the commit gets nothing; the 200 comes with the commit."""
    pair = Pair()
    data = register()
    actions = pair.with_fast.receive_datagram(data, UDP, Clock.at(NOW))
    assert pair.taken == 1
    persist = [a for a in actions if isinstance(a, Persist)]
    assert len(persist) == 1
    assert pair.with_fast.receive_datagram(data, UDP, Clock.at(NOW)) == []
    assert pair.taken == 2
    sent = pair.with_fast.committed(persist[0].txn_key, False, Clock.at(NOW))  # the store failed
    assert len(sent) == 1
    assert isinstance(sent[0], Send) and sent[0].data.startswith(b"SIP/2.0 500 ")


def test_many_contacts_for_one_aor() -> None:
    pair = Pair(DispatcherConfig(registrar=RegistrarConfig(max_contacts=3)))
    for i in range(5):
        pair.send(register(contact=f"<sip:alice@127.0.0.1:{5070 + i}>", cseq=i + 1))
    assert pair.taken == 3  # the fourth and fifth are 403s, answered by the general path
    assert len(pair.general.location) == 3


# --- what it is not for ------------------------------------------------------------------

DECLINED = {
    "folded": register().replace(b"User-Agent: SIPp", b"User-Agent:\r\n SIPp"),
    "escaped-user": register(user="al%69ce"),
    "utf8": register(contact='"Zoë" <sip:{user}@127.0.0.1:5070>'),
    "tel": register(contact="<tel:+15551234567>"),
    "require": register(extra=("Require: path",)),
    "path": register(extra=("Path: <sip:edge.example.com;lr>",)),
    "route": register(extra=("Route: <sip:127.0.0.1;lr>",)),
    "unknown-header": register(extra=("X-Foo: bar",)),
    "two-contacts": register(contact="<sip:a@127.0.0.1>, <sip:b@127.0.0.1>"),
    "contact-star": register(contact="*", expires="0"),
    "removal": register(expires="0"),
    "too-brief": register(expires="30"),
    "outbound": register(contact='<sip:a@127.0.0.1>;reg-id=1;+sip.instance="<urn:uuid:1>"'),
    "two-vias": register(extra=("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-2",)),
    "rfc2543": register(via="SIP/2.0/UDP 127.0.0.1:5070;branch=old"),
    "ruri-tel": register(ruri="tel:+1555"),
    "max-forwards": register(extra=("Max-Forwards: 70",)),
    "cseq-method": register().replace(b"1 REGISTER", b"1 INVITE"),
    "call-id-space": register(call_id="a b"),
    "body": register().replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 2\r\n\r\nhi"),
    "bad-expires": register(expires="soon"),
    "bad-q": register(contact="<sip:a@127.0.0.1>;q=2"),
    "no-contact": register().replace(b"Contact: <sip:alice@127.0.0.1:5070;transport=udp>\r\n", b""),
    "sip-3": register().replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1),
}


@pytest.mark.parametrize("name", list(DECLINED))
def test_gives_back_what_it_is_not_for(name: str) -> None:
    pair = Pair()
    pair.send(DECLINED[name])
    assert pair.taken == 0


# Edges where either path may answer: only that they answer alike is asserted.
EDGES = {
    "max-forwards-0": register().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"),
    "max-forwards-255": register().replace(b"Max-Forwards: 70", b"Max-Forwards: 255"),
    "max-forwards-256": register().replace(b"Max-Forwards: 70", b"Max-Forwards: 256"),
    "expires-min": register(expires="60"),
    "expires-below-min": register(expires="59"),
    "contact-expires-0": register(contact="<sip:{user}@127.0.0.1>;expires=0"),
    "contact-expires-wins": register(contact="<sip:{user}@127.0.0.1>;expires=30", expires="600"),
    "q-one": register(contact="<sip:{user}@127.0.0.1>;q=1.0"),
    "q-bad": register(contact="<sip:{user}@127.0.0.1>;q=1.5"),
    "sips-aor": register().replace(b"<sip:alice@example.com>", b"<sips:alice@example.com>"),
    "host-case": register().replace(b"@example.com>", b"@EXAMPLE.com>"),
    "port-65536": register(contact="<sip:{user}@127.0.0.1:65536>"),
    "via-port-65536": register(via="SIP/2.0/UDP 127.0.0.1:65536;branch=z9hG4bK-p;rport"),
    "cseq-max": register(cseq=2**32 - 1),
    "cseq-over": register(cseq=2**32),
    "empty-call-id": register(call_id=""),
    "content-length-00": register().replace(b"Content-Length: 0", b"Content-Length: 00"),
    "duplicate-ignored": register(extra=("Allow: INVITE", "Allow: BYE", "Supported:")),
    "via-received-empty": register(via="SIP/2.0/UDP 127.0.0.1:5070;received;branch=z9hG4bK-r"),
    "branch-cookie-only": register(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK"),
    "ruri-with-headers": register(ruri="sip:example.com?x=y"),
    "supported-bad": register(extra=("Supported:;path",)),  # found by the mutations
    "supported-two-lines": register(extra=("Supported: path", "k: gruu")),
    "via-port-0070": register(via="SIP/2.0/UDP 127.0.0.1:0070;branch=z9hG4bK-z;rport"),  # ditto
}


@pytest.mark.parametrize("name", list(EDGES))
def test_edges_answered_alike(name: str) -> None:
    pair = Pair()
    pair.send(EDGES[name])
    pair.send(EDGES[name])  # and its retransmission
    pair.send(register(cseq=9), now=NOW + 1)


def test_other_domains_and_moves_off_a_flow_are_not_its_business() -> None:
    pair = Pair(DispatcherConfig(registrar=RegistrarConfig(domains=("example.com",))))
    pair.send(register(ruri="sip:example.org"))
    pair.send(register(cseq=2).replace(b"@example.com>", b"@example.org>"))
    assert pair.taken == 0
    pair.send(register(cseq=3), TCP)  # a flow's tidy REGISTER is taken ...
    assert pair.taken == 1
    pair.send(register(cseq=4))  # ... the binding moving off its TCP flow is not
    assert pair.taken == 1
    pair.send(register("bob"))
    assert pair.taken == 2


WS = Peer(
    transport=Transport.WS,
    host="127.0.0.9",
    port=40001,
    local_host="127.0.0.1",
    local_port=8080,
    flow_id="ws-x-1",
)
SIPJS = register(
    via="SIP/2.0/WS k3u8sq1r.invalid;branch=z9hG4bK-ws1",
    contact="<sip:{user}@k3u8sq1r.invalid;transport=ws>;expires=600",
    expires=None,
    extra=("Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER", "Supported: outbound"),
)


@pytest.mark.parametrize("name", [*TIDY, "sipjs"])
@pytest.mark.parametrize("peer", [TCP, WS], ids=["tcp", "ws"])
def test_flows_tidy_shapes_answered_as_the_general_path(name: str, peer: Peer) -> None:
    pair = Pair()
    pair.send(TIDY.get(name, SIPJS), peer)
    assert pair.taken == 1
    pair.send(TIDY.get(name, SIPJS), peer)  # its retransmission (a stream has none: alike)
    (b,) = pair.with_fast.location.lookup("sip:alice@example.com", NOW)
    if name == "sipjs":  # a .invalid Contact is reached over its flow only
        assert b.flow_id == peer.flow_id


def test_rfc5626_contacts_on_a_flow_go_the_general_way() -> None:
    pair = Pair()
    pair.send(
        register(
            contact='<sip:{user}@k3u8sq1r.invalid;transport=ws>;reg-id=1;+sip.instance="<urn:uuid:1>"',
            extra=("Supported: outbound",),
        ),
        WS,
    )
    assert pair.taken == 0


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([TCP, WS]), st.data())
def test_mutations_on_flows_never_part_the_paths(peer: Peer, data: st.DataObject) -> None:
    message = data.draw(mutated())
    pair = Pair()
    pair.send(message, peer)
    pair.send(message, peer)
    pair.send(register(cseq=7), peer, now=NOW + 1)


# --- digest authentication ----------------------------------------------------------------


def test_authenticated_register() -> None:
    config = DispatcherConfig(auth=AuthConfig(enabled=True, realm="siptrio"))
    pair = Pair(config)
    out = pair.send(register(cseq=1))  # no credentials: the general path challenges
    assert pair.taken == 0
    (challenge_401,) = sent(out)
    assert challenge_401.startswith(b"SIP/2.0 401 ")
    www = [
        line.split(b": ", 1)[1].decode()
        for line in challenge_401.split(b"\r\n")
        if line.startswith(b"WWW-Authenticate")
    ]
    chal = challenges(www)
    uri = "sip:example.com"
    for n, algorithm in enumerate(("SHA-256", "MD5"), start=1):
        creds = authorization(
            chal[algorithm],
            method="REGISTER",
            uri=uri,
            user="alice",
            password="secret",
            nc=n,
            cnonce="c0ffee",
            algorithm=algorithm,
        )
        out = pair.send(register(cseq=1 + n, extra=(f"Authorization: {creds}",)))
        assert pair.taken == n
        assert sent(out)[0].startswith(b"SIP/2.0 200 OK")
        again = pair.send(  # the same nonce-count again: a replay, the general path's 401
            register(cseq=10 + n, extra=(f"Authorization: {creds}",))
        )
        assert pair.taken == n and sent(again)[0].startswith(b"SIP/2.0 401")
    wrong = authorization(
        chal["MD5"], method="REGISTER", uri=uri, user="alice", password="guess", nc=9
    )
    pair.send(register(cseq=20, extra=(f"Authorization: {wrong}",)))
    other = authorization(chal["MD5"], method="REGISTER", uri=uri, user="bob", password="x", nc=9)
    pair.send(register("bob", cseq=21, extra=(f"Authorization: {other}",)))
    assert pair.taken == 2
    assert pair.general.stats["auth_failures"] == 4  # two replays, a guess, a stranger
    pair.general.trusted.add(("127.0.0.1", 5070))
    pair.with_fast.trusted.add(("127.0.0.1", 5070))
    pair.send(register(cseq=30))
    assert pair.taken == 3


# --- no message may part the two paths --------------------------------------------------

_BYTES = st.sampled_from([*b' \t,;:<>"=@\\\x00\r\n%*0aZ', 0xC3, 0xFF])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(list(TIDY.values()))))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "insert", "delete", "line", "case"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "set":
            data[at] = draw(_BYTES)
        elif op == "insert":
            data[at:at] = bytes([draw(_BYTES)])
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "case":
            data[at : at + 4] = bytes(data[at : at + 4]).swapcase()
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(1, max(1, len(lines) - 3)))
            j = draw(st.integers(1, max(1, len(lines) - 3)))
            lines.insert(j, lines[i])  # a header line repeated elsewhere
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_never_part_the_paths(data: bytes) -> None:
    pair = Pair()
    pair.send(data)
    pair.send(data)  # again: a retransmission, or a second refusal
    pair.send(register(cseq=7), now=NOW + 1)


def test_mutations_are_taken_often_enough_to_mean_something() -> None:
    """The property above would pass if the fast path refused everything mutated."""
    import random

    rng = random.Random(4475)
    taken = 0
    for _ in range(400):
        base = bytearray(rng.choice(list(TIDY.values())))
        at = rng.randrange(len(base))
        base[at : at + 1] = bytes([rng.choice(b"abcXYZ0123456789")])
        pair = Pair()
        pair.send(bytes(base))
        taken += pair.taken
    assert taken >= 100


def test_torture_registers() -> None:
    """Only REGISTERs: the proxy's branches differ between two dispatchers, and the fast
    path never sees anything else."""
    pair = Pair()
    seen = 0
    for suite in ("rfc4475", "rfc5118"):
        with (TORTURE / suite / "index.tsv").open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                data = (TORTURE / suite / row["file"]).read_bytes()
                if data.startswith(b"REGISTER "):
                    seen += 1
                    pair.send(data)
    assert seen >= 5
