"""Fan-out of core events to observers that must never slow the core down.

Each subscriber gets a bounded channel; one that falls behind is dropped (its
channel closed) instead of making ``publish`` wait. Listeners (the activity log, the
call records) are called at once instead: they must not miss an event, and they are
quick and never wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..core.events import Event

__all__ = ["EventBus"]

log = logging.getLogger("siptrio.events")


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        self._listeners: list[Callable[[Event], None]] = []
        self.dropped_subscribers = 0

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event, synchronously, from now on."""
        self._listeners.append(listener)

    def subscribe(self, limit: int = 1024) -> trio.MemoryReceiveChannel[Event]:
        send, receive = trio.open_memory_channel[Event](limit)
        self._subscribers.append(send)
        return receive

    def publish(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                # an observer's bug costs its own output, never the core loop
                log.exception("event listener %r failed on %r", listener, event)
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped_subscribers += 1
                self._subscribers.remove(send)
                send.close()
                log.warning("dropped an event subscriber that stopped reading")
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subscribers.remove(send)
