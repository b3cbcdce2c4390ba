"""Cluster membership over Redis: heartbeats, the shared location feed, dead nodes.

Each node announces itself (node id and internal SIP address) under a key that
expires after ``heartbeat_ttl`` unless refreshed; keeps its in-memory location in
step with what other nodes publish; and, when a node's heartbeat is gone, drops
the bindings made over that node's flows (they cannot be reached any more) so calls
to them get 480 within the TTL plus a second. It also publishes a small view of
its dialogs and flows, so that any node's admin API can show the whole cluster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..store.redis_store import RedisStore, binding_from_json
from .views import dialogs_view, flows_view

if TYPE_CHECKING:
    from .ports import ClusterHost

__all__ = ["Cluster"]

log = logging.getLogger("siptrio.cluster")

MONITOR_SECONDS = 1.0
FEED_RETRY = (0.5, 10.0)  # first and longest wait before subscribing again
SUBSCRIBE_WAIT = 5.0  # how long joining waits for the feed's subscription


class Cluster:
    def __init__(self, server: ClusterHost, store: RedisStore, *, node: str, ttl: float) -> None:
        self.server = server
        self.store = store
        self.node = node
        self.ttl = ttl
        self.nodes: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._trusted_nodes: set[tuple[str, int]] = set()
        # the other nodes' dialogs and flows as they last published them, read once a
        # second: the admin API and the control socket show them without waiting on Redis
        self.remote: dict[str, dict[str, Any]] = {}
        # one read of the node list at a time (the monitor's and the feed's), so a read
        # started before a node joined never lands after one that saw it
        self._nodes_lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join: subscribe, heartbeat, announce, then read who else is there.

        In that order, two nodes starting together always learn of each other at once:
        whichever reads the node list first is already subscribed when the other
        announces itself. (Otherwise a node could learn of another only at its next
        ``_monitor`` look, and drop the answers that node's requests drew meanwhile:
        with ``serve --workers`` an answer lands on whichever worker the kernel picks.)
        """
        internal = self.server.dispatcher.router.internal
        assert internal is not None
        self.info = {"host": internal.host, "port": internal.port, "started_at": time.time()}
        try:
            async with trio.open_nursery() as nursery:
                subscribed = trio.Event()
                nursery.start_soon(self._feed, subscribed)
                with trio.move_on_after(SUBSCRIBE_WAIT):
                    await subscribed.wait()
                if not subscribed.is_set():
                    log.warning(
                        "no subscription to the cluster feed after %g s: other nodes may "
                        "learn of this one only at their next look",
                        SUBSCRIBE_WAIT,
                    )
                await trio.to_thread.run_sync(self.store.heartbeat, self.info, self.ttl)
                await trio.to_thread.run_sync(self.store.announce, self.info)
                await self._refresh_nodes()
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._monitor)
                task_status.started()
        finally:
            self._stop.set()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await trio.to_thread.run_sync(self.store.leave)
                except Exception as e:  # Redis gone: the heartbeat expires by itself
                    log.warning("could not leave the cluster cleanly: %s", e)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.ttl / 3)
            try:
                await trio.to_thread.run_sync(self.store.heartbeat, self.info, self.ttl)
                view = {
                    "node": self.node,
                    "dialogs": dialogs_view(self.server, time.time()),
                    "flows": flows_view(self.server, trio.current_time()),
                }
                await trio.to_thread.run_sync(self.store.publish_view, view, self.ttl)
            except Exception:
                log.exception("cluster heartbeat failed")

    async def _refresh_nodes(self) -> None:
        async with self._nodes_lock:
            await self._read_nodes()

    async def _read_nodes(self) -> None:
        nodes = await trio.to_thread.run_sync(self.store.nodes)
        self.nodes = nodes
        router = self.server.dispatcher.router
        router.cluster_nodes = {
            name: (str(info["host"]), int(info["port"]))
            for name, info in nodes.items()
            if name != self.node
        }
        trusted = self.server.dispatcher.trusted
        trusted.difference_update(self._trusted_nodes)
        self._trusted_nodes = {(h, p) for h, p in router.cluster_nodes.values()}
        trusted.update(self._trusted_nodes)

    async def _monitor(self) -> None:
        while True:
            await trio.sleep(MONITOR_SECONDS)
            try:
                await self._refresh_nodes()
                views = await trio.to_thread.run_sync(self.store.views)
                self.remote = {k: v for k, v in views.items() if k != self.node}
            except Exception:
                log.exception("reading cluster nodes failed")
                continue
            alive = set(self.nodes)
            holders = {b.node for b in self.server.location if b.node and b.flow_id is not None}
            for node in holders - alive - {self.node}:
                log.warning(
                    "node %s stopped heartbeating: dropping the bindings on its flows", node
                )
                actions = self.server.dispatcher.node_gone(node, self.server.clock())
                await self.server.execute(actions)
                try:
                    await trio.to_thread.run_sync(self.store.remove_node_flows, node)
                except Exception:
                    log.exception("removing node %s's bindings from Redis failed", node)

    async def _feed(self, subscribed: trio.Event) -> None:
        """Other nodes' binding changes and arrivals, from the pub/sub thread into the core."""
        send, receive = trio.open_memory_channel[dict[str, Any]](10_000)
        token = trio.lowlevel.current_trio_token()

        def deliver(note: dict[str, Any]) -> None:
            with contextlib.suppress(trio.WouldBlock, trio.RunFinishedError, trio.Cancelled):
                trio.from_thread.run_sync(send.send_nowait, note, trio_token=token)

        def on_subscribed() -> None:
            with contextlib.suppress(trio.RunFinishedError, trio.Cancelled):
                trio.from_thread.run_sync(subscribed.set, trio_token=token)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen, deliver, on_subscribed)
            async for note in receive:
                if "joined" in note:
                    with contextlib.suppress(Exception):
                        await self._refresh_nodes()
                    continue
                upserts = [binding_from_json(text) for text in note.get("upserts", [])]
                deletes = [(str(a), str(k)) for a, k in note.get("deletes", [])]
                known = self.server.dispatcher.router.cluster_nodes
                if any(b.node and b.node != self.node and b.node not in known for b in upserts):
                    # a node newer than our last look: learn its address before routing to it
                    with contextlib.suppress(Exception):
                        await self._refresh_nodes()
                actions = self.server.dispatcher.apply_remote(upserts, deletes, self.server.clock())
                if actions:
                    await self.server.execute(actions)

    async def _listen(
        self, deliver: Callable[[dict[str, Any]], None], subscribed: Callable[[], None]
    ) -> None:
        """Subscribe to the feed; when Redis goes away, subscribe again and catch up."""
        delay = FEED_RETRY[0]
        broken = False
        while not self._stop.is_set():
            async with trio.open_nursery() as nursery:
                if broken:
                    nursery.start_soon(self._catch_up)
                try:
                    await trio.to_thread.run_sync(
                        self.store.listen,
                        deliver,
                        self._stop,
                        subscribed,
                        abandon_on_cancel=True,
                    )
                    return
                except Exception as e:
                    log.warning("the Redis feed broke (%s); subscribing again in %g s", e, delay)
                    nursery.cancel_scope.cancel()
            broken = True
            await trio.sleep(delay)
            delay = min(delay * 2, FEED_RETRY[1])

    async def _catch_up(self) -> None:
        """Once subscribed again: what other nodes changed while the feed was down."""
        await trio.sleep(FEED_RETRY[0])  # the subscription is in place by now
        try:
            theirs = await trio.to_thread.run_sync(self.store.others, time.time())
        except Exception as e:
            log.warning("catching up with the cluster's bindings failed: %s", e)
            return
        seen = {(b.aor, b.key) for b in theirs}
        gone = [
            (b.aor, b.key)
            for b in self.server.location
            if b.node and b.node != self.node and (b.aor, b.key) not in seen
        ]
        actions = self.server.dispatcher.apply_remote(theirs, gone, self.server.clock())
        await self.server.execute(actions)
        log.info("caught up with the cluster: %d bindings, %d gone", len(theirs), len(gone))

    def view(self) -> dict[str, Any]:
        """The cluster as this node sees it: nodes, and the other nodes' dialogs and flows."""
        return {
            "node": self.node,
            "nodes": sorted(self.nodes),
            "dialogs": [
                {**d, "node": name}
                for name in sorted(self.remote)
                for d in self.remote[name].get("dialogs", [])
            ],
            "flows": [
                {**f, "node": name}
                for name in sorted(self.remote)
                for f in self.remote[name].get("flows", [])
            ],
        }
