"""SIP over WebSocket (RFC 7118): WS and WSS listeners, handshake policy, framing.

Who may upgrade is decided here: connection caps (503), Origin (403), the ``sip``
subprotocol (400), each refusal with a body saying why. Behind a reverse proxy listed
in ``trusted_proxies`` the client is the one the proxy names, in a PROXY protocol
header (v1 or v2) or in ``X-Forwarded-For``/``Forwarded`` on the upgrade request;
caps, bans, rate limits, ``received`` and the flow's address are the client's.

The libraries do the protocol: Trio's ``serve_listeners`` accepts, a
``trio.SocketStream`` (under a ``trio.SSLStream`` for WSS) carries the bytes,
wsproto's ``WSConnection`` (h11 underneath) parses the upgrade request and writes the
101 or the refusal, and its frame ``Connection`` reads and writes the frames. What
siptrio adds is the shape of a connection, which trio-websocket's own server (a
reader task, a handler task, a message channel and a send lock per connection) made
cost four times Kamailio's CPU per set-up: one task per connection reads the PROXY
header (``handshake.py``), the upgrade and then frames, and hands one SIP message
per WebSocket message to the intake. A message out is written at once when the
socket takes it (a short-lived flusher task is started only when it does not), and
one task per listener pings every flow and cuts handshakes and flows whose time is
up (``Heartbeat``). trio-websocket's clients remain what the tests speak to us with.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections import Counter, deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..core.types import Transport
from .handshake import (
    NeedMore,
    ProxyHeaderError,
    client_address,
    parse_proxy_header_untrusted,
)
from .hub import Flow
from .intake import Intake
from .stream import open_tcp_listeners

__all__ = ["WsFlow", "WsOptions", "WsPolicy", "serve_ws"]

log = logging.getLogger("siptrio.transport")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
GOING_AWAY = 1001
TOO_BIG = 1009
GONE = -2  # WsFlow.fd once its socket is closed
RECV_SIZE = 16384
# Bytes a flow may have waiting for a slow peer before it counts as too slow to keep
# (the TCP flows' queue holds 512 messages; a SIP message is a few hundred bytes).
PENDING_LIMIT = 1 << 20
WsStream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


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
        self.fd = _fd(stream)
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
            sent = _write_now(self.fd, data)
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
            _socket_of(self.stream).shutdown(socket.SHUT_RD)


def _socket_of(stream: WsStream) -> trio.socket.SocketType:
    return (
        stream.socket if isinstance(stream, trio.SocketStream) else stream.transport_stream.socket
    )


def _fd(stream: WsStream) -> int:
    """A plain socket's descriptor, written to directly; -1 for TLS (through the SSLStream)."""
    return stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1


def _write_now(fd: int, data: bytes) -> int:
    """What a non-blocking socket takes of ``data`` now (0 when its buffer is full)."""
    if fd < 0:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


async def _receive(stream: WsStream) -> bytes | bytearray:
    """The next bytes from the peer; b"" at end-of-file.

    A plain socket is waited on first: ``SocketStream.receive_some`` tries ``recv``
    before it waits, and a flow's reader almost always comes to it before its peer
    has sent (the REGISTER follows our 101; an idle browser sends nothing): that
    failed try, its exception and the context managers around it were 6 % of the
    server's CPU in a burst of set-ups.
    """
    if isinstance(stream, trio.SocketStream):
        try:
            await trio.lowlevel.wait_readable(stream.socket)
        except OSError as e:  # closed under us
            raise trio.ClosedResourceError from e
    return await stream.receive_some(RECV_SIZE)


async def _send(stream: WsStream, data: bytes) -> None:
    """The 101 or a refusal: straight onto a plain socket when it takes it all, else awaited."""
    try:
        sent = _write_now(_fd(stream), data)
    except OSError as e:  # the peer is gone (EPIPE, ECONNRESET): as the stream would say
        raise trio.BrokenResourceError(f"send failed: {e.strerror or e}") from e
    if sent < len(data):
        await stream.send_all(data[sent:])


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
    listeners = await open_tcp_listeners(host, port, reuse_port=reuse_port)
    heartbeat = Heartbeat(options, intake.stats)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat.run)
        handler = partial(
            _connection,
            nursery=nursery,
            ssl_context=ssl_context,
            intake=intake,
            options=options,
            policy=policy,
            heartbeat=heartbeat,
        )
        await nursery.start(
            partial(trio.serve_listeners, handler, listeners, handler_nursery=nursery)
        )
        task_status.started(listeners[0].socket.getsockname()[1])


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

    ws: WSConnection  # wsproto's, with the request parsed: it writes the 101 or refusal
    request: Request
    client: tuple[str, int]
    via: str | None  # the trusted proxy it came through


async def _connection(
    stream: trio.SocketStream,
    *,
    nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None,
    intake: Intake,
    options: WsOptions,
    policy: WsPolicy,
    heartbeat: Heartbeat,
) -> None:
    """One connection, from accept to close, in the task ``serve_listeners`` gave it."""
    stats = intake.stats
    ws_stream: WsStream = stream
    try:
        try:
            peer = _pair(stream.socket.getpeername())
            local = _pair(stream.socket.getsockname())
        except OSError:  # gone already
            return
        # trio.SocketStream sets TCP_NOTSENT_LOWAT to 16 KiB (for streams that fill their
        # buffer); for small SIP messages on loopback it doubled the kernel's cost of
        # every write (57 -> 127 us under a burst of set-ups). 0: the system's default.
        with contextlib.suppress(OSError, AttributeError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 0)
        opening: _Opening | None = None
        heartbeat.open(stream)
        try:
            if ssl_context is not None:
                ws_stream = trio.SSLStream(
                    stream, ssl_context, server_side=True, https_compatible=True
                )
                try:
                    await ws_stream.do_handshake()
                except trio.BrokenResourceError as e:
                    if stream in heartbeat.opening:  # not cut by handshake_timeout
                        stats["tls_handshake_failures"] += 1
                        log.info("TLS handshake from %s:%s failed: %s", *peer, e.__cause__ or e)
                    return
            opening = await _read_opening(ws_stream, peer, intake, options)
        finally:
            heartbeat.opening.discard(stream)
        if opening is None:
            return
        ip = opening.client[0]
        if intake.banned(ip):
            await _reject(ws_stream, opening, 403, "Forbidden", stats, "banned")
            return
        refused = policy.take(ip, options)
        if refused == "capacity":
            why = "Too many WebSocket connections; try again later"
            await _reject(ws_stream, opening, 503, why, stats, "capacity")
            return
        if refused == "per_ip":
            why = f"Too many WebSocket connections from {ip}"
            await _reject(ws_stream, opening, 503, why, stats, "per_ip")
            return
        try:
            await _accept(
                ws_stream, local, opening, nursery, intake, options, heartbeat, policy=policy
            )
        finally:
            policy.give_back(ip)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(ws_stream)


def _pair(address: Any) -> tuple[str, int]:
    return (address[0], address[1])


async def _read_opening(
    stream: WsStream, peer: tuple[str, int], intake: Intake, options: WsOptions
) -> _Opening | None:
    """The PROXY header (from a trusted proxy) and the upgrade request; None: answered."""
    ws = WSConnection(ConnectionType.SERVER)
    buf = b""
    client: tuple[str, int] = peer
    via: str | None = None
    trusted = _within(peer[0], options.trusted_proxies)
    proxy_checked = False
    while True:
        data = await _receive(stream)
        if not data:
            return None
        if not proxy_checked:
            buf += data
            try:
                header = parse_proxy_header_untrusted(buf)
                broken = ""
            except NeedMore:
                continue
            except ProxyHeaderError as e:
                header, broken = None, e.reason
            proxy_checked = True
            if (header is not None or broken) and not trusted:
                # not HTTP, and from anyone else a PROXY header is a lie: refused at once
                why = f"a PROXY header from {peer[0]}, which is not in trusted_proxies"
                await _refuse(stream, ws, 400, why, intake.stats, peer, "malformed")
                return None
            if broken:  # from a trusted proxy: there is no HTTP request to answer, just close
                intake.stats["ws_handshake_rejected.malformed"] += 1
                log.info("WebSocket connection from %s:%s closed: %s", *peer, broken)
                return None
            if header is not None:
                buf = buf[header.length :]
                if header.source is not None:
                    client, via = header.source, peer[0]
            data, buf = buf, b""
            if not data:  # the header came alone; b"" would tell h11 the peer closed
                continue
        try:
            ws.receive_data(bytes(data))
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
        except RemoteProtocolError as e:
            status, why, extra = _refusal_of(e)
            await _refuse(stream, ws, status, why, intake.stats, peer, "malformed", extra)
            return None
        if request is None:
            continue
        if _within(client[0], options.trusted_proxies):
            address, port = client_address(
                client[0], request.extra_headers, options.trusted_proxies
            )
            if address != client[0]:
                via = via or client[0]
                client = (address, port if port is not None else client[1])
        return _Opening(ws=ws, request=request, client=client, via=via)


def _refusal_of(e: RemoteProtocolError) -> tuple[int, str, list[tuple[bytes, bytes]]]:
    """The status, reason and headers to refuse a request wsproto (or h11) could not take."""
    hint = e.event_hint
    status = hint.status_code if isinstance(hint, RejectConnection) else 400
    extra = list(hint.headers) if isinstance(hint, RejectConnection) else []
    why = str(e)
    cause = e.__context__  # h11's error, with a more precise status (431) and reason
    if isinstance(cause, h11.RemoteProtocolError):
        status, why = cause.error_status_hint, f"bad HTTP request: {cause}"
    return status, why, extra


async def _refuse(
    stream: WsStream,
    ws: WSConnection,
    status: int,
    why: str,
    stats: Counter[str],
    client: tuple[str, int],
    key: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    via: str | None = None,
) -> None:
    """An HTTP refusal whose body says why, written by wsproto (h11)."""
    stats[f"ws_handshake_rejected.{key}"] += 1
    through = f" (via {via})" if via else ""
    log.info("WebSocket handshake from %s:%s%s refused (%d): %s", *client, through, status, why)
    body = (why + "\n").encode()
    headers = [
        *(extra or ()),
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
    ]
    try:
        data = ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += ws.send(RejectData(data=body))
    except (LocalProtocolError, h11.LocalProtocolError):
        return  # h11 cannot answer in the state the request left it in: just close
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await _send(stream, data)


async def _reject(
    stream: WsStream,
    opening: _Opening,
    status: int,
    why: str,
    stats: Counter[str],
    key: str,
) -> None:
    await _refuse(stream, opening.ws, status, why, stats, opening.client, key, via=opening.via)


def _header(request: Request, name: bytes) -> str | None:
    for key, value in request.extra_headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def _accept(
    stream: WsStream,
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
    origin = _header(request, b"origin")
    if not origin_allowed(origin, options, policy):
        why = "Origin header required" if origin is None else f"Origin {origin} is not allowed"
        await _reject(stream, opening, 403, why, stats, "origin")
        return
    if "sip" not in request.subprotocols:
        why = (
            "SIP over WebSocket needs the 'sip' subprotocol (Sec-WebSocket-Protocol: sip, RFC 7118)"
        )
        await _reject(stream, opening, 400, why, stats, "subprotocol")
        return
    ws = opening.ws
    await _send(stream, ws.send(AcceptConnection(subprotocol="sip")))
    assert ws.connection is not None  # wsproto made the frame protocol with the 101
    stats[f"ws_handshakes.{options.transport.value}"] += 1
    flow = WsFlow(
        stream=stream,
        conn=ws.connection,  # the handshake (and h11 with it) is dropped from here on
        spawn=nursery.start_soon,
        flow_id=intake.hub.new_flow_id(options.transport),
        transport=options.transport,
        remote=opening.client,
        local=local,
    )
    if opening.via:
        log.debug("flow %s from %s:%s via %s", flow.id, *opening.client, opening.via)
    del opening, request, ws
    await _run_flow(flow, stream, intake, options, heartbeat)


async def _run_flow(
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
            data = await _receive(stream)
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
