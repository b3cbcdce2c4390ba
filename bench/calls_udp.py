"""Calls through the proxy over UDP: SIPp caller and callee at rising rates against siptrio.

    .venv/bin/python bench/calls_udp.py [--rates 100,200,400] [--seconds N]

For each rate (ascending) a fresh ``python -m siptrio serve`` (WARNING logging, UDP only
on 127.0.0.1, ``sip.domains=example.com``, its database in a temporary folder) gets a
callee set up the standard way, a SIPp UAS in server mode (examples/sipp/uas.xml) that
answers every call on its own port, registered as ``bob@example.com`` by a second SIPp
(examples/sipp/register-contact.xml) from another port, and a caller SIPp
(examples/sipp/uac.xml) that makes ``rate * seconds`` calls to bob at that rate: INVITE,
100, 180, 200, ACK and BYE along the Record-Route, 200, no pause. A rate counts with 0
failed calls, 0 retransmissions (by either SIPp, or by siptrio towards the callee) and an
achieved rate within 95 % of the one asked; the ladder stops at the first rate that does
not count. The server's CPU time (utime + stime from /proc/PID/stat) is taken just before
and half a second after the caller's run, so start-up and registration do not count.

Then one run at a fixed moderate rate (``--latency-rate``, default 50 calls/s) gives the
latency percentiles, from the timestamps of the caller's ``-trace_shortmsg`` file (SIPp's
response-time statistics tick in 4 ms steps here). Results are printed and written to
bench/results/calls_udp.md.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# The shared helpers and the REGISTER benchmark's, next to this file (sys.path[0] when run
# as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, free_udp_port, sipp_elapsed, sipp_final_stats, stop_tree, tree_cpu_seconds
from register_udp import machine, options_probe

SIPP_DIR = REPO / "examples" / "sipp"
RESULTS = REPO / "bench" / "results" / "calls_udp.md"
DEFAULT_LADDER = (100, 150, 200, 250, 300, 350, 400, 500, 600, 800, 1000)
SUSTAINED = 0.95  # achieved / asked below this: the rate was not really offered
DOMAIN = "example.com"
CALLEE = "bob"


# --- the processes --------------------------------------------------------------------------


def free_media_port() -> int:
    """An even UDP port P with P + 2 free too: SIPp binds both for -mp P, or stops."""
    for _ in range(50):
        port = free_udp_port() & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
                a.bind(("127.0.0.1", port))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind(("127.0.0.1", port + 2))
        except OSError:
            continue
        return port
    raise RuntimeError("no free media port")


def start_siptrio(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """siptrio on a free UDP port, answering OPTIONS; (process, port)."""
    for _attempt in range(3):
        port = free_udp_port()
        sets = {
            "sip.listen_addr": "127.0.0.1",
            "sip.udp_port": str(port),
            "sip.tcp_enable": "false",
            "sip.domains": DOMAIN,
            "sip_websocket.enable": "false",
            "admin.enable": "false",
            "control.enable": "false",
            "registrar.database": str(workdir / "location.sqlite"),
        }
        args = [sys.executable, "-m", "siptrio", "serve", "--log-level", "WARNING"]
        for key, value in sets.items():
            args += ["--set", f"{key}={value}"]
        with (workdir / "siptrio.log").open("ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if options_probe(port):
            return proc, port
        stop_tree(proc)
    raise RuntimeError(f"siptrio did not start; see {workdir}")


def sipp_files(name: str, workdir: Path) -> list[str]:
    return [
        "-nostdin",
        "-trace_stat",
        *("-stf", str(workdir / f"{name}_stat.csv")),
        *("-fd", "1"),
        "-trace_err",
        *("-error_file", str(workdir / f"{name}_errors.log")),
        "-trace_shortmsg",
        *("-shortmessage_file", str(workdir / f"{name}_short.log")),
        "-trace_screen",
        *("-screen_file", str(workdir / f"{name}_screen.log")),
    ]


def sipp_common(port: int, local_port: int | None = None, domain: str = DOMAIN) -> list[str]:
    return [
        f"127.0.0.1:{port}",
        *("-i", "127.0.0.1"),
        *("-p", str(local_port or free_udp_port())),
        *("-mp", str(free_media_port())),
        *("-t", "u1"),
        *("-buff_size", "4194304"),
        *("-s", CALLEE),
        *("-key", "domain", domain),
    ]


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_callee(
    port: int, workdir: Path, *, domain: str = DOMAIN, traces: bool = True
) -> subprocess.Popen[bytes]:
    """The callee, the standard way: a SIPp UAS in server mode (uas.xml) on a port of its
    own, registered as bob by a second SIPp (register-contact.xml) that exits once its
    200 is in. Every call reaches the UAS at its Contact, as the one process that
    registered and answered used to be reached: the server's work per call is the same.
    ``traces=False``: no -trace_* files (their writing costs SIPp CPU)."""
    callee_port = free_udp_port()
    files = sipp_files("callee", workdir) if traces else ["-nostdin"]
    cmd = [
        "sipp",
        *sipp_common(port, callee_port, domain),
        *("-sf", str(SIPP_DIR / "uas.xml")),
        *files,
    ]
    with (workdir / "callee.stdout").open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 10
    while not udp_port_taken(callee_port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_tree(proc)
            raise RuntimeError(f"the callee did not start; see {workdir}")
        time.sleep(0.05)
    register = [
        "sipp",
        *sipp_common(port, None, domain),
        *("-sf", str(SIPP_DIR / "register-contact.xml")),
        *("-key", "contact_port", str(callee_port)),
        *("-key", "expires", "3600"),
        *("-m", "1"),
        *("-recv_timeout", "5000"),
        "-nostdin",
        "-trace_err",
        *("-error_file", str(workdir / "register_errors.log")),
    ]
    with (workdir / "register.stdout").open("wb") as out:
        done = subprocess.run(
            register, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, timeout=30, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        stop_tree(proc)
        raise RuntimeError(f"the callee was not registered (exit {done.returncode}); see {workdir}")
    return proc


def stop_callee(proc: subprocess.Popen[bytes]) -> int:
    """SIPp's smooth exit (SIGUSR1): its last calls finish their 4 s timewait; its exit
    status (0: no call failed at the callee)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        return stop_tree(proc)


def run_caller(port: int, rate: int, count: int, workdir: Path) -> tuple[int, float]:
    """One caller run; its exit status and CPU seconds."""
    cmd = [
        "sipp",
        *sipp_common(port),
        *("-sf", str(SIPP_DIR / "uac.xml")),
        *("-m", str(count)),
        *("-r", str(rate)),
        *("-l", str(max(1000, rate * 2))),
        *("-recv_timeout", "10000"),
        *("-timeout", f"{count // rate + 60}s"),
        "-timeout_error",
        *sipp_files("caller", workdir),
    ]
    with (workdir / "caller.stdout").open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


# --- reading SIPp's files -------------------------------------------------------------------


@dataclass
class Trace:
    """A -trace_shortmsg file: per (Call-ID, CSeq, S/R, first line) the timestamps seen."""

    seen: dict[tuple[str, str, str, str], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )

    @classmethod
    def read(cls, path: Path) -> Trace:
        trace = cls()
        if not path.exists():
            return trace
        with path.open(errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 7:
                    continue
                # date, time, epoch, S/R, Call-ID, "CSeq:N METHOD", first line
                first = fields[6].strip()
                key = (fields[4], fields[5].removeprefix("CSeq:"), fields[3], first)
                trace.seen[key].append(float(fields[2]))
        return trace

    def repeats(self) -> int:
        """Messages sent or received again: the same Call-ID, CSeq, direction, first line."""
        return sum(len(times) - 1 for times in self.seen.values())

    def delays(self, request: str, cseq_method: str, response: str) -> list[float]:
        """Milliseconds from each first sent ``request`` to the first ``response`` to it."""
        sent: dict[str, float] = {}
        got: dict[str, float] = {}
        for (call_id, cseq, direction, first), times in self.seen.items():
            if not cseq.endswith(" " + cseq_method):
                continue
            if direction == "S" and first.startswith(request + " "):
                sent[call_id] = min(times)
            elif direction == "R" and first.startswith(response):
                got[call_id] = min(times)
        return sorted((got[c] - sent[c]) * 1000 for c in sent if c in got)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Run:
    rate: int
    count: int
    achieved: float
    successful: int
    failed: int
    retransmissions: int
    server_cpu: float
    sipp_cpu: float
    invite_200: list[float]
    rc: int
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
        return self.successful / self.server_cpu if self.server_cpu > 0 else float("nan")


def measure(rate: int, count: int, scratch: Path, name: str) -> tuple[Run, Trace]:
    workdir = scratch / name
    workdir.mkdir()
    server, port = start_siptrio(workdir)
    notes = []
    try:
        callee = start_callee(port, workdir)
        try:
            time.sleep(0.5)  # let start-up work (imports, store load) settle
            cpu_before = tree_cpu_seconds(server.pid)
            callee_before = tree_cpu_seconds(callee.pid)
            rc, caller_cpu = run_caller(port, rate, count, workdir)
            time.sleep(0.5)  # the last BYEs and store work
            server_cpu = tree_cpu_seconds(server.pid) - cpu_before
            callee_cpu = tree_cpu_seconds(callee.pid) - callee_before
        finally:
            callee_rc = stop_callee(callee)
        if callee_rc != 0:
            notes.append(f"callee exit {callee_rc}")
    finally:
        server_rc = stop_tree(server)
    if server_rc != 0:
        notes.append(f"server exit {server_rc}")
    stats = sipp_final_stats(workdir / "caller_stat.csv")
    if not stats:
        notes.append(f"no caller statistics (exit {rc}); see {workdir}")
    caller = Trace.read(workdir / "caller_short.log")
    callee_trace = Trace.read(workdir / "callee_short.log")
    successful = int(stats.get("SuccessfulCall(C)", 0))
    seconds = sipp_elapsed(stats)
    run = Run(
        rate=rate,
        count=count,
        achieved=successful / seconds if seconds else 0.0,
        successful=successful,
        failed=int(stats.get("FailedCall(C)", count)),
        # the caller's own count, plus every repeat the callee sent or received (200 OK
        # repeated for a late ACK, INVITE or BYE repeated by siptrio's transactions)
        retransmissions=int(stats.get("Retransmissions(C)", 0)) + callee_trace.repeats(),
        server_cpu=server_cpu,
        sipp_cpu=caller_cpu + callee_cpu,
        invite_200=caller.delays("INVITE", "INVITE", "SIP/2.0 200"),
        rc=rc,
        note="; ".join(notes),
    )
    return run, caller


# --- reporting -------------------------------------------------------------------------------

HEADER = (
    "| rate asked (calls/s) | calls | achieved (calls/s) | failed | retransmissions | "
    "server CPU s | calls per server CPU-second | INVITE→200 p50 / p99 ms | SIPp CPU s | counts |"
)


def row(run: Run) -> str:
    counts = "yes" if run.ok else "no"
    if run.note:
        counts += f" ({run.note})"
    p50, p99 = percentile(run.invite_200, 50), percentile(run.invite_200, 99)
    return (
        f"| {run.rate} | {run.count} | {run.achieved:.0f} | {run.failed} | "
        f"{run.retransmissions} | {run.server_cpu:.2f} | {run.per_cpu_second:.0f} | "
        f"{p50:.1f} / {p99:.1f} | {run.sipp_cpu:.2f} | {counts} |"
    )


LATENCIES = (
    ("INVITE → 100 Trying (siptrio alone)", "INVITE", "INVITE", "SIP/2.0 100"),
    ("INVITE → 180 Ringing (through the callee)", "INVITE", "INVITE", "SIP/2.0 180"),
    ("INVITE → 200 OK (through the callee)", "INVITE", "INVITE", "SIP/2.0 200"),
    ("BYE → 200 OK (through the callee)", "BYE", "BYE", "SIP/2.0 200"),
)


def latency_table(run: Run, trace: Trace) -> list[str]:
    lines = [
        "| measure | calls | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, request, method, response in LATENCIES:
        d = trace.delays(request, method, response)
        lines.append(
            f"| {label} | {len(d)} | {percentile(d, 50):.2f} | {percentile(d, 90):.2f} | "
            f"{percentile(d, 99):.2f} | {(d[-1] if d else float('nan')):.2f} |"
        )
    return lines


def report(
    runs: list[Run], seconds: float, latency: tuple[Run, Trace] | None, load: tuple[float, ...]
) -> str:
    best = max((r for r in runs if r.ok), key=lambda r: r.rate, default=None)
    lines = [
        "# Calls through the proxy over UDP",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) before the first run.",
        "",
        "`bench/calls_udp.py`: a SIPp caller (`examples/sipp/uac.xml`) calls a SIPp callee",
        "(`uas.xml` in server mode, registered as bob@example.com by `register-contact.xml`",
        "from another SIPp) through a fresh",
        f"siptrio process per rate, about {seconds:g} s per rate, all on 127.0.0.1 over UDP.",
        "A call is INVITE, 100, 180, 200, ACK, BYE, 200 (no pause): siptrio handles two",
        "INVITE legs, two BYE legs and relays the ACK along the Record-Route. Server CPU is",
        "utime + stime (children included) over the caller's run. A rate counts with 0 failed",
        "calls, 0 retransmissions (caller's, plus every repeat the callee sent or received)",
        f"and an achieved rate >= {SUSTAINED:.0%} of the asked one. Latencies are from the",
        "caller's `-trace_shortmsg` timestamps.",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
        *(row(r) for r in runs),
        "",
    ]
    if best is not None:
        lines.append(
            f"**Highest rate with 0 failures and 0 retransmissions: {best.rate} calls/s** "
            f"(achieved {best.achieved:.0f}/s, {best.server_cpu:.2f} server CPU s for "
            f"{best.successful} calls, {best.per_cpu_second:.0f} calls per server CPU-second)."
        )
    else:
        lines.append("No rate passed.")
    if latency is not None:
        run, trace = latency
        lines += [
            "",
            f"## Latency at {run.rate} calls/s",
            "",
            f"{run.successful} calls ({run.failed} failed, {run.retransmissions} "
            f"retransmissions, {run.server_cpu:.2f} server CPU s), from the first send of the",
            "request to the first receipt of the answer in the caller's short message trace.",
            "",
            *latency_table(run, trace),
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--rates",
        help="comma-separated calls/s, tried in ascending order until one fails "
        f"(default: {','.join(map(str, DEFAULT_LADDER))})",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    p.add_argument(
        "--latency-rate", type=int, default=50, help="calls/s of the latency run (default 50)"
    )
    p.add_argument(
        "--latency-seconds", type=float, default=20.0, help="length of the latency run (default 20)"
    )
    p.add_argument("--no-latency", action="store_true", help="skip the latency run")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, SIPp files)")
    p.add_argument(
        "--output", type=Path, default=RESULTS, help=f"markdown report (default {RESULTS})"
    )
    args = p.parse_args(argv)
    if shutil.which("sipp") is None:
        print("calls_udp: sipp is not installed (Debian: apt install sip-tester)", file=sys.stderr)
        return 2
    rates = sorted(int(r) for r in args.rates.split(",")) if args.rates else list(DEFAULT_LADDER)
    load = os.getloadavg()  # other work on the machine skews every figure
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-bench-calls-"))
    runs: list[Run] = []
    latency: tuple[Run, Trace] | None = None
    try:
        for rate in rates:
            run, _ = measure(rate, int(rate * args.seconds), scratch, f"rate-{rate}")
            runs.append(run)
            print(row(run), flush=True)
            if not run.ok:
                break
        if not args.no_latency:
            rate = args.latency_rate
            latency = measure(rate, int(rate * args.latency_seconds), scratch, "latency")
            print(f"latency run at {rate} calls/s:", flush=True)
            print("\n".join(latency_table(*latency)), flush=True)
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    text = report(runs, args.seconds, latency, load)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
