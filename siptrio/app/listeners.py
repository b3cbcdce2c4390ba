"""Binding the configured listeners, and what a reload may change in them while they run.

Each listener is a task in the server's nursery (transport/udp.py, stream.py, ws.py);
this module turns ``[sip]``, ``[sip_tls]``, ``[sip_websocket]`` and ``[cluster]`` into
them, names a port that cannot be bound in a ``StartupError``, and keeps the objects
the listeners share and a reload changes in place: the TLS contexts by section, the
WebSocket origin policy and the connection caps.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import trio

from ..core.location import Location
from ..core.types import Listener, Transport
from ..transport.intake import Intake
from ..transport.stream import (
    ConnectionLimits,
    StreamOptions,
    open_tcp_listeners,
    serve_stream_listener,
)
from ..transport.tls import TlsSetupError, server_context
from ..transport.udp import bind_udp, serve_udp
from ..transport.ws import WsOptions, WsPolicy, serve_ws
from .config import Config
from .errors import StartupError

__all__ = ["Listeners"]

T = TypeVar("T")


async def _bind(transport: Transport, host: str, port: int, coro: Awaitable[T]) -> T:
    try:
        return await coro
    except OSError as e:
        raise StartupError(
            f"cannot listen on {transport.value} {host}:{port}: {e.strerror or e}"
        ) from e


def _server_context(make: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    try:
        return make()
    except TlsSetupError as e:
        raise StartupError(str(e)) from e


class Listeners:
    """Every listener the server runs, in the order bound (``bound``)."""

    def __init__(self, config: Config, location: Location, *, reuse_port: bool) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.bound: list[Listener] = []
        self.tls_contexts: dict[str, ssl.SSLContext] = {}
        sec = config.security
        self.limits = ConnectionLimits(
            sec.max_connections, sec.max_connections_per_ip, sec.rate_limit_exempt
        )
        self.ws_policy = WsPolicy()
        ws = config.websocket
        self.stream_options = StreamOptions(
            transport=Transport.TCP,
            idle_timeout=config.sip.idle_timeout,
            has_bindings=lambda flow_id: bool(location.on_flow(flow_id)),
            keepalive_interval=ws.keepalive_interval,
            keepalive_timeout=ws.keepalive_timeout,
            first_message_timeout=sec.first_message_timeout,
            limits=self.limits,
        )

    def reconfigure(self, config: Config) -> None:
        """A reload's caps and origin rules, for the next connection and handshake."""
        self.config = config
        sec = config.security
        self.limits.max_total = sec.max_connections
        self.limits.max_per_ip = sec.max_connections_per_ip
        self.limits.exempt = sec.rate_limit_exempt
        self.ws_policy.allowed_origins = config.websocket.allowed_origins
        self.ws_policy.allow_missing_origin = config.websocket.allow_missing_origin

    def outbound_options(self, transport: Transport) -> StreamOptions:
        """For connections we open (to a TCP/TLS target): no caps, no first-message wait."""
        base = self.stream_options
        return StreamOptions(
            transport=transport,
            idle_timeout=base.idle_timeout,
            has_bindings=base.has_bindings,
            keepalive_interval=base.keepalive_interval,
            keepalive_timeout=base.keepalive_timeout,
        )

    async def start(self, nursery: trio.Nursery, intake: Intake) -> None:
        cfg = self.config
        for host in cfg.sip.listen_addr:
            if cfg.sip.udp_enable:
                listener = await self._start_udp(
                    nursery, intake, host, cfg.sip.udp_port, reuse_port=self.reuse_port
                )
                self.bound.append(listener)
            if cfg.sip.tcp_enable:
                await self._start_stream(
                    nursery, intake, self.stream_options, host, cfg.sip.tcp_port
                )
        if cfg.tls.enable:
            tls = cfg.tls
            ctx = _server_context(
                lambda: server_context(
                    tls.cert_file,
                    tls.key_file,
                    ca_file=tls.ca_file,
                    verify_client=tls.verify_client,
                ),
            )
            self.tls_contexts["sip_tls"] = ctx
            base = self.stream_options
            tls_opts = StreamOptions(
                transport=Transport.TLS,
                idle_timeout=base.idle_timeout,
                ssl_context=ctx,
                has_bindings=base.has_bindings,
                keepalive_interval=base.keepalive_interval,
                keepalive_timeout=base.keepalive_timeout,
                first_message_timeout=base.first_message_timeout,
                limits=self.limits,
            )
            for host in tls.listen_addr or cfg.sip.listen_addr:
                await self._start_stream(nursery, intake, tls_opts, host, tls.listen_port)
        await self._start_websocket(nursery, intake)

    async def start_internal(self, nursery: trio.Nursery, intake: Intake) -> Listener:
        """In a cluster, the UDP socket other nodes reach this one on (never shared)."""
        c = self.config.cluster
        return await self._start_udp(
            nursery, intake, c.internal_addr, c.internal_port, reuse_port=False
        )

    async def _start_udp(
        self, nursery: trio.Nursery, intake: Intake, host: str, port: int, *, reuse_port: bool
    ) -> Listener:
        sock = await _bind(Transport.UDP, host, port, bind_udp(host, port, reuse_port=reuse_port))
        await nursery.start(serve_udp, sock, intake)
        return Listener(transport=Transport.UDP, host=host, port=sock.getsockname()[1])

    async def _start_websocket(self, nursery: trio.Nursery, intake: Intake) -> None:
        ws = self.config.websocket
        jobs: list[tuple[Transport, int, ssl.SSLContext | None]] = []
        if ws.enable:
            jobs.append((Transport.WS, ws.listen_port, None))
        if ws.wss_enable:
            wss_ctx = _server_context(
                lambda: server_context(
                    ws.wss_cert_file,
                    ws.wss_key_file,
                    ca_file=ws.wss_ca_file,
                    verify_client=ws.wss_verify_client,
                    what="[sip_websocket] wss_enable",
                ),
            )
            self.tls_contexts["sip_websocket"] = wss_ctx
            jobs.append((Transport.WSS, ws.wss_listen_port, wss_ctx))
        for transport, port, ctx in jobs:
            options = WsOptions(
                transport=transport,
                allowed_origins=ws.allowed_origins,
                allow_missing_origin=ws.allow_missing_origin,
                keepalive_interval=ws.keepalive_interval,
                keepalive_timeout=ws.keepalive_timeout,
                keepalive_mechanism=ws.keepalive_mechanism,
                handshake_timeout=ws.handshake_timeout,
                max_connections=ws.max_connections,
                max_connections_per_ip=ws.max_connections_per_ip,
                max_message_size=ws.max_message_size,
                first_message_timeout=self.config.security.first_message_timeout,
                trusted_proxies=ws.trusted_proxies,
                exempt=self.config.security.rate_limit_exempt,
            )
            serve = partial(serve_ws, reuse_port=self.reuse_port)
            for host in ws.listen_addr or self.config.sip.listen_addr:
                started = nursery.start(serve, host, port, ctx, intake, options, self.ws_policy)
                bound = await _bind(transport, host, port, started)
                self.bound.append(Listener(transport=transport, host=host, port=bound))

    async def _start_stream(
        self, nursery: trio.Nursery, intake: Intake, opts: StreamOptions, host: str, port: int
    ) -> None:
        listeners = await _bind(
            opts.transport, host, port, open_tcp_listeners(host, port, reuse_port=self.reuse_port)
        )
        for tcp_listener in listeners:
            await nursery.start(serve_stream_listener, tcp_listener, intake, opts)
            bound = tcp_listener.socket.getsockname()
            self.bound.append(Listener(transport=opts.transport, host=host, port=bound[1]))
