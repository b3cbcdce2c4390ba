"""HEP capture: every SIP message received and sent, as HEPv3 over UDP (Homer, sngrep).

HEP (the Homer Encapsulation Protocol, version 3) wraps one captured message in typed
chunks: address family, transport protocol, source and destination address and port,
the capture time, the capture agent's id, the SIP text itself and a correlation id
(the Call-ID), so a capture server that never sees the wire (TLS, WebSocket, another
host) still files each message under its call. ``HepTap`` is a hub tap
(``Hub.add_tap``): it sees each message where the SIP trace does, after decryption
and WebSocket framing, and sends one datagram per message without ever waiting; a
datagram the kernel will not take is dropped and counted.

The chunk types are those of the HEPv3 draft (sipcapture.org) with the generic
vendor id 0.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections import Counter

from ..core.types import Peer, Transport
from .hub import call_id_of

__all__ = ["HepTap", "encode_hep3", "parse_target"]

log = logging.getLogger("siptrio.capture")

# chunk types, vendor 0 (generic)
IP_FAMILY = 1
IP_PROTOCOL = 2
IPV4_SRC, IPV4_DST = 3, 4
IPV6_SRC, IPV6_DST = 5, 6
SRC_PORT, DST_PORT = 7, 8
TIME_SECONDS, TIME_MICROSECONDS = 9, 10
PROTOCOL_TYPE = 11  # 1: SIP
CAPTURE_ID = 12
PAYLOAD = 15
CORRELATION_ID = 17

_FAMILY = {4: 2, 6: 10}  # AF_INET, AF_INET6 as Linux numbers them, which HEP uses
_PROTOCOL = {Transport.UDP: 17}  # every other transport is TCP underneath


def _chunk(kind: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, kind, 6 + len(value)) + value


def encode_hep3(
    *,
    transport: Transport,
    src: tuple[str, int],
    dst: tuple[str, int],
    when: float,
    payload: bytes,
    capture_id: int,
    correlation: str | None = None,
) -> bytes:
    """One HEPv3 packet for one SIP message sent from ``src`` to ``dst``."""
    src_ip = ipaddress.ip_address(src[0])
    dst_ip = ipaddress.ip_address(dst[0])
    if src_ip.version != dst_ip.version:  # an IPv4-mapped peer on an IPv6 socket
        src_ip, dst_ip = _mapped(src_ip), _mapped(dst_ip)
    if src_ip.version == 4:
        addresses = _chunk(IPV4_SRC, src_ip.packed) + _chunk(IPV4_DST, dst_ip.packed)
    else:
        addresses = _chunk(IPV6_SRC, src_ip.packed) + _chunk(IPV6_DST, dst_ip.packed)
    seconds = int(when)
    chunks = b"".join(
        (
            _chunk(IP_FAMILY, bytes([_FAMILY[src_ip.version]])),
            _chunk(IP_PROTOCOL, bytes([_PROTOCOL.get(transport, 6)])),
            addresses,
            _chunk(SRC_PORT, struct.pack("!H", src[1])),
            _chunk(DST_PORT, struct.pack("!H", dst[1])),
            _chunk(TIME_SECONDS, struct.pack("!I", seconds)),
            _chunk(TIME_MICROSECONDS, struct.pack("!I", int((when - seconds) * 1e6))),
            _chunk(PROTOCOL_TYPE, b"\x01"),
            _chunk(CAPTURE_ID, struct.pack("!I", capture_id)),
            _chunk(CORRELATION_ID, correlation.encode()) if correlation else b"",
            _chunk(PAYLOAD, payload),
        )
    )
    return b"HEP3" + struct.pack("!H", 6 + len(chunks)) + chunks


def _mapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(f"::ffff:{ip}")


def parse_target(text: str) -> tuple[str, int]:
    """``udp:HOST:PORT`` (config-checked) to an address."""
    _, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


class HepTap:
    """A hub tap sending each message to a HEP collector; ``close`` when done."""

    def __init__(
        self, target: tuple[str, int], *, capture_id: int, stats: Counter[str] | None = None
    ) -> None:
        self.target = target
        self.capture_id = capture_id
        self.stats = stats if stats is not None else Counter()
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._warned = False

    def __call__(self, direction: str, data: bytes, peer: Peer) -> None:
        if not data.strip(b"\r\n\0"):
            return  # a keep-alive, no SIP message
        local = (peer.local_host, peer.local_port)
        remote = (peer.host, peer.port)
        src, dst = (remote, local) if direction == "recv" else (local, remote)
        packet = encode_hep3(
            transport=peer.transport,
            src=src,
            dst=dst,
            when=time.time(),
            payload=data,
            capture_id=self.capture_id,
            correlation=call_id_of(data),
        )
        try:
            self.sock.sendto(packet, self.target)
        except OSError as e:  # a full buffer, or an ICMP error from a collector not there
            self.stats["hep.dropped"] += 1
            if not self._warned:
                self._warned = True
                log.warning("HEP capture to udp:%s:%d: %s (counted from now on)",
                            *self.target, e.strerror or e)  # fmt: skip
            return
        self.stats["hep.sent"] += 1

    def close(self) -> None:
        self.sock.close()
