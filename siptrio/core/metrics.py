"""What the core measures for ``/metrics``, in plain Python: answers and latencies.

Counting must cost next to nothing on the hot path (a REGISTER is a few tens of
microseconds), so the core keeps plain counters keyed by tuples and fixed-bucket
histograms here, and the app layer (app/metrics.py) turns them into Prometheus
families at each scrape. The other counters of the core stay in ``Dispatcher.stats``
(a ``Counter`` of dotted names).

Labels come from what the network sends: a method name is folded to ``other`` unless
it is one of ``METHODS``, so a flood of made-up methods cannot grow a table.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

__all__ = [
    "CALL_SETUP",
    "KNOWN_METHODS",
    "LATENCY",
    "METHODS",
    "OTHER",
    "TRANSACTION",
    "CoreMetrics",
    "Histogram",
    "method_label",
]

# The methods siptrio handles or proxies by name (RFC 3261, 3262, 3265, 3311, 3428,
# 3515, 3903, 6086); any other is counted as OTHER.
METHODS = (
    *("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE"),
    *("INFO", "UPDATE", "PRACK", "NOTIFY", "REFER", "SUBSCRIBE", "PUBLISH"),
)
OTHER = "other"
KNOWN_METHODS = frozenset(METHODS)

# Bucket upper bounds, in seconds.
LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A transaction ends by an answer or by Timer B/F (64*T1, 32 s); an INVITE's waits for
# a person to answer (Timer C, 180 s).
TRANSACTION = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 32.0, 60.0, 180.0)
# A call's ringing and answer: automated callees in milliseconds, people in seconds.
CALL_SETUP = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 180.0)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER


class Histogram:
    """Observations counted into fixed buckets, as a Prometheus histogram exports them.

    ``counts[i]`` holds the observations in ``(bounds[i-1], bounds[i]]``, the last one
    those above every bound; the exporter makes them cumulative.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


def by_method(bounds: tuple[float, ...]) -> dict[str, Histogram]:
    """One histogram per method that has transactions (ACK has none), and OTHER."""
    return {m: Histogram(bounds) for m in (*METHODS, OTHER) if m != "ACK"}


class CoreMetrics:
    """What the core counts beside ``Dispatcher.stats``.

    Answers are counted where they leave (``Plumbing.respond`` for every server
    transaction's, and the stateless 503s), so a retransmission is not counted again.
    """

    def __init__(self) -> None:
        # (method, status) of every answer we sent to a request that parsed, and of
        # every response that came in
        self.responses_sent: Counter[tuple[str, int]] = Counter()
        self.responses_received: Counter[tuple[str, int]] = Counter()
        # a REGISTER's arrival to its 200 (the binding stored), fast path or not
        self.register_answer = Histogram(LATENCY)
        # request in to our final answer; request out to its final answer or timeout
        self.server_transactions = by_method(TRANSACTION)
        self.client_transactions = by_method(TRANSACTION)
        # a proxied call's INVITE to the first 18x, and to the 200, sent to the caller
        self.call_ringing = Histogram(CALL_SETUP)
        self.call_answer = Histogram(CALL_SETUP)
