"""State that cannot grow: every table and heap of the core bounded by what is live.

Sans-IO, on explicit times: calls are driven through the Dispatcher as the server
drives it (requests and responses in, ``fire_timers`` when a deadline is due, ``tick``
once a second), and the core's state sizes are read before and after.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import pytest
from support.peers import SECRET, UDP

from siptrio.core.dialogs import LINGER, Dialogs, Leg
from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Action, Persist, Send
from siptrio.core.proxy import ProxyConfig
from siptrio.core.registrar import RegistrarConfig
from siptrio.core.types import Clock, Listener, Peer, Transport
from siptrio.sip import Request, Response, parse_message_untrusted
from siptrio.sip.timers import TimerHeap

DOMAIN = "example.com"
US = Listener(transport=Transport.UDP, host="127.0.0.1", port=5060)
CALLER = UDP
CALLEE = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5080, local_host="127.0.0.1", local_port=5060
)


# --- the timer heap -----------------------------------------------------------------------


def test_a_cancelled_timer_leaves_no_heap_entry_after_compaction() -> None:
    heap = TimerHeap()
    # Fixed-length timers come due in the order they start: cancelled, they are gone.
    for owner in ("a", "b", "c"):
        heap.start(180.0, owner, "C")
    heap.cancel("a", "C")
    assert len(heap) == 2 and heap.entries == 2
    # A doubling retransmission timer can come out of order: it waits in the heap, and
    # cancelled it stays there a while (cancelling is O(1)) ...
    heap.start(4.0, "x", "A")
    heap.start(1.0, "y", "A")  # earlier than the one before: the heap
    heap.start(2.0, "z", "A")
    heap.cancel("y", "A")
    assert len(heap) == 4 and heap.entries == 5
    heap.compact()  # ... until the heap is rebuilt
    assert heap.entries == 4
    heap.cancel("z", "A")  # now the dead outnumber the live there: rebuilt at once
    assert heap.entries == 3 and heap.next_deadline() == 4.0
    heap.cancel_all("x", ("A", "B"))
    heap.cancel_all("b", ("C",))
    heap.cancel("c", "C")
    assert heap.entries == 0 and len(heap) == 0 and heap.next_deadline() == math.inf


def test_due_timers_come_earliest_first_whichever_structure_holds_them() -> None:
    heap = TimerHeap()
    heap.start(32.0, "t1", "B")
    heap.start(0.5, "t1", "A")
    heap.start(1.0, "t2", "A")
    heap.start(0.7, "t3", "A")  # out of order: the heap
    heap.start(32.0, "t2", "B")
    assert heap.next_deadline() == 0.5
    assert heap.pop_due(0.9) == [("t1", "A"), ("t3", "A")]
    assert heap.next_deadline() == 1.0
    assert heap.pop_due(40.0) == [("t2", "A"), ("t1", "B"), ("t2", "B")]
    assert heap.next_deadline() == math.inf and heap.entries == 0


def test_cancelled_and_restarted_timers_never_outnumber_the_live_ones_twice() -> None:
    """Timer C (3 minutes) is cancelled by every answered INVITE: without compaction a
    steady 300 calls/s kept 54,000 dead entries."""
    heap = TimerHeap()
    for i in range(10):
        heap.start(1000.0 + i, ("live", i), "B")
    for i in range(20_000):
        heap.start(180.0 + i, ("call", i), "C")
        heap.start(32.0 + i, ("call", i), "M")
        heap.start(64.0 + i, ("call", i), "M")  # restarted: the first M is dead
        heap.cancel(("call", i), "C")
        if i >= 5:
            heap.cancel_all(("call", i - 5), ("M",))
        assert heap.entries <= 2 * len(heap) + 1
    assert len(heap) == 15  # the 10 live ones and the 5 calls not yet ended
    assert heap.pop_due(2000.0 + 20_000) and len(heap) == 0
    heap.compact()
    assert heap.entries == 0


def test_compaction_keeps_what_is_due_and_its_order() -> None:
    heap = TimerHeap()
    for i in range(200):
        heap.start(float(i), i, "A")
    for i in range(0, 200, 2):
        heap.cancel(i, "A")
    heap.compact()
    assert heap.entries == 100
    assert heap.pop_due(199.0) == [(i, "A") for i in range(1, 200, 2)]


# --- the dialog table -----------------------------------------------------------------------


def test_an_ended_dialog_leaves_no_entry_once_its_linger_time_is_over() -> None:
    dialogs = Dialogs(max_duration=43200.0)
    leg_a, leg_b = (
        Leg(uri="sip:a@x", tag="ta", peer=CALLER),
        Leg(uri="sip:b@x", tag="tb", peer=CALLEE),
    )
    for confirmed, now in ((False, 0.0), (True, 1.0)):  # 180, then 200: two deadlines
        dialogs.upsert(
            call_id="c1",
            caller=leg_a,
            callee=leg_b,
            confirmed=confirmed,
            now=now,
            wall=now,
            invite_key="k",
        )
    (d,) = list(dialogs)
    dialogs.end(d, by="caller", reason="BYE (200)", now=2.0, wall=2.0)
    assert dialogs.expire(2.0 + LINGER - 0.1, 0.0) == [] and len(dialogs) == 1
    dialogs.expire(2.0 + LINGER, 0.0)
    assert len(dialogs) == 0
    assert dialogs.deadline_entries == 0  # not its 12 hours: nothing is left at all
    assert dialogs.early_of("k") == []


def test_the_deadline_heap_stays_within_twice_the_dialogs() -> None:
    dialogs = Dialogs(max_duration=43200.0)
    for i in range(5000):
        now = i * 0.01
        caller = Leg(uri="sip:a@x", tag=f"a{i}", peer=CALLER)
        callee = Leg(uri="sip:b@x", tag=f"b{i}", peer=CALLEE)
        for confirmed in (False, True):
            dialogs.upsert(
                call_id=f"c{i}",
                caller=caller,
                callee=callee,
                confirmed=confirmed,
                now=now,
                wall=now,
                invite_key=i,
            )
        d = dialogs.get((f"c{i}", f"a{i}", f"b{i}"))
        assert d is not None
        dialogs.end(d, by="caller", reason="BYE (200)", now=now, wall=now)
        dialogs.expire(now, now)
        assert dialogs.deadline_entries <= 2 * len(dialogs) + 1
    dialogs.expire(50.0 + LINGER, 0.0)
    assert len(dialogs) == 0 and dialogs.deadline_entries == 0


# --- 10,000 calls through the core ------------------------------------------------------------


class Core:
    """A Dispatcher driven as the server drives it, on an explicit clock."""

    def __init__(self) -> None:
        self.d = Dispatcher(
            DispatcherConfig(
                registrar=RegistrarConfig(domains=(DOMAIN,)),
                proxy=ProxyConfig(domains=(DOMAIN,)),
            ),
            secret=SECRET,
        )
        self.d.set_listeners([US])
        self.now = 1000.0
        self.next_tick = self.now + 1.0

    def run(self, actions: list[Action]) -> list[tuple[Peer, bytes]]:
        """Commit what the store is asked to (at once) and return what was sent."""
        out: list[tuple[Peer, bytes]] = []
        todo = list(actions)
        while todo:
            a = todo.pop(0)
            if isinstance(a, Send):
                out.append((a.peer, a.data))
            elif isinstance(a, Persist) and a.txn_key is not None:
                todo += self.d.committed(a.txn_key, True, Clock.at(self.now))
        return out

    def advance(self, seconds: float) -> None:
        """Let time pass: due timers fire, and the once-a-second tick runs."""
        end = self.now + seconds
        while True:
            due = min(self.d.next_deadline(), self.next_tick)
            if due > end:
                break
            self.now = max(self.now, due)
            self.run(self.d.fire_timers(Clock.at(self.now)))
            if self.now >= self.next_tick:
                self.run(self.d.tick(Clock.at(self.now)))
                self.next_tick += 1.0
        self.now = end

    def request(self, text: str, peer: Peer) -> list[tuple[Peer, bytes]]:
        m = parse_message_untrusted(text.encode())
        assert isinstance(m, Request)
        return self.run(self.d.receive_request(m, peer, Clock.at(self.now)))

    def response(self, text: str, peer: Peer) -> list[tuple[Peer, bytes]]:
        m = parse_message_untrusted(text.encode())
        assert isinstance(m, Response)
        return self.run(self.d.receive_response(m, peer, Clock.at(self.now)))


def answer(req: Request, status: int, reason: str, to_tag: str | None) -> str:
    """The callee's answer to what the proxy forwarded: Via, Record-Route, From copied."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.values("via")]
    lines += [f"Record-Route: {v}" for v in req.values("record-route")]
    to = req.to.text if req.to.tag or to_tag is None else f"{req.to.text};tag={to_tag}"
    lines += [
        f"From: {req.from_.text}",
        f"To: {to}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.cseq.number} {req.cseq.method}",
        "Contact: <sip:bob@127.0.0.1:5080>",
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def only(sent: list[tuple[Peer, bytes]], to: Peer) -> Request | Response:
    """The one message sent to ``to``, parsed."""
    (data,) = [data for p, data in sent if p == to]
    m = parse_message_untrusted(data)
    assert isinstance(m, (Request, Response))
    return m


def invite(n: int) -> str:
    return (
        f"INVITE sip:bob@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{DOMAIN}>;tag=a{n}\r\nTo: <sip:bob@{DOMAIN}>\r\n"
        f"Call-ID: call-{n}@soak\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
    )


def in_dialog(method: str, n: int, cseq: int, route: Sequence[str], branch: str) -> str:
    routes = "".join(f"Route: {r}\r\n" for r in reversed(route))
    return (
        f"{method} sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{branch};rport\r\n"
        f"{routes}Max-Forwards: 70\r\n"
        f"From: <sip:alice@{DOMAIN}>;tag=a{n}\r\nTo: <sip:bob@{DOMAIN}>;tag=b{n}\r\n"
        f"Call-ID: call-{n}@soak\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )


def call_answered(core: Core, n: int) -> None:
    """INVITE, 100, 180, 200, ACK, BYE, 200: what SIPp's uac.xml and uas.xml do."""
    fwd = only(core.request(invite(n), CALLER), CALLEE)
    assert isinstance(fwd, Request)
    core.response(answer(fwd, 180, "Ringing", f"b{n}"), CALLEE)
    ok = only(core.response(answer(fwd, 200, "OK", f"b{n}"), CALLEE), CALLER)
    assert isinstance(ok, Response) and ok.status == 200
    route = ok.values("record-route")
    core.advance(0.001)
    only(core.request(in_dialog("ACK", n, 1, route, f"ack{n}"), CALLER), CALLEE)
    bye = only(core.request(in_dialog("BYE", n, 2, route, f"bye{n}"), CALLER), CALLEE)
    assert isinstance(bye, Request)
    up = only(core.response(answer(bye, 200, "OK", None), CALLEE), CALLER)
    assert isinstance(up, Response) and up.status == 200


def call_busy(core: Core, n: int) -> None:
    """INVITE, 180, 486 (ACKed hop by hop on both sides)."""
    fwd = only(core.request(invite(n), CALLER), CALLEE)
    assert isinstance(fwd, Request)
    core.response(answer(fwd, 180, "Ringing", f"b{n}"), CALLEE)
    up = only(core.response(answer(fwd, 486, "Busy Here", f"b{n}"), CALLEE), CALLER)
    assert isinstance(up, Response) and up.status == 486
    ack = (
        f"ACK sip:bob@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{DOMAIN}>;tag=a{n}\r\nTo: <sip:bob@{DOMAIN}>;tag=b{n}\r\n"
        f"Call-ID: call-{n}@soak\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    assert core.request(ack, CALLER) == []  # absorbed by the server transaction


def call_cancelled(core: Core, n: int) -> None:
    """INVITE, 180, CANCEL: 200 for the CANCEL, 487 for the INVITE, ACK."""
    fwd = only(core.request(invite(n), CALLER), CALLEE)
    assert isinstance(fwd, Request)
    core.response(answer(fwd, 180, "Ringing", f"b{n}"), CALLEE)
    cancel = (
        f"CANCEL sip:bob@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{DOMAIN}>;tag=a{n}\r\nTo: <sip:bob@{DOMAIN}>\r\n"
        f"Call-ID: call-{n}@soak\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
    sent = core.request(cancel, CALLER)
    down = only(sent, CALLEE)
    assert isinstance(down, Request) and down.method == "CANCEL"
    core.response(answer(down, 200, "OK", None), CALLEE)
    up = only(core.response(answer(fwd, 487, "Request Terminated", f"b{n}"), CALLEE), CALLER)
    assert isinstance(up, Response) and up.status == 487


def register(core: Core, user: str, cseq: int, peer: Peer) -> None:
    text = (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch=z9hG4bK-r{user}{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag=r{user}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: reg-{user}@soak\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{peer.host}:{peer.port}>\r\nExpires: 3600\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    ok = only(core.request(text, peer), peer)
    assert isinstance(ok, Response) and ok.status == 200


def test_a_call_leaves_nothing_in_the_core_once_its_dialog_linger_is_over() -> None:
    core = Core()
    register(core, "bob", 1, CALLEE)
    core.advance(60.0)
    start = core.d.state_sizes()
    call_answered(core, 1)
    during = core.d.state_sizes()
    assert during["dialogs"] == 1 and during["deadline_heap"] >= 1 and during["timer_heap"] >= 1
    core.advance(LINGER - 1)
    assert core.d.state_sizes()["dialogs"] == 1  # ended, still answerable
    core.advance(2.0)  # the linger, and Timers J, L and M (64 x T1, as long) are over
    assert core.d.state_sizes() == start


@pytest.mark.parametrize(
    "calls", [pytest.param(10_000, marks=pytest.mark.slow, id="10000"), pytest.param(600, id="600")]
)
def test_ten_thousand_calls_leave_every_state_size_where_it_started(calls: int) -> None:
    """Answered calls, busy ones and cancelled ones at 300 calls/s (the 10,000 take
    some 15 s of CPU: slow; 600 of them run with the fast tests)."""
    core = Core()
    register(core, "bob", 1, CALLEE)
    core.advance(60.0)  # the REGISTER's transaction ends
    start = core.d.state_sizes()
    assert start["bindings"] == 1 and start["transactions"] == 0

    kinds: list[Callable[[Core, int], None]] = [call_answered] * 8
    kinds += [call_busy, call_cancelled]
    peak: dict[str, int] = {}
    for n, kind in zip(range(calls), itertools.cycle(kinds), strict=False):
        kind(core, n)
        core.advance(1 / 300)  # 300 calls/s
        for name, size in core.d.state_sizes().items():
            peak[name] = max(peak.get(name, 0), size)

    # The live state at 300 calls/s is about 32 s of calls (Timer J, L, M and the
    # dialogs' linger) and the heaps hold at most about twice their live entries.
    assert peak["dialogs"] < 300 * (LINGER + 2)
    assert peak["deadline_heap"] <= 2 * peak["dialogs"] + 1
    assert peak["timer_heap"] <= 2 * 6 * 300 * 33
    core.advance(300.0)  # every timer and every linger is over
    assert core.d.state_sizes() == start
    assert core.d.stats["forwarded.BYE"] == calls * 8 // 10


def test_replaced_binding_expiry_entries_do_not_pile_up() -> None:
    """A client refreshing every second leaves its older expiry entries behind (an
    hour's worth each); at most as many as there are bindings stay."""
    core = Core()
    for cseq in range(1, 2001):
        register(core, "carol", cseq, CALLER)
        core.advance(1.0)
        assert core.d.location.expiry_entries <= 2
    assert len(core.d.location) == 1
