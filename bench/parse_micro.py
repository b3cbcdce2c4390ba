"""Micro-benchmark of the hot path pieces: parse, stamp, route, serialise (no sockets).

Reports CPU microseconds (process time, steadier than wall time on a shared machine) per operation for a SIPp-shaped REGISTER and INVITE, and the
same for a reference measured in the same run: ``bytes.split`` of the message into
lines, the least any parser must do. A whole REGISTER (parse, transaction, registrar,
the 200 once committed) is timed on the general path, on the REGISTER fast path
(siptrio/core/fastreg.py) and on `fused_register.py`, the same checks for this one
shape in one function. `.venv/bin/python bench/parse_micro.py`
"""

from __future__ import annotations

import gc
import time

from fused_register import FusedRegistrar

from siptrio.app.server import GC_MIDDLE, GC_THRESHOLD
from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Persist
from siptrio.core.types import Clock, Peer, Transport
from siptrio.sip import Request, parse_message_untrusted

REGISTER = (
    b"REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5097;branch=z9hG4bK-1234-1-0;rport\r\n"
    b"From: <sip:udpuser1@127.0.0.1>;tag=1234SIPpTag001\r\n"
    b"To: <sip:udpuser1@127.0.0.1>\r\n"
    b"Call-ID: 1-1234@127.0.0.1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:udpuser1@127.0.0.1:5097;transport=udp>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Expires: 3600\r\n"
    b"User-Agent: SIPp\r\n"
    b"Content-Length: 0\r\n\r\n"
)
INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-524287-1---8f8ba6e3e6a6a2a1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=9fxced76sl\r\n'
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5070;transport=udp>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def timeit(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, GC_MIDDLE, 10)  # as `siptrio serve` runs
    n = 20000
    peer = Peer(
        transport=Transport.UDP,
        host="127.0.0.1",
        port=5097,
        local_host="127.0.0.1",
        local_port=5060,
    )
    rows = []
    for name, data in (("REGISTER", REGISTER), ("INVITE", INVITE)):
        ref = timeit(lambda data=data: data.split(b"\r\n"), n)
        parse = timeit(lambda data=data: parse_message_untrusted(data), n)
        rows.append((f"parse {name}", parse, ref))
    d = Dispatcher(DispatcherConfig(), secret=b"bench secret")
    counter = iter(range(10**9))

    def register_once() -> None:
        i = next(counter)
        data = REGISTER.replace(b"udpuser1", b"u%d" % i).replace(b"-1-0;", b"-%d-0;" % i)
        msg = parse_message_untrusted(data)
        assert isinstance(msg, Request)
        d.receive_request(msg, peer, Clock.at(1000.0))

    rows.append(("parse + registrar (new AOR)", timeit(register_once, n), rows[0][2]))
    print("| operation | siptrio us | reference us (bytes.split) | ratio |")
    print("|---|---|---|---|")
    for op, us, ref in rows:
        print(f"| {op} | {us:.1f} | {ref:.2f} | {us / ref:.0f}x |")

    # A whole REGISTER, new AOR each: siptrio from bytes to the 200's bytes, and the
    # sketch written for this one shape (fused_register.py), in alternating rounds.
    datas = [
        REGISTER.replace(b"udpuser1", b"w%d" % i).replace(b"-1-0;", b"-w%d-0;" % i)
        for i in range(2 * n)
    ]

    def siptrio_whole(batch: list[bytes]) -> float:
        d = Dispatcher(DispatcherConfig(), secret=b"bench secret")
        start = time.process_time()
        for data in batch:
            msg = parse_message_untrusted(data)
            assert isinstance(msg, Request)
            for action in d.receive_request(msg, peer, Clock.at(1000.0)):
                if isinstance(action, Persist):
                    sent = d.committed(action.txn_key, True, Clock.at(1000.0))
                    assert sent, "no 200 after the commit"
        return (time.process_time() - start) / len(batch) * 1e6

    def fast_whole(batch: list[bytes]) -> float:
        d = Dispatcher(DispatcherConfig(), secret=b"bench secret")
        start = time.process_time()
        for data in batch:
            actions = d.receive_datagram(data, peer, Clock.at(1000.0))
            assert d.stats["register_fast"], "the fast path gave it back"
            for action in actions:
                if isinstance(action, Persist):
                    assert d.committed(action.txn_key, True, Clock.at(1000.0)), (
                        "no 200 after the commit"
                    )
        return (time.process_time() - start) / len(batch) * 1e6

    def fused_whole(batch: list[bytes]) -> float:
        f = FusedRegistrar()
        start = time.process_time()
        for data in batch:
            assert isinstance(f.handle(data, peer, 1000.0), tuple), "the sketch refused it"
        return (time.process_time() - start) / len(batch) * 1e6

    mine: list[float] = []
    fast: list[float] = []
    sketch: list[float] = []
    for half in (datas[:n], datas[n:]):
        mine.append(siptrio_whole(half))
        fast.append(fast_whole([d.replace(b"sip:w", b"sip:f") for d in half]))
        sketch.append(fused_whole(half))
    print()
    print(
        "| whole REGISTER, bytes to 200 (new AOR) | general path us | fast path us "
        "| fused sketch us | general / fast | fast / sketch |"
    )
    print("|---|---|---|---|---|---|")
    for i, (a, f, b) in enumerate(zip(mine, fast, sketch, strict=True), 1):
        print(f"| round {i} | {a:.1f} | {f:.1f} | {b:.1f} | {a / f:.1f}x | {f / b:.1f}x |")


if __name__ == "__main__":
    main()
