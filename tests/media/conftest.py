"""A real rtpengine (Debian's rtpengine-daemon, userspace) per test, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bencode
import pytest


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rtpengine:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_udp_port()
        base = 20000 + (os.getpid() * 7 + self.port) % 20000 // 2 * 2
        self.log = tmp_path / "rtpengine.log"
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "rtpengine",
                "--config-file=none",
                "--table=-1",
                "--interface=127.0.0.1",
                f"--listen-ng=127.0.0.1:{self.port}",
                f"--port-min={base}",
                f"--port-max={base + 99}",
                "--foreground",
                "--log-stderr",
                "--delete-delay=0",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.ports = (base, base + 99)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.ng({"command": "ping"}).get("result") == "pong":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(
                    f"rtpengine did not start:\n{self.log.read_text(errors='replace')}"
                )
            time.sleep(0.1)

    @property
    def spec(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    def ng(self, command: dict[str, Any], timeout: float = 1.0) -> dict[str, Any]:
        cookie = os.urandom(6).hex().encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(cookie + b" " + bencode.bencode(command), ("127.0.0.1", self.port))
            data = s.recv(65535)
        _, _, body = data.partition(b" ")
        return dict(bencode.bdecode(body))

    def calls(self) -> list[str]:
        return list(self.ng({"command": "list"}).get("calls", []))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[Rtpengine]:
    if shutil.which("rtpengine") is None:
        pytest.skip("rtpengine is not installed (apt-get install rtpengine-daemon)")
    engine = Rtpengine(tmp_path)
    yield engine
    engine.stop()
