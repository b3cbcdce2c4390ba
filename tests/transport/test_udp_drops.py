"""Kernel drops on a full UDP receive buffer, read back per socket (real sockets)."""

from __future__ import annotations

import socket
import sys

import pytest

from siptrio.transport.udp import receive_drops

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/net/udp is Linux's")


def _bound(rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_socket_nobody_reads_counts_what_did_not_fit() -> None:
    full, idle = _bound(rcvbuf=4096), _bound()
    with full, idle, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        assert receive_drops([full]) == {full: 0}
        for _ in range(200):
            sender.sendto(b"x" * 1000, full.getsockname())
        sender.sendto(b"x" * 1000, idle.getsockname())
        queued = 0
        full.setblocking(False)
        while True:
            try:
                full.recv(2000)
            except BlockingIOError:
                break
            queued += 1
        dropped = receive_drops([full, idle])
        assert dropped[full] > 0
        assert queued + dropped[full] == 200  # loopback loses nothing else
        assert dropped[idle] == 0


def test_a_closed_socket_has_no_figure() -> None:
    closed, open_ = _bound(), _bound()
    closed.close()
    with open_:
        assert receive_drops([closed, open_]) == {open_: 0}
