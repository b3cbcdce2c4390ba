"""A WebSocket listener, and each connection up to its 101: TLS, PROXY, upgrade, policy.

``serve_ws`` runs Trio's ``serve_listeners`` and a ``Heartbeat``; each accepted
connection gets one task (``_connection``) that does the TLS handshake for WSS, reads
a PROXY header from a trusted proxy, the upgrade request, applies bans, caps, Origin
and subprotocol, and answers with the 101 (then the same task becomes the flow's
reader, ``flow.run_flow``) or a refusal whose body says why.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..handshake import (
    NeedMore,
    ProxyHeaderError,
    client_address,
    parse_proxy_header_untrusted,
)
from ..intake import Intake
from ..stream import open_tcp_listeners
from .flow import WsFlow, WsStream, receive, run_flow, send_now
from .heartbeat import Heartbeat
from .options import WsOptions, WsPolicy, origin_allowed, within
from .upgrade import Upgrade, UpgradeRefused, UpgradeRequest

__all__ = ["serve_ws"]

log = logging.getLogger("siptrio.transport")


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
        for listener in listeners:
            # one serve_listeners per listener, so that each knows its address: a
            # getsockname per connection less, unless bound to a wildcard address
            host, bound_port = listener.socket.getsockname()[:2]
            local = None if host in ("0.0.0.0", "::") else (host, bound_port)
            await nursery.start(
                partial(
                    trio.serve_listeners,
                    partial(handler, local=local),
                    [listener],
                    handler_nursery=nursery,
                )
            )
        task_status.started(listeners[0].socket.getsockname()[1])


@dataclass(slots=True)
class _Opening:
    """What the start of a connection said: who the client is and its upgrade request."""

    upgrade: Upgrade  # with the request parsed: it writes the 101 or the refusal
    request: UpgradeRequest
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
    local: tuple[str, int] | None,  # the listener's address; None: a wildcard's
) -> None:
    """One connection, from accept to close, in the task ``serve_listeners`` gave it."""
    stats = intake.stats
    ws_stream: WsStream = stream
    try:
        try:
            peer = _pair(stream.socket.getpeername())
            if local is None:
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
    except Exception:
        # A bug must cost this connection, never the listener: an exception out of a
        # handler ends trio's serve_listeners, and with it the server.
        stats["internal_errors"] += 1
        log.exception("internal error on a WebSocket connection")
    finally:
        await trio.aclose_forcefully(ws_stream)


def _pair(address: Any) -> tuple[str, int]:
    return (address[0], address[1])


async def _read_opening(
    stream: WsStream, peer: tuple[str, int], intake: Intake, options: WsOptions
) -> _Opening | None:
    """The PROXY header (from a trusted proxy) and the upgrade request; None: answered."""
    upgrade = Upgrade()
    buf = b""
    client: tuple[str, int] = peer
    via: str | None = None
    trusted = within(peer[0], options.trusted_proxies)
    proxy_checked = False
    first = True
    while True:
        data = await receive(stream, wait_first=not first)
        first = False
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
                await _refuse(stream, upgrade, 400, why, intake.stats, peer, "malformed")
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
            request = upgrade.receive_untrusted(bytes(data))
        except UpgradeRefused as e:
            await _refuse(
                stream, upgrade, e.status, e.reason, intake.stats, peer, "malformed", e.headers
            )
            return None
        if request is None:
            continue
        if within(client[0], options.trusted_proxies):
            address, port = client_address(client[0], request.headers, options.trusted_proxies)
            if address != client[0]:
                via = via or client[0]
                client = (address, port if port is not None else client[1])
        return _Opening(upgrade=upgrade, request=request, client=client, via=via)


async def _refuse(
    stream: WsStream,
    upgrade: Upgrade,
    status: int,
    why: str,
    stats: Counter[str],
    client: tuple[str, int],
    key: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    via: str | None = None,
) -> None:
    """An HTTP refusal whose body says why (h11 writes it), logged and counted."""
    stats[f"ws_handshake_rejected.{key}"] += 1
    through = f" (via {via})" if via else ""
    log.info("WebSocket handshake from %s:%s%s refused (%d): %s", *client, through, status, why)
    data = upgrade.refuse(status, why, extra)
    if not data:
        return  # h11 cannot answer in the state the request left it in: just close
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await send_now(stream, data)


async def _reject(
    stream: WsStream,
    opening: _Opening,
    status: int,
    why: str,
    stats: Counter[str],
    key: str,
) -> None:
    await _refuse(stream, opening.upgrade, status, why, stats, opening.client, key, via=opening.via)


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
    origin = request.origin
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
    response, conn = opening.upgrade.accept(request, "sip")
    await send_now(stream, response)
    stats[f"ws_handshakes.{options.transport.value}"] += 1
    flow = WsFlow(
        stream=stream,
        conn=conn,  # the handshake (and h11 with it) is dropped from here on
        spawn=nursery.start_soon,
        flow_id=intake.hub.new_flow_id(options.transport),
        transport=options.transport,
        remote=opening.client,
        local=local,
    )
    if opening.via:
        log.debug("flow %s from %s:%s via %s", flow.id, *opening.client, opening.via)
    del opening, request
    await run_flow(flow, stream, intake, options, heartbeat)
