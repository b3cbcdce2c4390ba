"""The store writer: the one task that writes bindings to the store, a burst at a time.

The core asks for a write with a ``Persist`` action; the executor queues it here and
answers the REGISTERs waiting on it once this writer reports the commit. Grouping
every queued change into one transaction is what makes a burst of REGISTERs cost one
fsync and one thread hand-off instead of one each.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..core.events import Persist
from ..core.location import Binding
from ..core.metrics import LATENCY, Histogram
from ..store.base import BindingStore

__all__ = ["STORE_QUEUE", "StoreWriter"]

log = logging.getLogger("siptrio.server")

STORE_QUEUE = 8192
STORE_BATCH = 4096
COMMIT_GATHER = 0.002  # seconds the store writer waits for more changes to commit together
COMMIT_GATHER_HEAVY = 0.005  # ... when the last commit carried HEAVY_BATCH changes or more
HEAVY_BATCH = 4
BUSY_GAP = 0.002  # ... when the previous commit ended less than this long ago (a burst)


async def _in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in one of trio's cached threads and wait for it, uncancellably.

    What trio.to_thread.run_sync does, without its capacity limiter, context copy
    and thread naming: about 130 us of CPU per call there, 75 here, and the store
    commits once per REGISTER when the load is light. Only for short, bounded work.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: Any) -> None:  # an outcome.Outcome
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver)
    await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


class StoreWriter:
    """Commits queued ``Persist`` actions; ``committed(batch, ok)`` hears of each commit,
    ``timings`` how long each that succeeded took (/metrics)."""

    def __init__(
        self,
        store: BindingStore,
        stats: Counter[str],
        committed: Callable[[list[Persist], bool], Awaitable[None]],
        *,
        timings: Histogram | None = None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.committed = committed
        self.timings = timings if timings is not None else Histogram(LATENCY)

    async def run(self, queue: trio.MemoryReceiveChannel[Persist]) -> None:
        """Group every queued change into one transaction: one fsync for a burst.

        On shutdown (cancellation) what is still queued is committed, shielded,
        before the store closes: no REGISTER that reached the queue is lost.
        """
        last_end = -1.0
        last_size = 0
        try:
            while True:
                batch = [await queue.receive()]
                if trio.current_time() - last_end < BUSY_GAP:
                    # In a burst, let it gather: a few milliseconds of latency buy one
                    # fsync and one thread hand-off for many REGISTERs instead of one
                    # each. A lone REGISTER is committed at once. When the last commit
                    # carried many, the load is heavy: gather longer (about 10 % more
                    # REGISTERs per CPU-second at 3,000/s than with 2 ms; at 200/s,
                    # where batches are one or two, the 200's p99 stays ~4 ms, not ~7).
                    heavy = last_size >= HEAVY_BATCH
                    await trio.sleep(COMMIT_GATHER_HEAVY if heavy else COMMIT_GATHER)
                while len(batch) < STORE_BATCH:
                    try:
                        batch.append(queue.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self.commit(batch)
                last_end = trio.current_time()
                last_size = len(batch)
        finally:
            with trio.CancelScope(shield=True):
                rest: list[Persist] = []
                while True:
                    try:
                        rest.append(queue.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                if rest:
                    await self.commit(rest, send=False)

    async def commit(self, batch: list[Persist], *, send: bool = True) -> None:
        final: dict[tuple[str, str], Binding | None] = {}
        for item in batch:
            for aor_key in item.deletes:
                final[aor_key] = None
            for b in item.upserts:
                final[(b.aor, b.key)] = b
        upserts = [b for b in final.values() if b is not None]
        deletes = [k for k, b in final.items() if b is None]
        ok = True
        try:
            store = self.store
            start = trio.current_time()
            # Shielded: once staged, the transaction holds the store's lock until the
            # commit runs; the REGISTERs waiting on it are owed an answer anyway.
            with trio.CancelScope(shield=True):
                if store.stage(upserts, deletes):
                    await _in_thread(store.commit_staged)
                else:
                    await trio.to_thread.run_sync(store.apply, upserts, deletes)
            self.timings.observe(trio.current_time() - start)
            self.stats["store_commits"] += 1
            self.stats["store_rows"] += len(final)
        except Exception:
            ok = False
            self.stats["store_failures"] += 1
            log.exception("location store commit of %d changes failed", len(final))
        if send:
            await self.committed(batch, ok)
