"""From untrusted bytes to the core's inbound channel, answering what cannot be parsed.

Every transport funnels its messages through one ``Intake``: parse, count, and
either hand the message to the core or send the error reply the parser says the
sender deserves (or drop it silently when it cannot be addressed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from ..core.abuse import RateLimiter
from ..core.types import Peer
from ..sip import (
    Request,
    SipParseError,
    error_response_untrusted,
    make_response,
    parse_message_untrusted,
)
from .hub import FlowClosed, Hub, Inbound, SendFailed

__all__ = ["Intake"]

log = logging.getLogger("siptrio.transport")
EXEMPT_CACHE = 4096  # addresses whose rate-limit exemption is remembered


class Intake:
    def __init__(
        self,
        *,
        hub: Hub,
        channel: trio.MemorySendChannel[Inbound],
        closed_channel: trio.MemorySendChannel[FlowClosed | SendFailed],
        max_size: int,
        max_headers: int,
        server_name: str,
    ) -> None:
        self.hub = hub
        self.channel = channel
        self.closed_channel = closed_channel  # unbounded: a close must never be lost
        self.max_size = max_size
        self.max_headers = max_headers
        self.server_name = server_name
        self.stats: Counter[str] = hub.stats
        self.limiter: RateLimiter | None = None
        self.exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self._exempt_cache: dict[str, bool] = {}
        # Set by the server: datagrams are then handled in the receive loop's own task
        # instead of being handed to the core loop, which saved a task switch per
        # message (about a tenth of a proxied call's CPU). Streams keep the channel:
        # it is what pushes back on one connection.
        self.handle: Callable[[Inbound], Awaitable[None]] | None = None
        self.is_banned: Callable[[str], bool] = lambda address: False
        # Set by the server: True when it took a REGISTER by the fast path
        # (core/fastreg.py); False, and the datagram is parsed as any other.
        self.fast_register: Callable[[bytes, Peer], Awaitable[bool]] | None = None
        # Set by the server: how long the oldest datagram waited in a UDP socket's
        # queue (named by its local address) when its receive loop woke up, in
        # seconds, for load shedding.
        self.queue_delay: Callable[[tuple[str, int], float], None] = lambda queue, delay: None

    def banned(self, address: str) -> bool:
        """Traffic from a banned address is dropped before it costs a parse."""
        if self.is_banned(address):
            self.stats["dropped.banned"] += 1
            return True
        return False

    async def admit(self, item: Inbound) -> bool:
        """The per-address rate limit; a 503 with Retry-After once a second when over."""
        limiter = self.limiter
        if limiter is None:
            return True
        host = item.peer.host
        now = trio.current_time()
        if limiter.allow(host, now) or self._exempt(host):
            return True
        self.stats["dropped.rate_limited"] += 1
        message = item.message
        if (
            isinstance(message, Request)
            and message.method != "ACK"
            and limiter.should_tell(host, now)
        ):
            reply = make_response(
                message,
                503,
                "Service Unavailable (rate limit)",
                headers=(("Retry-After", "1"), ("Server", self.server_name)),
            )
            await self.hub.send(reply.serialise(), item.peer)
        return False

    def may_admit(self, host: str, now: float) -> bool:
        """What ``admit`` would say, with nothing counted: call ``admitted`` if taken."""
        limiter = self.limiter
        return limiter is None or limiter.would_allow(host, now) or self._exempt(host)

    def admitted(self, host: str, now: float) -> None:
        if self.limiter is not None:
            self.limiter.allow(host, now)

    def _exempt(self, host: str) -> bool:
        """Cached per address: an exempt sender over the limit asks on every message."""
        if not self.exempt:
            return False
        known = self._exempt_cache.get(host)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            found = False
        else:
            found = any(ip in net for net in self.exempt)
        if len(self._exempt_cache) >= EXEMPT_CACHE:
            self._exempt_cache.clear()  # a flood of addresses must not grow it
        self._exempt_cache[host] = found
        return found

    def parse(self, data: bytes, peer: Peer) -> Inbound | SipParseError:
        if self.hub.trace:
            self.hub.trace_message("recv", data, peer)
        try:
            message = parse_message_untrusted(
                data, max_size=self.max_size, max_headers=self.max_headers
            )
        except SipParseError as e:
            self.stats["parse_errors"] += 1
            return e
        return Inbound(message, peer, len(data))

    async def reject(self, data: bytes, error: SipParseError, peer: Peer) -> None:
        """Answer an unparseable message where it can be addressed; otherwise drop it."""
        reply = error_response_untrusted(data, error, server=self.server_name)
        if reply is None:
            self.stats["dropped.unaddressable"] += 1
            log.debug("dropped unparseable message from %s: %s", peer, error.reason)
            return
        self.stats[f"parse_error_replies.{error.status}"] += 1
        await self.hub.send(reply, peer)

    def deliver_nowait(self, item: Inbound) -> None:
        """For datagrams: a full core queue drops the message (the sender retransmits)."""
        item.queued_at = trio.current_time()
        try:
            self.channel.send_nowait(item)
        except trio.WouldBlock:
            self.stats["dropped.overload"] += 1

    async def deliver(self, item: Inbound) -> None:
        """For streams: wait, which pushes back on that connection only."""
        item.queued_at = trio.current_time()
        await self.channel.send(item)

    def flow_closed(self, flow_id: str, reason: str) -> None:
        # When shutting down the channel is closed; the store drops flow-bound
        # bindings at the next start anyway.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed_channel.send_nowait(FlowClosed(flow_id, reason))
