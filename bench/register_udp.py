"""REGISTER throughput over UDP: SIPp at fixed rates against a real siptrio process.

    .venv/bin/python bench/register_udp.py [--rates 1000,2000,4000] [--count N]

For each rate (ascending) a fresh ``python -m siptrio serve`` (WARNING logging, its
database in a temporary folder, UDP only on 127.0.0.1) takes ``rate * seconds``
REGISTERs from SIPp (examples/sipp/register.xml, one new AOR per REGISTER). A rate
counts only with 0 failed calls and an achieved rate within 95 % of the one asked
(otherwise SIPp, not the server, set the pace); the ladder stops at the first rate
that does not count. The server's CPU time (utime + stime, children included, from
/proc/PID/stat) is taken just before and just after each SIPp run, so start-up is
not counted. Results are printed and written to bench/results/register_udp.md.

Everything runs on 127.0.0.1. ``REFERENCES`` holds the floor: bench/floor_answerer.py,
a bare Python answerer that does no SIP work, measured the same way; Kamailio is
measured beside siptrio by bench/compare.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common import (
    REPO,
    free_udp_port,
    sipp_elapsed,
    sipp_final_stats,
    stop_tree,
    tree_cpu_seconds,
)

SCENARIO = REPO / "examples" / "sipp" / "register.xml"
RESULTS = REPO / "bench" / "results" / "register_udp.md"
DEFAULT_LADDER = (500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 16000)
SUSTAINED = 0.95  # achieved / asked below this: the rate was not really offered


# --- the server under test --------------------------------------------------------------


class Target:
    """A SIP registrar in its own process, listening on UDP 127.0.0.1:port."""

    name = "?"

    def start(self, workdir: Path, port: int) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def stop(self) -> int:
        raise NotImplementedError


class SiptrioTarget(Target):
    name = "siptrio"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: object = None

    def start(self, workdir: Path, port: int) -> None:
        sets = {
            "sip.listen_addr": "127.0.0.1",
            "sip.udp_port": str(port),
            "sip.tcp_enable": "false",
            "sip_websocket.enable": "false",
            "admin.enable": "false",
            "control.enable": "false",
            "registrar.database": str(workdir / "location.sqlite"),
        }
        args = [sys.executable, "-m", "siptrio", "serve", "--log-level", "WARNING"]
        for key, value in sets.items():
            args += ["--set", f"{key}={value}"]
        log = (workdir / "siptrio.log").open("wb")
        self._log = log
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int:
        assert self.proc is not None
        rc = stop_tree(self.proc)
        self._log.close()  # type: ignore[attr-defined]
        return rc


class FloorTarget(SiptrioTarget):
    """bench/floor_answerer.py: the interpreter, Trio and the kernel, and no SIP work.

    Not a registrar (it stores nothing and checks nothing): the ceiling no Python
    registrar on this interpreter can pass, so siptrio's figure reads as a share of it.
    Kamailio, the real reference, is in compare.py.
    """

    name = "floor (bare answerer)"

    def start(self, workdir: Path, port: int) -> None:
        log = (workdir / "floor.log").open("wb")
        self._log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "floor_answerer.py"), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


REFERENCES: list[Callable[[], Target]] = [FloorTarget]


# --- measuring ---------------------------------------------------------------------------


def options_probe(port: int, timeout: float = 20.0) -> bool:
    """Wait until the server answers an OPTIONS with 200 (it logs nothing at WARNING)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        local = s.getsockname()[1]
        while time.monotonic() < deadline:
            branch = f"z9hG4bK-bench-{uuid.uuid4().hex[:12]}"
            request = (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:bench@127.0.0.1>;tag={branch[-8:]}\r\n"
                "To: <sip:127.0.0.1>\r\n"
                f"Call-ID: {branch}@bench\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            s.sendto(request, ("127.0.0.1", port))
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if data.startswith(b"SIP/2.0 200 "):
                return True
    return False


@dataclass
class Run:
    target: str
    rate: int
    count: int
    achieved: float
    successful: int
    failed: int
    retransmissions: int
    server_cpu: float
    sipp_cpu: float
    wall: float
    rc: int
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
        return self.successful / self.server_cpu if self.server_cpu > 0 else float("nan")


def run_sipp(
    port: int, rate: int, count: int, workdir: Path, prefix: str
) -> tuple[int, dict[str, str], float]:
    """One SIPp run; its exit status, final statistics row and CPU seconds."""
    stat = workdir / "sipp_stat.csv"
    cmd = [
        "sipp",
        f"127.0.0.1:{port}",
        *("-sf", str(SCENARIO)),
        *("-i", "127.0.0.1"),
        *("-p", str(free_udp_port())),
        *("-t", "u1"),
        *("-buff_size", "4194304"),
        *("-s", prefix),
        *("-m", str(count)),
        *("-r", str(rate)),
        *("-l", str(max(1000, rate * 2))),
        *("-recv_timeout", "10000"),
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
    with (workdir / "sipp.stdout").open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, sipp_final_stats(stat), usage.ru_utime + usage.ru_stime


def measure(make_target: Callable[[], Target], rate: int, count: int, scratch: Path) -> Run:
    target = make_target()
    workdir = scratch / f"{target.name}-{rate}"
    workdir.mkdir()
    for _attempt in range(3):
        port = free_udp_port()
        target.start(workdir, port)
        if options_probe(port):
            break
        target.stop()
    else:
        raise RuntimeError(f"{target.name} did not start; see {workdir}")
    try:
        time.sleep(0.5)  # let start-up work (imports, store load) settle
        cpu_before = tree_cpu_seconds(target.pid)
        started = time.monotonic()
        rc, stats, sipp_cpu = run_sipp(port, rate, count, workdir, prefix=f"r{rate}u")
        wall = time.monotonic() - started
        time.sleep(0.5)  # the last store commit
        server_cpu = tree_cpu_seconds(target.pid) - cpu_before
    finally:
        stop_rc = target.stop()
    successful = int(stats.get("SuccessfulCall(C)", 0))
    elapsed = sipp_elapsed(stats) or wall
    note = "" if stop_rc == 0 else f"server exit {stop_rc}"
    if not stats:
        note = f"no SIPp statistics (exit {rc}); see {workdir}"
    return Run(
        target=target.name,
        rate=rate,
        count=count,
        achieved=successful / elapsed if elapsed else 0.0,
        successful=successful,
        failed=int(stats.get("FailedCall(C)", count)),
        retransmissions=int(stats.get("Retransmissions(C)", 0)),
        server_cpu=server_cpu,
        sipp_cpu=sipp_cpu,
        wall=wall,
        rc=rc,
        note=note,
    )


# --- reporting -----------------------------------------------------------------------------

HEADER = (
    "| server | rate asked (REGISTER/s) | REGISTERs | achieved (REGISTER/s) | failed | "
    "retransmissions | server CPU s | REGISTER per server CPU-second | SIPp CPU s | counts |"
)


def row(run: Run) -> str:
    counts = "yes" if run.ok else "no"
    if run.note:
        counts += f" ({run.note})"
    return (
        f"| {run.target} | {run.rate} | {run.count} | {run.achieved:.0f} | {run.failed} | "
        f"{run.retransmissions} | {run.server_cpu:.2f} | {run.per_cpu_second:.0f} | "
        f"{run.sipp_cpu:.2f} | {counts} |"
    )


def interpreter() -> str:
    """Which CPython build runs the server: builds differ by ~14 % here (Debian's own,
    profile-guided and with libpython linked in, against pyenv's default build)."""
    import sysconfig

    with open("/proc/self/maps") as maps:  # what this process really loaded
        shared = "shared libpython" if "libpython" in maps.read() else "libpython linked in"
    pgo = (
        ", PGO" if "--enable-optimizations" in str(sysconfig.get_config_var("CONFIG_ARGS")) else ""
    )
    return f"{os.path.realpath(sys.executable)}, {shared}{pgo}"


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout
    sipp_version = next((w.rstrip(".") for w in sipp.split() if w.startswith("v3")), "?")
    from siptrio import __version__

    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()} ({interpreter()}), siptrio {__version__}, "
        f"SIPp {sipp_version}"
    )


def report(runs: list[Run], duration: float) -> str:
    best: dict[str, Run] = {}
    for run in runs:
        if run.ok and (run.target not in best or run.rate > best[run.target].rate):
            best[run.target] = run
    lines = [
        "# REGISTER over UDP",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        "",
        "`bench/register_udp.py`: SIPp (`examples/sipp/register.xml`, one new AOR per REGISTER,",
        f"about {duration:g} s per rate) against a fresh server process per rate, both on",
        "127.0.0.1; server CPU is utime + stime (children included) over the SIPp run.",
        f"A rate counts with 0 failed calls and an achieved rate >= {SUSTAINED:.0%} of the asked one.",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
        *(row(r) for r in runs),
        "",
    ]
    for name, run in best.items():
        lines.append(
            f"**{name}: highest rate sustained with 0 failures: {run.rate} REGISTER/s** "
            f"(achieved {run.achieved:.0f}/s, {run.server_cpu:.2f} server CPU s for "
            f"{run.successful} REGISTERs, {run.per_cpu_second:.0f} REGISTER per CPU-second)."
        )
    if not best:
        lines.append("No rate passed.")
    lines += [
        "",
        "## Reference",
        "",
        "`floor (bare answerer)` is bench/floor_answerer.py on the same interpreter: one",
        "Trio loop that copies Via, From, To, Call-ID, CSeq and Contact into a 200 OK and",
        "sends it, with no parsing, validation, transaction or store. No Python registrar",
        "on this interpreter can pass it; siptrio's REGISTER per CPU-second reads as a",
        "share of it. Kamailio, the real reference, is measured by bench/compare.py.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--rates",
        help="comma-separated REGISTER/s, tried in ascending order until one fails "
        f"(default: {','.join(map(str, DEFAULT_LADDER))})",
    )
    p.add_argument("--count", type=int, help="REGISTERs per rate (default: rate * --seconds)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, SIPp files)")
    p.add_argument(
        "--output", type=Path, default=RESULTS, help=f"markdown report (default {RESULTS})"
    )
    args = p.parse_args(argv)
    if shutil.which("sipp") is None:
        print(
            "register_udp: sipp is not installed (Debian: apt install sip-tester)", file=sys.stderr
        )
        return 2
    rates = sorted(int(r) for r in args.rates.split(",")) if args.rates else list(DEFAULT_LADDER)
    targets: list[Callable[[], Target]] = [SiptrioTarget, *REFERENCES]
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-bench-"))
    runs: list[Run] = []
    try:
        for make_target in targets:
            for rate in rates:
                count = args.count or int(rate * args.seconds)
                run = measure(make_target, rate, count, scratch)
                runs.append(run)
                print(row(run), flush=True)
                if not run.ok:
                    break
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    text = report(runs, args.seconds)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
