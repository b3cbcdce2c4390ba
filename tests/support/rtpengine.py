"""A real rtpengine (Debian's rtpengine-daemon, userspace) for the media tests.

Started on a free ng port and its own RTP port range, stopped by PID; shared by
tests/media (a fixture per test) and tests/interop's browser media tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import bencode  # type: ignore[import-untyped]
import pytest

from support.ports import free_udp_port


def missing_rtpengine() -> str | None:
    if shutil.which("rtpengine") is None:
        return "rtpengine missing: apt-get install -y rtpengine-daemon"
    return None


def needs_rtpengine() -> pytest.MarkDecorator:
    reason = missing_rtpengine()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


class Rtpengine:
    """``rtpengine --config-file=none --table=-1 --interface=127.0.0.1 ...`` in the foreground.

    ``ng()`` sends one command and returns the decoded answer; ``calls()`` is ``list``;
    ``log_tail()`` the end of its log (for failure reports)."""

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
                self.stop()
                raise RuntimeError(f"rtpengine did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def spec(self) -> str:
        """The ``[media] rtpengine`` value for siptrio."""
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
        return [
            c.decode() if isinstance(c, bytes) else str(c)
            for c in self.ng({"command": "list"}).get("calls", [])
        ]

    def owns(self, port: int) -> bool:
        """Whether ``port`` is in this rtpengine's RTP port range."""
        return self.ports[0] <= port <= self.ports[1]

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
