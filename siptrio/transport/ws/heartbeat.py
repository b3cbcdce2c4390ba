"""Keep-alives, and the deadlines of handshakes and first messages, for a listener's flows."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections import Counter, deque

import trio
from wsproto.events import Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from .flow import WsFlow
from .options import WsOptions

__all__ = ["Heartbeat"]

log = logging.getLogger("siptrio.transport")


class Heartbeat:
    """Keep-alives and first-message deadlines for every flow of a listener, in one task.

    Every flow has the same interval and timeout, so the deadlines come due in the
    order they were set: three FIFOs (next ping, answer due, first message due) and
    one sleep until the earliest, instead of a task per flow.
    """

    def __init__(self, options: WsOptions, stats: Counter[str]) -> None:
        self.options = options
        self.stats = stats
        self.ping = options.keepalive_mechanism in ("ping", "both")
        self.crlf = options.keepalive_mechanism in ("crlf", "both")
        self.to_ping: deque[tuple[float, WsFlow]] = deque()
        self.to_answer: deque[tuple[float, WsFlow, int]] = deque()
        self.to_speak: deque[tuple[float, WsFlow]] = deque()
        self.to_open: deque[tuple[float, trio.SocketStream]] = deque()
        self.opening: set[trio.SocketStream] = set()  # connections still in their handshake
        self._wake = trio.Event()

    def open(self, stream: trio.SocketStream) -> None:
        """A connection starts its handshake: cut it at ``handshake_timeout`` unless done.

        Cut, not cancelled: shutting the socket down wakes the connection's task with
        end-of-file, so no connection needs a cancel scope of its own.
        """
        self.opening.add(stream)
        self.to_open.append((trio.current_time() + self.options.handshake_timeout, stream))
        if len(self.to_open) == 1:
            self._wake.set()

    def add(self, flow: WsFlow) -> None:
        now = trio.current_time()
        # A deadline added behind others is never the earliest: wake the task only when
        # this one starts a queue (it may be earlier than the one being slept for).
        wake = False
        if self.options.keepalive_interval > 0:
            wake = not self.to_ping
            self.to_ping.append((now + self.options.keepalive_interval, flow))
        if self.options.first_message_timeout > 0:
            wake = wake or not self.to_speak
            self.to_speak.append((now + self.options.first_message_timeout, flow))
        if wake:
            self._wake.set()

    async def run(self) -> None:
        opts = self.options
        while True:
            queues = (self.to_ping, self.to_answer, self.to_speak, self.to_open)
            fronts = [q[0][0] for q in queues if q]
            if not fronts:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            now = trio.current_time()
            if min(fronts) > now:
                with trio.move_on_at(min(fronts)):
                    self._wake = trio.Event()
                    await self._wake.wait()
                continue
            while self.to_ping and self.to_ping[0][0] <= now:
                _, flow = self.to_ping.popleft()
                if flow.close_reason is None:
                    self._keepalive(flow, now)
                    self.to_ping.append((now + opts.keepalive_interval, flow))
            while self.to_answer and self.to_answer[0][0] <= now:
                _, flow, seq = self.to_answer.popleft()
                if flow.close_reason is None and flow.pong_seen < seq:
                    self.stats["keepalive_failures"] += 1
                    how = "ping" if self.ping else "CRLF"
                    log.info(
                        "flow %s did not answer a keep-alive (%s) within %s s",
                        flow.id,
                        how,
                        opts.keepalive_timeout,
                    )
                    flow.close(f"keep-alive timeout ({how})")
            while self.to_open and self.to_open[0][0] <= now:
                _, stream = self.to_open.popleft()
                if stream in self.opening:
                    self.opening.discard(stream)
                    self.stats["ws_handshake_timeouts"] += 1
                    with contextlib.suppress(OSError):
                        stream.socket.shutdown(socket.SHUT_RDWR)
            while self.to_speak and self.to_speak[0][0] <= now:
                _, flow = self.to_speak.popleft()
                if flow.close_reason is None and not flow.valid_seen:
                    self.stats["flows_closed.no_valid_message"] += 1
                    flow.close(f"no valid SIP message within {opts.first_message_timeout:g} s")
            await trio.lowlevel.checkpoint()

    def _keepalive(self, flow: WsFlow, now: float) -> None:
        flow.ping_sent += 1
        seq = flow.ping_sent
        try:
            data = b""
            if self.ping:
                data += flow.conn.send(Ping(payload=seq.to_bytes(4, "big")))
            if self.crlf:
                data += flow.conn.send(TextMessage(data="\r\n\r\n"))
        except LocalProtocolError:  # closing
            return
        if not flow.write(data):
            return
        self.stats[f"keepalives_out.{flow.transport.value}"] += 1
        if self.ping or flow.crlf_answers_seen:
            self.to_answer.append((now + self.options.keepalive_timeout, flow, seq))
