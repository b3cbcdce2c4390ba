"""A restartable ``siptrio serve`` with its control socket, and a thread for Trio clients.

For the TUI tests (Textual runs on asyncio, so they are sync tests with their own loops).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from support.server import ServerProcess

BASE = [
    "--set", "sip.listen_addr=127.0.0.1",
    "--set", "sip.udp_port=0",
    "--set", "sip.tcp_port=0",
    "--set", "sip.domains=example.com",
    "--set", "sip_websocket.enable=false",
    "--set", "admin.enable=false",
    "--set", "control.enable=true",
]  # fmt: skip


class Siptrio:
    """A real ``siptrio serve`` with its control socket, restartable on the same paths."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.socket = str(tmp_path / "run" / "control.sock")
        self.proc: ServerProcess | None = None
        self.udp: tuple[str, int] = ("127.0.0.1", 0)
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = ServerProcess(
            [
                "serve",
                *BASE,
                "--set",
                f"control.socket={self.socket}",
                "--set",
                f"registrar.database={self.tmp_path / 'location.sqlite'}",
            ],
            log_path=self.tmp_path / f"server{self.starts}.log",
        )
        self.udp = self.proc.wait_ready(expect=2)["udp"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class TrioThread:
    """Runs SIP test clients (Trio) beside the TUI (asyncio), in another thread."""

    def __init__(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            trio.run(fn)
        except BaseException as e:
            self.error = e

    def join(self, timeout: float = 10) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the SIP side did not finish"
        if self.error is not None:
            raise self.error
