"""The DNS side of routing, sans-IO: a bounded cache, and questions handed to the shell.

``locate`` runs the RFC 3263 procedure (rfc3263.py) for a URI. Each DNS question it
asks is answered from the cache when a live entry is there; otherwise the resolver
returns a :class:`~siptrio.core.events.Resolve` action, the shell asks the DNS and
hands the answer back through ``resolved``, and the procedure resumes. Questions
already in flight are not asked twice: later askers wait for the same answer.

Answers are kept for their TTL (negative ones for the SOA's, or ``negative_ttl``),
failures are not kept, and the cache holds at most ``max_entries`` names, least
recently used first out.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...sip.uri import SipUri
from ..events import Action, Resolve
from ..types import Clock, Transport
from .rfc3263 import Answer, Candidate, LocateError, Locating, QType, Query, locate

__all__ = ["Located", "Resolver", "ResolverConfig"]

Located = Callable[[list[Candidate] | LocateError, Clock], list[Action]]
Key = tuple[str, QType]


@dataclass(frozen=True, kw_only=True)
class ResolverConfig:
    max_entries: int = 10_000
    negative_ttl: float = 30.0  # NXDOMAIN/NODATA without an SOA TTL
    max_ttl: float = 86_400.0


@dataclass(eq=False)
class _Job:
    steps: Locating
    done: Located
    question: Key | None = None


@dataclass(eq=False)
class _InFlight:
    op: int
    jobs: list[_Job] = field(default_factory=list)


class Resolver:
    def __init__(
        self,
        config: ResolverConfig | None = None,
        *,
        stats: Counter[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or ResolverConfig()
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.rng = rng or random.Random()
        self._cache: OrderedDict[Key, tuple[float, Answer]] = OrderedDict()
        self._in_flight: dict[Key, _InFlight] = {}
        self._by_op: dict[int, Key] = {}
        self._op_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def locate(
        self,
        uri: SipUri,
        *,
        supported: Sequence[Transport],
        ipv6: bool,
        clock: Clock,
        done: Located,
    ) -> list[Action]:
        """Find where ``uri`` is served; ``done`` gets the candidates or the error, and
        the clock of the event that finished the search."""
        steps = locate(uri, supported=supported, ipv6=ipv6, rng=self.rng)
        return self._run(_Job(steps=steps, done=done), None, clock)

    def resolved(self, op: int, answer: Answer, clock: Clock) -> list[Action]:
        """The shell's answer to the Resolve action ``op``."""
        key = self._by_op.pop(op, None)
        if key is None:
            return []
        flight = self._in_flight.pop(key, None)
        if answer.error is None or answer.error == "nxdomain":
            self._store(key, answer, clock.now)
        else:
            self.stats["dns_failures"] += 1
        out: list[Action] = []
        for job in flight.jobs if flight is not None else ():
            out += self._run(job, answer, clock)
        return out

    def _store(self, key: Key, answer: Answer, now: float) -> None:
        ttl = answer.ttl
        if not answer.records and ttl <= 0:
            ttl = self.config.negative_ttl
        ttl = min(ttl, self.config.max_ttl)
        if ttl <= 0:
            return
        cache = self._cache
        cache[key] = (now + ttl, answer)
        cache.move_to_end(key)
        while len(cache) > self.config.max_entries:
            cache.popitem(last=False)

    def _cached(self, key: Key, now: float) -> Answer | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if expires <= now:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def _run(self, job: _Job, answer: Answer | None, clock: Clock) -> list[Action]:
        """Drive the procedure until it needs the network, or ends."""
        value = answer
        while True:
            try:
                query: Query = job.steps.send(value)  # type: ignore[arg-type]
            except StopIteration as stop:
                return job.done(stop.value, clock)
            except LocateError as e:
                return job.done(e, clock)
            key = (query.name, query.qtype)
            cached = self._cached(key, clock.now)
            if cached is not None:
                self.stats["dns_cache_hits"] += 1
                value = cached
                continue
            self.stats["dns_cache_misses"] += 1
            flight = self._in_flight.get(key)
            if flight is not None:
                flight.jobs.append(job)
                return []
            op = next(self._op_ids)
            self._in_flight[key] = _InFlight(op=op, jobs=[job])
            self._by_op[op] = key
            self.stats["dns_queries"] += 1
            return [Resolve(op=op, name=query.name, qtype=query.qtype.value)]
