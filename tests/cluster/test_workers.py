"""``siptrio serve --workers 2``: two processes behind the same ports, one location.

The kernel spreads UDP datagrams and connections over the workers by source address
(SO_REUSEPORT), so a caller and its callee often land on different workers. What this
checks, with real processes, Redis and SIPp on 127.0.0.1:

- SIPp registers 1,000 users over UDP, one socket per user (``-t un``) so that both
  workers take some: every REGISTER succeeds and every binding is visible from both
  workers' admin API, owned by one worker or the other;
- calls between clients on different workers complete both ways, each side hanging
  up (the callee's answers reach the caller's worker; a BYE from the side whose worker
  does not hold the dialog is routed through the one that does), also to a WebSocket
  callee whose connection is on the other worker;
- the admin API of one worker lists the dialogs of both;
- a worker killed with SIGKILL is started again, and SIGTERM to the supervisor stops
  every worker cleanly.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cluster_support import Redis, call
from support.client import SipClient
from support.server import ServerProcess
from support.ua import UA

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "example.com"  # and 127.0.0.1, the domain of SIPp's register.xml

_ADMIN = re.compile(r"\[w(\d)\] siptrio\.admin: admin API on http://127\.0\.0\.1:(\d+)")
_STARTED = re.compile(r"worker (\d) started, pid (\d+)")


class Workers:
    def __init__(self, tmp_path: Path, redis: Redis, *extra: str) -> None:
        self.control = tmp_path / "ctl.sock"  # worker 0's; worker 1's is ctl.sock.w1
        self.proc = ServerProcess(
            [
                "serve",
                "--workers",
                "2",
                *("--set", "sip.listen_addr=127.0.0.1"),
                *("--set", "sip.udp_port=0"),
                *("--set", "sip.tcp_port=0"),
                *("--set", f"sip.domains={DOMAIN},127.0.0.1"),
                *("--set", "sip_websocket.listen_port=0"),
                *("--set", "admin.listen_addr=127.0.0.1"),
                *("--set", "admin.listen_port=0"),
                *("--set", f"control.socket={tmp_path / 'ctl.sock'}"),
                *("--set", "registrar.backend=redis"),
                *("--set", f"registrar.redis_url={redis.url}"),
                *("--set", "cluster.heartbeat_ttl=2"),
                *extra,
            ],
            log_path=tmp_path / "workers.log",
        )

    def ready(self) -> dict[str, tuple[str, int]]:
        listeners = self.proc.wait_ready(expect=6)  # udp, tcp and ws of each worker
        text = self.proc.output()
        for t in ("udp", "tcp", "ws"):
            ports = set(re.findall(rf"listening on {t} 127\.0\.0\.1:(\d+)", text))
            assert len(ports) == 1, f"the workers do not share one {t} port:\n{text}"
        return listeners

    def admin_ports(self) -> dict[int, int]:
        """Worker index -> its admin API port (the latest, should a worker restart)."""
        return {int(w): int(p) for w, p in _ADMIN.findall(self.proc.output())}

    def pids(self) -> dict[int, int]:
        return {int(w): int(p) for w, p in _STARTED.findall(self.proc.output())}

    def get(self, worker: int, path: str) -> Any:
        url = f"http://127.0.0.1:{self.admin_ports()[worker]}{path}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)


@contextmanager
def started(tmp_path: Path, redis: Redis, *extra: str) -> Iterator[Workers]:
    w = Workers(tmp_path, redis, *extra)
    try:
        yield w
    finally:
        w.proc.stop()
        # pytest shows this only when the test failed: what the workers said and saw
        print(w.proc.output()[-200_000:])


@pytest.fixture
def workers(tmp_path: Path, redis_server: Redis) -> Iterator[Workers]:
    with started(tmp_path, redis_server) as w:
        yield w


@pytest.fixture
def traced_workers(tmp_path: Path, redis_server: Redis) -> Iterator[Workers]:
    """With --sip-trace: a lost message shows in the log, on which worker and from where."""
    with started(tmp_path, redis_server, "--sip-trace") as w:
        yield w


async def node_of(workers: Workers, aor: str) -> str:
    """The worker holding an AOR's binding, as worker 0 sees it (the other's after the feed)."""
    with trio.fail_after(5):
        while True:
            clients = await trio.to_thread.run_sync(workers.get, 0, "/listClients")
            nodes = {c["node"] for c in clients if c["aor"] == aor}
            if nodes:
                assert len(nodes) == 1, (aor, nodes)
                return nodes.pop()
            await trio.sleep(0.1)


async def udp_users_on_both_workers(workers: Workers, udp: tuple[str, int]) -> dict[str, UA]:
    """Register UDP users (each its own socket) until both workers hold one: node -> UA."""
    found: dict[str, UA] = {}
    for i in range(40):
        ua = UA(await SipClient.connect("udp", *udp), f"user{i}")
        assert (await ua.register()).status == 200
        node = await node_of(workers, ua.aor)
        if node in found:
            await ua.client.aclose()
        else:
            found[node] = ua
        if len(found) == 2:
            return found
    raise AssertionError(f"40 UDP sources all landed on {set(found)}")


async def test_calls_between_workers_and_supervision(
    traced_workers: Workers, nursery: trio.Nursery
) -> None:
    workers = traced_workers
    listeners = await trio.to_thread.run_sync(workers.ready)
    users = await udp_users_on_both_workers(workers, listeners["udp"])
    (node_a, a), (node_b, b) = sorted(users.items())
    assert node_a.endswith("-w0") and node_b.endswith("-w1"), (node_a, node_b)

    # Both ways, each side hanging up: the callee's answers arrive at its own worker
    # and are handed to the caller's; BYE from the callee goes through the dialog's.
    await call(a, b, callee_hangs_up=True)
    await call(a, b, callee_hangs_up=False)
    await call(b, a, callee_hangs_up=True)

    # A browser-like WebSocket callee whose connection is on the other worker than
    # its caller (the callee's worker sends down its connection, RFC 5626 flow token).
    ws_ua = UA(await SipClient.connect("ws", *listeners["ws"], nursery=nursery), "browser")
    assert (await ws_ua.register()).status == 200
    ws_node = await node_of(workers, ws_ua.aor)
    caller = a if ws_node == node_b else b
    await trio.sleep(0.3)
    await call(caller, ws_ua, callee_hangs_up=True)
    await call(caller, ws_ua, callee_hangs_up=False)

    # One worker's admin API lists the dialogs of both (the other's as last published):
    # the five calls, those to the browser held by both workers (both record-routed).
    with trio.fail_after(5):
        while True:
            dialogs = await trio.to_thread.run_sync(workers.get, 0, "/dialogs")
            calls = {d["call_id"] for d in dialogs}
            if len(calls) == 5 and len(dialogs) == 7:
                break
            await trio.sleep(0.2)
    held = Counter(d["node"] for d in dialogs)
    assert held[node_a] and held[node_b], held
    to_browser = [d for d in dialogs if d["callee"] == ws_ua.aor]
    assert sorted(d["node"] for d in to_browser) == sorted([node_a, node_b] * 2), to_browser
    # The control socket of worker 0 (what the TUI reads) shows worker 1's dialogs too.
    snap = await control_snapshot(workers.control)
    assert snap["cluster"]["node"] == node_a
    assert snap["cluster"]["nodes"] == sorted([node_a, node_b])
    theirs = {d["call_id"] for d in snap["cluster"]["dialogs"]}
    ours = {d["call_id"] for d in snap["dialogs"]}
    assert theirs | ours == calls and all(d["node"] == node_b for d in snap["cluster"]["dialogs"])
    assert theirs - ours, "worker 1 held a dialog worker 0 did not"
    # ... and keeps the TUI current: each counters message carries the cluster view
    counters = await control_message(
        workers.control, lambda m: m["type"] == "counters" and "cluster" in m
    )
    assert {d["call_id"] for d in counters["cluster"]["dialogs"]} == theirs
    # Worker 1 lists the browser's connection too, once it has read the view the
    # connection's worker last published (they publish and read about once a second).
    with trio.fail_after(5):
        while True:
            connections = await trio.to_thread.run_sync(workers.get, 1, "/connections")
            ws_nodes = [c["node"] for c in connections if c["transport"] == "ws"]
            if ws_nodes:
                break
            await trio.sleep(0.2)
    assert ws_nodes == [ws_node], connections

    # Supervision: a worker killed outright is started again, with a new pid.
    old = workers.pids()[1]
    subprocess.run(["kill", "-KILL", str(old)], check=True)
    with trio.fail_after(15):
        while workers.pids().get(1, old) == old:
            await trio.sleep(0.1)
    with trio.fail_after(15):
        while workers.proc.output().count("[w1] siptrio.server: listening on udp") < 2:
            await trio.sleep(0.1)
    await trio.sleep(0.5)
    # the restarted worker serves: a REGISTER from a new source, wherever it lands
    for i in range(4):
        fresh = UA(await SipClient.connect("udp", *listeners["udp"]), f"late{i}")
        assert (await fresh.register()).status == 200
    await call(a, b, callee_hangs_up=False)

    assert workers.proc.stop(signal.SIGTERM) == 0
    out = workers.proc.output()
    assert "received SIGTERM, stopping 2 workers" in out, out
    assert out.count("[w0] siptrio.server: stopped") == 1, out
    assert out.count("[w1] siptrio.server: stopped") == 1, out
    assert "Traceback" not in out, out


async def control_message(path: Path, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first message from a control socket that ``wanted`` accepts."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        data = b""
        with trio.fail_after(5):
            while True:
                while b"\n" in data:
                    line, data = data.split(b"\n", 1)
                    msg: dict[str, Any] = json.loads(line)
                    if wanted(msg):
                        return msg
                data += await stream.receive_some(65536)


async def control_snapshot(path: Path) -> dict[str, Any]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        data = b""
        with trio.fail_after(5):
            while b"\n" not in data:
                data += await stream.receive_some(65536)
    snap: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    assert snap["type"] == "snapshot", snap
    return snap


def test_workers_need_a_shared_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "siptrio", "serve", "--workers", "2"),
            *("--set", f"registrar.database={tmp_path / 'l.sqlite'}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "--workers needs a shared location: set [registrar] backend = redis" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed")
async def test_sipp_registers_1000_over_two_workers(workers: Workers, tmp_path: Path) -> None:
    listeners = await trio.to_thread.run_sync(workers.ready)
    host, port = listeners["udp"]
    stat = tmp_path / "sipp_stat.csv"
    cmd = [
        "sipp",
        f"{host}:{port}",
        *("-sf", str(REPO / "examples" / "sipp" / "register.xml")),
        *("-i", "127.0.0.1"),
        # one socket per REGISTER: the kernel spreads them over both workers
        *("-t", "un"),
        *("-max_socket", "2000"),
        *("-s", "wkuser"),
        *("-m", "1000"),
        *("-r", "200"),
        *("-recv_timeout", "5000"),
        *("-timeout", "55s"),
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        *("-stf", str(stat)),
        *("-fd", "1"),
    ]
    with trio.fail_after(60):
        done = await trio.run_process(
            cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_stdout=True, check=False
        )
    with stat.open(newline="") as f:
        last = list(csv.DictReader(f, delimiter=";"))[-1]
    assert done.returncode == 0, last
    assert (last["SuccessfulCall(C)"], last["FailedCall(C)"]) == ("1000", "0"), last

    expected = {f"sip:wkuser{n}@127.0.0.1" for n in range(1, 1001)}
    owners: list[Counter[str]] = []
    for worker in (0, 1):
        clients = await trio.to_thread.run_sync(workers.get, worker, "/listClients")
        assert {c["aor"] for c in clients} == expected
        assert len(clients) == 1000
        owners.append(Counter(c["node"] for c in clients))
    assert owners[0] == owners[1]
    assert len(owners[0]) == 2 and min(owners[0].values()) > 100, owners[0]


def test_sighup_to_the_supervisor_reloads_every_worker(tmp_path: Path, redis_server: Redis) -> None:
    with started(tmp_path, redis_server) as workers:
        workers.ready()
        pids = workers.pids()
        workers.proc.proc.send_signal(signal.SIGHUP)
        wanted = [f"[w{i}] siptrio.reload: reload (SIGHUP): no config file" for i in (0, 1)]
        end = time.monotonic() + 15
        while not all(w in workers.proc.output() for w in wanted) and time.monotonic() < end:
            time.sleep(0.1)
        text = workers.proc.output()
        assert "received SIGHUP, passing it to 2 workers" in text
        assert all(w in text for w in wanted), text[-3000:]
        assert workers.pids() == pids and workers.proc.proc.poll() is None  # nobody restarted
