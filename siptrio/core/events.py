"""What the core tells the outside world: actions to perform and events to publish.

Actions are the sans-IO core's only way to have effects; the Trio shell performs
them. Events are facts for observers (the admin API, the control socket, the TUI);
nothing in the core waits for them.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..sip.message import Message
from .calls import CallEvent, Refused
from .dialogs import DialogEvent
from .location import Binding
from .types import Peer

__all__ = [
    "Action",
    "BindingEvent",
    "BindingEventKind",
    "Event",
    "FlowValid",
    "MediaRequest",
    "Persist",
    "Publish",
    "Resolve",
    "Send",
]


class BindingEventKind(enum.Enum):
    ADDED = "added"
    REFRESHED = "refreshed"
    REMOVED = "removed"  # by the client (expires=0) or an operator
    EXPIRED = "expired"
    FLOW_CLOSED = "flow_closed"  # its connection went away
    REPLACED = "replaced"  # same +sip.instance/reg-id arrived on a newer flow


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class BindingEvent:
    kind: BindingEventKind
    binding: Binding


Event = BindingEvent | DialogEvent | CallEvent | Refused


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class Send:
    """Send ``data`` to ``peer`` (over its flow when it has one).

    ``owner`` names the client transaction that sent it, so that a transport failure
    can be reported back to it (RFC 3261 section 8.1.3.1).
    """

    data: bytes
    peer: Peer
    message: Message | None = field(default=None, compare=False)
    owner: Hashable = None


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class Publish:
    event: Event


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class Persist:
    """Make binding changes durable; then the shell calls ``Dispatcher.committed``.

    The REGISTER's answer waits in the core under ``txn_key`` until the store has
    committed: a 200 OK is never sent for a binding a crash could still lose.
    """

    upserts: tuple[Binding, ...] = ()
    deletes: tuple[tuple[str, str], ...] = ()  # (aor, key)
    txn_key: Hashable = None


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class MediaRequest:
    """Ask rtpengine ``command``; the shell answers with ``Dispatcher.media_result(op, ...)``."""

    op: int
    command: dict[str, Any] = field(compare=False)


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class Resolve:
    """Ask the DNS for ``qtype`` records of ``name``; the shell answers with
    ``Dispatcher.resolved(op, answer)`` (an ``rfc3263.Answer``)."""

    op: int
    name: str
    qtype: str  # "NAPTR", "SRV", "A" or "AAAA"


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class FlowValid:
    """A valid SIP message arrived on this flow: its first-message guard may stand down
    (a connection that sends only keep-alives or garbage is closed, STYLE's slowloris)."""

    flow_id: str


Action = Send | Publish | Persist | MediaRequest | Resolve | FlowValid
