"""``siptrio serve`` with a memory report written every minute: what bench/soak.py --profile runs.

    python bench/memprofile.py serve [the usual serve options]     (MEMPROF_OUT=DIR)

A profiling aid, not a test. Alongside the server, a task writes to ``MEMPROF_OUT``
(default ./memprofile) every ``MEMPROF_EVERY`` seconds (60):

- ``rNNN.txt``: VmRSS, the collector's counts and statistics, every state size
  (``siptrio_state_entries``), and every ``MEMPROF_TYPES_EVERY``-th time (5) the
  objects the collector tracks, by type;
- ``mallocNNN.txt``: ``sys._debugmallocstats()``, Python's small-object allocator:
  arenas allocated against bytes in use (fragmentation shows as the difference);
- ``glibcNNN.txt``: glibc's ``malloc_stats()``, the C heap (objects over 512 bytes,
  such as message bytes): "system bytes" against "in use bytes";
- ``smapsNNN.txt``: ``/proc/self/smaps_rollup``;
- with ``MEMPROF_TRACE=N`` (frames), ``snapNNN.pickle``: a tracemalloc snapshot, dumped
  from a thread; compare two offline with ``tracemalloc.Snapshot.load(a).compare_to(
  tracemalloc.Snapshot.load(b), "lineno")``. Tracing makes the server several times
  slower and takes seconds per snapshot: use it at a low call rate.

Each report takes well under a second without tracing (the type census, every fifth
report, a second or two at 500,000 live objects); the server stops for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path(os.environ.get("MEMPROF_OUT", "memprofile"))
EVERY = float(os.environ.get("MEMPROF_EVERY", "60"))
TRACE = int(os.environ.get("MEMPROF_TRACE", "0"))
TYPES_EVERY = int(os.environ.get("MEMPROF_TYPES_EVERY", "5"))

if TRACE:  # before siptrio is imported, so its allocations are traced too
    tracemalloc.start(TRACE)

import trio  # noqa: E402

from siptrio.app import cli  # noqa: E402
from siptrio.app import server as server_module  # noqa: E402
from siptrio.app.views import state_view  # noqa: E402


def _status() -> str:
    lines = Path("/proc/self/status").read_text().splitlines()
    return " ".join(line.replace("\t", "") for line in lines if line.startswith(("VmRSS", "VmHWM")))


def _to_file(path: Path, fn: Callable[[], Any]) -> None:
    """Run ``fn`` with the process's stderr (fd 2, where the C stats go) sent to ``path``."""
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def _glibc_stats() -> Callable[[], Any] | None:
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(name).malloc_stats
    return None


async def _report(server: server_module.Server) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    glibc = _glibc_stats()
    n = 0
    while True:
        await trio.sleep(EVERY)
        n += 1
        with (OUT / f"r{n:03d}.txt").open("w") as f:
            print(f"# {n} at {time.strftime('%H:%M:%S')} {_status()}", file=f)
            print(f"gc.get_count() {gc.get_count()} gc.get_stats() {gc.get_stats()}", file=f)
            print(f"state {state_view(server)}", file=f)
            if n % TYPES_EVERY == 1:
                types = Counter(type(o).__name__ for o in gc.get_objects())
                print("\nobjects the collector tracks, by type:", file=f)
                for name, count in types.most_common(30):
                    print(f"{count:10d} {name}", file=f)
        if not TRACE:  # with tracing on, the allocator is wrapped and this says nothing
            _to_file(OUT / f"malloc{n:03d}.txt", sys._debugmallocstats)
        if glibc is not None:
            _to_file(OUT / f"glibc{n:03d}.txt", glibc)
        (OUT / f"smaps{n:03d}.txt").write_text(Path("/proc/self/smaps_rollup").read_text())
        if TRACE:
            snapshot = tracemalloc.take_snapshot()
            await trio.to_thread.run_sync(snapshot.dump, str(OUT / f"snap{n:03d}.pickle"))


_run = server_module.Server.run


async def _run_with_reports(
    self: server_module.Server, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report, self)
        task_status.started(await nursery.start(_run, self))


def main() -> int:
    server_module.Server.run = _run_with_reports  # type: ignore[method-assign]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
