"""bench/compare.py's measurements: start a server, load it, read its CPU and memory.

One function per figure (REGISTER over UDP, calls through the proxy, WebSocket scale),
each returning a run record for one server, one round, one rate.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calls_udp
import register_udp
import ws_scale
from common import (
    Kamailio,
    free_tcp_port,
    free_udp_port,
    machine_busy_seconds,
    sipp_elapsed,
    sipp_final_stats,
    stop_tree,
    tcp_listening,
    tree_cpu_seconds,
    tree_memory,
)
from compare_plan import KAMAILIO_DEFINES, KAMAILIO_SHM_MB, NAN, REGISTER_SCENARIO, SUSTAINED, Plan

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


# --- a whole run's records ---------------------------------------------------------------


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
