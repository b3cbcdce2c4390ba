"""The UDP listener: one socket per address, one tight receive loop per socket.

Datagrams are parsed in the loop and handed to the core without waiting: when the
core is behind, a datagram is dropped and counted (UDP senders retransmit) rather
than letting the kernel buffer fill behind a blocked task.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket as stdsocket

import trio

from ..core.types import Peer, Transport
from .intake import Intake

__all__ = ["bind_udp", "serve_udp"]

log = logging.getLogger("siptrio.transport")
RECV_SIZE = 65536
SOCKET_BUFFER = 4 * 1024 * 1024


async def bind_udp(host: str, port: int) -> trio.socket.SocketType:
    family = stdsocket.AF_INET6 if ipaddress.ip_address(host).version == 6 else stdsocket.AF_INET
    sock = trio.socket.socket(family, stdsocket.SOCK_DGRAM)
    try:
        if family == stdsocket.AF_INET6:
            sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 1)
        for opt in (stdsocket.SO_RCVBUF, stdsocket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(stdsocket.SOL_SOCKET, opt, SOCKET_BUFFER)
        await sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_udp(
    sock: trio.socket.SocketType,
    intake: Intake,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    local = sock.getsockname()
    local_host, local_port = local[0], local[1]
    hub = intake.hub
    hub.udp_sockets[(local_host, local_port)] = sock
    stats = intake.stats
    task_status.started()
    try:
        while True:
            try:
                data, addr = await sock.recvfrom(RECV_SIZE)
            except OSError as e:
                # ICMP port-unreachable from an earlier send surfaces here on Linux.
                stats["udp_recv_errors"] += 1
                log.debug("UDP receive error on %s:%s: %s", local_host, local_port, e)
                continue
            stats["udp_datagrams_in"] += 1
            if intake.banned(addr[0]):
                continue
            if not data.strip(b"\r\n\x00 \t"):
                stats["keepalives_in.udp"] += 1  # CRLF / NUL keep-alives some phones send
                continue
            peer = Peer(
                transport=Transport.UDP,
                host=addr[0],
                port=addr[1],
                local_host=local_host,
                local_port=local_port,
            )
            result = intake.parse(data, peer)
            if isinstance(result, Exception):
                await intake.reject(data, result, peer)
                continue
            if await intake.admit(result):
                intake.deliver_nowait(result)
    finally:
        hub.udp_sockets.pop((local_host, local_port), None)
        sock.close()
