"""The browser path at scale, A B A B: an older siptrio, this one and Kamailio in one run.

    .venv/bin/python bench/ws_ab.py [--n 5000] [--rounds 2] [--base /work/base]
    .venv/bin/python bench/ws_ab.py --n 50000 --servers siptrio --workers 3

Each round runs, for each server, on a fresh process: 100 warm-up connect-REGISTER-close
cycles (bench/ws_browser.py's clients), then N SIP.js-shaped WebSocket flows (subprotocol
``sip``, ``.invalid`` Contact), each REGISTERing its own AOR, 200 handshakes in flight;
all are held ``--hold`` seconds while the server pings them. Then, with every flow
still held: a sample of flows pings the server (WebSocket Ping -> Pong), and a caller
over UDP places calls (INVITE -> 200 OK, answered at once by the tab) to the last flow
registered and to a few others. Reported per run:

- server CPU seconds (utime + stime of its whole tree, /proc) for the N handshakes +
  REGISTERs, and set-ups per server CPU-second;
- memory per flow: (Pss of the tree held - before) / N;
- REGISTER->200 p50 / p99 in the burst, as each client timed its own;
- Ping->Pong and INVITE->200 p50 / max while all are held;
- the load average, read before and after each run.

``base`` is a checkout of another commit (``--base``), run with its own tree first on
``PYTHONPATH``; ``siptrio`` is this tree. Results: bench/results/ws_ab.md (and .json).
With ``--workers K`` siptrio runs as ``serve --workers K`` on one Redis (started here),
for flow counts past one process's RLIMIT_NOFILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ws_scale
from common import (
    REPO,
    Kamailio,
    free_tcp_port,
    free_udp_port,
    kamailio_version,
    machine_busy_seconds,
    stop_tree,
    tcp_listening,
    tree_cpu_seconds,
    tree_memory,
)

RESULTS = REPO / "bench" / "results" / "ws_ab.md"
NAN = float("nan")
CALLS = 10  # calls placed while all flows are held: the last flow and 9 others
# as bench/compare.py runs Kamailio (see there): 1 UDP worker, 2 TCP/WS workers, pings
# after 10 s idle with 10 s for the Pong, shared memory for ~20,000 WS flows
KAMAILIO_DEFINES = {"CHILDREN": "1", "TCP_CHILDREN": "2", "WS_KEEPALIVE": "10"}
KAMAILIO_SHM_MB = 1536


def load() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def pct(values: list[float], p: float) -> float:
    vals = sorted(v for v in values if v >= 0)
    if not vals:
        return NAN
    return vals[min(len(vals) - 1, int(p / 100 * len(vals)))]


@dataclass
class Started:
    pid: int
    ws_port: int
    udp_port: int
    stop: object  # () -> int


TREES: dict[str, Path] = {}  # --tree NAME=PATH: more siptrio checkouts to run
KEEPALIVE = 10.0  # siptrio's keepalive_interval (--keepalive)
KEEPALIVE_TIMEOUT = 10.0  # ... and keepalive_timeout (--keepalive-timeout)
REDIS_PID: list[int] = []  # with --workers: the Redis they share (its memory is reported)


def start(server: str, workdir: Path, base: Path, workers: int) -> Started:
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        udp = free_udp_port()
        if server == "kamailio":
            kam = Kamailio(
                workdir,
                udp_port=udp,
                tcp_port=free_tcp_port(),
                ws_port=free_tcp_port(),
                shm_mb=KAMAILIO_SHM_MB,
                defines=KAMAILIO_DEFINES,
            )
            if tcp_listening(kam.ws_port, timeout=10):
                time.sleep(1.0)  # its UDP and timer processes
                return Started(kam.pid, kam.ws_port, udp, kam.stop)
            kam.stop()
            continue
        tree = TREES.get(server) or (base if server == "base" else REPO)
        # Kamailio's cadence: a ping after 10 s, 10 s for the Pong (the default is 15 + 10)
        extra: dict[str, str] = {
            "sip_websocket.keepalive_interval": str(KEEPALIVE),
            "sip_websocket.keepalive_timeout": str(KEEPALIVE_TIMEOUT),
        }
        if workers > 1:
            extra |= {
                "registrar.backend": "redis",
                "registrar.redis_url": os.environ["WS_AB_REDIS"],
                # With 8 client processes on 2 shared CPUs (load average 15) the workers'
                # loops went over the 5 s default between heartbeats, and the nodes took
                # each other for dead, dropping the bindings on each other's flows.
                "cluster.heartbeat_ttl": "30",
            }
        srv = ws_scale.Server(workdir, free_tcp_port(), tree=tree, udp_port=udp, extra=extra)
        if workers > 1:  # the same server, as N worker processes
            srv.stop()
            srv = _workers(workdir, tree, udp, extra, workers)
        if srv.wait_listening(timeout=60):
            time.sleep(1.0 if workers <= 1 else 5.0)
            return Started(srv.pid, srv.port, udp, srv.stop)
        srv.stop()
    raise RuntimeError(f"{server} did not start; see {workdir}")


def _workers(
    workdir: Path, tree: Path, udp: int, extra: dict[str, str], workers: int
) -> ws_scale.Server:
    srv = ws_scale.Server.__new__(ws_scale.Server)
    srv.port = free_tcp_port()
    sets = {
        "sip.listen_addr": "127.0.0.1",
        "sip.udp_port": str(udp),
        "sip.tcp_enable": "false",
        "sip_websocket.listen_port": str(srv.port),
        "sip_websocket.max_connections": "1000000",
        "sip_websocket.max_connections_per_ip": "1000000",
        "admin.enable": "false",
        "control.enable": "false",
        **extra,
    }
    args = [sys.executable, "-m", "siptrio", "serve", "--workers", str(workers)]
    args += ["--log-level", "INFO"]  # flows closed for want of a Pong are logged at INFO
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    srv.log_path = workdir / "siptrio.log"
    srv._log = srv.log_path.open("wb")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    srv.proc = subprocess.Popen(args, stdout=srv._log, stderr=subprocess.STDOUT, cwd=tree, env=env)
    return srv


def invite(udp_port: int, user: str, timeout: float = 5.0) -> float:
    """Seconds from an INVITE over UDP to its 200 OK (NaN: none in time); ACKs the 200."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        me = f"127.0.0.1:{s.getsockname()[1]}"
        call_id, tag, branch = uuid.uuid4().hex, uuid.uuid4().hex[:8], uuid.uuid4().hex[:12]
        head = [
            f"INVITE sip:{user}@example.com SIP/2.0",
            f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:caller@example.com>;tag={tag}",
            f"To: <sip:{user}@example.com>",
            f"Call-ID: {call_id}",
            "CSeq: 1 INVITE",
            f"Contact: <sip:caller@{me}>",
            "Content-Length: 0",
        ]
        started = time.monotonic()
        s.sendto(("\r\n".join(head) + "\r\n\r\n").encode(), ("127.0.0.1", udp_port))
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536).decode(errors="replace")
            except TimeoutError:
                break
            status = data[8:11]
            if status.startswith("1"):
                continue
            elapsed = time.monotonic() - started
            if status != "200":
                return NAN
            to = next(line for line in data.split("\r\n") if line.lower().startswith("to:"))
            ack = [
                f"ACK sip:{user}@example.com SIP/2.0",
                f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport",
                "Max-Forwards: 70",
                f"From: <sip:caller@example.com>;tag={tag}",
                to,
                f"Call-ID: {call_id}",
                "CSeq: 1 ACK",
                "Content-Length: 0",
            ]
            s.sendto(("\r\n".join(ack) + "\r\n\r\n").encode(), ("127.0.0.1", udp_port))
            return elapsed
        return NAN


@dataclass
class AbRun:
    server: str
    round: int
    n: int
    registered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu: float = NAN
    wall: float = NAN
    client_cpu: float = NAN
    others_cpu: float = NAN
    pss_before: int = 0
    pss_held: int = 0
    redis_before: int = 0  # KiB, with --workers: the Redis the workers share
    redis_held: int = 0
    processes: int = 0
    reg_p50: float = NAN
    reg_p99: float = NAN
    ping_p50: float = NAN
    ping_max: float = NAN
    ping_lost: int = 0
    call_last: float = NAN
    call_p50: float = NAN
    call_max: float = NAN
    calls_answered: int = 0
    alive: int = 0
    load_before: str = ""
    load_after: str = ""
    note: str = ""

    @property
    def per_cpu_second(self) -> float:
        return self.registered / self.server_cpu if self.server_cpu > 0 else NAN

    @property
    def kib_per_flow(self) -> float:
        return (self.pss_held - self.pss_before) / self.registered if self.registered else NAN


def measure(
    server: str, rnd: int, n: int, hold: float, scratch: Path, base: Path, workers: int
) -> AbRun:
    run = AbRun(server=server, round=rnd, n=n, load_before=load())
    workdir = scratch / f"{server}-{rnd}-{n}"
    clients = max(1, min(8, (n + 4999) // 5000)) if n >= 5000 else 1
    clients = max(clients, 2) if n >= 5000 else clients
    locals_ = [f"127.0.0.{10 + i}" for i in range(clients)]
    try:
        srv = start(server, workdir, base, workers if server != "kamailio" else 1)
    except RuntimeError as e:
        run.note = str(e)
        return run
    stop = srv.stop
    try:
        ws_scale.warm_up(srv.ws_port, 200)
        time.sleep(1.0)
        run.pss_before = tree_memory(srv.pid).pss
        if REDIS_PID and server != "kamailio":
            run.redis_before = tree_memory(REDIS_PID[0]).pss
        load_ = ws_scale.Clients(srv.ws_port, n, clients, f"n{n}u", 200, locals_)
        try:
            load_.expect("ready")
            cpu0, busy0 = tree_cpu_seconds(srv.pid), machine_busy_seconds()
            started = time.monotonic()
            load_.tell("go")
            registered = load_.expect("registered")
            run.wall = time.monotonic() - started
            time.sleep(0.5)  # the last store commits
            run.server_cpu = tree_cpu_seconds(srv.pid) - cpu0
            run.registered = sum(r["ok"] for r in registered)
            run.client_cpu = sum(r["cpu"] for r in registered)
            run.others_cpu = max(
                0.0, machine_busy_seconds() - busy0 - run.server_cpu - run.client_cpu
            )
            latencies = [v for r in registered for v in r["latencies"]]
            run.reg_p50, run.reg_p99 = pct(latencies, 50), pct(latencies, 99)
            for r in registered:
                for reason, count in r["errors"].items():
                    run.errors[reason] = run.errors.get(reason, 0) + count
            time.sleep(hold)
            held = tree_memory(srv.pid)
            run.pss_held, run.processes = held.pss, held.processes
            if REDIS_PID and server != "kamailio":
                run.redis_held = tree_memory(REDIS_PID[0]).pss
            # while every flow is held: keep-alives answered, calls placed
            load_.tell("probe")
            probed = load_.expect("probed")
            rtts = [v for p in probed for v in p["rtts"]]
            run.ping_lost = sum(1 for v in rtts if v < 0)
            run.ping_p50, run.ping_max = pct(rtts, 50), max(rtts, default=NAN)
            lasts = [r["last"] for r in registered if r["last"]]
            targets = lasts[-1:] + [f"n{n}u{i}" for i in range(0, n, max(1, n // (CALLS - 1)))]
            delays = [invite(srv.udp_port, user) * 1000 for user in targets[:CALLS]]
            run.call_last = delays[0]
            answered = [d for d in delays if d == d]
            run.calls_answered = len(answered)
            run.call_p50 = statistics.median(answered) if answered else NAN
            run.call_max = max(answered, default=NAN)
            load_.tell("verify")
            verified = load_.expect("verified")
            run.alive = sum(v["alive"] for v in verified)
            load_.tell("close")
            load_.expect("closed")
            load_.wait()
        finally:
            load_.kill()
    except (RuntimeError, KeyError) as e:
        run.note = str(e).splitlines()[0]
    finally:
        rc = stop()  # type: ignore[operator]
    if rc not in (0, -15):
        run.note = (run.note + "; " if run.note else "") + f"server exit {rc}"
    run.load_after = load()
    return run


def f(v: float, digits: int = 1) -> str:
    return "-" if v != v else f"{v:,.{digits}f}"


ROW = (
    "| round | server | N | registered | server CPU s | set-ups per CPU-s | KiB per flow (Pss) "
    "| REGISTER->200 p50 / p99 ms | Ping->Pong p50 / max ms (lost) | INVITE->200 to the last "
    "flow ms | INVITE->200 p50 / max ms (answered) | alive | client CPU s | others' CPU s "
    "| load average before -> after |"
)


def row(r: AbRun) -> str:
    errors = f" ({', '.join(f'{k}: {v}' for k, v in r.errors.items())})" if r.errors else ""
    note = f" ({r.note})" if r.note else ""
    if r.redis_held and r.registered:
        note += f" (+ Redis {(r.redis_held - r.redis_before) / r.registered:.1f} KiB per flow)"
    return (
        f"| {r.round} | {r.server} | {r.n:,} | {r.registered:,}{errors}{note} | "
        f"{f(r.server_cpu, 2)} | **{f(r.per_cpu_second, 0)}** | **{f(r.kib_per_flow)}** | "
        f"{f(r.reg_p50)} / {f(r.reg_p99)} | {f(r.ping_p50)} / {f(r.ping_max)} ({r.ping_lost}) | "
        f"{f(r.call_last)} | {f(r.call_p50)} / {f(r.call_max)} ({r.calls_answered}) | "
        f"{r.alive:,} | {f(r.client_cpu, 2)} | {f(r.others_cpu, 2)} | "
        f"{r.load_before} -> {r.load_after} |"
    )


def summary(runs: list[AbRun]) -> list[str]:
    """The issue's table: Kamailio, siptrio (and the base), siptrio / Kamailio per round."""
    out = [
        "| figure | Kamailio | base | siptrio | siptrio / Kamailio | base / Kamailio |",
        "|---|---|---|---|---|---|",
    ]
    figures = [
        ("server CPU-s for the handshakes + REGISTERs", "server_cpu", 2),
        ("handshake+REGISTER per server CPU-second", "per_cpu_second", 0),
        ("KiB per registered WS flow (Pss)", "kib_per_flow", 1),
        ("REGISTER->200 p50 in the burst, ms", "reg_p50", 0),
        ("REGISTER->200 p99 in the burst, ms", "reg_p99", 0),
        ("INVITE->200 to the last flow, all held, ms", "call_last", 1),
    ]
    rounds = sorted({r.round for r in runs})

    def values(server: str, name: str) -> list[float]:
        got = []
        for rnd in rounds:
            for r in runs:
                if r.server == server and r.round == rnd:
                    got.append(float(getattr(r, name)))
        return got

    for label, name, digits in figures:
        k, b, s = values("kamailio", name), values("base", name), values("siptrio", name)

        def ratios(xs: list[float], ks: list[float]) -> str:
            rs = [x / y for x, y in zip(xs, ks, strict=False) if y and x == x and y == y]
            return ", ".join(f"{v:.2f}" for v in rs) or "-"

        out.append(
            f"| {label} | {', '.join(f(v, digits) for v in k) or '-'} | "
            f"{', '.join(f(v, digits) for v in b) or '-'} | "
            f"{', '.join(f(v, digits) for v in s) or '-'} | {ratios(s, k)} | {ratios(b, k)} |"
        )
    return out


def by_server(runs: list[AbRun], servers: list[str]) -> list[str]:
    """One row per server, in the order run: each figure per round, and / Kamailio's."""
    out = [
        "| server | set-ups per server CPU-s | / Kamailio | KiB per flow | / Kamailio "
        "| REGISTER->200 p50 ms | / Kamailio | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rounds = sorted({r.round for r in runs})

    def get(server: str, name: str) -> list[float]:
        return [
            float(getattr(r, name))
            for rnd in rounds
            for r in runs
            if r.server == server and r.round == rnd
        ]

    for server in servers:
        cells = [server]
        for name, digits, versus in (
            ("per_cpu_second", 0, True),
            ("kib_per_flow", 1, True),
            ("reg_p50", 0, True),
            ("reg_p99", 0, False),
        ):
            mine, kam = get(server, name), get("kamailio", name)
            cells.append(", ".join(f(v, digits) for v in mine) or "-")
            if versus:
                rs = [a / b for a, b in zip(mine, kam, strict=False) if b and a == a and b == b]
                cells.append(", ".join(f"{v:.2f}" for v in rs) or "-")
        out.append("| " + " | ".join(cells) + " |")
    return out


def report(runs: list[AbRun], args: argparse.Namespace, minutes: float) -> str:
    import platform

    base_rev = subprocess.run(
        ["git", "-C", str(args.base), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    head_rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    lines = [
        "# The browser path at scale, A B A B",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {minutes:.1f} minutes, on "
        f"{platform.node()} ({os.cpu_count()} CPUs, shared), Python "
        f"{platform.python_version()} ({sys.executable}), Kamailio {kamailio_version()}; "
        f"base = siptrio at {base_rev}, siptrio = {head_rev} (+ uncommitted changes if any)"
        + "".join(f"; {name} = {path}" for name, path in TREES.items())
        + ".",
        f"`bench/ws_ab.py --n {args.n} --rounds {args.rounds} --hold {args.hold:g}"
        f"{f' --workers {args.workers}' if args.workers > 1 else ''} --servers {args.servers}"
        f"{' --rotate' if args.rotate else ''}`. "
        "Each round runs each server on a fresh process, "
        + (
            "the order turned by one place each round (round 2 starts with the second)."
            if args.rotate
            else "in the order given."
        ),
        "",
        "## Summary (per round)",
        "",
        *summary(runs),
        "",
        "## By server",
        "",
        *by_server(runs, args.servers.split(",")),
        "",
        "## Every run",
        "",
        ROW,
        "|" + "---|" * (ROW.count("|") - 1),
        *(row(r) for r in runs),
        "",
        "Server CPU: utime + stime of the server's process tree from just before the burst",
        "to 0.5 s after its last 200. Memory: Pss summed over the tree, at the end of the hold",
        "less before the burst (after 100 warm-up connect-REGISTER-close cycles), over the",
        "flows registered. REGISTER->200: timed by each client from sending to the 200, 200",
        "handshakes in flight. Ping->Pong: a sample of 1 in N/200 flows pings the server, one",
        "after the other, while all are held. INVITE->200: a UDP caller calls the last flow",
        "registered, then others; the tab answers 200 at once. 'others' CPU' is the",
        "machine's busy time in the burst less the server's and the clients': the load of",
        "the other engineers on this shared machine.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--hold", type=float, default=12.0)
    p.add_argument("--servers", default="base,siptrio,kamailio")
    p.add_argument("--base", type=Path, default=Path("/work/base"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--keepalive", type=float, default=10.0, help="siptrio's keepalive_interval (10)"
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=10.0,
        help="siptrio's keepalive_timeout (10): raise it when the clients cannot keep up",
    )
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another siptrio checkout to run as server NAME (list NAME in --servers)",
    )
    p.add_argument(
        "--rotate",
        action="store_true",
        help="turn the order of --servers by one each round, so that every server runs in "
        "every place (on a shared machine a place in the round can be the busy one)",
    )
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    limit = ws_scale.raise_fd_limit()
    servers = args.servers.split(",")
    global KEEPALIVE, KEEPALIVE_TIMEOUT
    KEEPALIVE, KEEPALIVE_TIMEOUT = args.keepalive, args.keepalive_timeout
    for item in args.tree:
        name, _, path = item.partition("=")
        TREES[name] = Path(path)
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-ws-ab-"))
    redis: subprocess.Popen[bytes] | None = None
    if args.workers > 1:
        port = free_tcp_port()
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(scratch),
            ],
            stdout=subprocess.DEVNULL,
        )
        os.environ["WS_AB_REDIS"] = f"redis://127.0.0.1:{port}/0"
        REDIS_PID.append(redis.pid)
        tcp_listening(port, timeout=10)
    elif args.n + 200 > limit:
        print(f"ws_ab: RLIMIT_NOFILE {limit} < N + 200: use --workers", file=sys.stderr)
    started = time.monotonic()
    runs: list[AbRun] = []
    try:
        for rnd in range(1, args.rounds + 1):
            turn = (rnd - 1) % len(servers) if args.rotate else 0
            for server in servers[turn:] + servers[:turn]:
                r = measure(server, rnd, args.n, args.hold, scratch, args.base, args.workers)
                runs.append(r)
                print(row(r), flush=True)
    finally:
        if redis is not None:
            stop_tree(redis)
        if args.keep:
            print(f"scratch kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    text = report(runs, args, (time.monotonic() - started) / 60)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
