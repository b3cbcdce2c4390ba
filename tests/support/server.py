"""Run siptrio for a test: in-process under the test's Trio loop, or as a real process.

Every listener binds 127.0.0.1 port 0 and every store lives under the test's
tmp_path, so parallel runs never collide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from siptrio.app.config import load_config
from siptrio.app.server import Listener, Server
from siptrio.app.views import counters_view
from siptrio.core.types import Transport

LOOPBACK_DEFAULTS = {
    "sip.listen_addr": "127.0.0.1",
    "sip.udp_port": "0",
    "sip.tcp_port": "0",
    "sip_tls.listen_port": "0",
    "sip_websocket.enable": "false",
    "sip_websocket.listen_port": "0",
    "sip_websocket.wss_listen_port": "0",
    "admin.enable": "false",
    "control.enable": "false",
}


@dataclass
class RunningServer:
    server: Server
    listeners: list[Listener]

    def addr(self, transport: str, host: str | None = None) -> tuple[str, int]:
        t = Transport(transport)
        for listener in self.listeners:
            if listener.transport is t and (host is None or listener.host == host):
                return listener.host, listener.port
        raise LookupError(f"no {transport} listener in {self.listeners}")

    def counters(self) -> Counter[str]:
        """Every counter the server keeps (transport and core), as `/metrics` sums them."""
        return Counter(counters_view(self.server))


def test_config(tmp_path: Path, overrides: Mapping[str, str] | None = None):  # type: ignore[no-untyped-def]
    values = dict(LOOPBACK_DEFAULTS)
    values["registrar.database"] = str(tmp_path / "location.sqlite")
    values.update(overrides or {})
    return load_config(None, values)


@asynccontextmanager
async def running_server(
    tmp_path: Path, overrides: Mapping[str, str] | None = None
) -> AsyncIterator[RunningServer]:
    server = Server(test_config(tmp_path, overrides))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.run)
        try:
            yield RunningServer(server, listeners)
        finally:
            nursery.cancel_scope.cancel()


_LISTEN = re.compile(r"listening on (\w+) \[?([0-9a-fA-F.:]+)\]?:(\d+)")


class ServerProcess:
    """``python -m siptrio serve`` as a child process, ports read from its log."""

    def __init__(
        self, args: list[str], *, env: Mapping[str, str] | None = None, log_path: Path
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "siptrio", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.listeners: dict[str, tuple[str, int]] = {}

    def wait_ready(self, expect: int, timeout: float = 20.0) -> dict[str, tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            found = _LISTEN.findall(text)
            if len(found) >= expect:
                self.listeners = {t: (h, int(p)) for t, h, p in found}
                return self.listeners
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise TimeoutError(f"server not ready:\n{self.log_path.read_text(errors='replace')}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextmanager
def sipp_target(tmp_path: Path, *settings: str) -> Iterator[ServerProcess]:
    """``siptrio serve`` for SIPp and sipsak: UDP and TCP on 127.0.0.1 free ports, no
    WebSocket, admin API or control socket, SQLite under tmp_path; ``settings`` are
    more ``SECTION.KEY=VALUE`` overrides."""
    args = ["serve"]
    for setting in (
        "sip.listen_addr=127.0.0.1",
        "sip.udp_port=0",
        "sip.tcp_port=0",
        *settings,
        "sip_websocket.enable=false",
        "admin.enable=false",
        "control.enable=false",
        f"registrar.database={tmp_path / 'location.sqlite'}",
    ):
        args += ["--set", setting]
    proc = ServerProcess(args, log_path=tmp_path / "siptrio.log")
    try:
        proc.wait_ready(expect=2)
        yield proc
    finally:
        proc.stop()
