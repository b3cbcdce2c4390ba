"""Calls through the sans-IO core alone: the proxy's CPU per call, without sockets or Trio.

A SIPp-shaped call (INVITE, 100, 180, 200, ACK along the Record-Route, BYE, 200) is fed
to a ``Dispatcher`` as parsed messages, with the callee registered at its Contact (UDP,
another port than its REGISTER's, the way a SIPp UAS is registered by another SIPp).
Every message the core sends is parsed again, as the peers would. Reports CPU
microseconds per call (process time) and, with ``--callgrind``, is meant to be run under
``valgrind --tool=callgrind`` for an instruction count that other work on the machine
cannot change. It runs against whatever ``siptrio`` is importable, so the same script
compares two trees::

    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/core_calls.py
    .venv/bin/python bench/core_calls.py --calls 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Persist, Send
from siptrio.core.proxy import ProxyConfig
from siptrio.core.registrar import RegistrarConfig
from siptrio.core.types import Clock, Listener, Peer, Transport
from siptrio.sip import Request, Response, parse_message_untrusted

US = Listener(transport=Transport.UDP, host="127.0.0.1", port=5060)
CALLER = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5070, local_host="127.0.0.1", local_port=5060
)
REGISTRAR = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5079, local_host="127.0.0.1", local_port=5060
)
CALLEE = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5080, local_host="127.0.0.1", local_port=5060
)

REGISTER = (
    "REGISTER sip:example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5079;branch=z9hG4bK-reg-1\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:bob@example.com>;tag=r1\r\n"
    "To: <sip:bob@example.com>\r\n"
    "Call-ID: reg-1@127.0.0.1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:bob@127.0.0.1:5080;transport=UDP>\r\n"
    "Expires: 3600\r\n"
    "Content-Length: 0\r\n\r\n"
)
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def invite(n: int) -> bytes:
    return (
        f"INVITE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-1-0\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5070>;tag={n}SIPpTag00{n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {n}-4242@127.0.0.1\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: sip:sipp@127.0.0.1:5070\r\n"
        f"Max-Forwards: 70\r\n"
        f"Subject: Performance Test\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def answer(req: Request, status: int, reason: str, tag: str, body: str = "") -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    for h in req.headers:
        if h.name in ("via", "record-route", "from", "call-id", "cseq"):
            lines.append(h.raw.decode())
        elif h.name == "to":
            lines.append(f"To: {req.to.text}" + ("" if req.to.tag else f";tag={tag}"))
    if status == 200 and req.method == "INVITE":
        lines.append("Contact: <sip:bob@127.0.0.1:5080;transport=UDP>")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def in_dialog(method: str, n: int, cseq: int, routes: list[str], to_tag: str) -> bytes:
    lines = [
        f"{method} sip:bob@127.0.0.1:5080;transport=UDP SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{n}-{cseq}-{method}",
        f"From: sipp <sip:sipp@127.0.0.1:5070>;tag={n}SIPpTag00{n}",
        f"To: <sip:bob@example.com>;tag={to_tag}",
        f"Call-ID: {n}-4242@127.0.0.1",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        *(f"Route: {r}" for r in routes),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(data: bytes) -> Request | Response:
    return parse_message_untrusted(data)


def one(actions: list[object], to: Peer) -> Request | Response:
    sends = [a for a in actions if isinstance(a, Send) and a.peer.port == to.port]
    assert sends, f"nothing sent to {to}: {actions}"
    return parse(sends[-1].data)


def forwarded(actions: list[object]) -> tuple[Request, Peer]:
    """The request the core passed on, and where to (the tree before routing by the RFCs
    sent it to the REGISTER's source, this one to the Contact: the work is the same)."""
    for a in actions:
        if isinstance(a, Send) and a.peer.port != CALLER.port:
            req = parse(a.data)
            assert isinstance(req, Request)
            return req, a.peer
    raise AssertionError(f"nothing forwarded: {actions}")


def setup() -> Dispatcher:
    d = Dispatcher(
        DispatcherConfig(
            registrar=RegistrarConfig(domains=("example.com",)),
            proxy=ProxyConfig(domains=("example.com",)),
        ),
        secret=b"bench secret",
    )
    d.set_listeners([US])
    reg = parse(REGISTER.encode())
    assert isinstance(reg, Request)
    actions = d.receive_request(reg, REGISTRAR, Clock.at(0.0))
    persist = [a for a in actions if isinstance(a, Persist)]
    d.committed(persist[0].txn_key, True, Clock.at(0.0))
    return d


def call(d: Dispatcher, n: int, now: float) -> None:
    inv = parse(invite(n))
    assert isinstance(inv, Request)
    fwd, callee = forwarded(d.receive_request(inv, CALLER, Clock.at(now)))
    tag = f"callee{n}"
    for status, reason in ((100, "Trying"), (180, "Ringing")):
        d.receive_response(parse(answer(fwd, status, reason, tag)), callee, Clock.at(now))  # type: ignore[arg-type]
    ok = one(
        d.receive_response(parse(answer(fwd, 200, "OK", tag, SDP)), callee, Clock.at(now)), CALLER
    )  # type: ignore[arg-type]
    assert isinstance(ok, Response) and ok.status == 200
    routes = [r.text for r in reversed(ok.record_routes)]
    ack = parse(in_dialog("ACK", n, 1, routes, tag))
    one(d.receive_request(ack, CALLER, Clock.at(now)), callee)  # type: ignore[arg-type]
    bye = parse(in_dialog("BYE", n, 2, routes, tag))
    fbye = one(d.receive_request(bye, CALLER, Clock.at(now)), callee)  # type: ignore[arg-type]
    assert isinstance(fbye, Request)
    one(d.receive_response(parse(answer(fbye, 200, "OK", tag)), callee, Clock.at(now)), CALLER)  # type: ignore[arg-type]


def run(calls: int) -> float:
    """CPU microseconds per call over ``calls`` calls (timers fired as they fall due)."""
    d = setup()
    for n in range(200):  # warm the caches the hot path keeps
        call(d, n, float(n) / 1000)
    gc.collect()
    start = time.process_time()
    now = 1.0
    for n in range(200, 200 + calls):
        now += 0.001
        call(d, n, now)
        if n % 100 == 0:
            d.fire_timers(Clock.at(now))
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import siptrio

    figures = [run(args.calls) for _ in range(args.rounds)]
    print(
        f"{siptrio.__file__}: {statistics.median(figures):.1f} us CPU per call (median of "
        f"{args.rounds}; {', '.join(f'{f:.1f}' for f in figures)}), "
        f"{1e6 / statistics.median(figures):,.0f} calls per CPU-second in the core"
    )


if __name__ == "__main__":
    main()
