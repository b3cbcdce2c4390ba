"""Load shedding: which new work to refuse while the server is behind, sans-IO.

An overloaded proxy that takes every new call serves none of them well: the queues
fill, answers come late, every UA retransmits, and the retransmissions are more load.
What keeps the work flowing is refusing new work early and cheaply, and serving first
the work that finishes what was already accepted.

The shell measures how long messages waited before the core got to them (for a UDP
socket, the age of the oldest datagram in its queue when its receive loop wakes up,
from the kernel's receive timestamp; for streams, the time a message spent in the
core's channel) and feeds it in with ``observe(queue, delay, now)``. What counts is a
*standing* queue, as CoDel (RFC 8289) has it: the least delay a queue showed over a
whole ``WINDOW`` (200 ms: CoDel's 100 ms is for networks, SIP's clock is T1, 500 ms).
A burst, or a pause of the process (a collection, another program on the CPU), makes
a queue that drains by itself and refuses nothing; a queue that does not drain for a
window means more arrives than the server can serve. The longest standing delay of
any queue decides, and a fall shows at once. While it is over ``target``, requests
that start something new are refused with 503 and Retry-After before a transaction
is made for them, by class, lowest first:

- ``NEW``: INVITE and every other request outside a dialog (MESSAGE, OPTIONS,
  SUBSCRIBE ...): refused from ``target`` on;
- ``NEW_REGISTER``: a REGISTER for an address of record with no binding: from twice it;
- ``REFRESH``: a REGISTER for one that has bindings: from four times it;
- ``ESSENTIAL``: responses, ACK, CANCEL, BYE and every request inside a dialog: never
  refused, so the calls already accepted finish.

A level is kept until the delay falls under half its threshold (no flapping per
message); a queue that measured nothing for ``STALE`` seconds no longer counts (an
idle server measures nothing). A refusal costs a parse and a short answer, a
twentieth of what a call costs, so at twice the load the server can take most of
its time still goes to calls it completes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable
from dataclasses import dataclass

from ..sip.message import Request
from ..sip.uri import SipUri
from .location import Location

__all__ = ["Overload", "OverloadConfig", "Priority", "priority_of"]

STALE = 1.0  # seconds without a measurement after which a queue no longer counts
WINDOW = 0.2  # seconds a queue must stay behind before it counts as standing


class Priority(enum.IntEnum):
    """Request classes, most important first; a higher value is refused sooner."""

    ESSENTIAL = 0
    REFRESH = 1
    NEW_REGISTER = 2
    NEW = 3


# how many times ``target`` the delay must reach before a class is refused
_FACTORS = ((Priority.NEW, 1.0), (Priority.NEW_REGISTER, 2.0), (Priority.REFRESH, 4.0))


@dataclass(frozen=True, kw_only=True)
class OverloadConfig:
    target: float = 0.1  # seconds of standing queueing delay from which new calls are refused
    retry_after: int = 5  # seconds, in the 503's Retry-After


def priority_of(request: Request, location: Location) -> Priority:
    method = request.method
    if method in ("ACK", "CANCEL", "BYE") or request.to.tag is not None:
        return Priority.ESSENTIAL
    if method == "REGISTER":
        uri = request.to.uri
        if isinstance(uri, SipUri) and location.bindings(uri.aor()):
            return Priority.REFRESH
        return Priority.NEW_REGISTER
    return Priority.NEW


@dataclass
class _Queue:
    standing: float = 0.0  # the least delay of the last whole window, or less since
    window_min: float = math.inf
    window_end: float = -math.inf
    measured_at: float = -math.inf


class Overload:
    def __init__(self, config: OverloadConfig | None = None) -> None:
        self.config = config or OverloadConfig()
        self._queues: dict[Hashable, _Queue] = {}
        self.delay = 0.0  # the longest standing delay of the queues measured lately
        self.measured_at = -math.inf
        # the least important class still served: everything above it is refused
        self.level = Priority.NEW

    def observe(self, queue: Hashable, delay: float, now: float) -> None:
        """A message of ``queue`` (a UDP socket, the streams' channel) waited ``delay``."""
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = _Queue()
        delay = max(0.0, delay)
        if now >= q.window_end:
            if q.window_min < math.inf:
                q.standing = q.window_min  # it did not drain below this for a window
            q.window_min = delay
            q.window_end = now + WINDOW
        elif delay < q.window_min:
            q.window_min = delay
        if delay < q.standing:
            q.standing = delay  # draining shows at once
        q.measured_at = self.measured_at = now
        self.delay = max(
            (x.standing for x in self._queues.values() if now - x.measured_at <= STALE),
            default=0.0,
        )
        self.level = self._level()

    def _level(self) -> Priority:
        target = self.config.target
        delay = self.delay
        level = Priority.NEW
        for p, factor in _FACTORS:
            limit = factor * target
            # refused from its threshold on; once refused, until under half of it
            refused = delay > limit or (self.level < p and delay > limit / 2)
            if refused:
                level = Priority(p - 1)
        return level

    def refuses(self, priority: Priority, now: float) -> bool:
        if priority <= self.level:
            return False
        if now - self.measured_at > STALE:
            self.level = Priority.NEW
            return False
        return True

    def shedding(self, now: float) -> bool:
        """Some class is being refused (the REGISTER fast path steps aside then)."""
        return self.level < Priority.NEW and now - self.measured_at <= STALE
