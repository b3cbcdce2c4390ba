"""A long run: calls, REGISTER refreshes and WebSocket clients at once, memory sampled.

    .venv/bin/python bench/soak.py [--minutes 60] [--calls 300] [--registers 100] [--ws 1000]
                                   [--tree PATH] [--label soak]

One ``python -m siptrio serve`` (WARNING logging, UDP and WS on free 127.0.0.1 ports, the
admin API for /metrics, SQLite in a scratch folder, every other setting at its default,
``--tree`` on PYTHONPATH: the code under test) carries for ``--minutes``:

- calls at ``--calls`` per second over UDP: a SIPp caller (examples/sipp/uac.xml: INVITE,
  180, 200, ACK, BYE, 200, no pause) to a SIPp callee (uas.xml, registered as bob by
  another SIPp for the whole run), as bench/calls_udp.py;
- REGISTER refreshes at ``--registers`` per second over UDP: ``--users`` addresses of
  record (default 60 x the rate, so each is refreshed once a minute), each with its own
  Call-ID and a rising CSeq, Expires 300; the first round adds the bindings, every later
  one refreshes them (a client process of this script, ``--register-client``);
- ``--ws`` WebSocket flows shaped like SIP.js (bench/ws_scale.py's ``Browser``), each
  REGISTERed (expires 600, refreshed every 300 s), sending a CRLF keep-alive every 30 s
  and answering the server's pings (``keepalive_interval`` 15 s by default);

then ``--settle`` seconds without load. Every ``--every`` seconds (15) it samples the
server's VmRSS and Pss, its CPU share since the last sample (utime + stime over wall
time), the machine's load average, the calls SIPp counted, and every state size the
server's /metrics has (``siptrio_state_entries{table=...}``, plus the transaction,
dialog, binding and flow gauges that older versions have too). It writes a markdown
table to ``bench/results/<label>.md`` (rewritten at each sample, so an interrupted run
still leaves one) and a PNG of RSS over time to ``bench/results/<label>.png``. With
``--profile DIR`` the server runs under bench/memprofile.py, which writes a memory
report (allocator statistics, collector counts, objects by type) to DIR every minute.

The goal (issue 24): RSS at the end of the load within 10 % of RSS at minute 10, and
every state size flat. Run the code before a change with ``--tree`` pointing at a
checkout of it (``git worktree add /tmp/base <commit>``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from calls_udp import (
    CALLEE,
    DOMAIN,
    free_media_port,
    sipp_common,
    stop_callee,
    udp_port_taken,
)
from common import REPO, free_tcp_port, free_udp_port, sipp_final_stats, stop_tree, tree_cpu_seconds
from register_udp import options_probe

SIPP_DIR = REPO / "examples" / "sipp"
RESULTS = REPO / "bench" / "results"
REGISTER_EXPIRES = 300
WS_EXPIRES = 600  # what ws_scale.sipjs_register asks for
WS_REFRESH = 300.0
WS_CRLF_EVERY = 30.0
MINUTES_SHOWN = (1, 10, 30, 60)


# --- the REGISTER client (its own process) ------------------------------------------------


def register_client(port: int, rate: float, users: int, seconds: float, out: Path) -> int:
    """REGISTER refreshes at ``rate``/s for ``users`` AORs, round robin; counts to ``out``.

    One UDP socket, no retransmissions: an answer that never comes is counted as lost.
    The counts (JSON) are rewritten every second.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    local = sock.getsockname()[1]
    call_ids = [f"soak-reg-{i}-{uuid.uuid4().hex[:8]}" for i in range(users)]
    cseqs = [0] * users
    counts: dict[str, int] = {"sent": 0}
    started = time.monotonic()
    next_send = started
    next_dump = started + 1.0
    i = 0
    while True:
        now = time.monotonic()
        if now - started >= seconds:
            break
        while next_send <= now:
            user = i % users
            cseqs[user] += 1
            branch = f"z9hG4bK-soak-{uuid.uuid4().hex[:16]}"
            request = (
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:soak{user}@{DOMAIN}>;tag=soak{user}\r\n"
                f"To: <sip:soak{user}@{DOMAIN}>\r\n"
                f"Call-ID: {call_ids[user]}\r\n"
                f"CSeq: {cseqs[user]} REGISTER\r\n"
                f"Contact: <sip:soak{user}@127.0.0.1:{local}>\r\n"
                f"Expires: {REGISTER_EXPIRES}\r\n"
                "User-Agent: siptrio bench/soak.py\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            try:
                sock.sendto(request, ("127.0.0.1", port))
                counts["sent"] += 1
            except OSError:
                counts["send_errors"] = counts.get("send_errors", 0) + 1
            i += 1
            next_send += 1.0 / rate
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            status = data[8:11].decode(errors="replace")
            if status != "100":
                counts[status] = counts.get(status, 0) + 1
        if now >= next_dump:
            out.write_text(json.dumps(counts))
            next_dump += 1.0
        time.sleep(max(0.0, min(next_send, next_dump) - time.monotonic()))
    time.sleep(1.0)  # the last answers
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            break
        status = data[8:11].decode(errors="replace")
        if status != "100":
            counts[status] = counts.get(status, 0) + 1
    out.write_text(json.dumps(counts))
    return 0


# --- the WebSocket clients (their own process) --------------------------------------------


def ws_client(port: int, n: int, seconds: float, out: Path) -> int:
    """``n`` SIP.js-shaped flows held for ``seconds``: REGISTER, refresh, CRLF, pongs."""
    import trio
    import wsproto.events as wse
    from ws_scale import GONE, ORIGIN, Browser, raise_fd_limit

    raise_fd_limit()
    counts: dict[str, int] = {"registered": 0, "refreshed": 0, "crlf": 0, "failed": 0}
    browsers: list[Browser] = []

    async def keep(b: Browser) -> None:
        """Refresh the binding every WS_REFRESH s and send CRLF every WS_CRLF_EVERY s."""
        next_refresh = trio.current_time() + WS_REFRESH * random.uniform(0.5, 1.0)
        while True:
            await trio.sleep(WS_CRLF_EVERY * random.uniform(0.9, 1.1))
            if b.closed.is_set():
                counts["failed"] += 1
                return
            try:
                await b.send(wse.TextMessage(data="\r\n\r\n"))
                counts["crlf"] += 1
                if trio.current_time() >= next_refresh:
                    reply = await b.request(b.register())
                    if reply.startswith("SIP/2.0 200 "):
                        counts["refreshed"] += 1
                    else:
                        counts["refresh_" + reply[8:11]] = counts.get("refresh_" + reply[8:11], 0)
                        counts["refresh_" + reply[8:11]] += 1
                    next_refresh += WS_REFRESH
            except GONE:
                counts["failed"] += 1
                return

    async def open_flow(nursery: trio.Nursery, b: Browser, limiter: trio.CapacityLimiter) -> None:
        try:
            async with limiter:
                with trio.fail_after(30):
                    b.stream = await trio.open_tcp_stream("127.0.0.1", port)
                    nursery.start_soon(b.reader)
                    await b.send(
                        wse.Request(
                            host=f"127.0.0.1:{port}",
                            target="/",
                            subprotocols=["sip"],
                            extra_headers=[(b"Origin", ORIGIN)],
                        )
                    )
                    await b.accepted.wait()
                    if b.refused or b.closed.is_set():
                        counts["failed"] += 1
                        return
                    reply = await b.request(b.register())
        except GONE:
            counts["failed"] += 1
            return
        if reply.startswith("SIP/2.0 200 "):
            counts["registered"] += 1
            browsers.append(b)
            nursery.start_soon(keep, b)
        else:
            counts["failed"] += 1

    async def dump() -> None:
        while True:
            await trio.sleep(1.0)
            alive = sum(not b.closed.is_set() for b in browsers)
            pings = sum(b.pings for b in browsers)
            out.write_text(json.dumps({**counts, "alive": alive, "pings": pings}))

    async def main() -> None:
        limiter = trio.CapacityLimiter(50)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dump)
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as flows:
                    for k in range(n):
                        flows.start_soon(open_flow, flows, Browser(f"soakws{k}"), limiter)
            alive = sum(not b.closed.is_set() for b in browsers)
            pings = sum(b.pings for b in browsers)
            out.write_text(json.dumps({**counts, "alive": alive, "pings": pings}))
            for b in browsers:
                if b.stream is not None:
                    await trio.aclose_forcefully(b.stream)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


# --- the server and the load ---------------------------------------------------------------


@dataclass
class Soak:
    tree: Path
    workdir: Path
    minutes: float
    calls: int
    registers: int
    users: int
    ws: int
    python: str
    profile: Path | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    udp_port: int = 0
    ws_port: int = 0
    admin_port: int = 0

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.tree)
        return env

    def start_server(self) -> subprocess.Popen[bytes]:
        for _attempt in range(3):
            self.udp_port, self.ws_port, self.admin_port = (
                free_udp_port(),
                free_tcp_port(),
                free_tcp_port(),
            )
            sets = {
                "sip.listen_addr": "127.0.0.1",
                "sip.udp_port": str(self.udp_port),
                "sip.tcp_enable": "false",
                "sip.domains": DOMAIN,
                "sip_websocket.enable": "true",
                "sip_websocket.listen_port": str(self.ws_port),
                "sip_websocket.max_connections": "1000000",
                "sip_websocket.max_connections_per_ip": "1000000",
                "admin.enable": "true",
                "admin.listen_addr": "127.0.0.1",
                "admin.listen_port": str(self.admin_port),
                "control.enable": "false",
                "registrar.database": str(self.workdir / "location.sqlite"),
                "registrar.max_expires": "86400",
            }
            serve = [self.python, "-m", "siptrio", "serve"]
            env = self.env()
            if self.profile is not None:  # the same server, with memory reports
                serve = [self.python, str(Path(__file__).with_name("memprofile.py")), "serve"]
                env["MEMPROF_OUT"] = str(self.profile)
            args = [*serve, "--log-level", "WARNING"]
            for key, value in sets.items():
                args += ["--set", f"{key}={value}"]
            with (self.workdir / "siptrio.log").open("ab") as log:
                proc = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tree, env=env
                )
            if options_probe(self.udp_port) and self.metrics() is not None:
                self.procs["server"] = proc
                return proc
            stop_tree(proc)
        raise RuntimeError(f"siptrio did not start; see {self.workdir}")

    def metrics(self) -> str | None:
        try:
            url = f"http://127.0.0.1:{self.admin_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return None

    def sipp(
        self, name: str, args: list[str], local_port: int | None = None
    ) -> subprocess.Popen[bytes]:
        cmd = [
            "sipp",
            f"127.0.0.1:{self.udp_port}",
            *("-i", "127.0.0.1"),
            *("-p", str(local_port or free_udp_port())),
            *("-mp", str(free_media_port())),
            *("-t", "u1"),
            *("-buff_size", "4194304"),
            *("-s", CALLEE),
            *("-key", "domain", DOMAIN),
            "-nostdin",
            "-trace_stat",
            *("-stf", str(self.workdir / f"{name}_stat.csv")),
            *("-fd", "15"),
            "-trace_screen",
            *("-screen_file", str(self.workdir / f"{name}_screen.log")),
            *args,
        ]
        with (self.workdir / f"{name}.stdout").open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.procs[name] = proc
        return proc

    def start_callee(self) -> None:
        """The callee as bench/calls_udp.py runs it: a SIPp UAS (uas.xml) answering every
        call, registered as bob by a second SIPp, the binding good for the whole run."""
        callee_port = free_udp_port()
        proc = self.sipp("callee", ["-sf", str(SIPP_DIR / "uas.xml")], local_port=callee_port)
        deadline = time.monotonic() + 10
        while not udp_port_taken(callee_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the callee did not start; see {self.workdir}")
            time.sleep(0.05)
        register = [
            "sipp",
            *sipp_common(self.udp_port),
            *("-sf", str(SIPP_DIR / "register-contact.xml")),
            *("-key", "contact_port", str(callee_port)),
            *("-key", "expires", str(int(self.seconds + 900))),
            *("-m", "1"),
            *("-recv_timeout", "5000"),
            "-nostdin",
        ]
        with (self.workdir / "register-callee.stdout").open("wb") as out:
            done = subprocess.run(
                register, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, timeout=30, check=False,
            )  # fmt: skip
        if done.returncode != 0 or not self._callee_registered():
            raise RuntimeError(f"the callee was not registered; see {self.workdir}")

    def _callee_registered(self) -> bool:
        text = self.metrics() or ""
        m = re.search(r'^siptrio_bindings\{transport="udp"\} ([0-9.]+)', text, re.M)
        return m is not None and float(m.group(1)) >= 1

    def start_load(self) -> None:
        me = [self.python, str(Path(__file__).resolve())]
        if self.ws:
            self.procs["ws"] = subprocess.Popen(
                [
                    *me,
                    "--ws-client",
                    *("--port", str(self.ws_port)),
                    *("--n", str(self.ws)),
                    *("--seconds", str(self.seconds)),
                    *("--out", str(self.workdir / "ws.json")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(self.workdir / "ws.stderr").open("wb"),
            )
        if self.registers:
            self.procs["register"] = subprocess.Popen(
                [
                    *me,
                    "--register-client",
                    *("--port", str(self.udp_port)),
                    *("--rate", str(self.registers)),
                    *("--users", str(self.users)),
                    *("--seconds", str(self.seconds)),
                    *("--out", str(self.workdir / "register.json")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(self.workdir / "register.stderr").open("wb"),
            )
        if self.calls:
            count = int(self.calls * self.seconds)
            self.sipp(
                "caller",
                [
                    *("-sf", str(SIPP_DIR / "uac.xml")),
                    *("-m", str(count)),
                    *("-r", str(self.calls)),
                    *("-l", str(max(1000, self.calls * 4))),
                    *("-recv_timeout", "10000"),
                    *("-timeout", f"{int(self.seconds) + 5}s"),
                ],
            )

    def client_counts(self, name: str) -> dict[str, int]:
        try:
            return dict(json.loads((self.workdir / f"{name}.json").read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self, *, wait: float = 30.0) -> None:
        """Let the load generators finish (``wait`` seconds at most), then end the callee."""
        for name in ("caller", "register", "ws"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    stop_tree(proc)
        callee = self.procs.get("callee")
        if callee is not None and callee.poll() is None:
            stop_callee(callee)


# --- sampling ------------------------------------------------------------------------------

STATE_RE = re.compile(r'^siptrio_state_entries\{table="([^"]+)"\} ([0-9.e+]+)$', re.M)
GAUGES = (
    ("transactions.server", r'^siptrio_transactions\{kind="server"\} ([0-9.e+]+)$'),
    ("transactions.client", r'^siptrio_transactions\{kind="client"\} ([0-9.e+]+)$'),
    ("dialogs", None),
    ("bindings", None),
    ("flows", None),
)


def state_sizes(text: str) -> dict[str, float]:
    """Every siptrio_state_entries table; else (older code) the gauges it has."""
    sizes = {name: float(v) for name, v in STATE_RE.findall(text)}
    if sizes:
        return sizes
    for name, pattern in GAUGES:
        if pattern is None:
            values = re.findall(rf"^siptrio_{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
            sizes[name] = sum(float(v) for v in values)
        else:
            m = re.search(pattern, text, re.M)
            if m:
                sizes[name] = float(m.group(1))
    return sizes


def proc_kib(pid: int) -> tuple[int, int]:
    """VmRSS and Pss of one process, KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss: int
    pss: int
    cpu: float  # share of one CPU since the last sample
    load: float
    calls_ok: int
    calls_failed: int
    loaded: bool
    sizes: dict[str, float]


def sipp_counts(workdir: Path) -> tuple[int, int]:
    stats = sipp_final_stats(workdir / "caller_stat.csv")
    try:
        return int(stats.get("SuccessfulCall(C)", 0)), int(stats.get("FailedCall(C)", 0))
    except ValueError:
        return 0, 0


def at_minute(samples: list[Sample], minute: float) -> Sample | None:
    """The sample nearest to ``minute`` of the load (None if the run did not get there)."""
    loaded = [s for s in samples if s.loaded]
    if not loaded or loaded[-1].t < minute * 60 - 20:
        return None
    return min(loaded, key=lambda s: abs(s.t - minute * 60))


def report(soak: Soak, samples: list[Sample], meta: dict[str, Any], label: str) -> str:
    tables = sorted({k for s in samples for k in s.sizes})
    reg, ws = soak.client_counts("register"), soak.client_counts("ws")
    lines = [
        f"# Soak: {label}",
        "",
        f"Started {meta['started']} UTC on {meta['machine']}; code under test: `{soak.tree}` "
        f"({meta['commit']}); Python {meta['python']}.",
        "",
        f"`bench/soak.py --minutes {soak.minutes:g} --calls {soak.calls} --registers "
        f"{soak.registers} --users {soak.users} --ws {soak.ws}`: calls through the proxy over "
        "UDP (SIPp uac.xml to a registered SIPp callee, no pause), REGISTER refreshes over UDP, "
        f"WebSocket flows (SIP.js-shaped, refreshed every {WS_REFRESH:g} s, CRLF every "
        f"{WS_CRLF_EVERY:g} s, pinged by the server), all on 127.0.0.1, default settings "
        "otherwise. A sample every 15 s: VmRSS and Pss of the server, its CPU share since "
        "the last sample (100 % = one CPU), the load average (1 min; 2 CPUs shared with "
        "other people's work), the calls SIPp has counted, and the server's state sizes.",
        "",
    ]
    shown = [(m, at_minute(samples, m)) for m in MINUTES_SHOWN if m <= soak.minutes + 0.5]
    if samples:
        last_loaded = [s for s in samples if s.loaded]
        lines += ["## RSS at minutes " + ", ".join(str(m) for m, _ in shown), ""]
        lines += ["| minute | RSS MiB | Pss MiB | " + " | ".join(tables) + " |"]
        lines += ["|---|---|---|" + "---|" * len(tables)]
        for m, s in shown:
            if s is None:
                lines.append(f"| {m} | (not reached) | |" + " |" * len(tables))
                continue
            lines.append(
                f"| {m} | {s.rss / 1024:.1f} | {s.pss / 1024:.1f} | "
                + " | ".join(f"{s.sizes.get(k, 0):.0f}" for k in tables)
                + " |"
            )
        at10 = at_minute(samples, 10)
        if last_loaded and at10 is not None:
            end = last_loaded[-1]
            growth = (end.rss - at10.rss) / at10.rss * 100
            lines += [
                "",
                f"End of the load (minute {end.t / 60:.1f}): RSS {end.rss / 1024:.1f} MiB, "
                f"{growth:+.1f} % against minute 10 (goal: within 10 %).",
            ]
        if samples[-1] is not None and not samples[-1].loaded:
            s = samples[-1]
            lines.append(
                f"\nAfter {s.t / 60 - soak.minutes:.1f} min without load: RSS "
                f"{s.rss / 1024:.1f} MiB; "
                + ", ".join(f"{k} {s.sizes.get(k, 0):.0f}" for k in tables)
                + "."
            )
        ok, failed = sipp_counts(soak.workdir)
        lines += [
            "",
            f"Calls: {ok} successful, {failed} failed (SIPp). REGISTER client: "
            + (", ".join(f"{k}: {v}" for k, v in sorted(reg.items())) or "-")
            + ". WebSocket clients: "
            + (", ".join(f"{k}: {v}" for k, v in sorted(ws.items())) or "-")
            + ".",
            "",
            "## Every sample",
            "",
            "| minute | load | RSS MiB | Pss MiB | CPU % | load avg | calls ok | calls failed | "
            + " | ".join(tables)
            + " |",
            "|---|---|---|---|---|---|---|---|" + "---|" * len(tables),
        ]
        for s in samples:
            lines.append(
                f"| {s.t / 60:.2f} | {'yes' if s.loaded else 'no'} | {s.rss / 1024:.1f} | "
                f"{s.pss / 1024:.1f} | {s.cpu * 100:.0f} | {s.load:.2f} | {s.calls_ok} | "
                f"{s.calls_failed} | "
                + " | ".join(f"{s.sizes.get(k, 0):.0f}" for k in tables)
                + " |"
            )
    lines.append("")
    return "\n".join(lines)


def plot(samples: list[Sample], path: Path, label: str, minutes: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: matplotlib is not installed; no PNG", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = [s.t / 60 for s in samples]
    ax.plot(xs, [s.rss / 1024 for s in samples], label="VmRSS")
    ax.plot(xs, [s.pss / 1024 for s in samples], label="Pss", linestyle="--")
    ax.axvline(minutes, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("minutes since the load started (dotted: load ends)")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"siptrio server memory: {label}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe_tree(tree: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "?"
    return out + (" + uncommitted changes" if dirty else "")


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from register_udp import machine

    # SIGTERM (and SIGINT, which a shell ignores in background jobs) stop the run
    # with its report written and every process it started stopped.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)

    if shutil.which("sipp") is None:
        print("soak: sipp is not installed (Debian: apt install sip-tester)", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    md = args.output_dir / f"{args.label}.md"
    png = args.output_dir / f"{args.label}.png"
    scratch = Path(tempfile.mkdtemp(prefix="siptrio-soak-"))
    soak = Soak(
        tree=args.tree.resolve(),
        workdir=scratch,
        minutes=args.minutes,
        calls=args.calls,
        registers=args.registers,
        users=args.users or max(1, args.registers * 60),
        ws=args.ws,
        python=args.python,
        profile=args.profile.resolve() if args.profile else None,
    )
    py = subprocess.run(
        [
            args.python,
            "-c",
            "import platform,sys; print(platform.python_version(), sys.executable)",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    meta = {
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "machine": machine(),
        "commit": describe_tree(soak.tree),
        "python": py,
    }
    samples: list[Sample] = []
    print(f"soak: scratch {scratch}, writing {md}", file=sys.stderr, flush=True)
    try:
        server = soak.start_server()
        soak.start_callee()
        soak.start_load()
        started = time.monotonic()
        end_load = started + soak.seconds
        end_all = end_load + args.settle
        last_cpu, last_t = tree_cpu_seconds(server.pid), started
        next_sample = started + args.every
        stopped = False
        while True:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            now = time.monotonic()
            if not stopped and now >= end_load:
                soak.stop()  # waits for the load generators to finish, then ends the callee
                stopped = True
                now = time.monotonic()
            if server.poll() is not None:
                print(f"soak: the server exited ({server.returncode})", file=sys.stderr)
                break
            cpu = tree_cpu_seconds(server.pid)
            rss, pss = proc_kib(server.pid)
            text = soak.metrics() or ""
            ok, failed = sipp_counts(scratch)
            sample = Sample(
                t=now - started,
                rss=rss,
                pss=pss,
                cpu=(cpu - last_cpu) / max(1e-9, now - last_t),
                load=os.getloadavg()[0],
                calls_ok=ok,
                calls_failed=failed,
                loaded=not stopped,
                sizes=state_sizes(text),
            )
            last_cpu, last_t = cpu, now
            samples.append(sample)
            print(
                f"{sample.t / 60:6.2f} min  RSS {rss / 1024:7.1f} MiB  CPU {sample.cpu * 100:3.0f} %"
                f"  load {sample.load:.2f}  calls {ok}/{failed}  "
                + " ".join(f"{k}={v:.0f}" for k, v in sorted(sample.sizes.items())),
                flush=True,
            )
            md.write_text(report(soak, samples, meta, args.label))
            if now >= end_all:
                break
            next_sample += args.every
    finally:
        soak.stop(wait=0.1)  # at once when interrupted; a no-op after a full run
        if "server" in soak.procs:
            stop_tree(soak.procs["server"])
        for proc in soak.procs.values():
            if proc.poll() is None:
                stop_tree(proc)
        if samples:
            md.write_text(report(soak, samples, meta, args.label))
            plot(samples, png, args.label, soak.minutes)
        if args.keep:
            print(f"soak: scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"written to {md} and {png}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=60.0, help="length of the load (default 60)")
    p.add_argument("--calls", type=int, default=300, help="calls per second (default 300)")
    p.add_argument(
        "--registers", type=int, default=100, help="REGISTER refreshes per second (default 100)"
    )
    p.add_argument("--users", type=int, default=0, help="AORs refreshed (default 60 x --registers)")
    p.add_argument("--ws", type=int, default=1000, help="WebSocket clients (default 1000)")
    p.add_argument("--every", type=float, default=15.0, help="seconds between samples (15)")
    p.add_argument("--settle", type=float, default=60.0, help="seconds sampled after the load")
    p.add_argument("--tree", type=Path, default=REPO, help="siptrio source tree to run")
    p.add_argument("--python", default=sys.executable, help="interpreter for the server")
    p.add_argument("--label", default="soak", help="file names in bench/results/ (soak)")
    p.add_argument("--output-dir", type=Path, default=RESULTS, help="where to write")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--profile",
        type=Path,
        help="run the server under bench/memprofile.py, its reports written to this folder",
    )
    # the client processes
    p.add_argument("--register-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ws-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.register_client:
        return register_client(args.port, args.rate, args.users, args.seconds, args.out)
    if args.ws_client:
        return ws_client(args.port, args.n, args.seconds, args.out)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
