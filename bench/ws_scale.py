"""SIP over WebSocket at scale: N browser-shaped flows held open against a real siptrio.

    .venv/bin/python bench/ws_scale.py [--counts 1000,5000,10000] [--hold 12] [--clients 1]

For each N a fresh ``python -m siptrio serve`` (WARNING logging, WS only on a free
127.0.0.1 port, connection caps raised, server pings every 5 s, database in a scratch
folder) is warmed up with 100 connect-REGISTER-close cycles; then its RSS (VmRSS from
/proc/PID/status) and CPU (utime + stime from /proc/PID/stat) are read, and client
processes (bench/ws_browser.py, so their memory is not the server's) open N
WebSocket connections, each shaped like SIP.js 0.21 (``Sec-WebSocket-Protocol: sip``,
random ``.invalid`` host in Via and Contact) and each REGISTERing its own user. The
connections are held for ``--hold`` seconds while the server pings them (the clients
answer with pongs), the server's RSS is read again, every connection fetches its own
AOR to prove the flow and its binding survived, and then all close; a sample of the
AORs is fetched over a new connection until their bindings are gone.

Per N: connections that registered and survived, handshake+REGISTER rate over wall
time, server CPU seconds for the connect+register phase and handshakes+REGISTERs per
server CPU-second, and memory per flow = (RSS held - RSS before) / N in KiB, beside
Kamailio's 72 KiB per WebSocket connection and the 36 KiB target. Results are printed
and written to bench/results/ws_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The shared helpers, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, free_tcp_port, machine_busy_seconds, stop_tree, tree_cpu_seconds
from ws_browser import raise_fd_limit

RESULTS = REPO / "bench" / "results" / "ws_scale.md"
BROWSER = Path(__file__).resolve().parent / "ws_browser.py"  # the client processes
DEFAULT_COUNTS = (1000, 5000, 10000)
KAMAILIO_KIB = 72  # Kamailio's figure per WebSocket connection
TARGET_KIB = 36  # siptrio's goal: half of it
WARM_UP = 100
KEEPALIVE_INTERVAL = 5.0


# --- /proc --------------------------------------------------------------------------------


def status_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


# --- the server and the run ---------------------------------------------------------------


class Server:
    """``python -m siptrio serve`` with only a WS listener on 127.0.0.1:port."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        *,
        tree: Path = REPO,
        udp_port: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        """``tree``: the siptrio checkout to run (another commit's, for A/B runs);
        ``udp_port``: also listen for UDP there (a caller's INVITEs)."""
        self.port = port
        sets = {
            "sip.listen_addr": "127.0.0.1",
            "sip.udp_enable": "true" if udp_port else "false",
            "sip.udp_port": str(udp_port or 0),
            "sip.tcp_enable": "false",
            "sip_websocket.enable": "true",
            "sip_websocket.listen_port": str(port),
            "sip_websocket.max_connections": "1000000",
            "sip_websocket.max_connections_per_ip": "1000000",
            "sip_websocket.keepalive_interval": str(KEEPALIVE_INTERVAL),
            "admin.enable": "false",
            "control.enable": "false",
            "registrar.database": str(workdir / "location.sqlite"),
            **(extra or {}),
        }
        args = [sys.executable, "-m", "siptrio", "serve", "--log-level", "WARNING"]
        for key, value in sets.items():
            args += ["--set", f"{key}={value}"]
        self.log_path = workdir / "siptrio.log"
        self._log = self.log_path.open("wb")
        # -m puts the working directory first on sys.path: run inside the tree measured
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=tree, env=env
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> int:
        rc = stop_tree(self.proc, timeout=30)
        self._log.close()
        return rc


class Clients:
    """K client processes sharing N flows; they step through their phases together."""

    def __init__(
        self,
        port: int,
        n: int,
        k: int,
        prefix: str,
        concurrency: int,
        local_addresses: list[str] | None = None,
    ) -> None:
        """``local_addresses``: one per client process (past ~28,000 flows one source
        address runs out of ephemeral ports)."""
        self.procs: list[subprocess.Popen[str]] = []
        share, extra = divmod(n, k)
        first = 0
        for i in range(k):
            count = share + (1 if i < extra else 0)
            args = [sys.executable, str(BROWSER), "--port", str(port), "--prefix", prefix]
            args += ["--first", str(first), "--n", str(count)]
            args += ["--concurrency", str(max(1, concurrency // k))]
            if local_addresses:
                args += ["--local", local_addresses[i]]
            first += count
            self.procs.append(
                subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )

    def expect(self, event: str) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"client {p.pid} exited (status {p.wait()}) before {event!r}")
            data = json.loads(line)
            if data["event"] != event:
                raise RuntimeError(f"client {p.pid}: expected {event!r}, got {data}")
            out.append(data)
        return out

    def tell(self, command: str) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(command + "\n")
            p.stdin.flush()

    def wait(self) -> None:
        for p in self.procs:
            p.wait(30)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@dataclass
class Run:
    n: int
    registered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0  # go .. last client registered
    server_cpu: float = 0.0  # connect+register phase
    hold_cpu: float = 0.0  # the hold: pings and pongs
    hold: float = 0.0
    pings_phase: int = 0  # pings the clients answered during the connect+register phase
    pings_hold: int = 0  # ... and during the hold
    machine_busy: float = 0.0  # every process on the machine, connect+register phase
    rss_before: int = 0  # KiB
    rss_held: int = 0
    rss_closed: int = 0
    hwm: int = 0
    alive: int = 0
    bound: int = 0
    pings_min: int = 0
    still_bound: int = -1
    sample: int = 0
    client_cpu: float = 0.0  # the clients, connect+register phase
    note: str = ""

    @property
    def rate(self) -> float:
        return self.registered / self.wall if self.wall else 0.0

    @property
    def per_cpu_second(self) -> float:
        return self.registered / self.server_cpu if self.server_cpu > 0 else float("nan")

    @property
    def ping_ms(self) -> float:
        """Server CPU per ping and its pong, from the hold (where nothing else happens)."""
        return self.hold_cpu / self.pings_hold * 1000 if self.pings_hold else float("nan")

    @property
    def per_cpu_second_without_pings(self) -> float:
        """As ``per_cpu_second``, the pings' estimated share of the phase taken out."""
        if not self.pings_hold:
            return self.per_cpu_second
        cpu = self.server_cpu - self.pings_phase * self.ping_ms / 1000
        return self.registered / cpu if cpu > 0 else float("nan")

    @property
    def other_cpu(self) -> float:
        """Machine CPU seconds in the phase spent by neither the server nor the clients."""
        return max(0.0, self.machine_busy - self.server_cpu - self.client_cpu)

    @property
    def kib_per_flow(self) -> float:
        return (self.rss_held - self.rss_before) / self.n

    @property
    def ok(self) -> bool:
        return (
            self.registered == self.n
            and self.alive == self.n
            and self.bound == self.n
            and self.still_bound == 0
        )


def warm_up(port: int, concurrency: int) -> None:
    """WARM_UP connect-REGISTER-close cycles: lazily imported code, first-use caches and
    the store file belong to the baseline, not to the measured phase."""
    warm = Clients(port, WARM_UP, 1, "warm", concurrency)
    try:
        for step in ("ready", "registered", "verified", "closed"):
            warm.expect(step)
            if step != "closed":
                warm.tell({"ready": "go", "registered": "verify", "verified": "close"}[step])
        warm.wait()
    finally:
        warm.kill()


def measure(n: int, hold: float, clients: int, concurrency: int, scratch: Path) -> Run:
    run = Run(n=n, hold=hold)
    workdir = scratch / f"n{n}"
    workdir.mkdir()
    for _attempt in range(3):
        server = Server(workdir, free_tcp_port())
        if server.wait_listening():
            break
        server.stop()
    else:
        raise RuntimeError(f"siptrio did not start; see {workdir / 'siptrio.log'}")
    try:
        warm_up(server.port, concurrency)
        time.sleep(1.0)
        run.rss_before = status_kib(server.pid)

        load = Clients(server.port, n, clients, f"n{n}u", concurrency)
        try:
            load.expect("ready")
            cpu0, busy0 = tree_cpu_seconds(server.pid), machine_busy_seconds()
            started = time.monotonic()
            load.tell("go")
            registered = load.expect("registered")
            run.wall = time.monotonic() - started
            time.sleep(0.5)  # the store commits what the last REGISTERs queued
            cpu1 = tree_cpu_seconds(server.pid)
            run.machine_busy = machine_busy_seconds() - busy0
            run.server_cpu = cpu1 - cpu0
            run.registered = sum(r["ok"] for r in registered)
            run.client_cpu = sum(r["cpu"] for r in registered)
            run.pings_phase = sum(r["pings"] for r in registered)
            for r in registered:
                for reason, count in r["errors"].items():
                    run.errors[reason] = run.errors.get(reason, 0) + count
            time.sleep(hold)
            run.rss_held = status_kib(server.pid)
            run.hold_cpu = tree_cpu_seconds(server.pid) - cpu1
            load.tell("verify")
            verified = load.expect("verified")
            run.alive = sum(v["alive"] for v in verified)
            run.bound = sum(v["bound"] for v in verified)
            run.pings_min = min(v["pings_min"] for v in verified)
            run.pings_hold = sum(v["pings_at_verify"] for v in verified) - run.pings_phase
            load.tell("close")
            closed = load.expect("closed")
            run.still_bound = sum(c["still_bound"] for c in closed)
            run.sample = sum(c["sample"] for c in closed)
            load.wait()
        finally:
            load.kill()
        time.sleep(1.0)
        run.rss_closed = status_kib(server.pid)
        run.hwm = status_kib(server.pid, "VmHWM")
    finally:
        rc = server.stop()
    if rc != 0:
        run.note = f"server exit {rc}"
    logged = [line for line in server.log_path.read_text(errors="replace").splitlines() if line]
    if logged:  # at WARNING, a clean run logs nothing
        run.note = (run.note + "; " if run.note else "") + f"{len(logged)} server log lines"
        print(f"N={n}: the server logged:", *logged[:10], sep="\n  ", file=sys.stderr)
    return run


# --- reporting ----------------------------------------------------------------------------

HEADER = (
    "| flows N | registered | survived the hold | handshake+REGISTER /s (wall) | "
    "server CPU s | per server CPU-s | same, pings taken out | "
    "RSS before MiB | RSS held MiB | KiB per flow | Kamailio KiB | target KiB |"
)


def row(run: Run) -> str:
    survived = f"{min(run.alive, run.bound)}"
    if run.pings_min:
        survived += f" (>= {run.pings_min} pings each)"
    note = f" ({run.note})" if run.note else ""
    errors = f" ({', '.join(f'{k}: {v}' for k, v in run.errors.items())})" if run.errors else ""
    return (
        f"| {run.n} | {run.registered}{errors}{note} | {survived} | {run.rate:.0f} | "
        f"{run.server_cpu:.2f} | {run.per_cpu_second:.0f} | "
        f"{run.per_cpu_second_without_pings:.0f} | {run.rss_before / 1024:.1f} | "
        f"{run.rss_held / 1024:.1f} | **{run.kib_per_flow:.1f}** | {KAMAILIO_KIB} | "
        f"{TARGET_KIB} |"
    )


DETAIL_HEADER = (
    "| flows N | phase wall s | client CPU s | other processes' CPU s | pings in phase | "
    "pings in hold | server CPU s in hold | server CPU ms per ping | RSS after close MiB | "
    "VmHWM MiB | sample fetched after close | still bound |"
)


def detail_row(run: Run) -> str:
    return (
        f"| {run.n} | {run.wall:.2f} | {run.client_cpu:.2f} | {run.other_cpu:.2f} | "
        f"{run.pings_phase} | {run.pings_hold} | {run.hold_cpu:.2f} | "
        f"{'-' if not run.pings_hold else f'{run.ping_ms:.2f}'} | "
        f"{run.rss_closed / 1024:.1f} | {run.hwm / 1024:.1f} | {run.sample} | {run.still_bound} |"
    )


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    from siptrio import __version__

    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, siptrio {__version__}, "
        f"trio {version('trio')}, trio-websocket {version('trio-websocket')}, "
        f"wsproto {version('wsproto')}"
    )


def report(runs: list[Run], clients: int, concurrency: int, hold: float) -> str:
    lines = [
        "# SIP over WebSocket at scale",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        "",
        "`bench/ws_scale.py`: for each N a fresh `siptrio serve` (WARNING logging, WS only,",
        f"caps raised, server pings every {KEEPALIVE_INTERVAL:g} s), warmed up with {WARM_UP} "
        "connect-REGISTER-close cycles;",
        f"{clients} client process(es) on 127.0.0.1 open N SIP.js-shaped flows ({concurrency} "
        "handshakes in flight at most),",
        f"each REGISTERs its own AOR; all are held {hold:g} s while the server pings them, then "
        "each fetches its own",
        "binding, and all close. Server CPU is utime + stime over the connect+REGISTER phase "
        "(plus 0.5 s for the",
        "last store commits). Pings taken out: the phase's pings at the per-ping cost measured "
        "in the hold.",
        "Memory per flow is (VmRSS held - VmRSS before) / N, read before the load and at the end "
        "of the hold.",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
        *(row(r) for r in runs),
        "",
        DETAIL_HEADER,
        "|" + "---|" * (DETAIL_HEADER.count("|") - 1),
        *(detail_row(r) for r in runs),
        "",
        f"Kamailio's reference is {KAMAILIO_KIB} KiB per WebSocket connection; siptrio's target "
        f"is {TARGET_KIB} KiB.",
        "Wall-clock rates depend on what else runs: \"other processes' CPU s\" is the machine's "
        "busy time",
        "(/proc/stat) in the phase minus the server's and the clients'. The per-CPU-second and "
        "memory figures",
        "do not depend on it.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--counts",
        help=f"comma-separated flow counts (default {','.join(map(str, DEFAULT_COUNTS))})",
    )
    p.add_argument(
        "--hold", type=float, default=12.0, help="seconds to hold the flows (default 12)"
    )
    p.add_argument("--clients", type=int, default=1, help="client processes (default 1)")
    p.add_argument(
        "--concurrency", type=int, default=200, help="handshakes in flight (default 200)"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (server logs)")
    p.add_argument(
        "--output", type=Path, default=RESULTS, help=f"markdown report (default {RESULTS})"
    )
    args = p.parse_args(argv)

    counts = [int(c) for c in args.counts.split(",")] if args.counts else list(DEFAULT_COUNTS)
    limit = raise_fd_limit()
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-ws-scale-"))
    runs: list[Run] = []
    try:
        for n in counts:
            if n + 100 > limit:  # the server holds all N
                print(f"ws_scale: skipping N={n}: RLIMIT_NOFILE is {limit}", file=sys.stderr)
                continue
            run = measure(n, args.hold, args.clients, args.concurrency, scratch)
            runs.append(run)
            print(row(run), flush=True)
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    text = report(runs, args.clients, args.concurrency, args.hold)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
