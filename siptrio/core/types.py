"""Transports and peers: the vocabulary the core and the I/O layer share."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Clock", "Listener", "Peer", "Transport"]


class Clock(NamedTuple):
    """The time of one event, read once by the shell and passed in.

    ``now`` is monotonic (trio's clock): transaction timers and every deadline run on
    it. ``wall`` is seconds since the epoch at the same instant: bindings and dialogs
    carry it, because they outlive the process and people read them. (A NamedTuple,
    not a frozen dataclass: one is made per event, and the tuple is made four times
    faster.)
    """

    now: float
    wall: float

    @classmethod
    def at(cls, now: float, wall: float | None = None) -> Clock:
        """For tests and tools: ``wall`` defaults to ``now``."""
        return cls(now, now if wall is None else wall)


class Transport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"
    WS = "ws"
    WSS = "wss"

    @property
    def is_stream(self) -> bool:
        """Connection-oriented: replies and requests to bindings go over the flow."""
        return self is not Transport.UDP

    @property
    def is_secure(self) -> bool:
        return self in (Transport.TLS, Transport.WSS)

    @property
    def via_name(self) -> str:
        return self.name

    @classmethod
    def from_name(cls, name: str) -> Transport:
        return cls(name.lower())


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class Peer:
    """Where a message came from, and therefore where its answer goes.

    ``flow_id`` names the connection for stream transports (None on UDP);
    ``local_host``/``local_port`` name the listener it arrived on, so a UDP answer
    leaves from the socket the request reached.
    """

    transport: Transport
    host: str  # IP literal without brackets
    port: int
    local_host: str
    local_port: int
    flow_id: str | None = None
    # the name a TLS certificate must carry (RFC 5922) when the address came from DNS
    server_name: str | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport.value}:{self.address}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """One bound listening socket: what Via sent-by and Record-Route name for a side."""

    transport: Transport
    host: str
    port: int

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport.value} {self.hostport}"
