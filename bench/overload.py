"""Overload: calls offered at 1x, 1.5x, 2x and 3x the rate siptrio sustains, beside Kamailio.

    .venv/bin/python bench/overload.py [--sustainable N] [--loads 1,1.5,2,3] [--seconds 30]
                                       [--servers siptrio,kamailio] [--keep]

First the sustainable rate: the highest rate of a ladder (``--ladder``, 10 s each, as
bench/calls_udp.py: 0 failed calls, 0 retransmissions, >= 95 % of it achieved) unless
``--sustainable`` gives it. Then for each multiple of it and each server (a fresh
process per run: siptrio as bench/calls_udp.py starts it, every setting at its default;
Kamailio with bench/kamailio.cfg as bench/compare.py starts it, one UDP worker), a SIPp
callee (uas.xml, registered by another SIPp) answers the calls a SIPp caller offers for
``--seconds``: examples/sipp/uac.xml, extended to take a ``503`` (ACKed, the call then
over) instead of the 200. A call counts as **completed** when its BYE got its 200;
**goodput** is completed calls per second of offered load, and its share of the
sustainable rate is the figure to read (the goal: >= 80 % at twice the sustainable
rate). Refused are calls answered 503, failed the ones SIPp gave up on (no answer
within 10 s, or an unexpected message). Latencies (INVITE -> 200 of completed calls,
INVITE -> its first answer of every call) are from the caller's ``-trace_shortmsg``
timestamps. Writes bench/results/overload.md.

The machine is shared: read the load average the report gives, and the server's CPU
share, beside every figure. SIPp runs on the same two CPUs and at 3x needs a good part
of one.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calls_udp
from common import (
    REPO,
    Kamailio,
    free_tcp_port,
    free_udp_port,
    kamailio_version,
    sipp_elapsed,
    sipp_final_stats,
    stop_tree,
    tree_cpu_seconds,
)
from register_udp import machine, options_probe

RESULTS = REPO / "bench" / "results" / "overload.md"
DEFAULT_LADDER = (300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400)
DEFAULT_LOADS = (1.0, 1.5, 2.0, 3.0)
KAMAILIO_DEFINES = {"CHILDREN": "1", "TCP_CHILDREN": "2"}  # as bench/compare.py, and why
RECV_TIMEOUT_MS = 10_000

# uac.xml, plus: a 503 instead of the 200 is ACKed (RFC 3261 17.1.1.3) and ends the call.
REFUSED_RECV = '  <recv response="503" optional="true" next="refused">\n  </recv>\n\n'
REFUSED_END = """
  <nop next="done"/>

  <label id="refused"/>

  <send>
    <![CDATA[

      ACK sip:[service]@[domain] SIP/2.0
      [last_Via:]
      Max-Forwards: 70
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>

  <label id="done"/>
"""


def caller_scenario(workdir: Path) -> Path:
    text = (calls_udp.SIPP_DIR / "uac.xml").read_text()
    anchor = '  <!-- rrs="true"'
    assert anchor in text and "<ResponseTimeRepartition" in text
    text = text.replace(anchor, REFUSED_RECV + anchor, 1)
    text = text.replace(
        "  <ResponseTimeRepartition", REFUSED_END + "\n  <ResponseTimeRepartition", 1
    )
    path = workdir / "uac-refusable.xml"
    path.write_text(text)
    return path


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Run:
    server: str
    load: float
    rate: int
    seconds: float
    completed: int = 0
    refused: int = 0
    failed: int = 0
    retransmissions: int = 0
    server_cpu: float = math.nan
    invite_200: list[float] = field(default_factory=list)
    first_answer: list[float] = field(default_factory=list)
    load_avg: float = math.nan
    note: str = ""

    @property
    def goodput(self) -> float:
        return self.completed / self.seconds

    @property
    def cpu_share(self) -> float:
        return self.server_cpu / self.seconds


def read_trace(path: Path) -> tuple[int, int, list[float], list[float]]:
    """Completed and refused calls, INVITE->200 of completed ones, INVITE->first answer."""
    invite_sent: dict[str, float] = {}
    first_answer: dict[str, float] = {}
    ok_200: dict[str, float] = {}
    bye_ok: set[str] = set()
    refused: set[str] = set()
    if path.exists():
        with path.open(errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 7:
                    continue
                t, direction, call_id = float(fields[2]), fields[3], fields[4]
                cseq, first = fields[5].removeprefix("CSeq:"), fields[6].strip()
                if cseq.endswith(" INVITE"):
                    if direction == "S" and first.startswith("INVITE "):
                        invite_sent.setdefault(call_id, t)
                    elif direction == "R" and first.startswith("SIP/2.0 "):
                        first_answer.setdefault(call_id, t)
                        if first.startswith("SIP/2.0 200"):
                            ok_200.setdefault(call_id, t)
                        elif first.startswith("SIP/2.0 503"):
                            refused.add(call_id)
                elif cseq.endswith(" BYE") and direction == "R" and first.startswith("SIP/2.0 200"):
                    bye_ok.add(call_id)
    invite_200 = sorted(
        (ok_200[c] - invite_sent[c]) * 1000 for c in bye_ok if c in ok_200 and c in invite_sent
    )
    answered = sorted(
        (first_answer[c] - invite_sent[c]) * 1000 for c in first_answer if c in invite_sent
    )
    return len(bye_ok), len(refused), invite_200, answered


def start_server(name: str, workdir: Path) -> tuple[int, int, object]:
    """(pid, UDP port, stop) of a fresh siptrio or Kamailio."""
    if name == "siptrio":
        proc, port = calls_udp.start_siptrio(workdir)
        return proc.pid, port, lambda: stop_tree(proc)
    for _attempt in range(3):
        kam = Kamailio(
            workdir,
            udp_port=free_udp_port(),
            tcp_port=free_tcp_port(),
            ws_port=free_tcp_port(),
            defines=KAMAILIO_DEFINES,
        )
        if options_probe(kam.udp_port, timeout=10):
            return kam.pid, kam.udp_port, kam.stop
        kam.stop()
    raise RuntimeError(f"kamailio did not start; see {workdir}")


def run_caller(port: int, rate: int, count: int, workdir: Path, scenario: Path) -> int:
    cmd = [
        "sipp",
        *calls_udp.sipp_common(port),
        *("-sf", str(scenario)),
        *("-m", str(count)),
        *("-r", str(rate)),
        *("-l", str(max(2000, rate * 20))),
        *("-recv_timeout", str(RECV_TIMEOUT_MS)),
        *("-timeout", f"{count // rate + 60}s"),
        *calls_udp.sipp_files("caller", workdir),
    ]
    with (workdir / "caller.stdout").open("wb") as out:
        return subprocess.call(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def measure(name: str, load: float, rate: int, seconds: float, scratch: Path) -> Run:
    count = int(rate * seconds)
    run = Run(server=name, load=load, rate=rate, seconds=count / rate)
    workdir = scratch / f"{name}-{load:g}x-{rate}"
    workdir.mkdir()
    scenario = caller_scenario(workdir)
    try:
        pid, port, stop = start_server(name, workdir)
    except RuntimeError as e:
        run.note = str(e)
        return run
    notes = []
    try:
        callee = calls_udp.start_callee(port, workdir)
        try:
            time.sleep(0.5)
            cpu0 = tree_cpu_seconds(pid)
            run.load_avg = os.getloadavg()[0]
            rc = run_caller(port, rate, count, workdir, scenario)
            run.server_cpu = tree_cpu_seconds(pid) - cpu0
        finally:
            callee_rc = calls_udp.stop_callee(callee)
        if rc not in (0, 1):
            notes.append(f"caller exit {rc}")
        if callee_rc != 0:
            notes.append(f"callee exit {callee_rc}")
    finally:
        stop()  # type: ignore[operator]
    stats = sipp_final_stats(workdir / "caller_stat.csv")
    run.failed = int(stats.get("FailedCall(C)", 0))
    run.retransmissions = int(stats.get("Retransmissions(C)", 0))
    run.completed, run.refused, run.invite_200, run.first_answer = read_trace(
        workdir / "caller_short.log"
    )
    if not stats:
        notes.append("no caller statistics")
    elif sipp_elapsed(stats) > run.seconds + RECV_TIMEOUT_MS / 1000 + 30:
        notes.append(f"SIPp ran {sipp_elapsed(stats):.0f} s")
    run.note = "; ".join(notes)
    return run


# --- the report ----------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> str:
    v = calls_udp.percentile(values, p)
    return "-" if math.isnan(v) else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


HEADER = (
    "| server | load | offered calls/s | completed calls/s (goodput) | goodput / sustainable | "
    "refused (503) | failed | retransmissions | INVITE→200 p50 / p99 ms | "
    "INVITE→first answer p50 / p99 ms | server CPU % | load avg |"
)


def row(run: Run, sustainable: int) -> str:
    note = f" ({run.note})" if run.note else ""
    return (
        f"| {run.server}{note} | {run.load:g}x | {run.rate} | {run.goodput:.0f} | "
        f"{run.goodput / sustainable:.0%} | {run.refused:,} | {run.failed:,} | "
        f"{run.retransmissions:,} | {pct(run.invite_200, 50)} / {pct(run.invite_200, 99)} | "
        f"{pct(run.first_answer, 50)} / {pct(run.first_answer, 99)} | "
        f"{run.cpu_share * 100:.0f} | {run.load_avg:.2f} |"
    )


def report(
    runs: list[Run], sustainable: int, ladder: list[calls_udp.Run], found: bool, args: object
) -> str:
    lines = [
        "# Overload: goodput at 1x to 3x the sustainable call rate",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, Kamailio "
        f"{kamailio_version() or '-'}; load average at the start "
        + " / ".join(f"{v:.2f}" for v in START_LOAD)
        + " (1 / 5 / 15 min).",
        "",
        "`bench/overload.py`: for each offered load a fresh server, a SIPp callee and a SIPp",
        "caller (examples/sipp/uac.xml taking a 503 as an answer), all on 127.0.0.1 over UDP,",
        f"{runs[0].seconds if runs else 0:g} s of calls per run. A call is completed when its "
        "BYE got its 200; goodput is completed calls per second of offered load. Failed calls",
        "are those SIPp gave up on (no answer in 10 s, or an unexpected message). siptrio runs",
        "its defaults (`[security] overload_delay = 0.1`: once the queueing delay stayed over",
        "100 ms for 200 ms, new calls get 503 with Retry-After); Kamailio runs",
        "bench/kamailio.cfg (no load shedding configured, one UDP worker).",
        "",
    ]
    if found:
        lines += [
            f"Sustainable rate: **{sustainable} calls/s**, the highest of the ladder below with 0 "
            "failed calls, 0 retransmissions and >= 95 % achieved (bench/calls_udp.py's rule, "
            "10 s per rate, siptrio alone):",
            "",
            calls_udp.HEADER,
            "|" + "---|" * (calls_udp.HEADER.count("|") - 1),
            *(calls_udp.row(r) for r in ladder),
            "",
        ]
    else:
        lines += [f"Sustainable rate: **{sustainable} calls/s** (given with --sustainable).", ""]
    lines += [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [row(r, sustainable) for r in runs]
    lines.append("")
    at2 = [r for r in runs if r.server == "siptrio" and r.load == 2.0]
    if at2:
        share = at2[0].goodput / sustainable
        lines.append(
            f"siptrio at 2x: goodput {at2[0].goodput:.0f} calls/s, {share:.0%} of the sustainable "
            f"rate (goal: >= 80 %): {'met' if share >= 0.8 else 'missed'}."
        )
        lines.append("")
    return "\n".join(lines)


START_LOAD = os.getloadavg()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sustainable", type=int, help="calls/s siptrio sustains (skips the ladder)")
    p.add_argument(
        "--ladder",
        default=",".join(map(str, DEFAULT_LADDER)),
        help="rates tried to find it (default %(default)s)",
    )
    p.add_argument("--loads", default="1,1.5,2,3", help="multiples of it (default 1,1.5,2,3)")
    p.add_argument("--seconds", type=float, default=30.0, help="offered load per run (30)")
    p.add_argument("--servers", default="siptrio,kamailio", help="default siptrio,kamailio")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = p.parse_args(argv)
    if shutil.which("sipp") is None:
        print("overload: sipp is not installed (Debian: apt install sip-tester)", file=sys.stderr)
        return 2
    servers = [s for s in args.servers.split(",") if s]
    if "kamailio" in servers and kamailio_version() is None:
        print("overload: kamailio is not installed; siptrio only", file=sys.stderr)
        servers = [s for s in servers if s != "kamailio"]
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-bench-overload-"))
    ladder: list[calls_udp.Run] = []
    runs: list[Run] = []
    try:
        sustainable = args.sustainable
        found = sustainable is None
        if sustainable is None:
            for rate in sorted(int(r) for r in args.ladder.split(",")):
                r, _ = calls_udp.measure(rate, rate * 10, scratch, f"ladder-{rate}")
                ladder.append(r)
                print(calls_udp.row(r), flush=True)
                if not r.ok:
                    break
            passed = [r.rate for r in ladder if r.ok]
            if not passed:
                print("overload: no rate of the ladder passed", file=sys.stderr)
                return 1
            sustainable = max(passed)
        for load in (float(x) for x in args.loads.split(",")):
            rate = round(sustainable * load)
            for name in servers:
                run = measure(name, load, rate, args.seconds, scratch)
                runs.append(run)
                print(row(run, sustainable), flush=True)
        text = report(runs, sustainable, ladder, found, args)
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
