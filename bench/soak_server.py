"""bench/soak.py's server and load: one siptrio (the code under ``--tree``), a SIPp callee
registered for the whole run, and the load generators (a SIPp caller, soak_load.py's
REGISTER and WebSocket clients, started through soak.py's command line)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

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
from common import REPO, free_tcp_port, free_udp_port, stop_tree
from register_udp import options_probe

SIPP_DIR = REPO / "examples" / "sipp"
SOAK = Path(__file__).resolve().with_name("soak.py")  # the load generators' command line


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
            if options_probe(self.udp_port) and self.wait_metrics(30.0):
                self.procs["server"] = proc
                return proc
            stop_tree(proc)
        raise RuntimeError(f"siptrio did not start; see {self.workdir}")

    def wait_metrics(self, timeout: float) -> bool:
        """The admin API starts after the SIP listeners answer: wait for it too."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metrics() is not None:
                return True
            time.sleep(0.2)
        return False

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
        me = [self.python, str(SOAK)]
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
