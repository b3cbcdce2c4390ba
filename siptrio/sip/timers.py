"""The deadlines of every transaction timer, owned by the sans-IO core.

One structure instead of one sleeping task per timer: the shell sleeps until
``next_deadline()`` and hands the due timers back with ``pop_due(now)``.

Most timers have a fixed length (B, D, F, H, I, J, K, L, M, and the proxy's Timer C:
3 minutes) and start on a clock that only moves forward, so each of them is due after
every earlier one of its name: those wait in one queue per name, in the order they
were started (an ``OrderedDict``), and cancelling one removes it at once. Every
answered INVITE cancels a Timer C; kept until its deadline, that was 54,000 dead
entries at 300 calls/s. The doubling retransmission timers (A, E, G) can come out of
order; they go to a heap, where a cancelled entry stays until it is due or until the
dead outnumber the live and the heap is rebuilt (amortised O(1), and the heap only
ever holds those short timers).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["TimerHeap"]


class TimerHeap:
    def __init__(self) -> None:
        # per name: owner -> (deadline, seq), in deadline order
        self._queues: dict[str, OrderedDict[Hashable, tuple[float, int]]] = {}
        self._last: dict[str, float] = {}  # the latest deadline appended to each queue
        # timers that came out of order: (deadline, seq, owner, name), and which are live
        self._heap: list[tuple[float, int, Hashable, str]] = []
        self._live: dict[tuple[Hashable, str], int] = {}
        self._seq = itertools.count()
        # the earliest deadline at the head of any queue (None: to be found again); the
        # shell asks for next_deadline() after every message
        self._first: float | None = math.inf
        self.compactions = 0

    def __len__(self) -> int:
        """Live timers."""
        return len(self._live) + sum(len(q) for q in self._queues.values())

    @property
    def entries(self) -> int:
        """Entries held, dead ones in the heap included (what the memory holds)."""
        return len(self._heap) + sum(len(q) for q in self._queues.values())

    def start(self, deadline: float, owner: Hashable, name: str) -> None:
        """(Re)start ``owner``'s timer ``name``; an older one of that name is dropped."""
        seq = next(self._seq)
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = OrderedDict()
        self.cancel(owner, name)
        if deadline >= self._last.get(name, -math.inf):
            if not queue and self._first is not None and deadline < self._first:
                self._first = deadline  # a new head, the earliest of them
            queue[owner] = (deadline, seq)
            self._last[name] = deadline
        else:
            self._live[(owner, name)] = seq
            heapq.heappush(self._heap, (deadline, seq, owner, name))

    def cancel(self, owner: Hashable, name: str) -> None:
        queue = self._queues.get(name)
        if queue is not None:
            found = queue.pop(owner, None)
            if found is not None:
                if found[0] == self._first:
                    self._first = None  # maybe a head went
                return
        if self._live.pop((owner, name), None) is not None:
            self._maybe_compact()

    def cancel_all(self, owner: Hashable, names: tuple[str, ...]) -> None:
        for name in names:
            self.cancel(owner, name)

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._live):
            self.compact()

    def compact(self) -> None:
        """Drop every dead entry (cancelled or restarted timers) from the heap."""
        live = self._live
        self._heap = [e for e in self._heap if live.get((e[2], e[3])) == e[1]]
        heapq.heapify(self._heap)
        self.compactions += 1

    def next_deadline(self) -> float:
        heap = self._heap
        while heap:
            _, seq, owner, name = heap[0]
            if self._live.get((owner, name)) == seq:
                break
            heapq.heappop(heap)
        first = self._first
        if first is None:
            first = math.inf
            for queue in self._queues.values():
                if queue:
                    first = min(first, next(iter(queue.values()))[0])
            self._first = first
        return min(heap[0][0], first) if heap else first

    def pop_due(self, now: float) -> list[tuple[Hashable, str]]:
        """The timers due at ``now``, earliest first (in the order started, on a tie)."""
        due: list[tuple[float, int, Hashable, str]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, seq, owner, name = heapq.heappop(heap)
            if self._live.get((owner, name)) == seq:
                del self._live[(owner, name)]
                due.append((deadline, seq, owner, name))
        for name, queue in self._queues.items():
            while queue:
                owner, (deadline, seq) = next(iter(queue.items()))
                if deadline > now:
                    break
                del queue[owner]
                due.append((deadline, seq, owner, name))
                self._first = None
        due.sort(key=lambda e: (e[0], e[1]))
        return [(owner, name) for _, _, owner, name in due]
