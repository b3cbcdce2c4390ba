"""SIP over WebSocket at scale: N browser-shaped flows held open against a real siptrio.

    .venv/bin/python bench/ws_scale.py [--counts 1000,5000,10000] [--hold 12] [--clients 1]

For each N a fresh ``python -m siptrio serve`` (WARNING logging, WS only on a free
127.0.0.1 port, connection caps raised, server pings every 5 s, database in a scratch
folder) is warmed up with 100 connect-REGISTER-close cycles; then its RSS (VmRSS from
/proc/PID/status) and CPU (utime + stime from /proc/PID/stat) are read, and client
processes (this script with ``--client``, so their memory is not the server's) open N
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
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import wsproto
import wsproto.events as wse
from wsproto.connection import ConnectionState

# The shared helpers, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, free_tcp_port, machine_busy_seconds, stop_tree, tree_cpu_seconds

RESULTS = REPO / "bench" / "results" / "ws_scale.md"
DEFAULT_COUNTS = (1000, 5000, 10000)
KAMAILIO_KIB = 72  # Kamailio's figure per WebSocket connection
TARGET_KIB = 36  # siptrio's goal: half of it
WARM_UP = 100
KEEPALIVE_INTERVAL = 5.0
DOMAIN = "example.com"
ORIGIN = b"http://localhost:8088"
# what a client flow may raise when the server or the network drops it
GONE = (
    OSError,
    EOFError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    wsproto.utilities.LocalProtocolError,
)


# --- /proc --------------------------------------------------------------------------------


def status_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard one (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- the client side (runs in its own processes) -------------------------------------------


def sipjs_register(user: str, host: str, call_id: str, tag: str, cseq: int, contact: bool) -> str:
    """A REGISTER as SIP.js 0.21 sends it (``contact=False``: a fetch of the bindings)."""
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/WS {host};branch=z9hG4bK{uuid.uuid4().hex[:16]}",
        "Max-Forwards: 70",
        f"To: <sip:{user}@{DOMAIN}>",
        f"From: <sip:{user}@{DOMAIN}>;tag={tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    if contact:
        lines.append(f"Contact: <sip:{user}@{host};transport=ws>;expires=600")
    lines += [
        "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
        "Supported: outbound",
        "User-Agent: SIP.js/0.21.2",
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


class Browser:
    """One browser tab's WebSocket: wsproto over a Trio stream, a reader task answering pings."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.call_id = uuid.uuid4().hex
        self.tag = uuid.uuid4().hex[:10]
        self.cseq = 0
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.stream: trio.SocketStream | None = None
        self.send_lock = trio.Lock()
        self.accepted = trio.Event()
        self.closed = trio.Event()
        self.refused: str | None = None
        self.replies_in, self.replies = trio.open_memory_channel[str](16)
        self.pings = 0
        self.pongs: dict[bytes, trio.Event] = {}  # our pings waiting for their Pong
        self.invites = 0
        self._text: list[str] = []

    @property
    def contact_uri(self) -> str:
        return f"<sip:{self.user}@{self.host};transport=ws>"

    async def send(self, event: wse.Event) -> None:
        if self.stream is None:
            raise trio.ClosedResourceError("never connected")
        async with self.send_lock:
            await self.stream.send_all(self.conn.send(event))

    async def _answer(self, event: wse.Event, if_state: ConnectionState) -> None:
        """Send a Pong or Close answer unless our own Close went out first."""
        assert self.stream is not None
        async with self.send_lock:
            if self.conn.state is if_state:
                await self.stream.send_all(self.conn.send(event))

    async def reader(self) -> None:
        assert self.stream is not None
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.conn.receive_data(data)
                for event in self.conn.events():
                    match event:
                        case wse.AcceptConnection():
                            self.accepted.set()
                        case wse.RejectConnection():
                            self.refused = f"refused {event.status_code}"
                            self.accepted.set()
                        case wse.TextMessage():
                            self._text.append(event.data)
                            if event.message_finished:
                                text = "".join(self._text)
                                self._text.clear()
                                if text.startswith("INVITE "):
                                    await self._answer_invite(text)
                                else:
                                    self._message(text)
                        case wse.BytesMessage():
                            self._message(bytes(event.data).decode("utf-8", "replace"))
                        case wse.Ping():
                            self.pings += 1
                            await self._answer(event.response(), ConnectionState.OPEN)
                        case wse.Pong():
                            waiter = self.pongs.pop(bytes(event.payload), None)
                            if waiter is not None:
                                waiter.set()
                        case wse.CloseConnection():
                            await self._answer(event.response(), ConnectionState.REMOTE_CLOSING)
                            self.closed.set()
                            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.accepted.set()
            self.closed.set()
            self.replies_in.close()

    async def _answer_invite(self, text: str) -> None:
        """Answer a call at once with a 200 OK (a tab that auto-answers)."""
        self.invites += 1
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        keep = ("via:", "record-route:", "from:", "call-id:", "cseq:")
        lines = ["SIP/2.0 200 OK"]
        for line in head[1:]:
            low = line.lower()
            if low.startswith(keep):
                lines.append(line)
            elif low.startswith("to:"):
                lines.append(f"{line};tag={self.tag}a")
        lines += [f"Contact: {self.contact_uri}", "Content-Length: 0"]
        await self.send(wse.TextMessage(data="\r\n".join(lines) + "\r\n\r\n"))

    async def ping_rtt(self, timeout: float = 10.0) -> float:
        """Seconds from a Ping of ours to the server's Pong."""
        payload = uuid.uuid4().bytes[:8]
        waiter = self.pongs[payload] = trio.Event()
        started = time.monotonic()
        await self.send(wse.Ping(payload=payload))
        with trio.fail_after(timeout):
            await waiter.wait()
        return time.monotonic() - started

    def _message(self, text: str) -> None:
        if text.startswith("SIP/2.0 ") and text[8:9] != "1":  # final responses only
            self.replies_in.send_nowait(text)

    async def request(self, text: str, timeout: float = 30.0) -> str:
        await self.send(wse.TextMessage(data=text))
        with trio.fail_after(timeout):
            try:
                return await self.replies.receive()
            except trio.EndOfChannel:
                raise EOFError("closed while waiting for a response") from None

    def register(self, contact: bool = True, user: str | None = None) -> str:
        self.cseq += 1
        return sipjs_register(
            user or self.user, self.host, self.call_id, self.tag, self.cseq, contact
        )


async def run_client(
    port: int, users: list[str], concurrency: int, local: str | None = None
) -> None:
    """Open one flow per user, REGISTER, then follow the parent's commands on stdin.

    Lines out (JSON): ready, registered, verified, closed. Lines in: go, verify, close.
    """

    def emit(event: str, **data: Any) -> None:
        print(json.dumps({"event": event, **data}), flush=True)

    async def command() -> str:
        return (await trio.to_thread.run_sync(sys.stdin.readline)).strip()

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    errors: Counter[str] = Counter()
    browsers: list[Browser] = []
    latencies: list[float] = []  # REGISTER -> 200, ms, in the burst
    limiter = trio.CapacityLimiter(concurrency)

    async def open_flow(nursery: trio.Nursery, b: Browser) -> None:
        try:
            async with limiter:
                with trio.fail_after(30):
                    b.stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
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
                        errors[b.refused or "closed during handshake"] += 1
                        return
                    sent = time.monotonic()
                    reply = await b.request(b.register())
                    latencies.append(round((time.monotonic() - sent) * 1000, 2))
        except GONE as e:
            errors[type(e).__name__] += 1
            return
        if not reply.startswith("SIP/2.0 200 "):
            errors[reply.split("\r\n", 1)[0]] += 1
        elif f"{b.contact_uri};expires=600" not in reply:
            errors["200 without own Contact"] += 1
        else:
            browsers.append(b)

    async def fetch_own(b: Browser, bound: list[Browser]) -> None:
        async with limiter:
            try:
                reply = await b.request(b.register(contact=False))
            except GONE:
                return
        if reply.startswith("SIP/2.0 200 ") and b.contact_uri in reply:
            bound.append(b)

    async def close_flow(b: Browser) -> None:
        async with limiter:
            try:
                await b.send(wse.CloseConnection(code=1000))
                with trio.move_on_after(2):
                    await b.closed.wait()
            except GONE:
                pass
            finally:
                if b.stream is not None:
                    await trio.aclose_forcefully(b.stream)

    async with trio.open_nursery() as readers:
        emit("ready")
        await command()  # go
        started, cpu0 = time.monotonic(), cpu()
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(open_flow, readers, Browser(user))
        emit(
            "registered",
            ok=len(browsers),
            errors=dict(errors),
            seconds=time.monotonic() - started,
            cpu=cpu() - cpu0,
            pings=sum(b.pings for b in browsers),
            latencies=latencies,
            last=browsers[-1].user if browsers else None,
        )

        while (line := await command()) == "probe":
            # keep-alive answered while all are held: Ping -> Pong from a sample
            rtts: list[float] = []
            for b in browsers[:: max(1, len(browsers) // 200)]:
                try:
                    rtts.append(round(await b.ping_rtt() * 1000, 2))
                except GONE:
                    rtts.append(-1.0)
            emit("probed", rtts=rtts, invites=sum(b.invites for b in browsers))
        assert line == "verify", line
        pings_at_verify = sum(b.pings for b in browsers)
        bound: list[Browser] = []
        async with trio.open_nursery() as nursery:
            for b in browsers:
                nursery.start_soon(fetch_own, b, bound)
        pings = [b.pings for b in browsers]
        emit(
            "verified",
            alive=sum(not b.closed.is_set() for b in browsers),
            bound=len(bound),
            pings_min=min(pings, default=0),
            pings_at_verify=pings_at_verify,
        )

        await command()  # close
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for b in browsers:
                nursery.start_soon(close_flow, b)
        closed_in = time.monotonic() - started
        # the bindings of a sample must be gone: fetch them over a new connection
        sample = browsers[:: max(1, len(browsers) // 100)]
        watcher = Browser(f"watcher-{uuid.uuid4().hex[:8]}")
        await open_flow(readers, watcher)
        still = list(sample)
        with trio.move_on_after(15):
            while still:
                left = []
                for b in still:
                    try:
                        reply = await watcher.request(watcher.register(contact=False, user=b.user))
                    except GONE:
                        reply = b.contact_uri  # unknown: count it as still bound
                    if b.contact_uri in reply:
                        left.append(b)
                still = left
                if still:
                    await trio.sleep(0.2)
        emit(
            "closed",
            seconds=closed_in,
            sample=len(sample),
            still_bound=len(still),
            unbound_after=time.monotonic() - started,
        )
        await close_flow(watcher)
        readers.cancel_scope.cancel()


def client_main(args: argparse.Namespace) -> int:
    raise_fd_limit()
    users = [f"{args.prefix}{i}" for i in range(args.first, args.first + args.n)]
    trio.run(run_client, args.port, users, args.concurrency, args.local)
    return 0


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
            args = [sys.executable, __file__, "--client", "--port", str(port), "--prefix", prefix]
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
        # warm up: lazily imported code, first-use caches and the store file
        warm = Clients(server.port, WARM_UP, 1, "warm", concurrency)
        try:
            for step in ("ready", "registered", "verified", "closed"):
                warm.expect(step)
                if step != "closed":
                    warm.tell({"ready": "go", "registered": "verify", "verified": "close"}[step])
            warm.wait()
        finally:
            warm.kill()
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
    # the client side, started by this script itself
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="u", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--local", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        return client_main(args)

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
