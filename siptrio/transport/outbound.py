"""Outbound TCP and TLS connections: opened on demand, reused, never blocking the core.

When the proxy must reach a stream target that has no flow yet, the first message
for it starts a connection task in the server's nursery; messages for the same
address queue behind it. Once connected the connection is a flow like any accepted
one. A failure (refused, timed out, certificate not trusted or not matching the
host) is reported for every queued message's transaction, which answers 503.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Hashable

import trio

from ..core.types import Peer, Transport
from .hub import Flow
from .intake import Intake
from .stream import StreamOptions, run_flow

__all__ = ["Connector"]

log = logging.getLogger("siptrio.transport")

Key = tuple[Transport, str, int]


class Connector:
    def __init__(
        self,
        *,
        intake: Intake,
        nursery: trio.Nursery,
        options: Callable[[Transport], StreamOptions],
        tls_context: ssl.SSLContext,
        report_failure: Callable[[Hashable, str], None],
        connect_timeout: float = 5.0,
    ) -> None:
        self.intake = intake
        self.nursery = nursery
        self.options = options
        self.tls_context = tls_context
        self.report_failure = report_failure
        self.connect_timeout = connect_timeout
        self.flows: dict[Key, Flow] = {}
        self._pending: dict[Key, list[tuple[bytes, Hashable]]] = {}

    def submit(self, peer: Peer, data: bytes, owner: Hashable) -> None:
        key: Key = (peer.transport, peer.host, peer.port)
        flow = self.flows.get(key)
        if flow is not None and flow.id in self.intake.hub.flows:
            flow.send_nowait(data)
            return
        queue = self._pending.get(key)
        if queue is not None:
            queue.append((data, owner))
            return
        self._pending[key] = [(data, owner)]
        self.nursery.start_soon(self._connect, key, peer)

    async def _connect(self, key: Key, peer: Peer) -> None:
        transport, host, port = key
        stream: trio.abc.Stream
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await trio.open_tcp_stream(host, port)
                stream = tcp
                if transport is Transport.TLS:
                    # a name from DNS is what the certificate must carry (RFC 5922)
                    name = peer.server_name or host
                    tls = trio.SSLStream(tcp, self.tls_context, server_hostname=name)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(tcp)
                        raise
                    stream = tls
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
            cause = e.__cause__ if isinstance(e, trio.BrokenResourceError) and e.__cause__ else e
            reason = f"{transport.value} connection to {peer.address} failed: {cause}"
            log.warning("%s", reason)
            self.intake.stats[f"outbound_connect_failures.{transport.value}"] += 1
            for _, owner in self._pending.pop(key, []):
                self.report_failure(owner, reason)
            return
        sock = tcp.socket
        local = sock.getsockname()
        flow = Flow(
            flow_id=self.intake.hub.new_flow_id(transport),
            transport=transport,
            remote=(host, port),
            local=(local[0], local[1]),
        )
        self.flows[key] = flow
        for data, _ in self._pending.pop(key, []):
            flow.send_nowait(data)
        try:
            await run_flow(flow, stream, self.intake, self.options(transport))
        finally:
            if self.flows.get(key) is flow:
                del self.flows[key]
