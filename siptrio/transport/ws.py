"""SIP over WebSocket (RFC 7118): WS and WSS listeners, handshake policy, framing.

Who may upgrade is decided here: connection caps (503), Origin (403), the ``sip``
subprotocol (400), each refusal with a body saying why. Behind a reverse proxy listed
in ``trusted_proxies`` the client is the one the proxy names, in a PROXY protocol
header (v1 or v2) or in ``X-Forwarded-For``/``Forwarded`` on the upgrade request;
caps, bans, rate limits, ``received`` and the flow's address are the client's.

A connection costs one task: it reads the PROXY header and the upgrade request
(``handshake.py``, within ``handshake_timeout`` together with the TLS handshake),
answers, and then reads frames (``frames.py``) and hands one SIP message per
WebSocket message to the intake. Nothing else waits per connection: a message out is
written at once when the socket takes it (a short-lived flusher task is started only
when it does not), and one task per listener pings every flow and closes those that
stop answering (``Heartbeat``). trio-websocket served these connections before, with
four tasks and two nurseries each; its clients remain what the tests speak to us with.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import struct
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import trio

from ..core.types import Transport
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TOO_BIG,
    FrameError,
    FrameReader,
    close_payload,
    frame,
)
from .handshake import (
    NeedMore,
    UpgradeError,
    UpgradeRequest,
    accept_response,
    client_address,
    parse_proxy_header_untrusted,
    parse_upgrade_untrusted,
    refusal,
)
from .hub import Flow
from .intake import Intake
from .rawstream import RawStream, accept_batches, detach_listener
from .stream import open_tcp_listeners

__all__ = ["WsFlow", "WsOptions", "WsPolicy", "serve_ws"]

log = logging.getLogger("siptrio.transport")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
GOING_AWAY = 1001
GONE = -2  # WsFlow.fd once its socket is closed
Address = tuple[str, int]
RECV_SIZE = 16384
# Bytes a flow may have waiting for a slow peer before it counts as too slow to keep
# (the TCP flows' queue holds 512 messages; a SIP message is a few hundred bytes).
PENDING_LIMIT = 1 << 20


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
        if self.per_ip[ip] >= options.max_connections_per_ip and not _within(ip, options.exempt):
            return "per_ip"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def give_back(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


def _within(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class WsFlow(Flow):
    """A WebSocket flow: writes frames itself instead of queueing for a writer task."""

    __slots__ = (
        "close_code",
        "closing",
        "fd",
        "flushed",
        "pending",
        "ping_sent",
        "pong_seen",
        "raw",
        "spawn",
        "stream",
    )

    def __init__(
        self,
        *,
        stream: trio.abc.Stream,
        raw: RawStream,  # the socket under ``stream`` (the same for plain WS)
        fd: int,  # a plain socket's, written to directly; -1: TLS, through the SSLStream
        spawn: Any,  # nursery.start_soon of the listener: runs a flusher when needed
        **kw: Any,
    ) -> None:
        super().__init__(queue_limit=0, **kw)
        self.stream = stream
        self.raw = raw
        self.fd = fd
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
            data.decode("utf-8")
        except UnicodeDecodeError:
            return self.write(frame(OP_BINARY, data))
        return self.write(frame(OP_TEXT, data))

    def write(self, data: bytes) -> bool:
        if self.fd == GONE:
            return False  # the socket is closed (its number may already be another's)
        if self.pending is not None:
            if len(self.pending) + len(data) > PENDING_LIMIT:
                self.close("outgoing queue full: peer too slow")
                return False
            self.pending += data
            return True
        sent = 0
        if self.fd >= 0:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
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
        self.raw.shutdown_read()

    def close_frame(self, code: int, reason: str) -> bytes:
        return frame(OP_CLOSE, close_payload(code, reason))


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
        self.to_open: deque[tuple[float, RawStream]] = deque()
        self.opening: set[RawStream] = set()  # connections still in their handshake
        self._wake = trio.Event()

    def open(self, raw: RawStream) -> None:
        """A connection starts its handshake: cut it at ``handshake_timeout`` unless done."""
        self.opening.add(raw)
        self.to_open.append((trio.current_time() + self.options.handshake_timeout, raw))
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
                _, raw = self.to_open.popleft()
                if raw in self.opening:
                    self.opening.discard(raw)
                    self.stats["ws_handshake_timeouts"] += 1
                    raw.cut()
            while self.to_speak and self.to_speak[0][0] <= now:
                _, flow = self.to_speak.popleft()
                if flow.close_reason is None and not flow.valid_seen:
                    self.stats["flows_closed.no_valid_message"] += 1
                    flow.close(f"no valid SIP message within {opts.first_message_timeout:g} s")
            await trio.lowlevel.checkpoint()

    def _keepalive(self, flow: WsFlow, now: float) -> None:
        flow.ping_sent += 1
        seq = flow.ping_sent
        data = b""
        if self.ping:
            data += frame(OP_PING, seq.to_bytes(4, "big"))
        if self.crlf:
            data += frame(OP_TEXT, b"\r\n\r\n")
        if not flow.write(data):
            return
        self.stats[f"keepalives_out.{flow.transport.value}"] += 1
        if self.ping or flow.crlf_answers_seen:
            self.to_answer.append((now + self.options.keepalive_timeout, flow, seq))


async def serve_ws(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    intake: Intake,
    options: WsOptions,
    policy: WsPolicy,
    *,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one WS or WSS listener; ``started`` reports the bound port."""
    listening = [
        detach_listener(li) for li in await open_tcp_listeners(host, port, reuse_port=reuse_port)
    ]
    heartbeat = Heartbeat(options, intake.stats)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat.run)
            for sock in listening:
                bound = sock.getsockname()
                wildcard = bound[0] in ("0.0.0.0", "::")
                local = None if wildcard else (bound[0], bound[1])

                def start(
                    conn: socket.socket,
                    peer: tuple[str, int],
                    local: tuple[str, int] | None = local,
                ) -> None:
                    nursery.start_soon(
                        _connection,
                        conn,
                        peer,
                        local,
                        nursery,
                        ssl_context,
                        intake,
                        options,
                        policy,
                        heartbeat,
                    )

                nursery.start_soon(accept_batches, sock, start, intake.stats)
            task_status.started(listening[0].getsockname()[1])
    finally:
        for sock in listening:
            if sock.fileno() >= 0:
                sock.close()


def _address(sock: socket.socket) -> tuple[str, int]:
    try:
        a = sock.getsockname()
    except OSError:
        return ("?", 0)
    return (a[0], a[1])


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


@dataclass(slots=True)
class _Opening:
    """What the start of a connection said: who the client is and its upgrade request."""

    request: UpgradeRequest
    client: tuple[str, int]
    via: str | None  # the trusted proxy it came through
    rest: bytes  # bytes after the request head: the first frames


async def _connection(
    sock: socket.socket,
    peer: tuple[str, int],
    local: tuple[str, int] | None,
    nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None,
    intake: Intake,
    options: WsOptions,
    policy: WsPolicy,
    heartbeat: Heartbeat,
) -> None:
    stats = intake.stats
    raw = RawStream(sock)
    stream: RawStream | trio.SSLStream[RawStream] = raw
    try:
        if local is None:  # a wildcard listener: which address it came to
            local = _address(sock)
        opening: _Opening | None = None
        heartbeat.open(raw)
        try:
            if ssl_context is not None:
                stream = trio.SSLStream(raw, ssl_context, server_side=True, https_compatible=True)
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as e:
                    if not raw.expired:
                        stats["tls_handshake_failures"] += 1
                        log.info("TLS handshake from %s:%s failed: %s", *peer, e.__cause__ or e)
                    return
            opening = await _read_opening(stream, peer, intake, options)
        finally:
            heartbeat.opening.discard(raw)
        if opening is None:
            return
        ip = opening.client[0]
        if intake.banned(ip):
            await _reject(stream, opening, 403, "Forbidden", stats, "banned")
            return
        refused = policy.take(ip, options)
        if refused == "capacity":
            why = "Too many WebSocket connections; try again later"
            await _reject(stream, opening, 503, why, stats, "capacity")
            return
        if refused == "per_ip":
            why = f"Too many WebSocket connections from {ip}"
            await _reject(stream, opening, 503, why, stats, "per_ip")
            return
        try:
            await _accept(
                stream, raw, local, opening, nursery, intake, options, heartbeat, policy=policy
            )
        finally:
            policy.give_back(ip)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _read_opening(
    stream: trio.abc.Stream, peer: tuple[str, int], intake: Intake, options: WsOptions
) -> _Opening | None:
    """The PROXY header (from a trusted proxy) and the upgrade request; None: answered."""
    buf = b""
    client: tuple[str, int] = peer
    via: str | None = None
    trusted = _within(peer[0], options.trusted_proxies)
    proxy_checked = not trusted
    while True:
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            return None
        buf += data
        try:
            if not proxy_checked:
                header = parse_proxy_header_untrusted(buf)
                proxy_checked = True
                if header is not None:
                    buf = buf[header.length :]
                    if header.source is not None:
                        client, via = header.source, peer[0]
            request = parse_upgrade_untrusted(buf)
        except NeedMore:
            continue
        except UpgradeError as e:
            intake.stats["ws_handshake_rejected.malformed"] += 1
            log.info("WebSocket handshake from %s:%s refused: %s", *peer, e.reason)
            if e.status:
                extra = (("Sec-WebSocket-Version", "13"),) if e.status == 426 else ()
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(refusal(e.status, e.reason, extra))
            return None
        if _within(client[0], options.trusted_proxies):
            address, port = client_address(client[0], request, options.trusted_proxies)
            if address != client[0]:
                via = via or client[0]
                client = (address, port if port is not None else client[1])
        return _Opening(request=request, client=client, via=via, rest=buf[request.length :])


async def _reject(
    stream: trio.abc.Stream,
    opening: _Opening,
    status: int,
    why: str,
    stats: Counter[str],
    key: str,
) -> None:
    stats[f"ws_handshake_rejected.{key}"] += 1
    via = f" (via {opening.via})" if opening.via else ""
    log.info("WebSocket handshake from %s:%s%s refused (%d): %s", *opening.client, via, status, why)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(refusal(status, why))


async def _accept(
    stream: RawStream | trio.SSLStream[RawStream],
    raw: RawStream,
    local: tuple[str, int],
    opening: _Opening,
    nursery: trio.Nursery,
    intake: Intake,
    options: WsOptions,
    heartbeat: Heartbeat,
    *,
    policy: WsPolicy | None = None,  # its origin rules, once a reload changed them
) -> None:
    stats = intake.stats
    request = opening.request
    if not origin_allowed(request.origin, options, policy):
        origin = request.origin
        why = "Origin header required" if origin is None else f"Origin {origin} is not allowed"
        await _reject(stream, opening, 403, why, stats, "origin")
        return
    if "sip" not in request.subprotocols:
        why = (
            "SIP over WebSocket needs the 'sip' subprotocol (Sec-WebSocket-Protocol: sip, RFC 7118)"
        )
        await _reject(stream, opening, 400, why, stats, "subprotocol")
        return
    await stream.send_all(accept_response(request.key, "sip"))
    stats[f"ws_handshakes.{options.transport.value}"] += 1
    flow = WsFlow(
        stream=stream,
        raw=raw,
        fd=raw.sock.fileno() if stream is raw else -1,
        spawn=nursery.start_soon,
        flow_id=intake.hub.new_flow_id(options.transport),
        transport=options.transport,
        remote=opening.client,
        local=local,
    )
    if opening.via:
        log.debug("flow %s from %s:%s via %s", flow.id, *opening.client, opening.via)
    await _run_flow(flow, stream, opening.rest, intake, options, heartbeat)


async def _run_flow(
    flow: WsFlow,
    stream: trio.abc.Stream,
    rest: bytes,
    intake: Intake,
    options: WsOptions,
    heartbeat: Heartbeat,
) -> None:
    hub = intake.hub
    hub.add_flow(flow)
    heartbeat.add(flow)
    try:
        await _reader(flow, stream, rest, intake, options)
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
            flow.write(flow.close_frame(code, reason))
            if flow.pending is not None:  # TLS, or a slow peer: give the flusher a second
                flow.flushed = trio.Event()
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await flow.flushed.wait()
        flow.fd = GONE


async def _reader(
    flow: WsFlow, stream: trio.abc.Stream, rest: bytes, intake: Intake, options: WsOptions
) -> None:
    peer = flow.peer
    frames = FrameReader(options.max_message_size)
    data: bytes | bytearray = rest
    while True:
        if data:
            flow.last_received = trio.current_time()
            try:
                events = frames.feed_untrusted(bytes(data))
            except FrameError as e:
                if e.code == TOO_BIG:
                    intake.stats["ws_message_too_big"] += 1
                    flow.close_reason = flow.close_reason or "message too big (1009)"
                else:
                    flow.close_reason = (
                        flow.close_reason or f"protocol error ({e.code}): {e.reason}"
                    )
                    flow.close_code = e.code
                return
            del data
            for opcode, payload in events:
                if opcode <= OP_BINARY:
                    await _message(flow, payload, peer, intake)
                elif opcode == OP_PING:
                    flow.write(frame(OP_PONG, payload))
                elif opcode == OP_PONG:
                    flow.last_keepalive = trio.current_time()
                    flow.pong_seen = flow.ping_sent
                else:  # OP_CLOSE: echo its code (RFC 6455 section 5.5.1)
                    code = struct.unpack_from("!H", payload)[0] if payload else 1000
                    flow.write(flow.close_frame(code, ""))
                    flow.close_reason = (
                        flow.close_reason or f"closed by peer ({code if payload else 1005})"
                    )
                    return
            del events
        try:
            data = await stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            flow.close_reason = flow.close_reason or f"receive failed: {e}"
            return
        if not data:
            flow.close_reason = flow.close_reason or "closed by peer (no close frame)"
            return


async def _message(flow: WsFlow, data: bytes, peer: Any, intake: Intake) -> None:
    if not data.strip(b"\r\n"):
        if data == b"\r\n":
            flow.crlf_answered()  # the answer to our CRLFCRLF
            flow.pong_seen = flow.ping_sent
        else:
            intake.stats[f"keepalives_in.{flow.transport.value}"] += 1
            flow.write(frame(OP_TEXT, b"\r\n"))  # RFC 5626 4.4.1: answer a CRLFCRLF at once
        return
    # to the core's front door: a fault is answered and the connection stays up; the
    # flow is marked valid once a message parses
    await intake.deliver(data, peer)
