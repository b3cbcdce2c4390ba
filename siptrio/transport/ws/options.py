"""A WebSocket listener's settings, and the connection caps its listeners share."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from ...core.types import Transport

__all__ = ["IPNetwork", "WsOptions", "WsPolicy", "origin_allowed", "within"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True)
class WsOptions:
    transport: Transport  # WS or WSS
    allowed_origins: tuple[str, ...]  # ("*",) for any
    allow_missing_origin: bool
    keepalive_interval: float
    keepalive_timeout: float
    keepalive_mechanism: str  # ping | crlf | both
    handshake_timeout: float
    max_connections: int
    max_connections_per_ip: int
    max_message_size: int
    first_message_timeout: float = 0.0  # 0: no guard
    trusted_proxies: tuple[IPNetwork, ...] = ()  # their PROXY header / X-Forwarded-For count
    exempt: tuple[IPNetwork, ...] = ()  # [security] rate_limit_exempt: no per-address cap


class WsPolicy:
    """Connection counts shared by the WS and WSS listeners (caps are per server), and
    the origin rules once a reload has changed them (None: the listener's options)."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.allowed_origins: tuple[str, ...] | None = None
        self.allow_missing_origin: bool | None = None

    def take(self, ip: str, options: WsOptions) -> str | None:
        """None when the connection may open; otherwise which cap refuses it.

        The per-address cap does not apply to ``[security] rate_limit_exempt``: a
        client from an exempt network connects while another address is at its cap.
        """
        if self.total >= options.max_connections:
            return "capacity"
        if self.per_ip[ip] >= options.max_connections_per_ip and not within(ip, options.exempt):
            return "per_ip"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def give_back(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


def within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def origin_allowed(origin: str | None, options: WsOptions, policy: WsPolicy | None = None) -> bool:
    missing_ok = options.allow_missing_origin
    allowed = options.allowed_origins
    if policy is not None:
        if policy.allow_missing_origin is not None:
            missing_ok = policy.allow_missing_origin
        if policy.allowed_origins is not None:
            allowed = policy.allowed_origins
    if origin is None:
        return missing_ok
    if "*" in allowed:
        return True
    return origin.rstrip("/").lower() in allowed
