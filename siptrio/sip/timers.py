"""A heap of deadlines for every transaction timer, owned by the sans-IO core.

One heap instead of one sleeping task per timer: the shell sleeps until
``next_deadline()`` and hands the due entries back with ``pop_due(now)``.
Cancelling is O(1): a cancelled entry stays in the heap and is skipped when due.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable

__all__ = ["TimerHeap"]


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable, str]] = []
        self._live: dict[tuple[Hashable, str], int] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def start(self, deadline: float, owner: Hashable, name: str) -> None:
        """(Re)start ``owner``'s timer ``name``; an older one of that name is dropped."""
        seq = next(self._seq)
        self._live[(owner, name)] = seq
        heapq.heappush(self._heap, (deadline, seq, owner, name))

    def cancel(self, owner: Hashable, name: str) -> None:
        self._live.pop((owner, name), None)

    def cancel_all(self, owner: Hashable, names: tuple[str, ...]) -> None:
        for name in names:
            self._live.pop((owner, name), None)

    def next_deadline(self) -> float:
        heap = self._heap
        while heap:
            _, seq, owner, name = heap[0]
            if self._live.get((owner, name)) == seq:
                return heap[0][0]
            heapq.heappop(heap)
        return math.inf

    def pop_due(self, now: float) -> list[tuple[Hashable, str]]:
        due: list[tuple[Hashable, str]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, owner, name = heapq.heappop(heap)
            if self._live.get((owner, name)) == seq:
                del self._live[(owner, name)]
                due.append((owner, name))
        return due
