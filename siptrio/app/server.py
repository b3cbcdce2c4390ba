"""The server supervisor: one nursery owning every listener, the core and the store.

Start-up order matters: the store is loaded and the core tasks run before any
listener binds, so the first datagram already finds its bindings; ``started`` is
reported only once every listener is bound. Shutdown is cancellation of that one
nursery; the store writer then commits what is still queued before the file closes.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import math
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ..core.dialogs import Dialogs
from ..core.dispatcher import Dispatcher
from ..core.events import (
    Action,
    BindingEvent,
    BindingEventKind,
    FlowValid,
    MediaRequest,
    Persist,
    Publish,
    Resolve,
    Send,
)
from ..core.location import Binding, Location
from ..core.overload import Overload
from ..core.types import Clock, Listener, Peer, Transport
from ..sip import SipParseError, error_response_untrusted
from ..store.base import BindingStore
from ..store.redis_store import RedisStore
from ..store.sqlite import SqliteStore
from ..transport.dns import DnsClient
from ..transport.hub import Flow, FlowClosed, Hub, SendFailed
from ..transport.intake import Inbound, Intake
from ..transport.outbound import Connector
from ..transport.rtpengine import MediaError, NgClient, parse_engine
from ..transport.stream import (
    ConnectionLimits,
    StreamOptions,
    open_tcp_listeners,
    raise_open_files_limit,
    serve_stream_listener,
)
from ..transport.tls import TlsSetupError, client_context, server_context
from ..transport.udp import bind_udp, serve_udp
from ..transport.ws import WsOptions, WsPolicy, serve_ws
from .activity import ActivityLog
from .capture import Capture
from .cdr import CallRecorder
from .cluster import Cluster
from .config import Config
from .errors import StartupError
from .events import EventBus
from .reload import Reloader, core_config, realm_of
from .simcall import Simulator

if TYPE_CHECKING:
    from .ports import ClusterHost, OpsHost
    from .reload import ReloadHost
    from .simcall import SimHost

__all__ = ["Listener", "Server", "StartupError", "realm_of"]

log = logging.getLogger("siptrio.server")

INBOUND_QUEUE = 4096
STORE_QUEUE = 8192
STORE_BATCH = 4096
COMMIT_GATHER = 0.002  # seconds the store writer waits for more changes to commit together
COMMIT_GATHER_HEAVY = 0.005  # ... when the last commit carried HEAVY_BATCH changes or more
HEAVY_BATCH = 4
BUSY_GAP = 0.002  # ... when the previous commit ended less than this long ago (a burst)
TICK_SECONDS = 1.0
# Allocations between young-generation collections. Each one walks every young
# object, so its pause grows with this: at 50,000 it stalled the loop 10-20 ms every
# 1.6 s at 200 calls/s (the p99 INVITE->200 of a short run was that stall), at 5,000
# it takes ~1 ms, and the total is lower too (the young objects still fit in cache):
# 229-239 ms of GC against 272-399 for 12,000 calls at 800 calls/s.
GC_THRESHOLD = 5_000
# Young collections between two of the middle generation. Transactions live 32 s on
# UDP and end without leaving cycles, so older-generation passes rescan live state
# and find nothing: at 600 calls/s, every 50,000 x 20 allocations made one every
# ~11 s, a ~350 ms pause that found no garbage. 5,000 x 5,000 (25 M allocations)
# makes it one every few minutes at most.
GC_MIDDLE = 5_000
CORE_BATCH = 256  # messages handled per wake-up of the core loop


async def _in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in one of trio's cached threads and wait for it, uncancellably.

    What trio.to_thread.run_sync does, without its capacity limiter, context copy
    and thread naming: about 130 us of CPU per call there, 75 here, and the store
    commits once per REGISTER when the load is light. Only for short, bounded work.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: Any) -> None:  # an outcome.Outcome
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver)
    await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    def __init__(self, config: Config, *, worker: int | None = None) -> None:
        self.worker = worker  # index under `siptrio serve --workers N`
        self.reuse_port = worker is not None
        self.config = config
        self.realm = realm_of(config)
        self.clustered = config.registrar.backend == "redis"
        # (the supervisor of --workers gives each worker its own node_id)
        self.node = config.cluster.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.cluster: Cluster | None = None
        self.hub = Hub(trace=config.logging.sip_trace, log_trace=config.logging.sip_trace)
        self.location = Location()
        self.dispatcher = Dispatcher(
            core_config(config, node=self.node if self.clustered else None),
            self.location,
            secret=os.urandom(32),
        )
        self._timer_scope: trio.CancelScope | None = None
        self._wall_offset = 0.0  # time.time() - trio.current_time(), kept by _sync_clock
        self.intake: Intake | None = None
        self._users_version = -1
        self._nursery: trio.Nursery | None = None
        self.simulator = Simulator(self)
        self.media: NgClient | None = None
        self.dns = DnsClient(config.dns.servers, config.dns.timeout)
        if config.media.rtpengine:
            self.media = NgClient(
                [parse_engine(e) for e in config.media.rtpengine], timeout=config.media.timeout
            )
        self.ops: Any = None  # where the admin API and the control socket listen
        self.events = EventBus()
        self.events.listen(ActivityLog(node=self.node if self.clustered else None))
        self.reloader = Reloader(self)  # SIGHUP, `siptrio reload`, POST /reload
        self.capture = Capture(self)  # [capture] hep
        self.reloader.hooks.append(self.capture.apply)
        self.cdrs = CallRecorder(config, node=config.cluster.node_id or socket.gethostname())
        self.events.listen(self.cdrs)
        self.reloader.hooks.append(self.cdrs.apply)
        # what a reload changes in place (reload.py): the listeners' TLS contexts by
        # section, the WebSocket origin rules, the TCP/TLS connection caps
        self.tls_contexts: dict[str, ssl.SSLContext] = {}
        self.ws_policy: WsPolicy | None = None
        self.connection_limits: ConnectionLimits | None = None
        self.listeners: list[Listener] = []
        self.store: BindingStore | None = None  # SqliteStore, or RedisStore in a cluster
        self.stats: Counter[str] = self.hub.stats
        self.started_at = time.time()
        self._store_send: trio.MemorySendChannel[Persist] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        redis_store: RedisStore | None = None
        streams = cfg.security.max_connections if cfg.sip.tcp_enable or cfg.tls.enable else 0
        websockets = cfg.websocket.max_connections if cfg.websocket.enable else 0
        raise_open_files_limit(streams + websockets + 100)
        if self.clustered:
            redis_store = await trio.to_thread.run_sync(
                RedisStore, cfg.registrar.redis_url, self.node
            )
            self.store = redis_store
            secret = await trio.to_thread.run_sync(redis_store.cluster_secret)
            self.dispatcher.join_cluster(secret)
        else:
            self.store = await trio.to_thread.run_sync(SqliteStore, cfg.registrar.database)
        try:
            assert self.store is not None
            loaded = await trio.to_thread.run_sync(self.store.load, time.time())
            for b in loaded.bindings:
                self.location.put(b)
            log.info(
                "location store %s: %d bindings loaded, %d expired and %d flow-bound removed",
                cfg.registrar.redis_url if self.clustered else cfg.registrar.database,
                len(loaded.bindings),
                loaded.expired,
                loaded.stale_flows,
            )
            await self.load_users()
            self._sync_clock()
            inbound_send, inbound_recv = trio.open_memory_channel[Inbound](INBOUND_QUEUE)
            closed_send, closed_recv = trio.open_memory_channel[FlowClosed | SendFailed](math.inf)
            self.hub.report = lambda owner, reason: closed_send.send_nowait(
                SendFailed(owner, reason)
            )
            store_send, store_recv = trio.open_memory_channel[Persist](STORE_QUEUE)
            self._store_send = store_send
            overload = self.dispatcher.overload
            auth = self.dispatcher.auth
            intake = Intake(
                hub=self.hub,
                channel=inbound_send,
                closed_channel=closed_send,
                handle=self._handle_data,
                reject=self._reject,
                is_banned=lambda address: auth.is_banned(address, trio.current_time()),
                queue_delay=lambda queue, delay: overload.observe(
                    queue, delay, trio.current_time()
                ),
                max_size=cfg.sip.max_message_size,
            )
            self.intake = intake
            self.capture.apply(cfg)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._store_writer, store_recv)
                nursery.start_soon(self._core_loop, inbound_recv)
                nursery.start_soon(self._flow_closed_loop, closed_recv)
                nursery.start_soon(self._housekeeping)
                nursery.start_soon(self._timer_loop)
                self._nursery = nursery
                await nursery.start(self.cdrs.run, self.store)
                if self.media is not None:
                    await nursery.start(self.media.run)
                self.hub.connector = Connector(
                    intake=intake,
                    nursery=nursery,
                    options=self._outbound_options,
                    tls_context=client_context(cfg.tls.ca_file),
                    report_failure=self.hub.failed,
                )
                await self._start_listeners(nursery, intake)
                internal = await self._start_internal(nursery, intake)
                self.dispatcher.set_listeners(self.listeners + ([internal] if internal else []))
                if internal is not None:
                    assert redis_store is not None  # (an internal address only in a cluster)
                    self.dispatcher.router.internal = internal
                    self.cluster = Cluster(
                        self, redis_store, node=self.node, ttl=cfg.cluster.heartbeat_ttl
                    )
                    await nursery.start(self.cluster.run)
                    log.info("cluster node %s, internal address %s", self.node, internal)
                wildcard = [li for li in self.listeners if li.host in ("0.0.0.0", "::")]
                if wildcard and not cfg.sip.advertised_address:
                    log.warning(
                        "listening on a wildcard address (%s) without [sip] advertised_address: "
                        "Via and Record-Route over UDP will name the wildcard; set it",
                        ", ".join(str(li) for li in wildcard),
                    )
                # Everything loaded so far lives as long as the server: keep it out of the
                # cyclic collector's scans. Young passes short and often, older ones rare
                # (GC_THRESHOLD, GC_MIDDLE): the hot path makes acyclic objects that
                # reference counting frees at once.
                gc.freeze()
                gc.set_threshold(GC_THRESHOLD, GC_MIDDLE, 10)
                await nursery.start(self.simulator.run)
                if self.simulator.local is not None:
                    self.dispatcher.trusted.add(self.simulator.local)  # it never authenticates
                self._warn_if_open()
                from .admin import start_ops  # FastAPI and hypercorn load only when serving

                self.ops = await start_ops(self, nursery)
                for listener in self.listeners:
                    log.info("listening on %s", listener)
                task_status.started(list(self.listeners))
        finally:
            self.capture.close()
            store = self.store
            if store is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(store.close)
            log.info("stopped")

    async def _start_listeners(self, nursery: trio.Nursery, intake: Intake) -> None:
        cfg = self.config
        ws = cfg.websocket
        sec = cfg.security
        limits = ConnectionLimits(
            sec.max_connections, sec.max_connections_per_ip, sec.rate_limit_exempt
        )
        self.connection_limits = limits
        stream_opts = self._stream_options = StreamOptions(
            transport=Transport.TCP,
            idle_timeout=cfg.sip.idle_timeout,
            has_bindings=lambda flow_id: bool(self.location.on_flow(flow_id)),
            keepalive_interval=ws.keepalive_interval,
            keepalive_timeout=ws.keepalive_timeout,
            first_message_timeout=cfg.security.first_message_timeout,
            limits=limits,
        )
        for host in cfg.sip.listen_addr:
            if cfg.sip.udp_enable:
                sock = await self._bind(
                    Transport.UDP,
                    host,
                    cfg.sip.udp_port,
                    bind_udp(host, cfg.sip.udp_port, reuse_port=self.reuse_port),
                )
                await nursery.start(serve_udp, sock, intake)
                self.listeners.append(
                    Listener(transport=Transport.UDP, host=host, port=sock.getsockname()[1])
                )
            if cfg.sip.tcp_enable:
                await self._start_stream(nursery, intake, stream_opts, host, cfg.sip.tcp_port)
        if cfg.tls.enable:
            try:
                ctx = server_context(
                    cfg.tls.cert_file,
                    cfg.tls.key_file,
                    ca_file=cfg.tls.ca_file,
                    verify_client=cfg.tls.verify_client,
                )
            except TlsSetupError as e:
                raise StartupError(str(e)) from e
            self.tls_contexts["sip_tls"] = ctx
            tls_opts = StreamOptions(
                transport=Transport.TLS,
                idle_timeout=cfg.sip.idle_timeout,
                ssl_context=ctx,
                has_bindings=stream_opts.has_bindings,
                keepalive_interval=ws.keepalive_interval,
                keepalive_timeout=ws.keepalive_timeout,
                first_message_timeout=cfg.security.first_message_timeout,
                limits=limits,
            )
            for host in cfg.tls.listen_addr or cfg.sip.listen_addr:
                await self._start_stream(nursery, intake, tls_opts, host, cfg.tls.listen_port)
        await self._start_websocket(nursery, intake)

    async def _start_internal(self, nursery: trio.Nursery, intake: Intake) -> Listener | None:
        """In a cluster, the UDP socket other nodes reach this one on (never shared)."""
        if not self.clustered:
            return None
        c = self.config.cluster
        sock = await self._bind(
            Transport.UDP,
            c.internal_addr,
            c.internal_port,
            bind_udp(c.internal_addr, c.internal_port),
        )
        await nursery.start(serve_udp, sock, intake)
        return Listener(transport=Transport.UDP, host=c.internal_addr, port=sock.getsockname()[1])

    def _outbound_options(self, transport: Transport) -> StreamOptions:
        base = self._stream_options
        return StreamOptions(
            transport=transport,
            idle_timeout=base.idle_timeout,
            has_bindings=base.has_bindings,
            keepalive_interval=base.keepalive_interval,
            keepalive_timeout=base.keepalive_timeout,
        )

    async def _start_websocket(self, nursery: trio.Nursery, intake: Intake) -> None:
        ws = self.config.websocket
        policy = self.ws_policy = WsPolicy()
        jobs: list[tuple[Transport, int, ssl.SSLContext | None]] = []
        if ws.enable:
            jobs.append((Transport.WS, ws.listen_port, None))
        if ws.wss_enable:
            try:
                wss_ctx = server_context(
                    ws.wss_cert_file,
                    ws.wss_key_file,
                    ca_file=ws.wss_ca_file,
                    verify_client=ws.wss_verify_client,
                    what="[sip_websocket] wss_enable",
                )
            except TlsSetupError as e:
                raise StartupError(str(e)) from e
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
            for host in ws.listen_addr or self.config.sip.listen_addr:
                bound = await self._bind(
                    transport,
                    host,
                    port,
                    nursery.start(
                        partial(serve_ws, reuse_port=self.reuse_port),
                        host,
                        port,
                        ctx,
                        intake,
                        options,
                        policy,
                    ),
                )
                self.listeners.append(Listener(transport=transport, host=host, port=bound))

    async def _start_stream(
        self, nursery: trio.Nursery, intake: Intake, opts: StreamOptions, host: str, port: int
    ) -> None:
        listeners = await self._bind(
            opts.transport, host, port, open_tcp_listeners(host, port, reuse_port=self.reuse_port)
        )
        for tcp_listener in listeners:
            await nursery.start(serve_stream_listener, tcp_listener, intake, opts)
            bound = tcp_listener.socket.getsockname()
            self.listeners.append(Listener(transport=opts.transport, host=host, port=bound[1]))

    @staticmethod
    async def _bind(transport: Transport, host: str, port: int, coro):  # type: ignore[no-untyped-def]
        try:
            return await coro
        except OSError as e:
            raise StartupError(
                f"cannot listen on {transport.value} {host}:{port}: {e.strerror or e}"
            ) from e

    # --- the core -------------------------------------------------------------------------

    def _sync_clock(self) -> None:
        """The core's clock is trio's; bindings need wall time: keep the offset current."""
        self._wall_offset = time.time() - trio.current_time()

    def clock(self) -> Clock:
        """Now, once per event: trio's clock and the wall time that goes with it."""
        now = trio.current_time()
        return Clock(now, now + self._wall_offset)

    def _rearm_timers(self) -> None:
        scope = self._timer_scope
        if scope is not None:
            deadline = self.dispatcher.next_deadline()
            if deadline < scope.deadline:
                scope.deadline = deadline

    async def _core_loop(self, inbound: trio.MemoryReceiveChannel[Inbound]) -> None:
        """Take every queued message per wake-up: one task switch per burst, not per message."""
        overload = self.dispatcher.overload
        async for first in inbound:
            item: Inbound | None = first
            handled = 0
            while item is not None:
                now = trio.current_time()
                overload.observe("streams", now - item.queued_at, now)  # how far behind
                await self._handle_data(item.data, item.peer)
                handled += 1
                if handled >= CORE_BATCH:
                    break
                try:
                    item = inbound.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    item = None

    async def _handle_data(self, data: bytes, peer: Peer) -> None:
        """The shell's one way into the core: one message's bytes, from any transport."""
        try:
            actions = self.dispatcher.receive_datagram(data, peer, self.clock())
        except Exception:
            # A bug must cost one answer, never the server.
            self.stats["internal_errors"] += 1
            log.exception("internal error handling a message from %s", peer)
            error = SipParseError("Server Internal Error", status=500)
            reply = error_response_untrusted(data, error, server=self.dispatcher.config.server_name)
            if reply is not None:
                with contextlib.suppress(Exception):
                    await self.hub.send(reply, peer)
            return
        if actions:
            await self.execute(actions)

    async def _reject(self, data: bytes, error: SipParseError, peer: Peer) -> None:
        actions = self.dispatcher.rejected(data, error, peer)
        if actions:
            await self.execute(actions)

    async def _timer_loop(self) -> None:
        """One task for every transaction timer: sleep until the earliest deadline."""
        dispatcher = self.dispatcher
        while True:
            with trio.CancelScope(deadline=dispatcher.next_deadline()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            clock = self.clock()
            if dispatcher.next_deadline() <= clock.now:
                try:
                    actions = dispatcher.fire_timers(clock)
                except Exception:
                    self.stats["internal_errors"] += 1
                    log.exception("internal error firing timers")
                    continue
                if actions:
                    await self.execute(actions)

    async def _flow_closed_loop(
        self, closed: trio.MemoryReceiveChannel[FlowClosed | SendFailed]
    ) -> None:
        async for item in closed:
            if isinstance(item, FlowClosed):
                actions = self.dispatcher.flow_closed(item.flow_id, self.clock())
            else:
                actions = self.dispatcher.send_failed(item.owner, item.reason, self.clock())
            if actions:
                await self.execute(actions)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(TICK_SECONDS)
            self._sync_clock()
            actions = self.dispatcher.tick(self.clock())
            for address in self.dispatcher.newly_banned:
                log.warning(
                    "banned %s for %g s after %d failed authentications",
                    address,
                    self.config.security.ban_time,
                    self.config.security.ban_after,
                )
            self.dispatcher.newly_banned.clear()
            if actions:
                await self.execute(actions)
            await self._reload_users_if_changed()

    async def load_users(self) -> None:
        assert self.store is not None
        users = await trio.to_thread.run_sync(self.store.users, self.realm)
        self._users_version = await trio.to_thread.run_sync(self.store.data_version)
        self.dispatcher.auth.users = users
        if self.config.auth.enable:
            log.info("digest authentication on: %d users in realm %r", len(users), self.realm)

    async def _reload_users_if_changed(self) -> None:
        """`siptrio users ...` writes the same file from another process: pick it up."""
        store = self.store
        if store is None or not self.config.auth.enable:
            return
        version = await trio.to_thread.run_sync(store.data_version)
        if version != self._users_version:
            await self.load_users()

    def _warn_if_open(self) -> None:
        if self.config.auth.enable:
            return
        exposed = [li for li in self.listeners if not _loopback(li.host)]
        if exposed:
            log.warning(
                "!!! SIP is open beyond loopback (%s) WITHOUT authentication: anyone can "
                "register any address and call through this server. Set [auth] enable = true "
                "and add users with `siptrio users add NAME`.",
                ", ".join(str(li) for li in exposed),
            )

    async def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self.hub.send(action.data, action.peer, action.owner)
            elif isinstance(action, Persist):
                assert self._store_send is not None
                if action.txn_key is not None and self._flow_bound_only(action):
                    # Bindings on a connection die with it, and a restart drops what the
                    # file holds of them: no crash can lose one the client was told of.
                    # Answer now; the store only clears the row of an older binding of
                    # the same key (one ADDED had none).
                    await self.execute(
                        self.dispatcher.committed(action.txn_key, True, self.clock())
                    )
                    added = {
                        id(a.event.binding)
                        for a in actions
                        if isinstance(a, Publish)
                        and isinstance(a.event, BindingEvent)
                        and a.event.kind is BindingEventKind.ADDED
                    }
                    stale = tuple((b.aor, b.key) for b in action.upserts if id(b) not in added)
                    if not stale:
                        continue
                    action = Persist(deletes=stale)
                try:
                    self._store_send.send_nowait(action)  # no task switch per REGISTER
                except trio.WouldBlock:
                    await self._store_send.send(action)  # the store is behind: wait for it
            elif isinstance(action, Publish):
                self.events.publish(action.event)
            elif isinstance(action, MediaRequest):
                assert self._nursery is not None
                self._nursery.start_soon(self._media_request, action)
            elif isinstance(action, FlowValid):
                flow = self.hub.flows.get(action.flow_id)
                if flow is not None:
                    flow.valid_seen = True
            elif isinstance(action, Resolve):
                assert self._nursery is not None
                self._nursery.start_soon(self._resolve, action)
        self._rearm_timers()

    def _flow_bound_only(self, action: Persist) -> bool:
        """A REGISTER that only adds or refreshes bindings on flows, on a single node."""
        return (
            not self.clustered
            and not action.deletes
            and bool(action.upserts)
            and all(b.flow_id is not None for b in action.upserts)
        )

    async def _media_request(self, action: MediaRequest) -> None:
        """Ask rtpengine (off the core loop) and hand the answer back to the core."""
        reply: dict[str, Any] | None = None
        error: str | None = None
        if self.media is None:
            error = "no rtpengine configured"
        else:
            try:
                reply = await self.media.request(action.command)
            except MediaError as e:
                error = str(e)
        if error is not None or (reply or {}).get("result") != "ok":
            log.warning(
                "rtpengine %s for %s failed: %s",
                action.command.get("command"),
                action.command.get("call-id"),
                error or (reply or {}).get("error-reason") or reply,
            )
        try:
            actions = self.dispatcher.media_result(action.op, reply, error, self.clock())
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("internal error handling an rtpengine answer")
            return
        if actions:
            await self.execute(actions)

    async def _resolve(self, action: Resolve) -> None:
        """Ask the DNS (off the core loop) and hand the answer back to the core."""
        answer = await self.dns.query(action.name, action.qtype)
        if answer.error is not None and answer.error != "nxdomain":
            log.warning("DNS %s lookup of %s failed: %s", action.qtype, action.name, answer.error)
        try:
            actions = self.dispatcher.resolved(action.op, answer, self.clock())
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("internal error handling a DNS answer")
            return
        if actions:
            await self.execute(actions)

    # --- what the app layer sees (ports.py) ----------------------------------------------

    @property
    def core_stats(self) -> Counter[str]:
        return self.dispatcher.stats

    @property
    def dialogs(self) -> Dialogs:
        return self.dispatcher.dialogs

    @property
    def flows(self) -> Mapping[str, Flow]:
        return self.hub.flows

    @property
    def udp_sockets(self) -> Mapping[tuple[str, int], socket.socket]:
        return self.hub.udp_sockets

    def transaction_counts(self) -> tuple[int, int]:
        layer = self.dispatcher.layer
        return len(layer.servers), len(layer.clients)

    @property
    def overload(self) -> Overload:
        return self.dispatcher.overload

    def state_sizes(self) -> dict[str, int]:
        sizes = self.dispatcher.state_sizes()
        sizes["flows"] = len(self.hub.flows)
        sizes["rate_limiter"] = len(self.dispatcher.admission.limiter)
        return sizes

    def cluster_view(self) -> dict[str, Any] | None:
        return self.cluster.view() if self.cluster is not None else None

    def add_tap(self, tap: Callable[[str, bytes, Peer], None]) -> None:
        self.hub.add_tap(tap)

    def remove_tap(self, tap: Callable[[str, bytes, Peer], None]) -> None:
        self.hub.remove_tap(tap)

    def watch_flows(self, observer: Callable[[str, Flow], None]) -> Callable[[], None]:
        hub = self.hub
        previous = hub.on_flow_change

        def on_flow_change(kind: str, flow: Flow) -> None:
            if previous is not None:
                previous(kind, flow)
            observer(kind, flow)

        hub.on_flow_change = on_flow_change

        def unwatch() -> None:
            if hub.on_flow_change is on_flow_change:
                hub.on_flow_change = previous

        return unwatch

    # --- reload (reload.py) -----------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """A reload's checked config (its restart keys as they run), applied to the parts
        this server composed; what they hold (bindings, flows, dialogs) stays."""
        old, self.config = self.config, config
        self.realm = realm_of(config)
        self.dispatcher.reconfigure(core_config(config, node=self.node if self.clustered else None))
        sec = config.security
        if self.connection_limits is not None:
            self.connection_limits.max_total = sec.max_connections
            self.connection_limits.max_per_ip = sec.max_connections_per_ip
            self.connection_limits.exempt = sec.rate_limit_exempt
        if self.ws_policy is not None:
            self.ws_policy.allowed_origins = config.websocket.allowed_origins
            self.ws_policy.allow_missing_origin = config.websocket.allow_missing_origin
        if config.dns != old.dns:
            self.dns = DnsClient(config.dns.servers, config.dns.timeout)
        if self.media is not None and config.media.rtpengine:
            engines = [parse_engine(e) for e in config.media.rtpengine]
            self.media.retarget(engines, config.media.timeout)
        self.hub.log_trace = config.logging.sip_trace
        self.hub.trace = self.hub.log_trace or bool(self.hub.taps)

    # --- operations (admin API, control socket) ------------------------------------------

    async def kick(self, aor: str, contact: str | None = None) -> list[Binding]:
        """Remove an AOR's bindings (or the one with this contact URI); returns them."""
        before = list(self.location.bindings(aor).values())
        actions = self.dispatcher.remove_bindings(aor, contact, self.clock())
        await self.execute(actions)
        after = self.location.bindings(aor)
        return [b for b in before if b.key not in after]

    # --- the store --------------------------------------------------------------------------

    async def _store_writer(self, queue: trio.MemoryReceiveChannel[Persist]) -> None:
        """Group every queued change into one transaction: one fsync for a burst."""
        last_end = -1.0
        last_size = 0
        try:
            while True:
                batch = [await queue.receive()]
                if trio.current_time() - last_end < BUSY_GAP:
                    # In a burst, let it gather: a few milliseconds of latency buy one
                    # fsync and one thread hand-off for many REGISTERs instead of one
                    # each. A lone REGISTER is committed at once. When the last commit
                    # carried many, the load is heavy: gather longer (about 10 % more
                    # REGISTERs per CPU-second at 3,000/s than with 2 ms; at 200/s,
                    # where batches are one or two, the 200's p99 stays ~4 ms, not ~7).
                    heavy = last_size >= HEAVY_BATCH
                    await trio.sleep(COMMIT_GATHER_HEAVY if heavy else COMMIT_GATHER)
                while len(batch) < STORE_BATCH:
                    try:
                        batch.append(queue.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._commit(batch)
                last_end = trio.current_time()
                last_size = len(batch)
        finally:
            with trio.CancelScope(shield=True):
                rest: list[Persist] = []
                while True:
                    try:
                        rest.append(queue.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                if rest:
                    await self._commit(rest, send=False)

    async def _commit(self, batch: list[Persist], *, send: bool = True) -> None:
        assert self.store is not None
        final: dict[tuple[str, str], Binding | None] = {}
        for item in batch:
            for aor_key in item.deletes:
                final[aor_key] = None
            for b in item.upserts:
                final[(b.aor, b.key)] = b
        upserts = [b for b in final.values() if b is not None]
        deletes = [k for k, b in final.items() if b is None]
        ok = True
        try:
            store = self.store
            # Shielded: once staged, the transaction holds the store's lock until the
            # commit runs; the REGISTERs waiting on it are owed an answer anyway.
            with trio.CancelScope(shield=True):
                if store.stage(upserts, deletes):
                    await _in_thread(store.commit_staged)
                else:
                    await trio.to_thread.run_sync(store.apply, upserts, deletes)
            self.stats["store_commits"] += 1
            self.stats["store_rows"] += len(final)
        except Exception:
            ok = False
            self.stats["store_failures"] += 1
            log.exception("location store commit of %d changes failed", len(final))
        if not send:
            return
        clock = self.clock()
        actions: list[Action] = []
        for item in batch:
            if item.txn_key is not None:
                actions += self.dispatcher.committed(item.txn_key, ok, clock)
        await self.execute(actions)


if TYPE_CHECKING:  # the server is every part's host (ports.py): mypy holds it to that

    def _hosts(server: Server) -> tuple[OpsHost, ClusterHost, SimHost, ReloadHost]:
        return server, server, server, server
