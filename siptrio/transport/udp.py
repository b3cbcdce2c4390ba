"""The UDP listener: one socket per address, one tight receive loop per socket.

Datagrams are handled in the loop itself (``Intake.datagram``: the core's front door,
``Dispatcher.receive_datagram``, through the server's executor): no hand-off to
another task per message. When the core is behind, the socket's receive buffer is the
queue and the kernel drops what does not fit (UDP senders retransmit;
``receive_drops`` reads the kernel's count for /metrics). The first datagram of each
wake-up is read with its kernel receive
timestamp: its age is how far behind the server is, and past ``[security]
overload_delay`` new requests are refused (core/overload.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket as stdsocket
import struct
import sys
import time
from collections.abc import Iterable

import trio

from ..core.types import Peer, Transport
from .intake import Intake

__all__ = ["bind_udp", "receive_drops", "serve_udp"]

log = logging.getLogger("siptrio.transport")
RECV_SIZE = 65536
BATCH = 64  # datagrams handled per wake-up before others get a turn
SOCKET_BUFFER = 4 * 1024 * 1024
# The kernel stamps each datagram with its arrival (wall clock, struct timeval): the
# age of the oldest one waiting is how far behind the server is (core/overload.py).
SO_TIMESTAMP = getattr(stdsocket, "SO_TIMESTAMP", 29 if sys.platform == "linux" else None)
_TIMEVAL = struct.Struct("@ll")


async def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> stdsocket.socket:
    """A plain non-blocking socket: the receive loop drains it without a trio wrapper."""
    family = stdsocket.AF_INET6 if ipaddress.ip_address(host).version == 6 else stdsocket.AF_INET
    sock = stdsocket.socket(family, stdsocket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == stdsocket.AF_INET6:
            sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 1)
        if reuse_port:  # worker processes share the port; the kernel spreads datagrams
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
        for opt in (stdsocket.SO_RCVBUF, stdsocket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(stdsocket.SOL_SOCKET, opt, SOCKET_BUFFER)
        if SO_TIMESTAMP is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(stdsocket.SOL_SOCKET, SO_TIMESTAMP, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    await trio.lowlevel.checkpoint()
    return sock


def receive_drops(socks: Iterable[stdsocket.socket]) -> dict[stdsocket.socket, int]:
    """Datagrams the kernel dropped for each socket because its receive buffer was full.

    Under overload the buffer is the queue (see above) and what does not fit never
    reaches siptrio's own counters; Linux counts it per socket in the last column of
    /proc/net/udp and udp6, on the line with the socket's inode. Each table is read
    once for all the sockets; a socket it does not list (another OS, a closed socket)
    is left out.
    """
    wanted: dict[bytes, stdsocket.socket] = {}
    for sock in socks:
        with contextlib.suppress(OSError, ValueError):
            wanted[str(os.fstat(sock.fileno()).st_ino).encode()] = sock
    found: dict[stdsocket.socket, int] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        if len(found) == len(wanted):
            break
        try:
            with open(table, "rb") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            fields = line.split()
            if len(fields) >= 13 and fields[9] in wanted:
                found[wanted[fields[9]]] = int(fields[12])
    return found


async def serve_udp(
    sock: stdsocket.socket,
    intake: Intake,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Wait until readable, then drain up to BATCH datagrams before yielding again.

    One wake-up per burst instead of one per datagram: under load this is most of
    the difference between a receive loop and a fast one.
    """
    local = sock.getsockname()
    local_host, local_port = local[0], local[1]
    hub = intake.hub
    hub.udp_sockets[(local_host, local_port)] = sock
    stats = intake.stats
    # Into one buffer, then copied at its size: ``recvfrom(65536)`` allocates 64 KiB
    # and shrinks it in place, and a datagram a transaction keeps for 32 s then pins
    # the freed rest of that block. Over 12 minutes at 150 calls/s that took the C
    # heap (glibc malloc_stats) from 54 to 124 MiB with 30 MiB in use; this way it
    # stays under 40 (bench/soak.py).
    buffer = bytearray(RECV_SIZE)
    view = memoryview(buffer)
    recvfrom_into = sock.recvfrom_into
    stamped = SO_TIMESTAMP is not None and bool(sock.getsockopt(stdsocket.SOL_SOCKET, SO_TIMESTAMP))
    task_status.started()
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for i in range(BATCH):
                try:
                    if i == 0 and stamped:
                        size, addr = _receive_first(sock, buffer, intake, (local_host, local_port))
                    else:
                        size, addr = recvfrom_into(buffer)
                except BlockingIOError:
                    break
                except OSError as e:
                    # ICMP port-unreachable from an earlier send surfaces here on Linux.
                    stats["udp_recv_errors"] += 1
                    log.debug("UDP receive error on %s:%s: %s", local_host, local_port, e)
                    continue
                data = bytes(view[:size])
                stats["udp_datagrams_in"] += 1
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
                await intake.datagram(data, peer)
    finally:
        hub.udp_sockets.pop((local_host, local_port), None)
        sock.close()


def _receive_first(
    sock: stdsocket.socket, buffer: bytearray, intake: Intake, local: tuple[str, int]
) -> tuple[int, tuple[str, int]]:
    """The first datagram of a wake-up, with its age: the delay of the socket's queue."""
    size, ancillary, _flags, addr = sock.recvmsg_into([buffer], 64)
    for level, kind, data in ancillary:
        if level == stdsocket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= _TIMEVAL.size:
            seconds, micros = _TIMEVAL.unpack_from(data)
            intake.queue_delay(local, time.time() - (seconds + micros * 1e-6))
    return size, addr
