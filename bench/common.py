"""Helpers shared by the benchmarks: process trees from /proc, and Kamailio as a server.

A server under test may be one process (siptrio) or a tree of them (Kamailio forks its
UDP and TCP workers, timers and the WebSocket keep-alive process). Its CPU time and its
memory are therefore read for the whole tree, found through
``/proc/PID/task/TID/children``.

Memory of a tree: the sum of VmRSS counts a page shared by several processes once per
process (Kamailio's shared memory segment, where its connections, transactions and
location table live, is mapped by every worker), so the sum over the tree overstates it.
The sum of Pss (``/proc/PID/smaps_rollup``) counts each page once, split among the
processes that map it; for a single process it is VmRSS less its share of the libraries
other processes also map. Both are returned.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
KAMAILIO_CFG = BENCH / "kamailio.cfg"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- process trees --------------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive (each thread's children included)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(c) for c in children)
    return found


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one process (children it reaped included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(v) for v in fields[11:15])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its live descendants.

    Take differences of two readings: a child that exits between them moves its time
    into its parent's cutime/cstime when reaped, so the sum stays continuous.
    """
    ticks = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):  # exited between the listing and the read
            ticks += _cpu_ticks(p)
    return ticks / CLK_TCK


@dataclass(frozen=True, kw_only=True)
class TreeMemory:
    """Memory of a process tree in KiB: Pss summed (each page once) and VmRSS summed."""

    pss: int
    rss: int
    processes: int


def tree_memory(pid: int) -> TreeMemory:
    pss = rss = count = 0
    for p in tree_pids(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        count += 1
        for line in text.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    return TreeMemory(pss=pss, rss=rss, processes=count)


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def stop_tree(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM the process, wait, then SIGKILL whatever of its tree is left, by PID."""
    pids = tree_pids(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # children that outlived the main process (re-parented, so no longer in its tree)
    for p in pids[1:]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(p):
            time.sleep(0.05)
        if _alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    return proc.returncode


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- ports ----------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_listening(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


# --- SIPp ----------------------------------------------------------------------------------


def sipp_final_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` file (its final counters), {} when none."""
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return rows[-1] if rows else {}


def sipp_elapsed(stats: dict[str, str]) -> float:
    """Seconds from SIPp's start to its last statistics dump (epoch columns are tab-split)."""
    try:
        start = float(stats["StartTime"].split("\t")[-1])
        now = float(stats["CurrentTime"].split("\t")[-1])
    except (KeyError, ValueError, IndexError):
        return 0.0
    return now - start


# --- Kamailio -------------------------------------------------------------------------------


def kamailio_version() -> str | None:
    """``5.6.3``, or None when Kamailio is not installed."""
    exe = shutil.which("kamailio") or (
        "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
    )
    if exe is None:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout
    for word in out.split():
        if word[:1].isdigit() and "." in word:
            return word
    return "?"


class Kamailio:
    """``kamailio -DD -E -f bench/kamailio.cfg`` in the foreground, on ports of our choosing.

    -DD: no daemon, no fork into the background (the main process stays our child);
    -E: log to stderr (the log file in the work folder). The listen ports, the domain and
    the worker counts are config defines (``-A NAME=VALUE``, see bench/kamailio.cfg). No
    pid file, FIFO or database is written. ``stop()`` sends SIGTERM to the main process,
    which ends its children, and kills by PID any child that outlives it.
    """

    name = "kamailio"

    def __init__(
        self,
        workdir: Path,
        *,
        udp_port: int,
        tcp_port: int,
        ws_port: int,
        shm_mb: int = 512,
        pkg_mb: int = 16,
        defines: dict[str, str] | None = None,
    ) -> None:
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.ws_port = ws_port
        exe = shutil.which("kamailio") or "/usr/sbin/kamailio"
        args = [exe, "-DD", "-E", "-f", str(KAMAILIO_CFG), "-m", str(shm_mb), "-M", str(pkg_mb)]
        for key, value in {
            "UDP_PORT": str(udp_port),
            "TCP_PORT": str(tcp_port),
            "WS_PORT": str(ws_port),
            **(defines or {}),
        }.items():
            args += ["-A", f"{key}={value}"]
        self.log_path = workdir / "kamailio.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        return stop_tree(self.proc)
