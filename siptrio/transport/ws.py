"""SIP over WebSocket (RFC 7118): WS and WSS listeners, handshake policy, framing.

trio-websocket does the HTTP upgrade and the frame protocol; this module decides
who may upgrade (connection caps: 503, Origin: 403, the ``sip`` subprotocol: 400,
each with a body saying why), then runs the connection as a flow like any TCP one:
a reader (one SIP message per WebSocket message), a writer draining the flow's
bounded queue, and a keep-alive timer. ``handshake_timeout`` covers the TLS
handshake and the HTTP upgrade together, so a slowloris client is dropped on time.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from functools import partial

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)

from ..core.types import Transport
from .hub import Flow
from .intake import Intake
from .keepalive import crlf_keepalive, first_message_guard, ws_ping_keepalive
from .stream import open_tcp_listeners

__all__ = ["WsOptions", "WsPolicy", "serve_ws"]

log = logging.getLogger("siptrio.transport")

GOING_AWAY = 1001


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


class WsPolicy:
    """Connection counts shared by the WS and WSS listeners (caps are per server)."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()


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
    tcp = await open_tcp_listeners(host, port, reuse_port=reuse_port)
    listeners: list[trio.SSLListener[trio.SocketStream] | trio.SocketListener] = list(tcp)
    if ssl_context is not None:
        listeners = [trio.SSLListener(li, ssl_context, https_compatible=True) for li in tcp]
    server = WebSocketServer(
        partial(_handle, intake=intake, options=options, policy=policy),
        listeners,
        max_message_size=options.max_message_size,
        connect_timeout=options.handshake_timeout,
        disconnect_timeout=2.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        task_status.started(tcp[0].socket.getsockname()[1])


def _header(request: WebSocketRequest, name: bytes) -> str | None:
    for key, value in request.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(origin: str | None, options: WsOptions) -> bool:
    if origin is None:
        return options.allow_missing_origin
    if "*" in options.allowed_origins:
        return True
    return origin.rstrip("/").lower() in options.allowed_origins


async def _reject(
    request: WebSocketRequest, status: int, why: str, stats: Counter[str], key: str
) -> None:
    stats[f"ws_handshake_rejected.{key}"] += 1
    log.info("WebSocket handshake from %s refused (%d): %s", request.remote, status, why)
    with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        await request.reject(
            status,
            extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")],
            body=(why + "\n").encode(),
        )


async def _handle(
    request: WebSocketRequest, *, intake: Intake, options: WsOptions, policy: WsPolicy
) -> None:
    stats = intake.stats
    remote = request.remote
    local = request.local
    if isinstance(remote, str) or isinstance(local, str):
        return
    ip = str(remote.address)
    if intake.banned(ip):
        await _reject(request, 403, "Forbidden", stats, "banned")
        return
    if policy.total >= options.max_connections:
        await _reject(
            request, 503, "Too many WebSocket connections; try again later", stats, "capacity"
        )
        return
    if policy.per_ip[ip] >= options.max_connections_per_ip:
        await _reject(request, 503, f"Too many WebSocket connections from {ip}", stats, "per_ip")
        return
    origin = _header(request, b"origin")
    if not origin_allowed(origin, options):
        why = "Origin header required" if origin is None else f"Origin {origin} is not allowed"
        await _reject(request, 403, why, stats, "origin")
        return
    if "sip" not in request.proposed_subprotocols:
        await _reject(
            request,
            400,
            "SIP over WebSocket needs the 'sip' subprotocol "
            "(Sec-WebSocket-Protocol: sip, RFC 7118)",
            stats,
            "subprotocol",
        )
        return
    policy.total += 1
    policy.per_ip[ip] += 1
    try:
        try:
            ws = await request.accept(subprotocol="sip")
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        stats[f"ws_handshakes.{options.transport.value}"] += 1
        flow = Flow(
            flow_id=intake.hub.new_flow_id(options.transport),
            transport=options.transport,
            remote=(ip, int(remote.port)),
            local=(str(local.address), int(local.port)),
        )
        await _run_ws_flow(flow, ws, intake, options)
    finally:
        policy.total -= 1
        policy.per_ip[ip] -= 1
        if policy.per_ip[ip] <= 0:
            del policy.per_ip[ip]


async def _run_ws_flow(
    flow: Flow, ws: WebSocketConnection, intake: Intake, options: WsOptions
) -> None:
    hub = intake.hub
    hub.add_flow(flow)
    try:
        with flow.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_writer, flow, ws)
                if options.first_message_timeout > 0:
                    nursery.start_soon(
                        first_message_guard, flow, options.first_message_timeout, intake.stats
                    )
                if options.keepalive_interval > 0:
                    if options.keepalive_mechanism in ("ping", "both"):
                        nursery.start_soon(
                            ws_ping_keepalive,
                            flow,
                            ws,
                            options.keepalive_interval,
                            options.keepalive_timeout,
                            intake.stats,
                        )
                    if options.keepalive_mechanism in ("crlf", "both"):
                        nursery.start_soon(
                            crlf_keepalive,
                            flow,
                            options.keepalive_interval,
                            options.keepalive_timeout,
                            intake.stats,
                        )
                await _reader(flow, ws, intake)
                nursery.cancel_scope.cancel()
    finally:
        hub.remove_flow(flow)
        shutting_down = flow.close_reason is None  # nothing closed it: the server is stopping
        flow.close_reason = flow.close_reason or "server shutting down"
        intake.flow_closed(flow.id, flow.close_reason)
        log.debug("flow %s closed: %s", flow.id, flow.close_reason)
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            code, reason = (
                (GOING_AWAY, "going away") if shutting_down else (1000, flow.close_reason)
            )
            with contextlib.suppress(
                ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                await ws.aclose(code, reason[:120])


async def _writer(flow: Flow, ws: WebSocketConnection) -> None:
    """One SIP message per WebSocket message: text when UTF-8, binary otherwise."""
    try:
        async for data in flow.outgoing:
            if data is None:
                break
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                await ws.send_message(data)
            else:
                await ws.send_message(text)
                del text
            # An idle flow must not keep its last message alive (about 6 KB per flow).
            del data
    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        flow.close(f"send failed: {e!r}")
    finally:
        flow.writer_done.set()


async def _reader(flow: Flow, ws: WebSocketConnection, intake: Intake) -> None:
    peer = flow.peer
    stats = intake.stats
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as e:
            code = e.reason.code if e.reason else None
            if code == 1009:
                stats["ws_message_too_big"] += 1
            flow.close_reason = (
                f"closed by peer ({code})" if code != 1009 else "message too big (1009)"
            )
            return
        data = message.encode("utf-8") if isinstance(message, str) else message
        flow.last_received = trio.current_time()
        if not data.strip(b"\r\n"):
            if data == b"\r\n":
                flow.crlf_answered()  # the answer to our CRLFCRLF
            else:
                stats[f"keepalives_in.{flow.transport.value}"] += 1
                flow.send_nowait(b"\r\n")  # RFC 5626 4.4.1: answer a CRLFCRLF ping at once
            continue
        result = intake.parse(data, peer)
        del message
        if isinstance(result, Exception):
            await intake.reject(data, result, peer)  # the connection stays up
        else:
            flow.valid_seen = True
            if await intake.admit(result):
                await intake.deliver(result)
        # While waiting for the next message, hold no reference to this one.
        del data, result
