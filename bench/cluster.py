"""Scale-out figures: ``serve --workers 1`` vs ``--workers 2``, and the cost of a second node.

    .venv/bin/python bench/cluster.py [--seconds 5] [--register-rates ...] [--call-rates ...]

Three measurements, each against a reference taken in the same run:

1. REGISTER over UDP: SIPp (examples/sipp/register.xml, one socket per REGISTER so the
   kernel spreads them over the workers) at rising rates against a single siptrio on
   SQLite (the reference), then ``--workers 1`` and ``--workers 2`` on Redis. A rate
   counts with 0 failures and at least 95 % of it achieved; the table gives the best
   rate that counted and the server's CPU per REGISTER there (whole process tree:
   supervisor and workers; Redis separately).
2. Calls UDP -> UDP: a SIPp callee (uas.xml in server mode, registered by a second
   SIPp with register-contact.xml) answers; a SIPp caller
   (examples/sipp/uac.xml, one socket per call) places calls at rising rates.
3. Latency across nodes: two single-process nodes sharing Redis; 300 calls one after
   another from a caller to a callee on the same node (reference) and on the other
   node; INVITE sent -> 200 received at the caller, p50 and p99.

Everything runs on 127.0.0.1; Redis is started here without persistence and stopped
by PID. Results are printed and written to bench/results/cluster.md. On a 2-core
machine SIPp needs a core too, so ``--workers 2`` cannot double anything here; the
figures say what it costs and what it gives on this machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from calls_udp import free_media_port, start_callee
from common import REPO, free_tcp_port, stop_tree, tree_cpu_seconds

SIPP = REPO / "examples" / "sipp"
RESULTS = REPO / "bench" / "results" / "cluster.md"
SUSTAINED = 0.95

sys.path.insert(0, str(REPO / "tests"))


# --- processes -------------------------------------------------------------------------------


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_tcp_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], capture_output=True)

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_tree(self.proc)


class Siptrio:
    """``siptrio serve`` (optionally with --workers) on 127.0.0.1; ports read from its log."""

    def __init__(self, workdir: Path, name: str, *extra: str, workers: int | None = None):
        self.log = workdir / f"{name}.log"
        args = [sys.executable, "-m", "siptrio", "serve"]
        if workers is not None:
            args += ["--workers", str(workers)]
        args += [
            *("--set", "sip.listen_addr=127.0.0.1"),
            *("--set", "sip.udp_port=0"),
            *("--set", "sip.tcp_enable=false"),
            *("--set", "sip_websocket.enable=false"),
            *("--set", "admin.enable=false"),
            *("--set", "control.enable=false"),
            *("--set", "logging.level=INFO"),  # the "listening on" lines; nothing per message
            *("--set", f"registrar.database={workdir / name}.sqlite"),
            *("--set", "security.rate_limit=100000"),
            *("--set", "security.rate_burst=100000"),
            *extra,
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        expect = workers or 1
        deadline = time.monotonic() + 30
        while True:
            found = re.findall(r"listening on udp 127\.0\.0\.1:(\d+)", self._text())
            if len(found) >= expect:
                self.port = int(found[0])
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self._text()}")
            time.sleep(0.05)

    def _text(self) -> str:
        return self.log.read_text(errors="replace")

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_tree(self.proc)


# --- SIPp ------------------------------------------------------------------------------------


def last_stats(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter=";"))[-1]


def elapsed(stats: dict[str, str]) -> float:
    h, m, s = stats["ElapsedTime(C)"].split(":")[:3]
    return int(h) * 3600 + int(m) * 60 + float(s)


def sipp(args: list[str], workdir: Path, name: str, timeout: float) -> dict[str, str]:
    stat = workdir / f"{name}.csv"
    subprocess.run(
        ["sipp", *args, "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1",
         "-i", "127.0.0.1", "-buff_size", "4194304"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
        check=False,
    )  # fmt: skip
    return last_stats(stat)


@dataclass
class Step:
    rate: int
    achieved: float
    failed: int
    count: int
    cpu: float  # server tree CPU seconds during the run
    redis_cpu: float

    @property
    def counts(self) -> bool:
        return self.failed == 0 and self.achieved >= SUSTAINED * self.rate

    @property
    def us_per_op(self) -> float:
        return 1e6 * self.cpu / max(self.count, 1)


def register_step(server: Siptrio, redis: Redis | None, rate: int, seconds: float,
                  workdir: Path, tag: str) -> Step:  # fmt: skip
    count = int(rate * seconds)
    cpu0, r0 = server.cpu(), redis.cpu() if redis else 0.0
    stats = sipp(
        [f"127.0.0.1:{server.port}", "-sf", str(SIPP / "register.xml"), "-t", "un",
         "-max_socket", "5000", "-s", f"{tag}r{rate}u", "-m", str(count), "-r", str(rate),
         "-recv_timeout", "5000", "-timeout", f"{seconds * 3 + 20}s"],
        workdir, f"{tag}-register-{rate}", seconds * 3 + 30,
    )  # fmt: skip
    cpu1, r1 = server.cpu(), redis.cpu() if redis else 0.0
    done = int(stats["SuccessfulCall(C)"])
    return Step(rate, done / max(elapsed(stats), 1e-9), count - done, count, cpu1 - cpu0, r1 - r0)


def call_step(server: Siptrio, redis: Redis | None, rate: int, seconds: float,
              workdir: Path, tag: str) -> Step:  # fmt: skip
    count = int(rate * seconds)
    # a SIPp UAS registered by another SIPp, without trace files (as before)
    callee = start_callee(server.port, workdir, domain="127.0.0.1", traces=False)
    time.sleep(1.0)  # the binding known to every worker through Redis
    cpu0, r0 = server.cpu(), redis.cpu() if redis else 0.0
    try:
        stats = sipp(
            [f"127.0.0.1:{server.port}", "-sf", str(SIPP / "uac.xml"), "-t", "un",
             "-max_socket", "5000", "-s", "bob", "-key", "domain", "127.0.0.1",
             "-m", str(count), "-r", str(rate), "-recv_timeout", "10000",
             "-timeout", f"{seconds * 3 + 30}s", "-mp", str(free_media_port())],
            workdir, f"{tag}-calls-{rate}", seconds * 3 + 40,
        )  # fmt: skip
    finally:
        cpu1, r1 = server.cpu(), redis.cpu() if redis else 0.0
        callee.kill()
        callee.wait()
    done = int(stats["SuccessfulCall(C)"])
    return Step(rate, done / max(elapsed(stats), 1e-9), count - done, count, cpu1 - cpu0, r1 - r0)


Start = Callable[[], tuple[Siptrio, Redis | None]]
StepFn = Callable[[Siptrio, Redis | None, int, float, Path, str], Step]


def ladder(start: Start, step: StepFn, rates: list[int], seconds: float, workdir: Path,
           tag: str) -> list[Step]:  # fmt: skip
    steps = []
    for rate in rates:
        server, redis = start()
        try:
            s = step(server, redis, rate, seconds, workdir, tag)
        finally:
            server.stop()
        steps.append(s)
        print(f"  {tag:>10} {rate:>6}/s: achieved {s.achieved:8.1f}/s, failed {s.failed}, "
              f"{s.us_per_op:7.1f} µs CPU each (+ Redis {1e6 * s.redis_cpu / s.count:6.1f})",
              flush=True)  # fmt: skip
        if not s.counts:
            break
    return steps


def best(steps: list[Step]) -> Step | None:
    good = [s for s in steps if s.counts]
    return good[-1] if good else None


# --- latency across two nodes ----------------------------------------------------------------


def latency(redis: Redis, workdir: Path, calls: int) -> dict[str, list[float]]:
    import trio
    from support.client import SipClient  # type: ignore[import-not-found]
    from support.ua import SDP, UA  # type: ignore[import-not-found]

    common = ["--set", "sip.domains=example.com", "--set", "registrar.backend=redis",
              "--set", f"registrar.redis_url={redis.url}"]  # fmt: skip
    a = Siptrio(workdir, "node-a", *common, "--set", "cluster.node_id=bench-a")
    b = Siptrio(workdir, "node-b", *common, "--set", "cluster.node_id=bench-b")

    async def one(caller: UA, callee: UA) -> float:
        invite, _ = caller.invite(callee.user)
        t0 = time.perf_counter()
        await caller.client.send(invite)
        got = await callee.expect_request("INVITE")
        await callee.reply(got, 200, "OK", body=SDP)
        ok = await caller.expect_response("INVITE")
        t1 = time.perf_counter()
        assert ok.status == 200, ok.status
        d = caller.uac_dialog(invite, ok)
        await caller.client.send(caller.ack(d))
        await callee.expect_request("ACK")
        await caller.client.send(caller.in_dialog(d, "BYE"))
        bye = await callee.expect_request("BYE")
        await callee.reply(bye, 200, "OK")
        await caller.expect_response("BYE")
        return (t1 - t0) * 1000

    async def run() -> dict[str, list[float]]:
        caller = UA(await SipClient.connect("udp", "127.0.0.1", a.port), "alice")
        near = UA(await SipClient.connect("udp", "127.0.0.1", a.port), "bob")
        far = UA(await SipClient.connect("udp", "127.0.0.1", b.port), "carol")
        for ua in (caller, near, far):
            await ua.register()
        await trio.sleep(1.0)
        out: dict[str, list[float]] = {"same node": [], "other node": []}
        for _ in range(20):  # warm-up
            await one(caller, near)
            await one(caller, far)
        for _ in range(calls):
            out["same node"].append(await one(caller, near))
            out["other node"].append(await one(caller, far))
        return out

    try:
        return trio.run(run)
    finally:
        a.stop()
        b.stop()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--register-rates", default="1000,2000,3000,4000,5000")
    p.add_argument("--call-rates", default="200,300,400,500,600,700,800")
    p.add_argument("--latency-calls", type=int, default=300)
    args = p.parse_args(argv)
    for tool in ("sipp", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (apt-get install sip-tester redis-server)", file=sys.stderr)
            return 2
    reg_rates = [int(r) for r in args.register_rates.split(",")]
    call_rates = [int(r) for r in args.call_rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="siptrio-cluster-bench-") as tmp:
        workdir = Path(tmp)
        redis = Redis(workdir)
        try:

            def single() -> tuple[Siptrio, Redis | None]:
                return Siptrio(workdir, "single"), None

            def workers(n: int) -> Start:
                def start() -> tuple[Siptrio, Redis | None]:
                    redis.flush()
                    return Siptrio(
                        workdir, f"workers{n}", "--set", "registrar.backend=redis",
                        "--set", f"registrar.redis_url={redis.url}",
                        "--set", "sip.domains=127.0.0.1", workers=n,
                    ), redis  # fmt: skip

                return start

            results: dict[str, dict[str, list[Step]]] = {"REGISTER": {}, "calls": {}}
            for kind, step, rates in (("REGISTER", register_step, reg_rates),
                                      ("calls", call_step, call_rates)):  # fmt: skip
                print(f"{kind}:", flush=True)
                for tag, start in (("sqlite", single), ("workers=1", workers(1)),
                                   ("workers=2", workers(2))):  # fmt: skip
                    results[kind][tag] = ladder(start, step, rates, args.seconds, workdir, tag)
            redis.flush()
            print("latency:", flush=True)
            lat = latency(redis, workdir, args.latency_calls)
        finally:
            redis.stop()
    lines = report(results, lat, args)
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    return 0


def report(results: dict[str, dict[str, list[Step]]], lat: dict[str, list[float]],
           args: argparse.Namespace) -> list[str]:  # fmt: skip
    ladders = {
        "REGISTER": [int(r) for r in args.register_rates.split(",")],
        "calls": [int(r) for r in args.call_rates.split(",")],
    }
    lines = [
        "# Scale-out: workers and nodes",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; `python bench/cluster.py` "
        f"(--seconds {args.seconds}). SIPp on the same machine.",
        "",
        "| load | server | best rate with 0 failures | server CPU per op | Redis CPU per op "
        "| ops per server CPU-second | rate vs workers=1 | rate vs one process on SQLite |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, by_tag in results.items():
        ref = best(by_tag.get("sqlite", []))
        one = best(by_tag.get("workers=1", []))
        for tag, steps in by_tag.items():
            b = best(steps)
            if b is None:
                lines.append(f"| {kind} | {tag} | none | | | | | |")
                continue
            per_cpu = b.count / b.cpu if b.cpu else float("inf")
            # every rate of the ladder passed: the server's ceiling is higher than this
            top = ">= " if b is steps[-1] and len(steps) == len(ladders[kind]) else ""
            lines.append(
                f"| {kind} | {tag} | {top}{b.rate}/s | {b.us_per_op:.0f} µs | "
                f"{1e6 * b.redis_cpu / b.count:.0f} µs | {per_cpu:,.0f} | "
                f"{b.rate / one.rate if one else float('nan'):.2f} | "
                f"{b.rate / ref.rate if ref else float('nan'):.2f} |"
            )
    lines += [
        "",
        f"Latency, INVITE sent -> 200 received at the caller, {len(lat['same node'])} "
        "sequential calls, UDP both sides:",
        "",
        "| callee | p50 | p99 | mean |",
        "|---|---|---|---|",
    ]
    for name, values in lat.items():
        lines.append(
            f"| {name} | {pct(values, 50):.2f} ms | {pct(values, 99):.2f} ms | "
            f"{statistics.fmean(values):.2f} ms |"
        )
    added = pct(lat["other node"], 50) - pct(lat["same node"], 50)
    lines += ["", f"A second node adds {added:.2f} ms at p50 (one more hop, through its "
              "internal address).", "", "A rate with `>=` passed the top of its ladder.",
              "Each worker keeps the whole location in memory and applies the other's "
              "changes too, so with 2 workers every REGISTER costs CPU in both."]  # fmt: skip
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
