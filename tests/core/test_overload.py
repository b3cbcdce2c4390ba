"""Load shedding, sans-IO: who is refused at which delay, and how the 503 looks."""

from __future__ import annotations

from support.peers import SECRET, UDP

from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Send
from siptrio.core.location import Location
from siptrio.core.overload import (
    STALE,
    WINDOW,
    Overload,
    OverloadConfig,
    Priority,
    priority_of,
)
from siptrio.core.proxy import ProxyConfig
from siptrio.core.registrar import RegistrarConfig
from siptrio.core.types import Clock, Listener, Transport
from siptrio.sip import Request, Response, parse_message_untrusted

US = Listener(transport=Transport.UDP, host="127.0.0.1", port=5060)


def request(method: str, *, to_tag: str | None = None, to: str = "bob", n: int = 1) -> Request:
    tag = f";tag={to_tag}" if to_tag else ""
    contact = f"Contact: <sip:{to}@127.0.0.1:5070>\r\n" if method == "REGISTER" else ""
    m = parse_message_untrusted(
        (
            f"{method} sip:{to}@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-o{method}{n};rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:alice@example.com>;tag=fa\r\n"
            f"To: <sip:{to}@example.com>{tag}\r\n"
            f"Call-ID: overload-{n}\r\nCSeq: 1 {method}\r\n{contact}Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(m, Request)
    return m


def test_classes() -> None:
    d = Dispatcher(
        DispatcherConfig(registrar=RegistrarConfig(domains=("example.com",))), secret=SECRET
    )
    d.set_listeners([US])
    location = d.location
    assert priority_of(request("INVITE"), location) is Priority.NEW
    assert priority_of(request("MESSAGE"), location) is Priority.NEW
    for method in ("ACK", "CANCEL", "BYE"):
        assert priority_of(request(method), location) is Priority.ESSENTIAL
    assert priority_of(request("INVITE", to_tag="x"), location) is Priority.ESSENTIAL  # re-INVITE
    assert priority_of(request("REGISTER"), location) is Priority.NEW_REGISTER
    actions = d.receive_request(request("REGISTER", n=2), UDP, Clock.at(0.0))
    assert actions and len(location) == 1  # bob has a binding now
    assert priority_of(request("REGISTER", n=3), location) is Priority.REFRESH
    assert priority_of(request("REGISTER", to="carol"), Location()) is Priority.NEW_REGISTER


def standing(o: Overload, delay: float, start: float, queue: str = "udp") -> float:
    """A queue that stays ``delay`` behind for two windows (one whole one, whatever the
    phase): returns the time after."""
    now = start
    while now <= start + 2 * WINDOW + 0.01:
        o.observe(queue, delay, now)
        now += 0.01
    return now


def refused(o: Overload, now: float) -> set[Priority]:
    return {p for p in Priority if o.refuses(p, now)}


def test_levels_rise_with_a_standing_delay_and_fall_with_hysteresis() -> None:
    o = Overload(OverloadConfig(target=0.05))
    assert refused(o, 0.0) == set()
    now = standing(o, 0.06, 1.0)
    assert refused(o, now) == {Priority.NEW}
    now = standing(o, 0.11, now)
    assert refused(o, now) == {Priority.NEW, Priority.NEW_REGISTER}
    now = standing(o, 0.21, now)
    assert refused(o, now) == {Priority.NEW, Priority.NEW_REGISTER, Priority.REFRESH}
    o.observe("udp", 0.15, now)  # under 4 x target, over half of it: refreshes still refused
    assert Priority.REFRESH in refused(o, now)
    o.observe("udp", 0.09, now)  # under half of 4 x target: refreshes served again
    assert refused(o, now) == {Priority.NEW, Priority.NEW_REGISTER}
    o.observe("udp", 0.03, now)  # under the target but over half of it: still refused
    assert refused(o, now) == {Priority.NEW}
    o.observe("udp", 0.02, now)  # a fall shows at once
    assert refused(o, now) == set()
    assert not o.refuses(Priority.ESSENTIAL, now)


def test_a_burst_that_drains_within_a_window_refuses_nothing() -> None:
    """A pause of the process (a collection, another program on the CPU) leaves a
    queue behind it that drains by itself: not a reason to refuse calls."""
    o = Overload(OverloadConfig(target=0.05))
    o.observe("udp", 0.001, 0.0)
    for i, delay in enumerate((0.35, 0.3, 0.2, 0.1, 0.04, 0.002)):  # a 350 ms pause drains
        o.observe("udp", delay, 0.5 + i * 0.015)
        assert refused(o, 0.5 + i * 0.015) == set()


def test_the_queue_furthest_behind_decides_and_an_idle_one_stops_counting() -> None:
    o = Overload(OverloadConfig(target=0.05))
    now = standing(o, 0.2, 10.0, "streams")  # the streams are behind ...
    o.observe(("127.0.0.1", 5060), 0.001, now)  # ... while a UDP socket is not
    assert o.refuses(Priority.NEW, now) and o.delay >= 0.2
    later = now + STALE + 0.1
    o.observe(("127.0.0.1", 5060), 0.001, later)  # the streams measured nothing since
    assert not o.refuses(Priority.NEW, later)
    now = standing(o, 0.2, 20.0)
    assert o.shedding(now) and not o.shedding(now + STALE + 0.1)
    assert not o.refuses(Priority.NEW, now + STALE + 0.1)  # nothing measured: idle


def test_refused_with_503_and_retry_after_before_any_transaction_exists() -> None:
    d = Dispatcher(
        DispatcherConfig(
            registrar=RegistrarConfig(domains=("example.com",)),
            proxy=ProxyConfig(domains=("example.com",)),
            overload=OverloadConfig(target=0.05, retry_after=7),
        ),
        secret=SECRET,
    )
    d.set_listeners([US])
    standing(d.overload, 1.0, 0.0)
    now = 0.2
    (send,) = d.receive_request(request("INVITE"), UDP, Clock.at(now))
    assert isinstance(send, Send) and send.peer == UDP
    answer = parse_message_untrusted(send.data)
    assert isinstance(answer, Response) and answer.status == 503
    assert answer.first("retry-after") == "7" and answer.to.tag  # a final answer has a To tag
    assert not d.layer.servers and not d.layer.heap.entries  # nothing kept: stateless
    assert d.stats["overload_refused.new"] == 1
    # its ACK matches nothing and is dropped quietly
    ack = request("ACK", to_tag=answer.to.tag)
    assert d.receive_request(ack, UDP, Clock.at(now)) == [] and not d.layer.servers
    # a BYE is not refused (no dialog here: the proxy answers it 481, statefully)
    actions = d.receive_request(request("BYE", to_tag="t"), UDP, Clock.at(now))
    (bye,) = [a for a in actions if isinstance(a, Send)]  # (and the refusal published)
    reply = parse_message_untrusted(bye.data)
    assert isinstance(reply, Response) and reply.status == 481
