"""The one place where the core meets the world: it feeds the core and carries out its actions.

The Dispatcher (core/) decides and returns actions; this module owns the tasks that
hand it events (messages from any transport, the earliest timer, flows that closed,
the housekeeping tick) and the one ``execute`` that turns each action into I/O:
``Send`` to the hub, ``Persist`` to the store writer, ``Publish`` to the event bus,
``MediaRequest`` and ``Resolve`` to child tasks that hand their answers back. The
core is called from nowhere else, so it always sees the same clock and every bug in
it costs one answer, never the server.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from typing import Any

import trio

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
from ..core.types import Clock, Peer
from ..sip import SipParseError, error_response_untrusted
from ..transport.dns import DnsClient
from ..transport.hub import FlowClosed, Hub, SendFailed
from ..transport.intake import Inbound
from ..transport.rtpengine import MediaError, NgClient
from .events import EventBus

__all__ = ["CORE_BATCH", "Executor"]

log = logging.getLogger("siptrio.server")

CORE_BATCH = 256  # messages handled per wake-up of the core loop


class Executor:
    """Runs the core: its input tasks, its clock and its actions.

    ``media`` and ``dns`` are the server's clients (a reload may replace ``dns``);
    ``store_queue`` is set once the store writer runs, before any message arrives.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        hub: Hub,
        events: EventBus,
        *,
        clustered: bool,
        media: NgClient | None,
        dns: DnsClient,
    ) -> None:
        self.dispatcher = dispatcher
        self.hub = hub
        self.events = events
        self.clustered = clustered
        self.media = media
        self.dns = dns
        self.stats: Counter[str] = hub.stats
        self.store_queue: trio.MemorySendChannel[Persist] | None = None
        self._wall_offset = 0.0  # time.time() - trio.current_time(), kept by sync_clock
        self._timer_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    async def run(
        self,
        inbound: trio.MemoryReceiveChannel[Inbound],
        closed: trio.MemoryReceiveChannel[FlowClosed | SendFailed],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The core's tasks, and the parent of the media and DNS requests it makes."""
        self.sync_clock()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._core_loop, inbound)
            nursery.start_soon(self._flow_closed_loop, closed)
            nursery.start_soon(self._timer_loop)
            task_status.started()

    # --- the clock ------------------------------------------------------------------------

    def sync_clock(self) -> None:
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

    # --- what feeds the core --------------------------------------------------------------

    async def _core_loop(self, inbound: trio.MemoryReceiveChannel[Inbound]) -> None:
        """Take every queued message per wake-up: one task switch per burst, not per message."""
        overload = self.dispatcher.overload
        async for first in inbound:
            item: Inbound | None = first
            handled = 0
            while item is not None:
                now = trio.current_time()
                overload.observe("streams", now - item.queued_at, now)  # how far behind
                await self.handle_data(item.data, item.peer)
                handled += 1
                if handled >= CORE_BATCH:
                    break
                try:
                    item = inbound.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    item = None

    async def handle_data(self, data: bytes, peer: Peer) -> None:
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

    async def reject(self, data: bytes, error: SipParseError, peer: Peer) -> None:
        """A stream's framing failed (too big, no Content-Length): the core answers it."""
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

    async def committed(self, batch: list[Persist], ok: bool) -> None:
        """The store wrote (or failed to write) ``batch``: answer the REGISTERs waiting on it."""
        clock = self.clock()
        actions: list[Action] = []
        for item in batch:
            if item.txn_key is not None:
                actions += self.dispatcher.committed(item.txn_key, ok, clock)
        await self.execute(actions)

    # --- what the core asks for -----------------------------------------------------------

    async def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self.hub.send(action.data, action.peer, action.owner)
            elif isinstance(action, Persist):
                assert self.store_queue is not None
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
                    self.store_queue.send_nowait(action)  # no task switch per REGISTER
                except trio.WouldBlock:
                    await self.store_queue.send(action)  # the store is behind: wait for it
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
