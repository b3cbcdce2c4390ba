"""Transaction plumbing: what the RFC 3261 state machines return, turned into actions.

Every transaction (sip/transaction.py) answers an event with sends and TU events. This
module owns the one loop that turns the sends into ``Send`` actions and hands each TU
event (a response, a timeout, the end) to the part of the core that started that
transaction; a transaction nobody claimed (the registrar's, an OPTIONS answer) is simply
forgotten when it ends. The dispatcher owns it; the proxy's forker claims its own.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from ..sip.transaction import TransactionLayer, TxEvent, TxKind, TxSend
from .events import Action, Send
from .types import Clock, Peer

__all__ = ["Plumbing", "TxUser"]


class TxUser(Protocol):
    """A part of the core that started transactions and wants their events."""

    def tx_event(self, event: TxEvent, clock: Clock) -> list[Action]:
        """A response or a timeout for one of its transactions."""
        ...

    def tx_ended(self, key: Hashable) -> None:
        """One of its transactions terminated (it is forgotten right after)."""
        ...


class Plumbing:
    def __init__(self, layer: TransactionLayer) -> None:
        self.layer = layer
        self._users: dict[Hashable, TxUser] = {}

    def __len__(self) -> int:
        return len(self._users)

    def claim(self, key: Hashable, user: TxUser) -> None:
        """Send the events of transaction ``key`` to ``user`` until it ends."""
        self._users[key] = user

    def actions(self, events: list[TxSend | TxEvent], clock: Clock) -> list[Action]:
        out: list[Action] = []
        for ev in events:
            if isinstance(ev, TxSend):
                dest = ev.dest
                assert isinstance(dest, Peer)
                out.append(Send(data=ev.data, peer=dest, owner=ev.owner))
            elif ev.kind is TxKind.TERMINATED:
                user = self._users.pop(ev.key, None)
                if user is not None:
                    user.tx_ended(ev.key)
                self.layer.forget(ev.key)
            else:
                user = self._users.get(ev.key)
                if user is not None:
                    out += user.tx_event(ev, clock)
        return out
