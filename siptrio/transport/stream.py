"""TCP and TLS: listeners, and the reader/writer pair that makes a connection a flow.

Each connection runs in its own nursery: a reader that frames and parses, and a
writer that drains the flow's bounded queue. Closing a flow is cancelling its
scope; the ``finally`` tells the core (whose bindings on it go) and closes the
socket forcefully, as trio's own ``serve_listeners`` handlers do.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Callable

import trio

from ..core.types import Transport
from ..sip import KeepAlive, SipParseError, StreamFramer
from .hub import Flow
from .intake import Intake
from .keepalive import crlf_keepalive, first_message_guard

__all__ = [
    "StreamOptions",
    "open_stream_listeners",
    "raise_open_files_limit",
    "run_flow",
    "serve_stream_listener",
]

log = logging.getLogger("siptrio.transport")
RECV_SIZE = 65536


class StreamOptions:
    """Per-listener knobs for stream connections."""

    def __init__(
        self,
        *,
        transport: Transport,
        idle_timeout: float,
        handshake_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        has_bindings: Callable[[str], bool] = lambda flow_id: False,
        keepalive_interval: float = 0.0,
        keepalive_timeout: float = 10.0,
        first_message_timeout: float = 0.0,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.transport = transport
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.ssl_context = ssl_context
        self.has_bindings = has_bindings
        self.keepalive_interval = keepalive_interval  # 0: no server keep-alives
        self.keepalive_timeout = keepalive_timeout
        self.first_message_timeout = first_message_timeout  # 0: no guard
        self.limits = limits


class ConnectionLimits:
    """Caps on concurrent connections, in total and per source address (shared by listeners).

    Addresses in ``exempt`` ([security] rate_limit_exempt) have no per-address cap, as
    they have no rate limit: one address at its cap never keeps them out.
    """

    def __init__(
        self,
        total: int,
        per_ip: int,
        exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
    ) -> None:
        self.max_total = total
        self.max_per_ip = per_ip
        self.exempt = exempt
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def take(self, ip: str) -> str | None:
        """None when the connection may stay; otherwise why it may not."""
        if self.total >= self.max_total:
            return "capacity"
        if self.per_ip[ip] >= self.max_per_ip and not self._exempt(ip):
            return "per_ip"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def _exempt(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.exempt)

    def give_back(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


def raise_open_files_limit(wanted: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; say so when it is below ``wanted``.

    Every connection is a descriptor, and the usual soft limit (1,024) would refuse
    accept() long before the connection caps. Only the hard limit is the operator's
    to set (``ulimit -Hn``, systemd ``LimitNOFILE=``); returns the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, target, e)
    if soft < wanted:
        log.info(
            "open files limit %d is below the connection caps (%d): connections past it "
            "are refused at accept(); the hard limit is the operator's to raise "
            "(ulimit -Hn, systemd LimitNOFILE=)",
            soft,
            wanted,
        )
    return soft


async def open_stream_listeners(host: str, port: int) -> list[trio.SocketListener]:
    return await trio.open_tcp_listeners(port, host=host)


def _addr(sock: trio.socket.SocketType, remote: bool) -> tuple[str, int]:
    try:
        a = sock.getpeername() if remote else sock.getsockname()
    except OSError:
        return ("?", 0)
    return (a[0], a[1])


async def serve_stream_listener(
    listener: trio.SocketListener,
    intake: Intake,
    options: StreamOptions,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept loop; each connection a task in this listener's nursery."""
    async with trio.open_nursery() as nursery:
        task_status.started()
        try:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                        intake.stats["accept_errors"] += 1
                        log.error("accept() failed (%s); sleeping 100 ms", e)
                        await trio.sleep(0.1)
                        continue
                    raise
                nursery.start_soon(_handle_connection, stream, intake, options)
        finally:
            await trio.aclose_forcefully(listener)


async def _handle_connection(
    stream: trio.SocketStream, intake: Intake, options: StreamOptions
) -> None:
    remote = _addr(stream.socket, True)
    if intake.banned(remote[0]):
        await trio.aclose_forcefully(stream)
        return
    limits = options.limits
    if limits is not None:
        refused = limits.take(remote[0])
        if refused is not None:
            intake.stats[f"connections_refused.{refused}"] += 1
            await trio.aclose_forcefully(stream)
            return
    try:
        await _serve_connection(stream, remote, intake, options)
    finally:
        if limits is not None:
            limits.give_back(remote[0])


async def _serve_connection(
    stream: trio.SocketStream, remote: tuple[str, int], intake: Intake, options: StreamOptions
) -> None:
    local = _addr(stream.socket, False)
    transport = options.transport
    with contextlib.suppress(OSError):
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
    io_stream: trio.abc.Stream = stream
    if options.ssl_context is not None:
        ssl_stream = trio.SSLStream(stream, options.ssl_context, server_side=True)
        with trio.move_on_after(options.handshake_timeout) as scope:
            try:
                await ssl_stream.do_handshake()
            except trio.BrokenResourceError as e:
                intake.stats["tls_handshake_failures"] += 1
                log.info(
                    "TLS handshake from %s:%s failed: %s", remote[0], remote[1], e.__cause__ or e
                )
                await trio.aclose_forcefully(stream)
                return
        if scope.cancelled_caught:
            intake.stats["tls_handshake_timeouts"] += 1
            await trio.aclose_forcefully(stream)
            return
        io_stream = ssl_stream
    flow = Flow(
        flow_id=intake.hub.new_flow_id(transport), transport=transport, remote=remote, local=local
    )
    await run_flow(flow, io_stream, intake, options)


async def run_flow(
    flow: Flow, stream: trio.abc.Stream, intake: Intake, options: StreamOptions
) -> None:
    """Run a connected stream as a flow until either side closes it."""
    hub = intake.hub
    hub.add_flow(flow)
    log.debug("flow %s opened from %s:%s", flow.id, *flow.remote)
    try:
        with flow.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_writer, flow, stream)
                if options.first_message_timeout > 0:
                    nursery.start_soon(
                        first_message_guard, flow, options.first_message_timeout, intake.stats
                    )
                if options.keepalive_interval > 0:
                    nursery.start_soon(
                        crlf_keepalive,
                        flow,
                        options.keepalive_interval,
                        options.keepalive_timeout,
                        intake.stats,
                    )
                await _reader(flow, stream, intake, options)
                nursery.cancel_scope.cancel()
    finally:
        hub.remove_flow(flow)
        flow.close_reason = flow.close_reason or "closed"
        intake.flow_closed(flow.id, flow.close_reason)
        log.debug("flow %s closed: %s", flow.id, flow.close_reason)
        await trio.aclose_forcefully(stream)


async def _writer(flow: Flow, stream: trio.abc.Stream) -> None:
    try:
        async for data in flow.outgoing:
            if data is None:
                break
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        flow.close(f"send failed: {e}")
    finally:
        flow.writer_done.set()


LINGER_SECONDS = 2.0
CLOSE_GRACE = 0.3
LINGER_BYTES = 8 << 20


async def _close_after_flush(flow: Flow, stream: trio.abc.Stream, reason: str) -> None:
    """Send the error reply, then read and discard for a moment before closing.

    Closing a socket with unread input makes the kernel send RST, which can destroy
    the reply still in flight; a short lingering close (as HTTP servers do) lets a
    client that is still sending its oversized message read why it was refused.
    """
    flow.close_reason = reason
    # Answers to messages that came before the bad bytes may still be on their way
    # (a REGISTER's 200 waits for the store): give them a moment to be queued.
    await trio.sleep(CLOSE_GRACE)
    flow.send_nowait(None)
    with trio.move_on_after(LINGER_SECONDS):
        await flow.writer_done.wait()
        if isinstance(stream, trio.abc.HalfCloseableStream):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_eof()
        discarded = 0
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while discarded < LINGER_BYTES:
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    break
                discarded += len(data)


async def _reader(
    flow: Flow, stream: trio.abc.Stream, intake: Intake, options: StreamOptions
) -> None:
    framer = StreamFramer(intake.max_size)
    peer = flow.peer
    stats = intake.stats
    while True:
        with trio.move_on_after(options.idle_timeout) as idle:
            try:
                data = await stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                flow.close_reason = f"receive failed: {e}"
                return
        if idle.cancelled_caught:
            if options.has_bindings(flow.id):
                continue
            stats["flows_idle_closed"] += 1
            flow.close_reason = "idle timeout"
            return
        if not data:
            flow.close_reason = "closed by peer"
            return
        flow.last_received = trio.current_time()
        framer.receive_data(data)
        del data  # an idle flow keeps no bytes alive while it waits
        while True:
            try:
                event = framer.next_event()
            except SipParseError as e:
                await intake.reject(framer.error_head, e, peer)
                await _close_after_flush(flow, stream, f"framing lost: {e.reason}")
                return
            if event is None:
                break
            if event is KeepAlive.PING:
                stats[f"keepalives_in.{flow.transport.value}"] += 1
                flow.send_nowait(b"\r\n")
                continue
            if event is KeepAlive.PONG:
                flow.crlf_answered()
                continue
            assert isinstance(event, bytes)
            # to the core's front door; it marks the flow valid once a message parses
            await intake.deliver(event, peer)
            del event  # nor the last message


async def open_tcp_listeners(
    host: str, port: int, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """trio.open_tcp_listeners, or one socket with SO_REUSEPORT for worker processes.

    Workers of ``siptrio serve --workers N`` each bind the same port; the kernel
    spreads new connections across them.
    """
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        if family == trio.socket.AF_INET6:
            sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
        await sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]
