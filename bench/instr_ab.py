"""Instructions per call and per REGISTER, tree against tree, counted by callgrind.

    .venv/bin/python bench/instr_ab.py --tree before=/path/a --tree after=/path/b \\
        [--counts 100,400] [--workloads calls,register] [--jobs 2] [--keep]

CPU seconds move with whatever else the machine runs; the instructions a process executes
do not (or barely). For each tree (``--tree NAME=PATH``: the server runs with
``PYTHONPATH=PATH``) and workload, a fresh ``python -m siptrio serve`` (WARNING logging,
UDP only on a free 127.0.0.1 port, TCP, WebSocket, admin and control off, its database
in a scratch folder) runs under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``. Once it answers OPTIONS, SIPp
drives one workload at a rate low enough that nothing is retransmitted:

- ``calls``: a SIPp UAS (examples/sipp/uas.xml) registered as bob@example.com by a
  second SIPp (register-contact.xml), and a SIPp caller (uac.xml) making N calls through
  the proxy, as bench/calls_udp.py does;
- ``register``: N REGISTERs from SIPp (register.xml, a new AOR each), as register_udp.py.

Then the load phase is held to the same wall time for every N (so the server's idle work,
its timers and its store writer's ticks, is the same in both runs), the server gets
SIGTERM and stops cleanly, and callgrind's total of executed instructions (the out
file's ``summary:`` line) is read. Each tree and workload runs at two counts N1 < N2:

    instructions per call = (I(N2) - I(N1)) / (N2 - N1)

so start-up, the callee's registration and shutdown cancel out. A run in which any SIPp
retransmitted, or a call or REGISTER failed, is rejected. Each tree is byte-compiled
first (no run pays for writing .pyc files) and started once without valgrind: a
``--set`` key it does not know (an older tree may lack some) is dropped.

Writes bench/results/instr_ab.md (``--output``): per tree and workload the commit, the
instructions per call or REGISTER, the ratio to the first tree, the retransmissions, and
the C functions whose own instructions per call or REGISTER changed most.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# The shared helpers and the calls/REGISTER benchmarks' SIPp pieces, next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calls_udp as cu
from common import REPO, free_udp_port, sipp_final_stats, stop_tree
from register_udp import machine, options_probe, run_sipp

RESULTS = REPO / "bench" / "results" / "instr_ab.md"
PYTHON = Path("/work/main/.venv/bin/python")
WORKLOADS = ("calls", "register")
UNIT = {"calls": "call", "register": "REGISTER"}
WHO = {"sipp": "by register-contact.xml", "own-port": "from its own port"}  # --callee
DOMAIN = "example.com"  # calls_udp's callee registers as bob@example.com
START_TIMEOUT = 900.0  # seconds for the server under valgrind to answer OPTIONS
STOP_TIMEOUT = 600.0  # seconds for it to stop on SIGTERM and write its out file
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


# --- the trees ------------------------------------------------------------------------------


@dataclass
class Tree:
    name: str
    path: Path
    commit: str = "?"
    sets: dict[str, dict[str, str]] = field(default_factory=dict)  # per workload
    dropped: list[str] = field(default_factory=list)
    callee: str = "sipp"  # or "own-port": see start_callee_here
    extra: dict[str, str] = field(default_factory=dict)  # NAME=PATH,KEY=VALUE,...


def wanted_sets(workload: str, port: int, workdir: Path) -> dict[str, str]:
    sets = {
        "sip.listen_addr": "127.0.0.1",
        "sip.udp_port": str(port),
        "sip.tcp_enable": "false",
        "sip_websocket.enable": "false",
        "admin.enable": "false",
        "control.enable": "false",
        "registrar.database": str(workdir / "location.sqlite"),
    }
    if workload == "calls":
        sets["sip.domains"] = DOMAIN
    # Under valgrind every message waits long: with overload shedding on, the server would
    # answer 503 to everything. The check still runs on each request; it never refuses.
    sets["security.overload_delay"] = "3600"
    return sets


def wait_up(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Until the server answers OPTIONS (False when it exits or the time is up). A probe
    every 2 s, not options_probe's 5 a second: each one waits in the socket until the
    server under valgrind gets to it, and a long queue of them is work at start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if options_probe(port, timeout=0.5):
            return True
        time.sleep(1.5)
    return False


# Where the server listens or keeps its data: never dropped.
ESSENTIAL = {"sip.listen_addr", "sip.udp_port", "registrar.database", "sip.domains"}


def server_env(tree: Tree) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree.path), "PYTHONHASHSEED": "0"}


def serve_args(sets: dict[str, str]) -> list[str]:
    args = [str(PYTHON), "-m", "siptrio", "serve", "--log-level", "WARNING"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def prepare(tree: Tree, scratch: Path) -> None:
    """Byte-compile the tree, name its commit, and find which ``--set`` keys it takes by
    starting it once without valgrind (an unknown key stops it at once, naming the key)."""
    tree.commit = subprocess.run(
        ["git", "-C", str(tree.path), "log", "-1", "--format=%h %cs %s"],
        capture_output=True, text=True, check=False,
    ).stdout.strip() or "?"  # fmt: skip
    subprocess.run(
        [str(PYTHON), "-m", "compileall", "-q", str(tree.path / "siptrio")],
        env=server_env(tree), check=False, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    check = subprocess.run(
        [str(PYTHON), "-c", "import siptrio; print(siptrio.__file__)"],
        env=server_env(tree), capture_output=True, text=True, cwd=scratch, check=False,
    )  # fmt: skip
    if not check.stdout.strip().startswith(str(tree.path)):
        raise RuntimeError(f"{tree.name}: siptrio imports from {check.stdout.strip()!r}")
    for workload in WORKLOADS:
        workdir = scratch / f"prepare-{tree.name}-{workload}"
        workdir.mkdir()
        port = free_udp_port()
        sets = {**wanted_sets(workload, port, workdir), **tree.extra}
        for _attempt in range(len(sets)):
            log = workdir / "siptrio.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    serve_args(sets), env=server_env(tree), cwd=workdir,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            answered = wait_up(proc, port, 30)
            stop_tree(proc, 30)
            if answered:
                break
            unknown = re.search(r"--set ([\w.]+):", log.read_text(errors="replace"))
            if unknown is None or unknown[1] not in sets or unknown[1] in {*ESSENTIAL, *tree.extra}:
                raise RuntimeError(f"{tree.name} did not start; see {log}")
            del sets[unknown[1]]
            if unknown[1] not in tree.dropped:
                tree.dropped.append(unknown[1])
                say(f"{tree.name}: no {unknown[1]} in this tree; started without it")
        tree.sets[workload] = {k: v for k, v in sets.items() if k not in ("sip.udp_port",)}


# --- one run under callgrind ----------------------------------------------------------------


@dataclass
class Run:
    tree: str
    workload: str
    count: int
    round: int = 1
    instructions: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    outfile: Path | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.instructions > 0
            and self.failed == 0
            and self.retransmissions == 0
            and self.successful == self.count
            and not self.note
        )


def read_total(outfile: Path) -> int:
    """callgrind's total: the out file's ``summary:`` line (older versions: ``totals:``)."""
    totals = 0
    for line in outfile.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
        if line.startswith("totals:"):
            totals = int(line.split()[1])
    return totals


def measure(
    tree: Tree, workload: str, count: int, rate: float, hold: float, round_: int, scratch: Path
) -> Run:
    run = Run(tree=tree.name, workload=workload, count=count, round=round_)
    workdir = scratch / f"{tree.name}-{workload}-{count}-r{round_}"
    workdir.mkdir()
    outfile = workdir / "callgrind.out"
    port = free_udp_port()
    sets = {**tree.sets[workload], "sip.udp_port": str(port)}
    sets["registrar.database"] = str(workdir / "location.sqlite")
    args = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={outfile}",
        f"--log-file={workdir / 'valgrind.log'}", *serve_args(sets),
    ]  # fmt: skip
    started = time.monotonic()
    with (workdir / "siptrio.log").open("wb") as out:
        server = subprocess.Popen(
            args, env=server_env(tree), cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        if not wait_up(server, port, START_TIMEOUT):
            run.note = f"no answer to OPTIONS; see {workdir}"
            return run
        domain = DOMAIN if workload == "calls" else "127.0.0.1"
        answer = register_once(port, domain, "warmup")
        if not answer.startswith("SIP/2.0 200 "):
            run.note = f"warm-up REGISTER: {answer!r}; see {workdir}"
            return run
        say(f"{workdir.name}: up after {time.monotonic() - started:.0f} s")
        drive = drive_calls if workload == "calls" else drive_registers
        drive(run, port, rate, workdir, hold, tree.callee == "own-port")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        run.note = str(e)  # the callee not registered, SIPp missing ...: this run is rejected
    finally:
        rc = stop_tree(server, STOP_TIMEOUT)  # SIGTERM, by PID
    if rc != 0:
        run.note = (run.note + "; " if run.note else "") + f"server exit {rc}"
    if outfile.exists():
        run.instructions = read_total(outfile)
        run.outfile = outfile
    say(
        f"{workdir.name}: {run.instructions:,} instructions, {run.successful}/{count} ok, "
        f"{run.retransmissions} retransmissions, {time.monotonic() - started:.0f} s "
        f"{run.note}"
    )
    return run


def register_once(port: int, domain: str, user: str, local: int = 0) -> str:
    """One REGISTER of ``user`` from (and with its Contact at) 127.0.0.1:``local``, sent
    once and waited for as long as it takes; the answer's status line. The warm-up: the
    server answers OPTIONS before it has finished starting (under valgrind the first
    REGISTER waits ~20 s more), and SIPp would retransmit or give up meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", local))
        s.settimeout(START_TIMEOUT)
        local = s.getsockname()[1]
        aor = f"sip:{user}@{domain}"
        s.sendto(
            (
                f"REGISTER sip:{domain} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-instr-{user}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <{aor}>;tag={user}\r\nTo: <{aor}>\r\n"
                f"Call-ID: {user}@instr\r\nCSeq: 1 REGISTER\r\n"
                f"Contact: <sip:{user}@127.0.0.1:{local}>\r\nExpires: 3600\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", port),
        )
        try:
            return s.recv(65536).split(b"\r\n", 1)[0].decode(errors="replace")
        except TimeoutError:
            return "no answer"


def wait_out(since: float, hold: float) -> None:
    """Hold the load phase to ``hold`` seconds whatever N was, so idle work cancels."""
    time.sleep(max(0.0, since + hold - time.monotonic()))


def start_callee_here(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """``--callee own-port``: bob registered from the port the SIPp UAS then answers on,
    so no tree can read the binding as NAT (before d27a5da a Contact on another port
    of the source host was, and the calls went to the registering SIPp's port)."""
    callee_port = free_udp_port()
    answer = register_once(port, DOMAIN, cu.CALLEE, callee_port)
    if not answer.startswith("SIP/2.0 200 "):
        raise RuntimeError(f"bob was not registered: {answer!r}; see {workdir}")
    cmd = ["sipp", *cu.sipp_common(port, callee_port, DOMAIN), "-sf", str(cu.SIPP_DIR / "uas.xml")]
    with (workdir / "callee.stdout").open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, *cu.sipp_files("callee", workdir)], cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    while not cu.udp_port_taken(callee_port) and proc.poll() is None:
        time.sleep(0.05)
    return proc


def drive_calls(run: Run, port: int, rate: float, workdir: Path, hold: float, own: bool) -> None:
    callee = (
        start_callee_here(port, workdir) if own else cu.start_callee(port, workdir, domain=DOMAIN)
    )
    try:
        # one call first, its files apart: whatever the first INVITE, 180 and 200 load
        # lazily is not counted against N, and its retransmissions (if any) are not either
        warm = workdir / "warmup"
        warm.mkdir()
        cu.run_caller(port, 1, 1, warm)
        warm_ids = {key[0] for key in cu.Trace.read(warm / "caller_short.log").seen}
        since = time.monotonic()
        rc, _cpu = cu.run_caller(port, int(rate), run.count, workdir)
        wait_out(since, hold)
    finally:
        callee_rc = cu.stop_callee(callee)
    stats = sipp_final_stats(workdir / "caller_stat.csv")
    callee_stats = sipp_final_stats(workdir / "callee_stat.csv")
    run.successful = int(stats.get("SuccessfulCall(C)", 0))
    run.failed = int(stats.get("FailedCall(C)", run.count))
    run.failed += int(callee_stats.get("FailedCall(C)", 0))
    # every message either SIPp sent or received again (the caller's INVITE or BYE, the
    # callee's 200 repeated for a late ACK, an INVITE or BYE repeated by the proxy), the
    # warm-up call's left out
    run.retransmissions = max(
        int(stats.get("Retransmissions(C)", 0)),
        cu.Trace.read(workdir / "caller_short.log").repeats(),
    ) + repeats(cu.Trace.read(workdir / "callee_short.log"), warm_ids)
    if rc != 0 or callee_rc != 0:
        run.note = f"caller exit {rc}, callee exit {callee_rc}"


def repeats(trace: cu.Trace, skip: set[str]) -> int:
    """Messages sent or received again, outside the Call-IDs in ``skip``."""
    return sum(len(t) - 1 for key, t in trace.seen.items() if key[0] not in skip)


def drive_registers(run: Run, port: int, rate: float, workdir: Path, hold: float, _: bool) -> None:
    since = time.monotonic()
    rc, stats, _cpu = run_sipp(port, int(rate), run.count, workdir, prefix="instr")
    wait_out(since, hold)
    run.successful = int(stats.get("SuccessfulCall(C)", 0))
    run.failed = int(stats.get("FailedCall(C)", run.count))
    run.retransmissions = int(stats.get("Retransmissions(C)", 0))
    if rc != 0:
        run.note = f"SIPp exit {rc}"


# --- per-function differences ---------------------------------------------------------------

_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.+?)\s*$")


@functools.cache
def self_costs(outfile: Path) -> dict[str, int]:
    """Instructions executed in each function itself (not its callees), by
    ``callgrind_annotate``; the object file is dropped from a name so two trees compare."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", str(outfile)],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    costs: dict[str, int] = {}
    for line in out.splitlines():
        m = _ANNOTATE_LINE.match(line)
        if m is None or ":" not in m[2] or m[2].startswith("PROGRAM TOTALS"):
            continue
        name = m[2].split(":", 1)[1].split(" [", 1)[0]
        costs[name] = costs.get(name, 0) + int(m[1].replace(",", ""))
    return costs


def per_op_by_function(low: Run, high: Run) -> dict[str, float]:
    if low.outfile is None or high.outfile is None:
        return {}
    a, b = self_costs(low.outfile), self_costs(high.outfile)
    span = high.count - low.count
    return {name: (b.get(name, 0) - a.get(name, 0)) / span for name in set(a) | set(b)}


# --- the report -----------------------------------------------------------------------------


@dataclass
class Figure:
    tree: Tree
    workload: str
    low: Run
    high: Run
    round: int = 1

    @property
    def ok(self) -> bool:
        return self.low.ok and self.high.ok

    @property
    def per_op(self) -> float:
        return (self.high.instructions - self.low.instructions) / (self.high.count - self.low.count)


def summary(figures: list[Figure], trees: list[Tree]) -> list[str]:
    """Per tree and workload: the mean over the rounds that count, their spread, and the
    ratio of means to the first tree."""
    lines = [
        "| tree | commit | workload | rounds | instructions per call / REGISTER (mean) | "
        f"spread (max - min) | ratio to {trees[0].name} | retransmissions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    means: dict[str, float] = {}  # the first tree's, per workload
    for workload in dict.fromkeys(f.workload for f in figures):
        for t in trees:
            mine = [f for f in figures if f.tree is t and f.workload == workload]
            good = [f.per_op for f in mine if f.ok]
            retrans = sum(f.low.retransmissions + f.high.retransmissions for f in mine)
            mean = sum(good) / len(good) if good else 0.0
            if t is trees[0] and good:
                means[workload] = mean
            spread = f"{max(good) - min(good):,.0f}" if len(good) > 1 else "-"
            ratio = f"{mean / means[workload]:.3f}" if good and workload in means else "-"
            lines.append(
                f"| {t.name} | `{t.commit.split()[0]}` | {UNIT[workload]} | {len(good)} of "
                f"{len(mine)} | {f'{mean:,.0f}' if good else '-'} | {spread} | {ratio} | {retrans} |"
            )
    return lines


def report(
    figures: list[Figure], trees: list[Tree], args: argparse.Namespace, load: tuple[float, ...]
) -> str:
    first = trees[0].name
    lines = [
        "# Instructions per call and per REGISTER (callgrind)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} before the first run (instructions "
        "do not depend on it).",
        "",
        "`bench/instr_ab.py`: each tree's `python -m siptrio serve` (UDP only, WARNING logging,",
        "SQLite store) under `valgrind --tool=callgrind` with PYTHONHASHSEED=0; SIPp drives",
        f"N = {args.low} and N = {args.high} calls ({args.call_rate}/s: uac.xml → proxy → uas.xml",
        f"registered {WHO[trees[0].callee]}) or REGISTERs ({args.register_rate}/s, register.xml,",
        "a new AOR each), each load phase held to the same wall time, then SIGTERM. Per call",
        "or REGISTER = (I(N2) - I(N1)) / (N2 - N1) of callgrind's total instructions, so",
        "start-up and shutdown cancel out. Retransmissions: every SIPp's count plus repeats in",
        "the callee's and caller's message traces, both runs; a run with any is rejected.",
        "",
        *summary(figures, trees),
        "",
        "Every round:",
        "",
        "| tree | commit | workload | round | instructions per call / REGISTER | ratio to "
        f"{first} | I(N1) | I(N2) | retransmissions | counts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(f.workload, f.round): f for f in figures if f.tree.name == first and f.ok}
    for f in figures:
        ref = base.get((f.workload, f.round))
        ratio = f"{f.per_op / ref.per_op:.3f}" if ref is not None and f.ok else "-"
        counts = "yes" if f.ok else "no: " + "; ".join(
            f"N={r.count}: " + (r.note or f"{r.successful} ok, {r.failed} failed, "
            f"{r.retransmissions} retransmissions") for r in (f.low, f.high) if not r.ok
        )  # fmt: skip
        per_op = f"{f.per_op:,.0f}" if f.low.instructions and f.high.instructions else "-"
        lines.append(
            f"| {f.tree.name} | `{f.tree.commit.split()[0]}` | {UNIT[f.workload]} | {f.round} | "
            f"{per_op} | {ratio} | {f.low.instructions:,} | {f.high.instructions:,} | "
            f"{f.low.retransmissions + f.high.retransmissions} | {counts} |"
        )
    lines += ["", "Trees:", ""]
    for t in trees:
        dropped = f" (without `{'`, `'.join(t.dropped)}`: not in this tree)" if t.dropped else ""
        extra = "".join(f", `--set {k}={v}`" for k, v in t.extra.items())
        lines.append(f"- **{t.name}**: `{t.path}`, {t.commit}{extra}{dropped}")
    for f in figures:
        ref = base.get((f.workload, f.round))
        if ref is None or f.tree.name == first or not f.ok or f.round != 1:
            continue
        mine, theirs = per_op_by_function(f.low, f.high), per_op_by_function(ref.low, ref.high)
        diffs = sorted(
            ((mine.get(n, 0.0) - theirs.get(n, 0.0), n) for n in set(mine) | set(theirs)),
            key=lambda d: -abs(d[0]),
        )[: args.top]
        lines += [
            "",
            f"### {f.tree.name} against {first}: {UNIT[f.workload]}, functions that changed most",
            "",
            f"Own instructions (not callees') per {UNIT[f.workload]} in round 1, (N2 - N1)",
            "differences of `callgrind_annotate --inclusive=no` (C functions: Python code runs",
            "inside `_PyEval_EvalFrameDefault`; glibc's malloc moves with heap layout).",
            "",
            f"| function | {first} | {f.tree.name} | change |",
            "|---|---|---|---|",
            *(
                f"| `{n}` | {theirs.get(n, 0.0):,.0f} | {mine.get(n, 0.0):,.0f} | {d:+,.0f} |"
                for d, n in diffs
            ),
        ]
    lines.append("")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_tree(text: str) -> Tree:
    name, sep, rest = text.partition("=")
    path, *sets = rest.split(",")
    if not sep or not name or not Path(path, "siptrio").is_dir() or any("=" not in s for s in sets):
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[,KEY=VALUE...], got {text!r}")
    extra = dict(s.split("=", 1) for s in sets)
    return Tree(name=name, path=Path(path).resolve(), extra=extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tree", type=parse_tree, action="append", required=True,
                   help="NAME=PATH[,KEY=VALUE...] a tree (and settings) to measure; repeatable, "
                   "ratios are to the first")  # fmt: skip
    p.add_argument("--counts", default="100,400", help="N1,N2 (default 100,400)")
    p.add_argument("--workloads", default="calls,register", help="calls,register (default both)")
    p.add_argument("--call-rate", type=int, default=5, help="calls/s (default 5)")
    p.add_argument("--register-rate", type=int, default=20, help="REGISTER/s (default 20)")
    p.add_argument("--callee", choices=("sipp", "own-port"), default="sipp",
                   help="who registers the callee: a second SIPp, as calls_udp.py (default), "
                   "or this script from the callee's own port (trees before d27a5da)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, help="rounds of every run (default 1)")
    p.add_argument("--slack", type=float, default=20.0,
                   help="seconds of the held load phase past N2's run (default 20)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--top", type=int, default=15, help="functions listed per comparison")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"report (default {RESULTS})")
    args = p.parse_args(argv)
    args.low, args.high = sorted(int(n) for n in args.counts.split(","))
    workloads = [w for w in args.workloads.split(",") if w]
    if any(w not in WORKLOADS for w in workloads) or args.low >= args.high or args.low < 1:
        p.error("--workloads takes calls and/or register; --counts two different counts >= 1")
    for tool in ("valgrind", "callgrind_annotate", "sipp"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed (Debian: apt install valgrind sip-tester)")
    load = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-bench-instr-"))
    say(f"scratch folder {scratch}")
    try:
        for tree in args.tree:
            tree.callee = args.callee
            prepare(tree, scratch)
            say(f"{tree.name}: {tree.commit}")
        rates = {"calls": args.call_rate, "register": args.register_rate}
        plan = [
            (tree, w, n, rates[w], args.high / rates[w] + args.slack, r)
            for r in range(1, args.rounds + 1)
            for w in workloads
            for n in (args.high, args.low)
            for tree in args.tree
        ]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(measure, *job, scratch) for job in plan]
            runs = [f.result() for f in futures]
        found = {(r.tree, r.workload, r.count, r.round): r for r in runs}
        figures = [
            Figure(t, w, found[t.name, w, args.low, r], found[t.name, w, args.high, r], r)
            for r in range(1, args.rounds + 1)
            for w in workloads
            for t in args.tree
        ]
        text = report(figures, args.tree, args, load)
    finally:
        if args.keep:
            say(f"scratch folder kept: {scratch}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(scratch)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    say(f"written to {args.output}")
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
