"""Fan-out of core events to observers that must never slow the core down.

Each subscriber gets a bounded channel; one that falls behind is dropped (its
channel closed) instead of making ``publish`` wait.
"""

from __future__ import annotations

import logging

import trio

from ..core.events import Event

__all__ = ["EventBus"]

log = logging.getLogger("siptrio.events")


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[trio.MemorySendChannel[Event]] = []
        self.dropped_subscribers = 0

    def subscribe(self, limit: int = 1024) -> trio.MemoryReceiveChannel[Event]:
        send, receive = trio.open_memory_channel[Event](limit)
        self._subscribers.append(send)
        return receive

    def publish(self, event: Event) -> None:
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
