"""siptrio beside Kamailio: the same loads, A B A B, per server CPU-second.

    .venv/bin/python bench/compare.py [--quick] [--repeat 2] [--keep]

Needs SIPp (Debian ``sip-tester``), Kamailio (``kamailio`` and
``kamailio-websocket-modules``) and matplotlib (``pip install -e '.[bench]'``). Runs on
127.0.0.1 only. For each figure, each server is measured in turn, siptrio then Kamailio,
``--repeat`` times (A B A B with the default 2), each run on a fresh server process:

1. REGISTER over UDP: SIPp (examples/sipp/register.xml, a new AOR per REGISTER) at fixed
   rates, ascending; a rate counts with 0 failed REGISTERs and >= 95 % of the rate
   achieved; a server's ladder stops at its first rate that does not count.
2. Calls through the proxy, UDP to UDP: a SIPp caller (uac.xml) and a SIPp callee
   (uas.xml in server mode, registered by a second SIPp with register-contact.xml), as
   bench/calls_udp.py; a rate counts with 0
   failed calls, 0 retransmissions and >= 95 % achieved.
3. WebSocket scale: N SIP.js-shaped WebSocket flows (bench/ws_scale.py's client), each
   REGISTERed, held while the server pings them, verified, closed: handshake+REGISTER
   rate, flows registered and alive, memory per flow.
4. Latency at a fixed moderate rate (200 calls/s, 200 REGISTER/s): p50/p99 of
   INVITE->200 and REGISTER->200 from SIPp's -trace_shortmsg microsecond timestamps.

Server CPU is utime + stime of the server's whole process tree (Kamailio forks workers)
from /proc, read just before and just after the load. Memory per WS flow is the growth
of the tree's summed Pss (each shared page counted once) over N; the summed VmRSS is
reported beside it. Writes bench/results/compare.md and bench/results/compare.png.
``--quick`` (fewer rates, shorter runs, 2,000 WS flows) takes about five minutes; the
full run about twenty.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calls_udp
import register_udp
import ws_scale
from common import (
    REPO,
    Kamailio,
    free_tcp_port,
    free_udp_port,
    kamailio_version,
    machine_busy_seconds,
    sipp_elapsed,
    sipp_final_stats,
    stop_tree,
    tcp_listening,
    tree_cpu_seconds,
    tree_memory,
)

RESULTS = REPO / "bench" / "results" / "compare.md"
SERVERS = ("siptrio", "kamailio")
SUSTAINED = 0.95  # achieved / asked below this: the rate was not really offered
REGISTER_SCENARIO = REPO / "examples" / "sipp" / "register.xml"
NAN = float("nan")

# issue 9's targets for siptrio on this 2-core machine
TARGET_REGISTER_PER_CPU = 8000
TARGET_CALLS_PER_CPU = 1000
TARGET_CALL_RATE = 500
TARGET_WS_FLOWS = 10000
TARGET_WS_KIB = 36
TARGET_P99_MS = 10.0

# One UDP worker: with two, the 180 and the 200 of a call are relayed by different
# workers and the 200 sometimes overtakes the 180; uac.xml then takes the late 180 for
# an unexpected message and aborts the call (6 of 2,000 calls at 500 calls/s). One
# worker keeps a dialog's order, as siptrio's single process does. Two TCP/WS workers.
#
# WebSocket keep-alive: Kamailio's one setting is both the idleness before a Ping and the
# time the Pong has to come (else it closes the flow). siptrio pings every 5 s and waits
# 10 s for the Pong; Kamailio at 5 s closed a few of 10,000 flows whose Pong came late
# from the busy Python client, so it gets siptrio's 10 s deadline (and pings less often).
KAMAILIO_DEFINES = {"CHILDREN": "1", "TCP_CHILDREN": "2", "WS_KEEPALIVE": "10"}
# Shared memory: each WebSocket flow takes about 70 KiB of it, so 10,000 flows need more
# than 512 MiB (past that Kamailio answers 500 and drops handshakes). Pages are only
# counted once touched, so the size itself costs nothing.
KAMAILIO_SHM_MB = 1536


@dataclass(frozen=True, kw_only=True)
class Plan:
    name: str
    register_rates: tuple[int, ...]
    register_seconds: float
    call_rates: tuple[int, ...]
    call_seconds: float
    ws_counts: tuple[int, ...]
    ws_hold: float
    latency_call_rate: int = 200
    latency_register_rate: int = 200
    # None: the calls ladder's run at latency_call_rate gives the call latency
    latency_call_seconds: float | None = None
    latency_register_seconds: float = 5.0


FULL = Plan(
    name="full",
    # Steps of at most ~20 % where a server's limit lies: a coarse ladder understates
    # the best counting rate of whichever server falls between two rungs.
    register_rates=(500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 16000),
    register_seconds=5.0,
    call_rates=(100, 200, 300, 400, 500, 600, 700, 850, 1000, 1200, 1400, 1700, 2000),
    call_seconds=10.0,
    ws_counts=(1000, 10000),
    ws_hold=12.0,
    latency_call_seconds=20.0,
    latency_register_seconds=20.0,
)
QUICK = Plan(
    name="quick",
    register_rates=(1000, 2000, 4000, 8000),
    register_seconds=3.0,
    call_rates=(200, 500, 1000),
    call_seconds=4.0,
    ws_counts=(2000,),
    ws_hold=12.0,
    latency_call_seconds=None,
    latency_register_seconds=5.0,
)


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else NAN


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else NAN


def percentile(values: list[float], p: float) -> float:
    return calls_udp.percentile(values, p)


# --- the servers --------------------------------------------------------------------------------


@dataclass
class Running:
    """A server under test: the root of its process tree and the port the load goes to."""

    name: str
    pid: int
    port: int
    stop: Callable[[], int]


def start_server(name: str, kind: str, workdir: Path) -> Running:
    """A fresh server for one run: ``kind`` is "register", "calls" or "ws"."""
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "siptrio":
        return _start_siptrio(kind, workdir)
    return _start_kamailio(kind, workdir)


def _start_siptrio(kind: str, workdir: Path) -> Running:
    if kind == "calls":  # sip.domains=example.com, as bench/calls_udp.py
        proc, port = calls_udp.start_siptrio(workdir)
        return Running("siptrio", proc.pid, port, lambda: stop_tree(proc))
    for _attempt in range(3):
        if kind == "ws":  # WS only, caps raised, pings every 5 s, as bench/ws_scale.py
            server = ws_scale.Server(workdir, free_tcp_port())
            if server.wait_listening():
                return Running("siptrio", server.pid, server.port, server.stop)
            server.stop()
        else:  # UDP only, any domain, as bench/register_udp.py
            target = register_udp.SiptrioTarget()
            port = free_udp_port()
            target.start(workdir, port)
            if register_udp.options_probe(port):
                return Running("siptrio", target.pid, port, target.stop)
            target.stop()
    raise RuntimeError(f"siptrio did not start; see {workdir}")


def _start_kamailio(kind: str, workdir: Path) -> Running:
    for _attempt in range(3):
        kam = Kamailio(
            workdir,
            udp_port=free_udp_port(),
            tcp_port=free_tcp_port(),
            ws_port=free_tcp_port(),
            shm_mb=KAMAILIO_SHM_MB,
            defines=KAMAILIO_DEFINES,
        )
        if register_udp.options_probe(kam.udp_port, timeout=10) and tcp_listening(
            kam.ws_port, timeout=5
        ):
            port = kam.ws_port if kind == "ws" else kam.udp_port
            return Running("kamailio", kam.pid, port, kam.stop)
        kam.stop()
    tail = (workdir / "kamailio.log").read_text(errors="replace").splitlines()[-10:]
    raise RuntimeError("kamailio did not start:\n  " + "\n  ".join(tail))


# --- REGISTER over UDP --------------------------------------------------------------------------


@dataclass
class RegisterRun:
    server: str
    round: int
    rate: int
    count: int
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    achieved: float = 0.0
    server_cpu: float = NAN
    sipp_cpu: float = NAN
    others_cpu: float = NAN
    delays: list[float] = field(default_factory=list)  # REGISTER -> 200, ms, when traced
    note: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and self.successful == self.count
            and self.achieved >= SUSTAINED * self.rate
        )

    @property
    def per_cpu_second(self) -> float:
        return self.successful / self.server_cpu if self.server_cpu > 0 else NAN


def run_register_sipp(
    port: int, rate: int, count: int, workdir: Path, trace: bool
) -> tuple[int, dict[str, str], float]:
    """register.xml at ``rate`` for ``count`` REGISTERs; exit status, last stats row, CPU s."""
    stat = workdir / "sipp_stat.csv"
    cmd = [
        "sipp",
        f"127.0.0.1:{port}",
        *("-sf", str(REGISTER_SCENARIO)),
        *("-i", "127.0.0.1"),
        *("-p", str(free_udp_port())),
        *("-t", "u1"),
        *("-buff_size", "4194304"),
        *("-s", f"r{rate}u"),
        *("-m", str(count)),
        *("-r", str(rate)),
        *("-l", str(max(1000, rate * 2))),
        # an answer later than 5 s fails the REGISTER (and that rate) sooner than
        # SIPp's own 7 retransmissions would
        *("-recv_timeout", "5000"),
        *("-timeout", f"{count // rate + 60}s"),
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        *("-stf", str(stat)),
        *("-fd", "1"),
        "-trace_err",
        *("-error_file", str(workdir / "sipp_errors.log")),
        "-trace_screen",
        *("-screen_file", str(workdir / "sipp_screen.log")),
    ]
    if trace:
        cmd += ["-trace_shortmsg", "-shortmessage_file", str(workdir / "sipp_short.log")]
    with (workdir / "sipp.stdout").open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    rows: list[dict[str, str]] = []
    if stat.exists():
        with stat.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    return proc.returncode, (rows[-1] if rows else {}), usage.ru_utime + usage.ru_stime


def measure_register(
    server: str, rnd: int, rate: int, seconds: float, scratch: Path, trace: bool = False
) -> RegisterRun:
    count = int(rate * seconds)
    run = RegisterRun(server=server, round=rnd, rate=rate, count=count)
    workdir = scratch / f"register-{'lat-' if trace else ''}{server}-{rnd}-{rate}"
    try:
        srv = start_server(server, "register", workdir)
    except RuntimeError as e:
        run.note = str(e).splitlines()[0]
        return run
    try:
        time.sleep(0.5)  # start-up work settles
        cpu0, busy0 = tree_cpu_seconds(srv.pid), machine_busy_seconds()
        rc, stats, run.sipp_cpu = run_register_sipp(srv.port, rate, count, workdir, trace)
        time.sleep(0.5)  # the last store commit (siptrio)
        run.server_cpu = tree_cpu_seconds(srv.pid) - cpu0
        run.others_cpu = max(0.0, machine_busy_seconds() - busy0 - run.server_cpu - run.sipp_cpu)
    finally:
        stop_rc = srv.stop()
    run.successful = int(stats.get("SuccessfulCall(C)", 0))
    run.failed = int(stats.get("FailedCall(C)", count))
    run.retransmissions = int(stats.get("Retransmissions(C)", 0))
    elapsed = sipp_elapsed(stats)
    run.achieved = run.successful / elapsed if elapsed else 0.0
    if not stats:
        run.note = f"no SIPp statistics (exit {rc})"
    elif stop_rc not in (0, -15):
        run.note = f"server exit {stop_rc}"
    if trace:
        trace_file = calls_udp.Trace.read(workdir / "sipp_short.log")
        run.delays = trace_file.delays("REGISTER", "REGISTER", "SIP/2.0 200")
    return run


# --- calls through the proxy ------------------------------------------------------------------


@dataclass
class CallRun:
    server: str
    round: int
    rate: int
    count: int
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    achieved: float = 0.0
    server_cpu: float = NAN
    sipp_cpu: float = NAN
    others_cpu: float = NAN
    invite_100: list[float] = field(default_factory=list)
    invite_200: list[float] = field(default_factory=list)
    bye_200: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and self.retransmissions == 0
            and self.successful == self.count
            and self.achieved >= SUSTAINED * self.rate
        )

    @property
    def per_cpu_second(self) -> float:
        return self.successful / self.server_cpu if self.server_cpu > 0 else NAN


def measure_calls(
    server: str, rnd: int, rate: int, seconds: float, scratch: Path, label: str = "calls"
) -> CallRun:
    count = int(rate * seconds)
    run = CallRun(server=server, round=rnd, rate=rate, count=count)
    workdir = scratch / f"{label}-{server}-{rnd}-{rate}"
    try:
        srv = start_server(server, "calls", workdir)
    except RuntimeError as e:
        run.note = str(e).splitlines()[0]
        return run
    notes: list[str] = []
    try:
        try:
            callee = calls_udp.start_callee(srv.port, workdir)
        except RuntimeError as e:
            run.note = str(e)
            return run
        try:
            time.sleep(0.5)
            cpu0, busy0 = tree_cpu_seconds(srv.pid), machine_busy_seconds()
            callee0 = tree_cpu_seconds(callee.pid)
            rc, caller_cpu = calls_udp.run_caller(srv.port, rate, count, workdir)
            time.sleep(0.5)  # the last BYEs
            run.server_cpu = tree_cpu_seconds(srv.pid) - cpu0
            run.sipp_cpu = caller_cpu + tree_cpu_seconds(callee.pid) - callee0
            run.others_cpu = max(
                0.0, machine_busy_seconds() - busy0 - run.server_cpu - run.sipp_cpu
            )
        finally:
            callee_rc = calls_udp.stop_callee(callee)
        if callee_rc != 0:
            notes.append(f"callee exit {callee_rc}")
    finally:
        stop_rc = srv.stop()
    if stop_rc not in (0, -15):
        notes.append(f"server exit {stop_rc}")
    stats = sipp_final_stats(workdir / "caller_stat.csv")
    if not stats:
        notes.append(f"no caller statistics (exit {rc})")
    caller = calls_udp.Trace.read(workdir / "caller_short.log")
    callee_trace = calls_udp.Trace.read(workdir / "callee_short.log")
    run.successful = int(stats.get("SuccessfulCall(C)", 0))
    run.failed = int(stats.get("FailedCall(C)", count))
    run.retransmissions = int(stats.get("Retransmissions(C)", 0)) + callee_trace.repeats()
    elapsed = sipp_elapsed(stats)
    run.achieved = run.successful / elapsed if elapsed else 0.0
    run.invite_100 = caller.delays("INVITE", "INVITE", "SIP/2.0 100")
    run.invite_200 = caller.delays("INVITE", "INVITE", "SIP/2.0 200")
    run.bye_200 = caller.delays("BYE", "BYE", "SIP/2.0 200")
    run.note = "; ".join(notes)
    return run


# --- WebSocket scale ------------------------------------------------------------------------------


@dataclass
class WsRun:
    server: str
    round: int
    n: int
    registered: int = 0
    alive: int = 0
    bound: int = 0
    still_bound: int = -1
    pings_min: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    server_cpu: float = NAN
    client_cpu: float = NAN
    others_cpu: float = NAN
    pss_before: int = 0  # KiB, summed over the server's process tree
    pss_held: int = 0
    rss_before: int = 0
    rss_held: int = 0
    processes: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.registered == self.n == self.alive == self.bound and self.still_bound == 0

    @property
    def rate(self) -> float:
        return self.registered / self.wall if self.wall else 0.0

    @property
    def per_cpu_second(self) -> float:
        return self.registered / self.server_cpu if self.server_cpu > 0 else NAN

    @property
    def kib_per_flow(self) -> float:
        """Per flow held (the registered ones), not per flow asked for."""
        if not self.pss_held or not self.registered:
            return NAN
        return (self.pss_held - self.pss_before) / self.registered

    @property
    def rss_kib_per_flow(self) -> float:
        if not self.rss_held or not self.registered:
            return NAN
        return (self.rss_held - self.rss_before) / self.registered


def measure_ws(server: str, rnd: int, n: int, hold: float, scratch: Path) -> WsRun:
    """bench/ws_scale.py's run, for either server, with memory and CPU of the whole tree."""
    run = WsRun(server=server, round=rnd, n=n)
    workdir = scratch / f"ws-{server}-{rnd}-{n}"
    clients = 1 if n < 5000 else 2  # the Python client is slower than either server
    concurrency = 200
    try:
        srv = start_server(server, "ws", workdir)
    except RuntimeError as e:
        run.note = str(e).splitlines()[0]
        return run
    try:
        warm = ws_scale.Clients(srv.port, ws_scale.WARM_UP, 1, "warm", concurrency)
        try:
            for step in ("ready", "registered", "verified", "closed"):
                warm.expect(step)
                if step != "closed":
                    warm.tell({"ready": "go", "registered": "verify", "verified": "close"}[step])
            warm.wait()
        finally:
            warm.kill()
        time.sleep(1.0)
        before = tree_memory(srv.pid)
        run.pss_before, run.rss_before = before.pss, before.rss
        load = ws_scale.Clients(srv.port, n, clients, f"n{n}u", concurrency)
        try:
            load.expect("ready")
            cpu0, busy0 = tree_cpu_seconds(srv.pid), machine_busy_seconds()
            started = time.monotonic()
            load.tell("go")
            registered = load.expect("registered")
            run.wall = time.monotonic() - started
            time.sleep(0.5)
            run.server_cpu = tree_cpu_seconds(srv.pid) - cpu0
            run.registered = sum(r["ok"] for r in registered)
            run.client_cpu = sum(r["cpu"] for r in registered)
            run.others_cpu = max(
                0.0, machine_busy_seconds() - busy0 - run.server_cpu - run.client_cpu
            )
            for r in registered:
                for reason, count in r["errors"].items():
                    run.errors[reason] = run.errors.get(reason, 0) + count
            time.sleep(hold)
            held = tree_memory(srv.pid)
            run.pss_held, run.rss_held, run.processes = held.pss, held.rss, held.processes
            load.tell("verify")
            verified = load.expect("verified")
            run.alive = sum(v["alive"] for v in verified)
            run.bound = sum(v["bound"] for v in verified)
            run.pings_min = min(v["pings_min"] for v in verified)
            load.tell("close")
            closed = load.expect("closed")
            run.still_bound = sum(c["still_bound"] for c in closed)
            load.wait()
        finally:
            load.kill()
    except RuntimeError as e:
        run.note = str(e).splitlines()[0]
    finally:
        stop_rc = srv.stop()
    if stop_rc not in (0, -15):
        run.note = (run.note + "; " if run.note else "") + f"server exit {stop_rc}"
    return run


LadderRun = TypeVar("LadderRun", RegisterRun, CallRun)


# --- the run ------------------------------------------------------------------------------------


def ladder(
    rates: tuple[int, ...],
    rounds: int,
    measure: Callable[[str, int, int], LadderRun],
    show: Callable[[LadderRun], str],
) -> list[LadderRun]:
    """Per round, rates ascending, siptrio then Kamailio at each; a server stops at its first miss."""
    runs: list[LadderRun] = []
    for rnd in range(1, rounds + 1):
        climbing = list(SERVERS)
        for rate in rates:
            for server in list(climbing):
                run = measure(server, rnd, rate)
                runs.append(run)
                print(show(run), flush=True)
                if not run.ok:
                    climbing.remove(server)
            if not climbing:
                break
    return runs


@dataclass
class Results:
    plan: Plan
    rounds: int
    load_start: tuple[float, float, float]
    started: datetime
    load_end: tuple[float, float, float] = (NAN, NAN, NAN)
    register: list[RegisterRun] = field(default_factory=list)
    calls: list[CallRun] = field(default_factory=list)
    ws: list[WsRun] = field(default_factory=list)
    latency_calls: list[CallRun] = field(default_factory=list)
    latency_register: list[RegisterRun] = field(default_factory=list)
    minutes: float = 0.0
    # siptrio's commit when the run started and ended (others may commit meanwhile)
    revision_start: str = ""
    revision_end: str = ""


def run_all(plan: Plan, rounds: int, scratch: Path, only: set[str]) -> Results:
    res = Results(
        plan=plan,
        rounds=rounds,
        load_start=os.getloadavg(),
        started=datetime.now(UTC),
        revision_start=siptrio_revision(),
    )
    t0 = time.monotonic()
    if "register" in only:
        print("## REGISTER over UDP", flush=True)
        res.register = ladder(
            plan.register_rates,
            rounds,
            lambda s, r, rate: measure_register(s, r, rate, plan.register_seconds, scratch),
            register_row,
        )
    if "calls" in only:
        print("## calls UDP -> UDP", flush=True)
        res.calls = ladder(
            plan.call_rates,
            rounds,
            lambda s, r, rate: measure_calls(s, r, rate, plan.call_seconds, scratch),
            call_row,
        )
    if "ws" in only:
        print("## WebSocket scale", flush=True)
        limit = ws_scale.raise_fd_limit()
        for rnd in range(1, rounds + 1):
            for n in plan.ws_counts:
                if n + 100 > limit:
                    print(f"compare: skipping N={n}: RLIMIT_NOFILE is {limit}", file=sys.stderr)
                    continue
                for server in SERVERS:
                    run = measure_ws(server, rnd, n, plan.ws_hold, scratch)
                    res.ws.append(run)
                    print(ws_row(run), flush=True)
    if "latency" in only:
        print("## latency", flush=True)
        for rnd in range(1, rounds + 1):
            for server in SERVERS:
                if plan.latency_call_seconds is not None:
                    call = measure_calls(
                        server,
                        rnd,
                        plan.latency_call_rate,
                        plan.latency_call_seconds,
                        scratch,
                        label="latency",
                    )
                    res.latency_calls.append(call)
                else:
                    call = next(
                        (
                            c
                            for c in res.calls
                            if (c.server, c.round, c.rate) == (server, rnd, plan.latency_call_rate)
                        ),
                        None,
                    ) or measure_calls(
                        server,
                        rnd,
                        plan.latency_call_rate,
                        plan.call_seconds,
                        scratch,
                        label="latency",
                    )
                    res.latency_calls.append(call)
                print(
                    latency_row(
                        "INVITE→200",
                        call.server,
                        rnd,
                        call.rate,
                        call.invite_200,
                        call.failed,
                        call.retransmissions,
                    ),
                    flush=True,
                )
            for server in SERVERS:
                reg = measure_register(
                    server,
                    rnd,
                    plan.latency_register_rate,
                    plan.latency_register_seconds,
                    scratch,
                    trace=True,
                )
                res.latency_register.append(reg)
                print(
                    latency_row(
                        "REGISTER→200",
                        reg.server,
                        rnd,
                        reg.rate,
                        reg.delays,
                        reg.failed,
                        reg.retransmissions,
                    ),
                    flush=True,
                )
    res.load_end = os.getloadavg()
    res.revision_end = siptrio_revision()
    res.minutes = (time.monotonic() - t0) / 60
    return res


def save_raw(res: Results, path: Path) -> None:
    """Every run's figures as JSON, for --report-from."""
    data = dataclasses.asdict(res)
    data["started"] = res.started.isoformat()
    path.write_text(json.dumps(data, indent=1))


def load_raw(path: Path) -> Results:
    data = json.loads(path.read_text())
    return Results(
        plan=Plan(**data["plan"]),
        rounds=data["rounds"],
        load_start=tuple(data["load_start"]),
        load_end=tuple(data["load_end"]),
        started=datetime.fromisoformat(data["started"]),
        register=[RegisterRun(**r) for r in data["register"]],
        calls=[CallRun(**r) for r in data["calls"]],
        ws=[WsRun(**r) for r in data["ws"]],
        latency_calls=[CallRun(**r) for r in data["latency_calls"]],
        latency_register=[RegisterRun(**r) for r in data["latency_register"]],
        minutes=data["minutes"],
        revision_start=data.get("revision_start", ""),
        revision_end=data.get("revision_end", ""),
    )


# --- rows and summaries ---------------------------------------------------------------------------


def fmt(v: float, digits: int = 0) -> str:
    return "-" if math.isnan(v) else f"{v:,.{digits}f}"


def counts(run: RegisterRun | CallRun | WsRun) -> str:
    text = "yes" if run.ok else "no"
    return f"{text} ({run.note})" if run.note else text


REGISTER_HEADER = (
    "| round | server | rate asked /s | REGISTERs | achieved /s | failed | retransmissions | "
    "server CPU s | **REGISTER per server CPU-s** | SIPp CPU s | others' CPU s | counts |"
)


def register_row(r: RegisterRun) -> str:
    return (
        f"| {r.round} | {r.server} | {r.rate} | {r.count} | {fmt(r.achieved)} | {r.failed} | "
        f"{r.retransmissions} | {fmt(r.server_cpu, 2)} | **{fmt(r.per_cpu_second)}** | "
        f"{fmt(r.sipp_cpu, 2)} | {fmt(r.others_cpu, 2)} | {counts(r)} |"
    )


CALL_HEADER = (
    "| round | server | rate asked /s | calls | achieved /s | failed | retransmissions | "
    "server CPU s | **calls per server CPU-s** | INVITE→200 p50 / p99 ms | SIPp CPU s | "
    "others' CPU s | counts |"
)


def call_row(r: CallRun) -> str:
    return (
        f"| {r.round} | {r.server} | {r.rate} | {r.count} | {fmt(r.achieved)} | {r.failed} | "
        f"{r.retransmissions} | {fmt(r.server_cpu, 2)} | **{fmt(r.per_cpu_second)}** | "
        f"{fmt(percentile(r.invite_200, 50), 2)} / {fmt(percentile(r.invite_200, 99), 2)} | "
        f"{fmt(r.sipp_cpu, 2)} | {fmt(r.others_cpu, 2)} | {counts(r)} |"
    )


WS_HEADER = (
    "| round | server | flows N | registered | alive and bound after the hold | "
    "handshake+REGISTER /s (wall) | server CPU s | **per server CPU-s** | client CPU s | "
    "others' CPU s | Pss before → held MiB | **KiB per flow (Pss)** | KiB per flow (RSS summed) | "
    "processes | unbound after close | ok |"
)


def ws_row(r: WsRun) -> str:
    errors = f" ({', '.join(f'{k}: {v}' for k, v in r.errors.items())})" if r.errors else ""
    return (
        f"| {r.round} | {r.server} | {r.n} | {r.registered}{errors} | "
        f"{min(r.alive, r.bound)} (>= {r.pings_min} pings each) | {fmt(r.rate)} | "
        f"{fmt(r.server_cpu, 2)} | **{fmt(r.per_cpu_second)}** | {fmt(r.client_cpu, 2)} | "
        f"{fmt(r.others_cpu, 2)} | {r.pss_before / 1024:.1f} → {r.pss_held / 1024:.1f} | "
        f"**{fmt(r.kib_per_flow, 1)}** | {fmt(r.rss_kib_per_flow, 1)} | {r.processes} | "
        f"{'yes' if r.still_bound == 0 else 'no'} | {counts(r)} |"
    )


def latency_row(
    what: str, server: str, rnd: int, rate: int, d: list[float], failed: int, retrans: int
) -> str:
    return (
        f"| {rnd} | {server} | {what} | {rate} | {len(d)} | {failed} | {retrans} | "
        f"{fmt(percentile(d, 50), 2)} | {fmt(percentile(d, 90), 2)} | "
        f"**{fmt(percentile(d, 99), 2)}** | {fmt(d[-1] if d else NAN, 2)} |"
    )


LATENCY_HEADER = (
    "| round | server | measure | rate /s | samples | failed | retransmissions | p50 ms | "
    "p90 ms | **p99 ms** | max ms |"
)


@dataclass
class LadderSummary:
    """One round of one ladder, among the runs that counted: each server's highest rate,
    its most efficient run (most per server CPU-second), and both at the highest rate both
    passed."""

    best: dict[str, RegisterRun | CallRun | None]
    efficient: dict[str, RegisterRun | CallRun | None]
    common_rate: int | None
    at_common: dict[str, RegisterRun | CallRun | None]


def summarise(runs: list[RegisterRun] | list[CallRun], rounds: int) -> list[LadderSummary]:
    out = []
    for rnd in range(1, rounds + 1):
        ok = {s: [r for r in runs if r.round == rnd and r.server == s and r.ok] for s in SERVERS}
        best = {s: max(ok[s], key=lambda r: r.rate, default=None) for s in SERVERS}
        rates = set.intersection(*({r.rate for r in ok[s]} for s in SERVERS))
        common = max(rates, default=None)
        at_common = {
            s: next((r for r in ok[s] if r.rate == common), None) if common else None
            for s in SERVERS
        }
        efficient = {s: max(ok[s], key=lambda r: r.per_cpu_second, default=None) for s in SERVERS}
        out.append(
            LadderSummary(best=best, efficient=efficient, common_rate=common, at_common=at_common)
        )
    return out


def efficient_rates(sums: list[LadderSummary]) -> str:
    """ "siptrio 3000/s, 2000/s; kamailio 8000/s, 8000/s": where each figure came from."""
    return "; ".join(
        f"{server} "
        + ", ".join(
            f"{run.rate}/s" if (run := s.efficient[server]) is not None else "-" for s in sums
        )
        for server in SERVERS
    )


@dataclass
class Figure:
    """A summary line: per round, siptrio's and Kamailio's value, and their ratio."""

    label: str
    siptrio: list[float]
    kamailio: list[float]
    digits: int = 0
    better: str = "higher"

    @property
    def ratios(self) -> list[float]:
        return [ratio(a, b) for a, b in zip(self.siptrio, self.kamailio, strict=True)]

    def row(self) -> str:
        def values(vs: list[float]) -> str:
            return ", ".join(fmt(v, self.digits) for v in vs)

        rs = self.ratios
        return (
            f"| {self.label} | {values(self.siptrio)} | {values(self.kamailio)} | "
            f"{', '.join(fmt(r, 3) for r in rs)} | **{fmt(median(rs), 3)}** | {self.better} |"
        )


def attr(run: object | None, name: str) -> float:
    if run is None:
        return NAN
    value = getattr(run, name)
    return float(value)


def figures(res: Results) -> list[Figure]:
    rounds = res.rounds
    figs: list[Figure] = []
    if res.register:
        sums = summarise(res.register, rounds)
        figs += [
            Figure(
                "REGISTER/s sustained with 0 failures (highest rate that counted)",
                [attr(s.best["siptrio"], "rate") for s in sums],
                [attr(s.best["kamailio"], "rate") for s in sums],
            ),
            Figure(
                "REGISTER per server CPU-second, each at its most efficient counting rate ("
                + efficient_rates(sums)
                + ")",
                [attr(s.efficient["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.efficient["kamailio"], "per_cpu_second") for s in sums],
            ),
            Figure(
                "REGISTER per server CPU-second at the same rate (highest both passed: "
                + ", ".join(f"{s.common_rate}/s" for s in sums)
                + ")",
                [attr(s.at_common["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.at_common["kamailio"], "per_cpu_second") for s in sums],
            ),
        ]
    if res.calls:
        sums = summarise(res.calls, rounds)
        figs += [
            Figure(
                "calls/s sustained with 0 failures and 0 retransmissions",
                [attr(s.best["siptrio"], "rate") for s in sums],
                [attr(s.best["kamailio"], "rate") for s in sums],
            ),
            Figure(
                "calls per server CPU-second, each at its most efficient counting rate ("
                + efficient_rates(sums)
                + ")",
                [attr(s.efficient["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.efficient["kamailio"], "per_cpu_second") for s in sums],
            ),
            Figure(
                "calls per server CPU-second at the same rate ("
                + ", ".join(f"{s.common_rate}/s" for s in sums)
                + ")",
                [attr(s.at_common["siptrio"], "per_cpu_second") for s in sums],
                [attr(s.at_common["kamailio"], "per_cpu_second") for s in sums],
            ),
        ]
    for n in sorted({r.n for r in res.ws}):

        def pick(server: str, rnd: int, n: int = n) -> WsRun | None:
            return next((w for w in res.ws if (w.server, w.round, w.n) == (server, rnd, n)), None)

        per = {s: [pick(s, rnd) for rnd in range(1, rounds + 1)] for s in SERVERS}
        figs += [
            Figure(
                f"WS N={n}: flows registered, alive and bound",
                [attr(r, "registered") if r and r.ok else 0.0 for r in per["siptrio"]],
                [attr(r, "registered") if r and r.ok else 0.0 for r in per["kamailio"]],
            ),
            Figure(
                f"WS N={n}: handshake+REGISTER per server CPU-second",
                [attr(r, "per_cpu_second") for r in per["siptrio"]],
                [attr(r, "per_cpu_second") for r in per["kamailio"]],
            ),
            Figure(
                f"WS N={n}: handshake+REGISTER /s (wall clock)",
                [attr(r, "rate") for r in per["siptrio"]],
                [attr(r, "rate") for r in per["kamailio"]],
            ),
            Figure(
                f"WS N={n}: KiB of server memory per flow (Pss of the tree)",
                [attr(r, "kib_per_flow") for r in per["siptrio"]],
                [attr(r, "kib_per_flow") for r in per["kamailio"]],
                digits=1,
                better="lower",
            ),
            Figure(
                f"WS N={n}: KiB per flow (VmRSS summed over the tree)",
                [attr(r, "rss_kib_per_flow") for r in per["siptrio"]],
                [attr(r, "rss_kib_per_flow") for r in per["kamailio"]],
                digits=1,
                better="lower",
            ),
        ]

    def lat(
        runs: list[RegisterRun] | list[CallRun], server: str, p: float, key: str
    ) -> list[float]:
        mine: list[RegisterRun | CallRun] = [run for run in runs if run.server == server]
        return [percentile(getattr(run, key), p) for run in sorted(mine, key=lambda x: x.round)]

    if res.latency_calls:
        rate = res.plan.latency_call_rate
        for p in (50, 99):
            figs.append(
                Figure(
                    f"INVITE→200 p{p} ms at {rate} calls/s",
                    lat(res.latency_calls, "siptrio", p, "invite_200"),
                    lat(res.latency_calls, "kamailio", p, "invite_200"),
                    digits=2,
                    better="lower",
                )
            )
    if res.latency_register:
        rate = res.plan.latency_register_rate
        for p in (50, 99):
            figs.append(
                Figure(
                    f"REGISTER→200 p{p} ms at {rate} REGISTER/s",
                    lat(res.latency_register, "siptrio", p, "delays"),
                    lat(res.latency_register, "kamailio", p, "delays"),
                    digits=2,
                    better="lower",
                )
            )
    return figs


def targets(res: Results) -> list[str]:
    """issue 9's targets for siptrio: met or missed, by how much, per round."""
    lines = [
        "| target (issue 9) | siptrio, per round | met? | by how much (median) | Kamailio, per round |",
        "|---|---|---|---|---|",
    ]

    def line(
        label: str,
        vals: list[float],
        kvals: list[float],
        goal: float,
        higher: bool,
        digits: int = 0,
        unit: str = "",
        not_measured: str = "",
    ) -> None:
        m = median(vals)
        if math.isnan(m) or not_measured:
            met, by = "not measured", not_measured or "-"
        else:
            met = "met" if (m >= goal if higher else m <= goal) else "**missed**"
            by = f"{m / goal:.2f}x the target ({fmt(m - goal, digits)}{unit})"
        lines.append(
            f"| {label} | {', '.join(fmt(v, digits) for v in vals)} | {met} | {by} | "
            f"{', '.join(fmt(v, digits) for v in kvals)} |"
        )

    def per_cpu(runs: list[RegisterRun] | list[CallRun], label: str, goal: int) -> None:
        """The absolute goal, then the same goal as the issue derives it, a third of
        Kamailio's figure, read against Kamailio in the same round."""
        sums = summarise(runs, res.rounds)
        mine = [attr(s.efficient["siptrio"], "per_cpu_second") for s in sums]
        theirs = [attr(s.efficient["kamailio"], "per_cpu_second") for s in sums]
        line(f"{label} >= {goal:,} per server CPU-second", mine, theirs, goal, True)
        line(
            f"{label} per server CPU-second >= 1/3 of Kamailio's (ratio, same round)",
            [ratio(a, b) for a, b in zip(mine, theirs, strict=True)],
            [NAN for _ in theirs],
            1 / 3,
            True,
            3,
        )

    if res.register:
        per_cpu(res.register, "REGISTER over UDP", TARGET_REGISTER_PER_CPU)
    if res.calls:
        sums = summarise(res.calls, res.rounds)
        per_cpu(res.calls, "calls UDP→UDP", TARGET_CALLS_PER_CPU)
        line(
            f">= {TARGET_CALL_RATE} calls/s with 0 failed calls (and 0 retransmissions)",
            [attr(s.best["siptrio"], "rate") for s in sums],
            [attr(s.best["kamailio"], "rate") for s in sums],
            TARGET_CALL_RATE,
            True,
        )
    if res.ws:
        n = max(r.n for r in res.ws)
        runs = {s: [r for r in res.ws if r.server == s and r.n == n] for s in SERVERS}
        line(
            f"{TARGET_WS_FLOWS:,} WS flows held (measured: N={n})",
            [float(min(r.registered, r.alive, r.bound)) for r in runs["siptrio"]],
            [float(min(r.registered, r.alive, r.bound)) for r in runs["kamailio"]],
            TARGET_WS_FLOWS,
            True,
            not_measured="" if n >= TARGET_WS_FLOWS else f"only N={n} in this plan",
        )
        line(
            f"<= {TARGET_WS_KIB} KiB per WS flow (N={n}, Pss)",
            [r.kib_per_flow for r in runs["siptrio"]],
            [r.kib_per_flow for r in runs["kamailio"]],
            TARGET_WS_KIB,
            False,
            1,
            " KiB",
        )
    if res.latency_calls:
        line(
            f"p99 INVITE→200 <= {TARGET_P99_MS:g} ms at {res.plan.latency_call_rate} calls/s",
            [percentile(r.invite_200, 99) for r in res.latency_calls if r.server == "siptrio"],
            [percentile(r.invite_200, 99) for r in res.latency_calls if r.server == "kamailio"],
            TARGET_P99_MS,
            False,
            2,
            " ms",
        )
    return lines


# --- the report -------------------------------------------------------------------------------------


def siptrio_revision() -> str:
    """The commit measured, and whether siptrio/ had uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "siptrio",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "siptrio revision unknown"
    return f"siptrio at {head}" + (" with uncommitted changes in siptrio/" if dirty else "")


def revisions(res: Results) -> str:
    start, end = res.revision_start, res.revision_end
    if not start:
        return siptrio_revision() + " when the report was written"
    if end and end != start:
        if _same_siptrio(start, end):
            return f"{start} at the start, {end} at the end (commits outside siptrio/ only)"
        return f"{start} at the start, **{end} at the end** (siptrio changed during the run)"
    return start


def _same_siptrio(start: str, end: str) -> bool:
    """Whether two clean "siptrio at <commit>" revisions have the same siptrio/ tree."""
    prefix = "siptrio at "
    if not (start.startswith(prefix) and end.startswith(prefix)) or " " in start[len(prefix) :]:
        return False
    if " " in end[len(prefix) :]:
        return False
    try:
        diff = subprocess.run(
            ["git", "diff", "--quiet", start[len(prefix) :], end[len(prefix) :], "--", "siptrio"],
            cwd=REPO,
            capture_output=True,
        )
    except OSError:
        return False
    return diff.returncode == 0


def ceiling_notes(res: Results) -> list[str]:
    """Say so where a server passed the ladder's top rate: its ceiling was not reached."""
    notes = []
    for label, runs, rates in (
        ("REGISTER", res.register, res.plan.register_rates),
        ("calls", res.calls, res.plan.call_rates),
    ):
        top = max(rates)
        for server in SERVERS:
            sums = summarise(runs, res.rounds) if runs else []
            rounds = [b.round for s in sums if (b := s.best[server]) is not None and b.rate == top]
            if rounds:
                notes.append(
                    f"- {label}: {server} passed the ladder's highest rate ({top}/s) in round(s) "
                    f"{', '.join(map(str, rounds))}: its ceiling is higher, so there the "
                    "sustained-rate ratio is an upper bound."
                )
    return [*notes, ""] if notes else []


def machine() -> str:
    base = register_udp.machine()
    return f"{base}, Kamailio {kamailio_version() or '?'}"


def report(res: Results, png: Path | None) -> str:
    plan = res.plan
    la, le = res.load_start, res.load_end
    figs = figures(res)
    kam_workers = (
        f"{KAMAILIO_DEFINES['CHILDREN']} UDP worker, {KAMAILIO_DEFINES['TCP_CHILDREN']} TCP/WS "
        f"workers, -m {KAMAILIO_SHM_MB} -M 16"
    )
    lines = [
        "# siptrio beside Kamailio",
        "",
        f"Measured {res.started:%Y-%m-%d %H:%M} UTC on {machine()}; {revisions(res)}.",
        f"Plan `{plan.name}` (`bench/compare.py{' --quick' if plan.name == 'quick' else ''} "
        f"--repeat {res.rounds}`), {res.minutes:.1f} minutes. Load average "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1 / 5 / 15 min) at the start, "
        f"{le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f} at the end.",
        "",
        "Everything on 127.0.0.1, each run on a fresh server process: siptrio as the other",
        "benchmarks start it (`python -m siptrio serve`, WARNING logging, SQLite bindings), Kamailio",
        "with `bench/kamailio.cfg` (registrar with in-memory usrloc, tm + rr stateful proxy, no auth;",
        f"{kam_workers}). For each figure each round runs siptrio then",
        "Kamailio at each rate (A B A B over the rounds). **Server CPU** is utime + stime of the",
        "server's whole process tree from /proc, just before the load to just after it (all of",
        "Kamailio's processes, siptrio's one). *Others' CPU* is the machine's busy time in the run",
        "less the server and the load generators: other people's work on this shared machine.",
        "",
        "Kamailio runs one UDP worker: with two, a call's 180 and 200 are relayed by different",
        "workers and the 200 sometimes overtakes the 180, which SIPp's `uac.xml` takes for an",
        "unexpected message and aborts the call (6 of 2,000 calls at 500 calls/s). One worker",
        "keeps a dialog in order, as siptrio's single process does; per CPU-second figures do",
        "not depend on it.",
        "",
        "**The machine is shared and noisy: the ratios of one run, repeated, are the figures that",
        "count.** Ratios are siptrio / Kamailio; for throughput above 1 means siptrio does more,",
        "for memory and latency above 1 means siptrio uses more or is slower.",
        "",
        "## Summary",
        "",
        "| figure | siptrio (per round) | Kamailio (per round) | ratio siptrio/Kamailio (per round) "
        "| median ratio | better is |",
        "|---|---|---|---|---|---|",
        *(f.row() for f in figs),
        "",
        *ceiling_notes(res),
        "## Targets",
        "",
        *targets(res),
        "",
    ]
    if png is not None:
        lines += [f"![per CPU-second throughput and memory per WS flow]({png.name})", ""]
    if res.register:
        lines += [
            "## REGISTER over UDP",
            "",
            f"SIPp `examples/sipp/register.xml`, a new AOR per REGISTER, {plan.register_seconds:g} s "
            "per rate; a rate counts",
            f"with 0 failed REGISTERs and >= {SUSTAINED:.0%} of the rate achieved (SIPp fails a "
            "REGISTER unanswered after 5 s).",
            "siptrio commits every binding to SQLite; Kamailio keeps them in memory (usrloc "
            "db_mode 0).",
            "",
            REGISTER_HEADER,
            "|" + "---|" * (REGISTER_HEADER.count("|") - 1),
            *(register_row(r) for r in res.register),
            "",
        ]
    if res.calls:
        lines += [
            "## Calls through the proxy, UDP → UDP",
            "",
            "SIPp caller `uac.xml` → server → SIPp callee (`uas.xml` in server mode, "
            "registered as bob@example.com by a second SIPp with `register-contact.xml`), "
            f"{plan.call_seconds:g} s per rate:",
            "INVITE, 100, 180, 200, ACK and BYE along the Record-Route, 200. A rate counts with "
            "0 failed calls,",
            "0 retransmissions (the caller's, plus every repeat the callee sent or received) and "
            f">= {SUSTAINED:.0%} achieved.",
            "SIPp CPU is both SIPps'.",
            "",
            CALL_HEADER,
            "|" + "---|" * (CALL_HEADER.count("|") - 1),
            *(call_row(r) for r in res.calls),
            "",
        ]
    if res.ws:
        lines += [
            "## WebSocket scale",
            "",
            "`bench/ws_scale.py`'s client (wsproto over Trio, SIP.js-shaped handshake and REGISTER, "
            "200 handshakes in flight,",
            "two client processes from 5,000 flows), after 100 warm-up connect-REGISTER-close "
            f"cycles; flows held {plan.ws_hold:g} s while",
            "the server pings them (siptrio every 5 s, `keepalive_interval=5`, Pong due within "
            "10 s; Kamailio after 10 s idle,",
            "websocket `keepalive_timeout=10`, which is also its Pong deadline), then",
            "every flow fetches its own binding and all close (bindings must go with their "
            "connections). Memory per flow is",
            "(tree memory held - tree memory before) / flows registered: Pss summed over the tree counts each page "
            "once; VmRSS summed",
            "counts Kamailio's shared memory once per worker that touched it, so it overstates "
            "Kamailio's.",
            "",
            WS_HEADER,
            "|" + "---|" * (WS_HEADER.count("|") - 1),
            *(ws_row(r) for r in res.ws),
            "",
        ]
    if res.latency_calls or res.latency_register:
        source = (
            f"a dedicated {plan.latency_call_seconds:g} s run"
            if plan.latency_call_seconds is not None
            else "the calls ladder's run at that rate"
        )
        lines += [
            "## Latency",
            "",
            f"INVITE→200 at {plan.latency_call_rate} calls/s ({source}), REGISTER→200 at "
            f"{plan.latency_register_rate} REGISTER/s (a dedicated {plan.latency_register_seconds:g} s "
            "run),",
            "from the first send of the request to the first receipt of the answer in SIPp's "
            "`-trace_shortmsg` file",
            "(microsecond timestamps, taken when SIPp handles the message: they include the "
            "SIPps' scheduling).",
            "",
            LATENCY_HEADER,
            "|" + "---|" * (LATENCY_HEADER.count("|") - 1),
        ]
        for c in res.latency_calls:
            lines.append(
                latency_row(
                    "INVITE→100",
                    c.server,
                    c.round,
                    c.rate,
                    c.invite_100,
                    c.failed,
                    c.retransmissions,
                )
            )
            lines.append(
                latency_row(
                    "INVITE→200",
                    c.server,
                    c.round,
                    c.rate,
                    c.invite_200,
                    c.failed,
                    c.retransmissions,
                )
            )
            lines.append(
                latency_row(
                    "BYE→200", c.server, c.round, c.rate, c.bye_200, c.failed, c.retransmissions
                )
            )
        for r in res.latency_register:
            lines.append(
                latency_row(
                    "REGISTER→200", r.server, r.round, r.rate, r.delays, r.failed, r.retransmissions
                )
            )
        lines.append("")
    return "\n".join(lines)


def chart(res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"siptrio": "#2a7ab0", "kamailio": "#d9822b"}
    groups: list[tuple[str, dict[str, list[float]]]] = []
    if res.register:
        sums = summarise(res.register, res.rounds)
        groups.append(
            (
                "REGISTER\n(UDP)",
                {s: [attr(x.efficient[s], "per_cpu_second") for x in sums] for s in SERVERS},
            )
        )
    if res.calls:
        sums = summarise(res.calls, res.rounds)
        groups.append(
            (
                "calls\n(UDP→UDP)",
                {s: [attr(x.efficient[s], "per_cpu_second") for x in sums] for s in SERVERS},
            )
        )
    ws_n = sorted({r.n for r in res.ws})
    for n in ws_n:
        groups.append(
            (
                f"WS handshake\n+REGISTER (N={n})",
                {
                    s: [r.per_cpu_second for r in res.ws if r.server == s and r.n == n]
                    for s in SERVERS
                },
            )
        )

    fig, (ax1, ax2) = plt.subplots(
        1,
        2,
        figsize=(12, 5),
        gridspec_kw={"width_ratios": [max(1, len(groups)), max(1, len(ws_n))]},
    )
    width = 0.38
    for i, server in enumerate(SERVERS):
        xs = [g + (i - 0.5) * width for g in range(len(groups))]
        meds = [median(by_server[server]) for _, by_server in groups]
        bars = ax1.bar(
            xs, [0 if math.isnan(m) else m for m in meds], width, label=server, color=colors[server]
        )
        for x, (_, by_server) in zip(xs, groups, strict=True):
            ax1.scatter(
                [x] * len(by_server[server]), by_server[server], color="black", s=10, zorder=3
            )
        for bar, m in zip(bars, meds, strict=True):
            if not math.isnan(m):
                ax1.annotate(
                    f"{m:,.0f}",
                    (bar.get_x() + bar.get_width() / 2, m),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax1.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=9)
    ax1.set_yscale("log")
    ax1.set_ylabel("per server CPU-second (log scale)")
    ax1.set_title("Throughput per server CPU-second\n(bars: median of rounds, dots: each round)")
    ax1.legend()

    for i, server in enumerate(SERVERS):
        xs = [g + (i - 0.5) * width for g in range(len(ws_n))]
        per_n = [[r.kib_per_flow for r in res.ws if r.server == server and r.n == n] for n in ws_n]
        meds = [median(v) for v in per_n]
        bars = ax2.bar(
            xs, [0 if math.isnan(m) else m for m in meds], width, label=server, color=colors[server]
        )
        for x, v in zip(xs, per_n, strict=True):
            ax2.scatter([x] * len(v), v, color="black", s=10, zorder=3)
        for bar, m in zip(bars, meds, strict=True):
            if not math.isnan(m):
                ax2.annotate(
                    f"{m:.1f}",
                    (bar.get_x() + bar.get_width() / 2, m),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax2.axhline(
        TARGET_WS_KIB,
        color="gray",
        linestyle="--",
        linewidth=1,
        label=f"siptrio target {TARGET_WS_KIB} KiB",
    )
    ax2.set_xticks(range(len(ws_n)), [f"N={n}" for n in ws_n])
    top = max((r.kib_per_flow for r in res.ws if not math.isnan(r.kib_per_flow)), default=0.0)
    ax2.set_ylim(0, max(top, TARGET_WS_KIB) * 1.35)
    ax2.set_ylabel("KiB per flow (Pss of the server's process tree)")
    ax2.set_title("Server memory per WebSocket flow")
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"siptrio vs Kamailio, {res.started:%Y-%m-%d %H:%M} UTC, plan {res.plan.name}, "
        f"{res.rounds} rounds, load avg at start {res.load_start[0]:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer rates, shorter runs, 2,000 WS flows: about five minutes",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="rounds of siptrio-then-Kamailio per figure (default 2: A B A B)",
    )
    p.add_argument(
        "--only",
        default="register,calls,ws,latency",
        help="comma-separated figures to run (default: all four)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, SIPp files)")
    p.add_argument("--raw", type=Path, help="also write every run's figures to this JSON file")
    p.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="measure nothing: write the report and chart from a --raw file",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"markdown report; the PNG goes beside it (default {RESULTS})",
    )
    args = p.parse_args(argv)
    # a stop by SIGTERM (or SIGINT, which a background job ignores) unwinds through the
    # finally blocks, so every server and SIPp started so far is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.report_from is not None:
        return write_report(load_raw(args.report_from), args.output)
    missing = [
        tool
        for tool, found in (
            ("sipp (Debian: sip-tester)", shutil.which("sipp")),
            ("kamailio (Debian: kamailio kamailio-websocket-modules)", kamailio_version()),
        )
        if not found
    ]
    if missing:
        print(f"compare: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    only = {f.strip() for f in args.only.split(",") if f.strip()}
    plan = QUICK if args.quick else FULL
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-compare-"))
    try:
        res = run_all(plan, args.repeat, scratch, only)
        save_raw(res, scratch / "compare.json")
        if args.raw is not None:
            save_raw(res, args.raw)
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return write_report(res, args.output)


def write_report(res: Results, output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    png = output.with_suffix(".png")
    try:
        chart(res, png)
    except ImportError:
        print("compare: matplotlib missing (pip install -e '.[bench]'): no chart", file=sys.stderr)
        text = report(res, None)
        written = f"{output}"
    else:
        text = report(res, png)
        written = f"{output} and {png}"
    output.write_text(text)
    print()
    print(text)
    print(f"written to {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
