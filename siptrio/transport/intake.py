"""The shell's side of the core's one front door: where every transport's messages go.

A UDP datagram is handled in its socket's receive loop, with no hand-off to another
task per message (about a tenth of a proxied call's CPU); a message framed off a flow
(TCP, TLS, WebSocket) goes into the core's channel, whose bound pushes back on that
connection alone. Either way the bytes reach ``Dispatcher.receive_datagram`` through
the server's one handler and its one executor of actions: the core bans, limits,
parses, answers faults and takes the REGISTER fast path there, whatever the
transport. What a stream cannot even frame is answered through the core too.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..core.types import Peer
from ..sip import SipParseError
from .hub import FlowClosed, Hub, SendFailed

__all__ = ["Inbound", "Intake"]

Handler = Callable[[bytes, Peer], Awaitable[None]]
Rejecter = Callable[[bytes, SipParseError, Peer], Awaitable[None]]


@dataclass(slots=True)
class Inbound:
    """One message's bytes on their way from a flow to the core."""

    data: bytes
    peer: Peer
    queued_at: float  # trio time it entered the core's channel (for load shedding)


class Intake:
    def __init__(
        self,
        *,
        hub: Hub,
        channel: trio.MemorySendChannel[Inbound],
        closed_channel: trio.MemorySendChannel[FlowClosed | SendFailed],
        handle: Handler,
        reject: Rejecter,
        is_banned: Callable[[str], bool],
        queue_delay: Callable[[tuple[str, int], float], None],
        max_size: int,
    ) -> None:
        self.hub = hub
        self.channel = channel
        self.closed_channel = closed_channel  # unbounded: a close must never be lost
        self.handle = handle  # the server's one way into the core
        self._reject = reject
        self._is_banned = is_banned
        # how long the oldest datagram waited in a UDP socket's queue (named by its
        # local address) when its receive loop woke up, in seconds: for load shedding
        self.queue_delay = queue_delay
        self.max_size = max_size  # a stream frames no bigger message
        self.stats: Counter[str] = hub.stats

    def banned(self, address: str) -> bool:
        """A connection from a banned address is refused before it costs anything."""
        if self._is_banned(address):
            self.stats["dropped.banned"] += 1
            return True
        return False

    async def datagram(self, data: bytes, peer: Peer) -> None:
        """A UDP datagram, handled at once in the receive loop's task."""
        if self.hub.trace:
            self.hub.trace_message("recv", data, peer)
        await self.handle(data, peer)

    async def deliver(self, data: bytes, peer: Peer) -> None:
        """A message framed off a flow: queued for the core, waiting when it is full,
        which pushes back on that connection only.

        Queued without a checkpoint while there is room (the flow's reader goes back
        to wait on its socket next, and yields there): a checkpoint per message was
        1.4 % of a WebSocket set-up's instructions.
        """
        if self.hub.trace:
            self.hub.trace_message("recv", data, peer)
        item = Inbound(data, peer, trio.current_time())
        try:
            self.channel.send_nowait(item)
        except trio.WouldBlock:
            await self.channel.send(item)

    async def reject(self, data: bytes, error: SipParseError, peer: Peer) -> None:
        """What a stream could not frame: answered where it can be addressed."""
        await self._reject(data, error, peer)

    def flow_closed(self, flow_id: str, reason: str) -> None:
        # When shutting down the channel is closed; the store drops flow-bound
        # bindings at the next start anyway.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed_channel.send_nowait(FlowClosed(flow_id, reason))
