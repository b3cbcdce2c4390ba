"""What a message must pass before the core believes it: bans, the rate limit, parsing.

Every message the shell receives (a UDP datagram, or one message framed off a TCP, TLS
or WebSocket flow) enters the core as bytes, through ``Dispatcher.receive_datagram``;
this module owns the checks made there before any transaction exists: a banned
address is dropped, an address over its rate is refused (a 503 with Retry-After at
most once a second, the rest dropped), and what does not parse is answered with the
status the parser names where the message can be addressed, else dropped and
counted. All of it sans-IO: time comes in, actions go out.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from ..sip import (
    Message,
    Request,
    SipParseError,
    error_response_untrusted,
    make_response,
    parse_message_untrusted,
)
from .abuse import RateLimiter
from .events import Action, Send
from .metrics import CoreMetrics, method_label
from .types import Peer

__all__ = ["Admission", "AdmissionConfig"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EXEMPT_CACHE = 4096  # addresses whose rate-limit exemption is remembered


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    max_size: int = 65535
    max_headers: int = 256
    rate_limit: float = 100.0  # requests per second per source address ...
    rate_burst: int = 200  # ... with this much burst
    rate_limit_exempt: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    fast_path: bool = True  # tidy REGISTERs take core/fastreg.py


class Admission:
    def __init__(
        self,
        config: AdmissionConfig,
        *,
        stats: Counter[str],
        server_name: str,
        metrics: CoreMetrics | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.metrics = metrics if metrics is not None else CoreMetrics()
        self.server_name = server_name
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst)
        self._exempt_cache: dict[str, bool] = {}

    def reconfigure(self, config: AdmissionConfig) -> None:
        """A reload: new limits from the next message on (the buckets start full)."""
        if (config.rate_limit, config.rate_burst) != (
            self.config.rate_limit,
            self.config.rate_burst,
        ):
            self.limiter = RateLimiter(config.rate_limit, config.rate_burst)
        if config.rate_limit_exempt != self.config.rate_limit_exempt:
            self._exempt_cache.clear()
        self.config = config

    def parse(self, data: bytes) -> Message | SipParseError:
        try:
            return parse_message_untrusted(
                data, max_size=self.config.max_size, max_headers=self.config.max_headers
            )
        except SipParseError as e:
            self.stats["parse_errors"] += 1
            return e

    def reject(self, data: bytes, error: SipParseError, peer: Peer) -> list[Action]:
        """Answer what did not parse where it can be addressed; otherwise drop it."""
        reply = error_response_untrusted(data, error, server=self.server_name)
        if reply is None:
            self.stats["dropped.unaddressable"] += 1
            return []
        self.stats[f"parse_error_replies.{error.status}"] += 1
        return [Send(data=reply, peer=peer)]

    def may(self, host: str, now: float) -> bool:
        """Would ``allowed`` let this address in? Nothing is counted: a path that may
        still give the message back (the REGISTER fast path) calls ``took`` once it
        keeps it."""
        return self.limiter.would_allow(host, now) or self.exempt(host)

    def took(self, host: str, now: float) -> None:
        self.limiter.allow(host, now)

    def allowed(self, message: Message, peer: Peer, now: float) -> list[Action] | None:
        """None: in. Else what to do instead: a 503 with Retry-After once a second for
        an address over its rate, nothing for the rest of its flood."""
        host = peer.host
        if self.limiter.allow(host, now) or self.exempt(host):
            return None
        self.stats["dropped.rate_limited"] += 1
        if (
            isinstance(message, Request)
            and message.method != "ACK"
            and self.limiter.should_tell(host, now)
        ):
            reply = make_response(
                message,
                503,
                "Service Unavailable (rate limit)",
                headers=(("Retry-After", "1"), ("Server", self.server_name)),
            )
            self.metrics.responses_sent[(method_label(message.method), 503)] += 1
            return [Send(data=reply.serialise(), peer=peer)]
        return []

    def exempt(self, host: str) -> bool:
        """Cached per address: an exempt sender over the limit asks on every message."""
        networks = self.config.rate_limit_exempt
        if not networks:
            return False
        known = self._exempt_cache.get(host)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            found = False
        else:
            found = any(ip in net for net in networks)
        if len(self._exempt_cache) >= EXEMPT_CACHE:
            self._exempt_cache.clear()  # a flood of addresses must not grow it
        self._exempt_cache[host] = found
        return found
