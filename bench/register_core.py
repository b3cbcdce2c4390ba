"""REGISTERs through the sans-IO core alone: the fast path's CPU per REGISTER.

A SIPp-shaped REGISTER (new AOR each) is fed to ``Dispatcher.receive_datagram`` as bytes
and its binding committed at once (``Dispatcher.committed``), as the store writer
would: the bytes of the 200 come out. No sockets or Trio. Reports CPU microseconds per
REGISTER; under ``valgrind --tool=callgrind`` run it twice with two ``--count`` and take
the difference for an instruction count the machine's load cannot change. It runs
against whatever ``siptrio`` is importable, so the same script compares two trees::

    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/register_core.py
    for n in 2000 6000; do PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=cg-$n.out .venv/bin/python bench/register_core.py --count $n; done
"""

from __future__ import annotations

import argparse
import gc
import time

from parse_micro import REGISTER  # the same SIPp-shaped REGISTER

from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Persist
from siptrio.core.types import Clock, Peer, Transport

PEER = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5097, local_host="127.0.0.1", local_port=5060
)


def run(count: int) -> float:
    """CPU microseconds per REGISTER, bytes in to the 200's bytes out (new AOR each)."""
    datas = [
        REGISTER.replace(b"udpuser1", b"u%d" % i).replace(b"-1-0;", b"-u%d-0;" % i)
        for i in range(count)
    ]
    d = Dispatcher(DispatcherConfig(), secret=b"bench secret")
    start = time.process_time()
    for i, data in enumerate(datas):
        # the store commits a millisecond later, as it would under load
        for action in d.receive_datagram(data, PEER, Clock.at(1000.0 + i * 0.001)):
            if isinstance(action, Persist):
                assert action.txn_key is not None
                sent = d.committed(action.txn_key, True, Clock.at(1000.001 + i * 0.001))
                assert sent, "no 200 after the commit"
    took = (time.process_time() - start) / count * 1e6
    assert d.stats["register_fast"] == count, "the fast path gave some back"
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    gc.freeze()
    for _ in range(args.rounds):
        print(f"{run(args.count):.2f} us per REGISTER (fast path, {args.count})")


if __name__ == "__main__":
    main()
