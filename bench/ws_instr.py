"""Instructions per WebSocket set-up (handshake + REGISTER), tree against tree, by callgrind.

    .venv/bin/python bench/ws_instr.py --tree before=/path/a --tree after=/path/b [--n 1000]

CPU seconds per set-up move with whatever else the machine runs (on the shared 2-CPU
machine the same tree measured 445 to 740 us within minutes); the instructions a
process executes in user space do not. For each tree (``--tree NAME=PATH``: the server
runs with ``PYTHONPATH=PATH`` and that as its working directory) a fresh
``python -m siptrio serve`` (WS only, caps raised, keep-alives out of the way) runs
under ``valgrind --tool=callgrind --instr-atstart=no``; bench/ws_browser.py's client
warms it up with 100 connect-REGISTER-close cycles, then opens N SIP.js-shaped flows
(50 handshakes in flight: valgrind slows the server some fifty times), each
REGISTERing its own AOR. Counting is switched on (``callgrind_control -i on``) just
before that burst and off after its last 200, so start-up and warm-up do not count.
Prints instructions per set-up; kernel work (the syscalls) is not in it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_tcp_port, tcp_listening
from ws_scale import WARM_UP, Clients

CONCURRENCY = 50


def instructions_per_setup(tree: Path, n: int, scratch: Path) -> float:
    port = free_tcp_port()
    out = scratch / "callgrind.out"
    sets = {
        "sip.listen_addr": "127.0.0.1",
        "sip.udp_enable": "false",
        "sip.tcp_enable": "false",
        "sip_websocket.enable": "true",
        "sip_websocket.listen_port": str(port),
        "sip_websocket.max_connections": "1000000",
        "sip_websocket.max_connections_per_ip": "1000000",
        "sip_websocket.keepalive_interval": "1000",
        "admin.enable": "false",
        "control.enable": "false",
        "registrar.database": str(scratch / "location.sqlite"),
    }
    args = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    args += [sys.executable, "-m", "siptrio", "serve", "--log-level", "WARNING"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    with (scratch / "server.log").open("wb") as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=env)
    try:
        if not tcp_listening(port, timeout=120):
            raise RuntimeError(f"the server did not start; see {scratch / 'server.log'}")
        warm = Clients(port, WARM_UP, 1, "warm", CONCURRENCY)
        for step, command in (("ready", "go"), ("registered", "verify"), ("verified", "close")):
            warm.expect(step)
            warm.tell(command)
        warm.expect("closed")
        warm.wait()
        load = Clients(port, n, 1, "u", CONCURRENCY)
        load.expect("ready")
        control = ["callgrind_control", "-i"]
        subprocess.run([*control, "on", str(server.pid)], check=True, capture_output=True)
        load.tell("go")
        (done,) = load.expect("registered")
        subprocess.run([*control, "off", str(server.pid)], check=True, capture_output=True)
        if done["ok"] != n:
            raise RuntimeError(f"{done['ok']} of {n} registered: {done['errors']}")
        load.tell("verify")
        load.expect("verified")
        load.tell("close")
        load.expect("closed")
        load.wait()
    finally:
        server.terminate()
        server.wait(120)
    total = 0
    for path in scratch.glob("callgrind.out*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--n", type=int, default=1000, help="set-ups counted (default 1000)")
    args = p.parse_args(argv)
    first = None
    for item in args.tree:
        name, _, path = item.partition("=")
        with tempfile.TemporaryDirectory(prefix="siptrio-ws-instr-") as scratch:
            per = instructions_per_setup(Path(path).resolve(), args.n, Path(scratch))
        first = first or per
        print(f"{name}: {per:,.0f} instructions per set-up ({per / first:.3f} of the first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
