"""What the core tells the outside world: actions to perform and events to publish.

Actions are the sans-IO core's only way to have effects; the Trio shell performs
them. Events are facts for observers (the admin API, the control socket, the TUI);
nothing in the core waits for them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..sip.message import Message
from .location import Binding
from .types import Peer

__all__ = [
    "Action",
    "BindingEvent",
    "BindingEventKind",
    "Event",
    "Persist",
    "Publish",
    "Send",
]


class BindingEventKind(enum.Enum):
    ADDED = "added"
    REFRESHED = "refreshed"
    REMOVED = "removed"  # by the client (expires=0) or an operator
    EXPIRED = "expired"
    FLOW_CLOSED = "flow_closed"  # its connection went away
    REPLACED = "replaced"  # same +sip.instance/reg-id arrived on a newer flow


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingEvent:
    kind: BindingEventKind
    binding: Binding


Event = BindingEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Send ``data`` to ``peer`` (over its flow when it has one)."""

    data: bytes
    peer: Peer
    message: Message | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    event: Event


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Make binding changes durable, then perform ``then`` (the 200 OK waits for disk).

    ``txn_key`` lets the core replay the answer to retransmissions once committed.
    """

    upserts: tuple[Binding, ...] = ()
    deletes: tuple[tuple[str, str], ...] = ()  # (aor, key)
    then: tuple[Send, ...] = ()
    on_failure: tuple[Send, ...] = ()  # sent instead of ``then`` if the store fails
    txn_key: tuple[str, ...] | None = None


Action = Send | Publish | Persist
