"""From untrusted bytes to the core's inbound channel, answering what cannot be parsed.

Every transport funnels its messages through one ``Intake``: parse, count, and
either hand the message to the core or send the error reply the parser says the
sender deserves (or drop it silently when it cannot be addressed).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter

import trio

from ..core.types import Peer
from ..sip import SipParseError, error_response_untrusted, parse_message_untrusted
from .hub import FlowClosed, Hub, Inbound, SendFailed

__all__ = ["Intake"]

log = logging.getLogger("siptrio.transport")


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
        try:
            self.channel.send_nowait(item)
        except trio.WouldBlock:
            self.stats["dropped.overload"] += 1

    async def deliver(self, item: Inbound) -> None:
        """For streams: wait, which pushes back on that connection only."""
        await self.channel.send(item)

    def flow_closed(self, flow_id: str, reason: str) -> None:
        # When shutting down the channel is closed; the store drops flow-bound
        # bindings at the next start anyway.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed_channel.send_nowait(FlowClosed(flow_id, reason))
