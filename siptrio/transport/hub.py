"""Flows, UDP sockets, and the one ``send`` every outgoing message goes through.

A flow is one connection-oriented connection (TCP, TLS, WS, WSS) with a stable id,
a bounded outgoing queue drained by its own writer task, and the cancel scope that
closes it. The hub knows every flow and every UDP socket, so the core can address
any peer by a ``Peer`` value and never holds a socket itself.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..core.types import Peer, Transport

__all__ = ["Flow", "FlowClosed", "Hub"]

log = logging.getLogger("siptrio.transport")
trace_log = logging.getLogger("siptrio.trace")

# Messages a flow may have queued before its peer counts as too slow to keep.
FLOW_QUEUE_LIMIT = 512
BOOT_ID = os.urandom(3).hex()


def call_id_of(data: bytes) -> str | None:
    """The Call-ID of a message as raw bytes (for traces; no full parse)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"call-id", b"i"):
            return value.strip().decode("utf-8", "replace")
    return None


@dataclass(slots=True, unsafe_hash=True)
class FlowClosed:
    flow_id: str
    reason: str


@dataclass(slots=True, unsafe_hash=True)
class SendFailed:
    """A message a client transaction sent could not leave (RFC 3261 8.1.3.1)."""

    owner: Hashable
    reason: str


class Flow:
    """One connection. Written to only through ``send_nowait``, which never blocks.

    Slotted: a server holds tens of thousands. ``queue_limit=0`` makes no queue, for a
    subclass that writes by itself (``transport/ws/flow.py``).
    """

    __slots__ = (
        "_send",
        "cancel_scope",
        "close_reason",
        "crlf_answer",
        "crlf_answers_seen",
        "id",
        "last_keepalive",
        "last_received",
        "local",
        "opened_at",
        "opened_wall",
        "outgoing",
        "remote",
        "transport",
        "valid_seen",
        "writer_done",
    )
    outgoing: trio.MemoryReceiveChannel[bytes | None]
    writer_done: trio.Event
    cancel_scope: trio.CancelScope  # what ``close`` cancels (a subclass may close otherwise)

    def __init__(
        self,
        *,
        flow_id: str,
        transport: Transport,
        remote: tuple[str, int],
        local: tuple[str, int],
        queue_limit: int | None = None,
    ) -> None:
        self.id = flow_id
        self.transport = transport
        self.remote = remote
        self.local = local
        self.opened_at = trio.current_time()
        self.opened_wall = time.time()
        self.last_received = self.opened_at
        self.last_keepalive: float | None = None  # last answer to our keep-alive
        self.crlf_answers_seen = False  # the peer has answered a CRLFCRLF with CRLF
        self.valid_seen = False  # a valid SIP message arrived (keep-alives do not count)
        # made by the CRLF keep-alive for each ping it sends; most flows never need one
        self.crlf_answer: trio.Event | None = None
        self.close_reason: str | None = None
        limit = FLOW_QUEUE_LIMIT if queue_limit is None else queue_limit
        if limit:
            self.cancel_scope = trio.CancelScope()
            send, receive = trio.open_memory_channel[bytes | None](limit)
            self._send = send
            self.outgoing = receive
            self.writer_done = trio.Event()

    @property
    def peer(self) -> Peer:
        return Peer(
            transport=self.transport,
            host=self.remote[0],
            port=self.remote[1],
            local_host=self.local[0],
            local_port=self.local[1],
            flow_id=self.id,
        )

    def send_nowait(self, data: bytes | None) -> bool:
        """Queue bytes (None: close after flushing). A full queue closes the flow."""
        try:
            self._send.send_nowait(data)
            return True
        except trio.WouldBlock:
            self.close("outgoing queue full: peer too slow")
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False

    def crlf_answered(self) -> None:
        """The peer sent a lone CRLF: the RFC 5626 pong to our CRLFCRLF ping."""
        self.last_keepalive = trio.current_time()
        self.crlf_answers_seen = True
        if self.crlf_answer is not None:
            self.crlf_answer.set()

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self.cancel_scope.cancel()

    def __repr__(self) -> str:
        return f"<Flow {self.id} {self.transport.value} {self.remote[0]}:{self.remote[1]}>"


@dataclass
class Hub:
    """Registry of sending endpoints, shared by the transports and the core loop."""

    trace: bool = False  # True while --sip-trace logs or any tap listens
    log_trace: bool = False  # --sip-trace: write every message to the log
    taps: list[Callable[[str, bytes, Peer], None]] = field(default_factory=list)
    flows: dict[str, Flow] = field(default_factory=dict)
    udp_sockets: dict[tuple[str, int], socket.socket] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    on_flow_change: Callable[[str, Flow], None] | None = None
    _counter: int = 0

    def new_flow_id(self, transport: Transport) -> str:
        self._counter += 1
        return f"{transport.value}-{BOOT_ID}-{self._counter}"

    def add_flow(self, flow: Flow) -> None:
        self.flows[flow.id] = flow
        self.stats[f"flows_opened.{flow.transport.value}"] += 1
        if self.on_flow_change:
            self.on_flow_change("opened", flow)

    def remove_flow(self, flow: Flow) -> None:
        if self.flows.pop(flow.id, None) is not None:
            self.stats[f"flows_closed.{flow.transport.value}"] += 1
            if self.on_flow_change:
                self.on_flow_change("closed", flow)

    connector: Any = None  # outbound.Connector, set by the server once it runs
    report: Callable[[Hashable, str], None] | None = None

    def failed(self, owner: Hashable, reason: str) -> None:
        if owner is not None and self.report is not None:
            self.report(owner, reason)

    async def send(self, data: bytes, peer: Peer, owner: Hashable = None) -> bool:
        """Send to a peer; False (counted, and reported for ``owner``) when it cannot go."""
        if peer.flow_id is not None:
            flow = self.flows.get(peer.flow_id)
            if flow is None:
                self.stats["dropped.flow_gone"] += 1
                self.failed(owner, f"flow {peer.flow_id} is closed")
                return False
            if self.trace:
                self.trace_message("send", data, peer)
            if not flow.send_nowait(data):
                self.failed(owner, f"flow {peer.flow_id} could not take the message")
                return False
            return True
        if peer.transport.is_stream:
            if peer.transport not in (Transport.TCP, Transport.TLS) or self.connector is None:
                self.stats["dropped.no_route"] += 1
                self.failed(owner, f"no connection to {peer}")
                return False
            if self.trace:
                self.trace_message("send", data, peer)
            self.connector.submit(peer, data, owner)
            return True
        sock = self.udp_sockets.get((peer.local_host, peer.local_port))
        if sock is None:
            self.stats["dropped.no_socket"] += 1
            self.failed(owner, f"no UDP socket {peer.local_host}:{peer.local_port}")
            return False
        if self.trace:
            self.trace_message("send", data, peer)
        try:
            try:
                sock.sendto(data, (peer.host, peer.port))  # no wait, no checkpoint: the hot path
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                sock.sendto(data, (peer.host, peer.port))
        except OSError as e:
            self.stats["dropped.send_error"] += 1
            log.debug("UDP send to %s failed: %s", peer.address, e)
            self.failed(owner, f"UDP send to {peer.address} failed: {e.strerror or e}")
            return False
        return True

    def add_tap(self, tap: Callable[[str, bytes, Peer], None]) -> None:
        """Observe every message sent and received (the control socket's SIP trace)."""
        self.taps.append(tap)
        self.trace = True

    def remove_tap(self, tap: Callable[[str, bytes, Peer], None]) -> None:
        if tap in self.taps:
            self.taps.remove(tap)
        self.trace = self.log_trace or bool(self.taps)

    def trace_message(self, direction: str, data: bytes, peer: Peer) -> None:
        for tap in list(self.taps):
            try:
                tap(direction, data, peer)
            except Exception:
                log.exception("SIP trace tap failed; removing it")
                self.remove_tap(tap)
        if not self.log_trace:
            return
        arrow = "->" if direction == "send" else "<-"
        local = f"{peer.local_host}:{peer.local_port}"
        text = data.decode("utf-8", errors="backslashreplace")
        # The message is the record's ``sip`` field: the text log prints it under the
        # line, the JSON log keeps it in the line (app/logs.py).
        trace_log.info(
            "%s %s %s %s %s (%d bytes)%s",
            direction,
            peer.transport.value.upper(),
            local,
            arrow,
            peer.address,
            len(data),
            f" flow {peer.flow_id}" if peer.flow_id else "",
            extra={
                "sip": text.rstrip("\r\n") if text.strip() else repr(text),
                "direction": direction,
                "transport": peer.transport.value,
                "local": local,
                "peer": peer.address,
                "flow": peer.flow_id,
                "size": len(data),
                "call_id": call_id_of(data),
            },
        )
