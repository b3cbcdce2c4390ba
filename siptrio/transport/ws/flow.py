"""An open WebSocket flow: wsproto's frames, written at once, read by one task.

A flow is one task from its 101 to its close: ``run_flow`` registers it with the hub
and the heartbeat, ``_reader`` feeds wsproto's frame ``Connection`` and hands one SIP
message per WebSocket message to the intake, and the close (ours or the peer's) is
sent from there. Writes do not go through a task: see ``WsFlow``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from ..hub import Flow
from ..intake import Intake
from .options import WsOptions

if TYPE_CHECKING:
    from .heartbeat import Heartbeat

__all__ = ["WsFlow", "WsStream", "receive", "run_flow", "send_now"]

log = logging.getLogger("siptrio.transport")

GOING_AWAY = 1001
TOO_BIG = 1009
GONE = -2  # WsFlow.fd once its socket is closed
RECV_SIZE = 16384
# Bytes a flow may have waiting for a slow peer before it counts as too slow to keep
# (the TCP flows' queue holds 512 messages; a SIP message is a few hundred bytes).
PENDING_LIMIT = 1 << 20
WsStream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


class WsFlow(Flow):
    """A WebSocket flow: wsproto makes its frames, written at once instead of queued.

    ``send_nowait`` may not wait (the core calls it), and a Trio stream only sends
    by awaiting: so a plain socket is written to directly while it takes the bytes,
    and a flusher task sends the rest through the stream when it does not (always
    for WSS, whose bytes go through the ``SSLStream``).
    """

    __slots__ = (
        "close_code",
        "closing",
        "conn",
        "fd",
        "flushed",
        "pending",
        "ping_sent",
        "pong_seen",
        "spawn",
        "stream",
    )

    def __init__(
        self,
        *,
        stream: WsStream,
        conn: Connection,  # wsproto's frame protocol, past the handshake
        spawn: Any,  # nursery.start_soon of the listener: runs a flusher when needed
        **kw: Any,
    ) -> None:
        super().__init__(queue_limit=0, **kw)
        self.stream = stream
        self.conn = conn
        self.fd = fd_of(stream)
        self.pending: bytearray | None = None  # not None: a flusher is writing
        self.spawn = spawn
        self.ping_sent = 0  # keep-alives sent ...
        self.pong_seen = 0  # ... and the number of the last one answered
        self.closing = False  # ``send_nowait(None)``: close once the pending bytes left
        self.close_code = 0  # the close code a protocol error calls for (1002, 1007)
        self.flushed: trio.Event | None = None  # made by whoever waits for the flusher

    def send_nowait(self, data: bytes | None) -> bool:
        """One SIP message as one WebSocket message: text when UTF-8, binary otherwise."""
        if data is None:
            if self.pending is None:
                self.close("closed")
            else:
                self.closing = True
            return True
        if self.close_reason is not None:
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self.send_event(BytesMessage(data=data))
        return self.send_event(TextMessage(data=text))

    def send_event(self, event: Event) -> bool:
        """Frame ``event`` (wsproto) and write it; False once the close handshake began."""
        try:
            data = self.conn.send(event)
        except LocalProtocolError:
            return False
        return self.write(data)

    def write(self, data: bytes) -> bool:
        if self.fd == GONE:
            return False  # the socket is closed (its number may already be another's)
        if self.pending is not None:
            if len(self.pending) + len(data) > PENDING_LIMIT:
                self.close("outgoing queue full: peer too slow")
                return False
            self.pending += data
            return True
        try:
            sent = write_now(self.fd, data)
        except OSError as e:
            self.close(f"send failed: {e.strerror or e}")
            return False
        if sent < len(data):
            self.pending = bytearray(data[sent:])
            self.spawn(self._flush)
        return True

    async def _flush(self) -> None:
        """Write what the socket did not take at once; gone when it is all out."""
        try:
            while self.pending:
                chunk = bytes(self.pending)
                self.pending.clear()
                await self.stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.close(f"send failed: {e!r}")
        finally:
            self.pending = None
            if self.flushed is not None:
                self.flushed.set()
            if self.closing:
                self.close("closed")

    def close(self, reason: str) -> None:
        """Close from any task: the reader wakes to end-of-file and sends the close frame.

        No cancel scope per flow: shutting the socket's read side down is what ends
        the reader's wait (a reader waiting for the core's queue ends after it).
        """
        if self.close_reason is None:
            self.close_reason = reason
        with contextlib.suppress(OSError):
            socket_of(self.stream).shutdown(socket.SHUT_RD)


def socket_of(stream: WsStream) -> trio.socket.SocketType:
    return (
        stream.socket if isinstance(stream, trio.SocketStream) else stream.transport_stream.socket
    )


def fd_of(stream: WsStream) -> int:
    """A plain socket's descriptor, written to directly; -1 for TLS (through the SSLStream)."""
    return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1


def write_now(fd: int, data: bytes) -> int:
    """What a non-blocking socket takes of ``data`` now (0 when its buffer is full)."""
    if fd < 0:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


async def receive(stream: WsStream, *, wait_first: bool = True) -> bytes | bytearray:
    """The next bytes from the peer; b"" at end-of-file.

    A plain socket is waited on first: ``SocketStream.receive_some`` tries ``recv``
    before it waits, and a flow's reader almost always comes to it before its peer
    has sent (the REGISTER follows our 101; an idle browser sends nothing): that
    failed try, its exception and the context managers around it were 6 % of the
    server's CPU in a burst of set-ups. ``wait_first=False`` where the bytes are
    likely there already: the upgrade request, sent with the connection, was in the
    socket at its first read 9 times in 10 in a burst.
    """
    if wait_first and isinstance(stream, trio.SocketStream):
        try:
            await trio.lowlevel.wait_readable(stream.socket)
        except OSError as e:  # closed under us
            raise trio.ClosedResourceError from e
    return await stream.receive_some(RECV_SIZE)


async def send_now(stream: WsStream, data: bytes) -> None:
    """The 101 or a refusal: straight onto a plain socket when it takes it all, else awaited."""
    try:
        sent = write_now(fd_of(stream), data)
    except OSError as e:  # the peer is gone (EPIPE, ECONNRESET): as the stream would say
        raise trio.BrokenResourceError(f"send failed: {e.strerror or e}") from e
    if sent < len(data):
        await stream.send_all(data[sent:])


async def run_flow(
    flow: WsFlow,
    stream: WsStream,
    intake: Intake,
    options: WsOptions,
    heartbeat: Heartbeat,
) -> None:
    hub = intake.hub
    hub.add_flow(flow)
    heartbeat.add(flow)
    try:
        await _reader(flow, stream, intake, options)
    finally:
        hub.remove_flow(flow)
        shutting_down = flow.close_reason is None  # nothing closed it: the server is stopping
        flow.close_reason = flow.close_reason or "server shutting down"
        intake.flow_closed(flow.id, flow.close_reason)
        log.debug("flow %s closed: %s", flow.id, flow.close_reason)
        if not flow.close_reason.startswith(("closed by peer", "send failed", "receive failed")):
            code, reason = (
                (GOING_AWAY, "going away") if shutting_down else (1000, flow.close_reason)
            )
            if flow.close_reason == "message too big (1009)":
                code = TOO_BIG
            elif flow.close_code:
                code = flow.close_code
            flow.send_event(CloseConnection(code=code, reason=reason))
            if flow.pending is not None:  # TLS, or a slow peer: give the flusher a second
                flow.flushed = trio.Event()
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await flow.flushed.wait()
        flow.fd = GONE


async def _reader(flow: WsFlow, stream: WsStream, intake: Intake, options: WsOptions) -> None:
    """Frames in (wsproto), one SIP message per WebSocket message out to the intake."""
    peer = flow.peer
    conn = flow.conn
    limit = options.max_message_size
    parts: list[Any] = []  # str pieces of a text message, bytes of a binary one
    size = 0
    while True:
        try:
            data = await receive(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            flow.close_reason = flow.close_reason or f"receive failed: {e}"
            return
        if not data:
            flow.close_reason = flow.close_reason or "closed by peer (no close frame)"
            return
        flow.last_received = trio.current_time()
        conn.receive_data(bytes(data))
        del data
        for event in conn.events():
            if isinstance(event, Message):  # a text or binary message, or a piece of one
                size += len(event.data)
                if size > limit:
                    intake.stats["ws_message_too_big"] += 1
                    flow.close_reason = flow.close_reason or "message too big (1009)"
                    return
                if not event.message_finished:
                    parts.append(event.data)
                    continue
                if parts:
                    parts.append(event.data)
                    whole = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    parts.clear()
                else:
                    whole = event.data
                size = 0
                del event
                message = whole.encode() if isinstance(whole, str) else bytes(whole)
                del whole
                await _message(flow, message, peer, intake)
                del message
            elif isinstance(event, Ping):
                flow.send_event(event.response())
            elif isinstance(event, Pong):
                flow.last_keepalive = trio.current_time()
                flow.pong_seen = flow.ping_sent
            elif isinstance(event, CloseConnection):
                if conn.state is ConnectionState.REMOTE_CLOSING:  # the peer's: echo its code
                    flow.send_event(event.response())
                    flow.close_reason = flow.close_reason or f"closed by peer ({event.code})"
                else:  # wsproto found the frames broken (1002, 1007): close with its code
                    flow.close_reason = (
                        flow.close_reason or f"protocol error ({event.code}): {event.reason}"
                    )
                    flow.close_code = event.code
                return


async def _message(flow: WsFlow, data: bytes, peer: Any, intake: Intake) -> None:
    if not data.strip(b"\r\n"):
        if data == b"\r\n":
            flow.crlf_answered()  # the answer to our CRLFCRLF
            flow.pong_seen = flow.ping_sent
        else:
            intake.stats[f"keepalives_in.{flow.transport.value}"] += 1
            flow.send_event(TextMessage(data="\r\n"))  # RFC 5626 4.4.1: answer a CRLFCRLF at once
        return
    # to the core's front door: a fault is answered and the connection stays up; the
    # flow is marked valid once a message parses
    await intake.deliver(data, peer)
