"""The composition root: one nursery owning every listener, the core and the store.

This module only builds and wires: the config becomes core configs in one place
(reload.core_config), the core is run by the executor (executor.py), the store by
the store writer (storewriter.py), the listeners are bound by listeners.py, and the
app parts see the server through the narrow protocols of ports.py.

Start-up order matters: the store is loaded and the core tasks run before any
listener binds, so the first datagram already finds its bindings; ``started`` is
reported only once every listener is bound. Shutdown is cancellation of that one
nursery; the store writer then commits what is still queued before the file closes.
"""

from __future__ import annotations

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
from typing import TYPE_CHECKING, Any

import trio

from ..core.dialogs import Dialogs
from ..core.dispatcher import Dispatcher
from ..core.events import Action, Persist
from ..core.location import Binding, Location
from ..core.metrics import LATENCY, CoreMetrics, Histogram
from ..core.overload import Overload
from ..core.types import Clock, Listener, Peer
from ..store.base import BindingStore
from ..store.redis_store import RedisStore
from ..store.sqlite import SqliteStore
from ..transport.dns import DnsClient
from ..transport.hub import Flow, FlowClosed, Hub, SendFailed
from ..transport.intake import Inbound, Intake
from ..transport.outbound import Connector
from ..transport.rtpengine import NgClient, parse_engine
from ..transport.stream import raise_open_files_limit
from ..transport.tls import client_context
from .activity import ActivityLog
from .capture import Capture
from .cdr import CallRecorder
from .cluster import Cluster
from .config import Config
from .errors import StartupError
from .events import EventBus
from .executor import Executor
from .listeners import Listeners
from .reload import Reloader, core_config, realm_of
from .simcall import Simulator
from .storewriter import STORE_QUEUE, StoreWriter

if TYPE_CHECKING:
    from .ports import ClusterHost, OpsHost
    from .reload import ReloadHost
    from .simcall import SimHost

__all__ = ["Listener", "Server", "StartupError", "realm_of"]

log = logging.getLogger("siptrio.server")

INBOUND_QUEUE = 4096
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


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """The composition root: builds the core, the transports, the store and the app parts
    from one config, and runs them as tasks of one nursery."""

    def __init__(self, config: Config, *, worker: int | None = None) -> None:
        self.worker = worker  # index under `siptrio serve --workers N`
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
        self.media: NgClient | None = None
        if config.media.rtpengine:
            self.media = NgClient(
                [parse_engine(e) for e in config.media.rtpengine], timeout=config.media.timeout
            )
        self.events = EventBus()
        self.events.listen(ActivityLog(node=self.node if self.clustered else None))
        self.executor = Executor(
            self.dispatcher,
            self.hub,
            self.events,
            clustered=self.clustered,
            media=self.media,
            dns=DnsClient(config.dns.servers, config.dns.timeout),
        )
        self.binder = Listeners(config, self.location, reuse_port=worker is not None)
        self.listeners: list[Listener] = self.binder.bound
        self._users_version = -1
        self.simulator = Simulator(self)
        self.ops: Any = None  # where the admin API and the control socket listen
        self.reloader = Reloader(self)  # SIGHUP, `siptrio reload`, POST /reload
        self.capture = Capture(self)  # [capture] hep
        self.reloader.hooks.append(self.capture.apply)
        self.cdrs = CallRecorder(config, node=config.cluster.node_id or socket.gethostname())
        self.events.listen(self.cdrs)
        self.reloader.hooks.append(self.cdrs.apply)
        self.store: BindingStore | None = None  # SqliteStore, or RedisStore in a cluster
        self.stats: Counter[str] = self.hub.stats
        self.store_commit_seconds = Histogram(LATENCY)  # each commit that succeeded
        self.started_at = time.time()

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
            store = self.store
            loaded = await trio.to_thread.run_sync(store.load, time.time())
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
            executor = self.executor
            inbound_send, inbound_recv = trio.open_memory_channel[Inbound](INBOUND_QUEUE)
            closed_send, closed_recv = trio.open_memory_channel[FlowClosed | SendFailed](math.inf)
            self.hub.report = lambda owner, reason: closed_send.send_nowait(
                SendFailed(owner, reason)
            )
            store_send, store_recv = trio.open_memory_channel[Persist](STORE_QUEUE)
            executor.store_queue = store_send
            overload = self.dispatcher.overload
            auth = self.dispatcher.auth
            intake = Intake(
                hub=self.hub,
                channel=inbound_send,
                closed_channel=closed_send,
                handle=executor.handle_data,
                reject=executor.reject,
                is_banned=lambda address: auth.is_banned(address, trio.current_time()),
                queue_delay=lambda queue, delay: overload.observe(
                    queue, delay, trio.current_time()
                ),
                max_size=cfg.sip.max_message_size,
            )
            self.capture.apply(cfg)
            writer = StoreWriter(
                store, self.stats, executor.committed, timings=self.store_commit_seconds
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run, store_recv)
                await nursery.start(executor.run, inbound_recv, closed_recv)
                nursery.start_soon(self._housekeeping)
                await nursery.start(self.cdrs.run, store)
                if self.media is not None:
                    await nursery.start(self.media.run)
                self.hub.connector = Connector(
                    intake=intake,
                    nursery=nursery,
                    options=self.binder.outbound_options,
                    tls_context=client_context(cfg.tls.ca_file),
                    report_failure=self.hub.failed,
                )
                await self.binder.start(nursery, intake)
                internal = None
                if redis_store is not None:  # a cluster: other nodes reach us on our own
                    internal = await self.binder.start_internal(nursery, intake)
                self.dispatcher.set_listeners(self.listeners + ([internal] if internal else []))
                if internal is not None:
                    assert redis_store is not None
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
            if self.store is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.store.close)
            log.info("stopped")

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(TICK_SECONDS)
            self.executor.sync_clock()
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

    # --- what the app layer sees (ports.py) ----------------------------------------------

    def clock(self) -> Clock:
        return self.executor.clock()

    async def execute(self, actions: list[Action]) -> None:
        await self.executor.execute(actions)

    @property
    def tls_contexts(self) -> Mapping[str, ssl.SSLContext]:
        return self.binder.tls_contexts

    @property
    def core_stats(self) -> Counter[str]:
        return self.dispatcher.stats

    @property
    def core_metrics(self) -> CoreMetrics:
        return self.dispatcher.metrics

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
        self.binder.reconfigure(config)
        if config.dns != old.dns:
            self.executor.dns = DnsClient(config.dns.servers, config.dns.timeout)
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


if TYPE_CHECKING:  # the server is every part's host (ports.py): mypy holds it to that

    def _hosts(server: Server) -> tuple[OpsHost, ClusterHost, SimHost, ReloadHost]:
        return server, server, server, server
