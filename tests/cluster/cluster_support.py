"""Cluster test helpers: a real redis-server (Debian's) on a free loopback port, stopped by
PID, and a call between two test UAs."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from support.ua import SDP, UA


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_tcp_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.start()

    def start(self) -> None:
        """(Again, after stop(): same port, its data gone: no persistence.)"""
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def call(caller: UA, callee: UA, *, callee_hangs_up: bool) -> None:
    invite, _call_id = caller.invite(callee.user)
    await caller.client.send(invite)
    got = await callee.expect_request("INVITE")
    await callee.reply(got, 180, "Ringing")
    await callee.reply(got, 200, "OK", body=SDP)
    ok = await caller.expect_response("INVITE")
    assert ok.status == 200
    d = caller.uac_dialog(invite, ok)
    await caller.client.send(caller.ack(d))
    await callee.expect_request("ACK")
    if callee_hangs_up:
        await callee.client.send(callee.in_dialog(callee.uas_dialog(got), "BYE"))
        bye = await caller.expect_request("BYE")
        await caller.reply(bye, 200, "OK")
        assert (await callee.expect_response("BYE")).status == 200
    else:
        await caller.client.send(caller.in_dialog(d, "BYE"))
        bye = await callee.expect_request("BYE")
        await callee.reply(bye, 200, "OK")
        assert (await caller.expect_response("BYE")).status == 200
