"""Transaction plumbing: what the RFC 3261 state machines return, turned into actions.

Every transaction (sip/transaction.py) answers an event with sends and TU events. This
module owns the one loop that turns the sends into ``Send`` actions and hands each TU
event (a response, a timeout, the end) to the part of the core that started that
transaction; a transaction nobody claimed (the registrar's, an OPTIONS answer) is simply
forgotten when it ends. The dispatcher owns it; the proxy's forker claims its own.

Every answer a server transaction sends, and every response a client transaction
takes, passes here too (``respond``, ``on_response``): this is where they are counted
by method and status and where a transaction's time to its final answer is measured
(core/metrics.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable
from typing import Protocol

from ..sip.message import Response
from ..sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
    TxEvent,
    TxKind,
    TxSend,
    TxState,
)
from .events import Action, Send
from .metrics import KNOWN_METHODS, OTHER, CoreMetrics, method_label
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


_WAITING = (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING)  # no final answer yet


class Plumbing:
    def __init__(self, layer: TransactionLayer, metrics: CoreMetrics | None = None) -> None:
        self.layer = layer
        self.metrics = metrics if metrics is not None else CoreMetrics()
        self._users: dict[Hashable, TxUser] = {}

    def __len__(self) -> int:
        return len(self._users)

    def claim(self, key: Hashable, user: TxUser) -> None:
        """Send the events of transaction ``key`` to ``user`` until it ends."""
        self._users[key] = user

    def respond(
        self, txn: ServerTransaction, data: bytes, status: int, clock: Clock
    ) -> list[Action]:
        """Send an answer through its server transaction: counted if it goes out (not
        after a final one), and the first final answer timed from the request."""
        first_final = status >= 200 and txn.last_status < 200
        now = clock.now
        events = txn.respond(data, status, now)
        if events:
            # Every REGISTER's 200 comes here: Histogram.observe written out, and
            # method_label, save a fifth of what counting costs it.
            metrics = self.metrics
            method = txn.request.method  # (a fast-path REGISTER's is known unparsed)
            if method not in KNOWN_METHODS:
                method = OTHER
            metrics.responses_sent[(method, status)] += 1
            if first_final:
                took = now - txn.started
                h = metrics.server_transactions[method]
                h.counts[bisect_left(h.bounds, took)] += 1
                h.sum += took
                if status == 200 and method == "REGISTER":
                    h = metrics.register_answer
                    h.counts[bisect_left(h.bounds, took)] += 1
                    h.sum += took
        return self.actions(events, clock)

    def on_response(
        self, txn: ClientTransaction, response: Response, ack: bytes | None, clock: Clock
    ) -> list[Action]:
        """A response for one of our client transactions; its first final one timed."""
        waiting = txn.state in _WAITING
        now = clock.now
        events = txn.on_response(response, ack, now)
        if waiting and txn.state not in _WAITING:
            self.metrics.client_transactions[method_label(txn.method)].observe(now - txn.started)
        return self.actions(events, clock)

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
                if ev.kind is TxKind.TIMEOUT:
                    client = self.layer.clients.get(ev.key)
                    if client is not None:  # no answer (Timer B/F), or its send failed
                        took = clock.now - client.started
                        self.metrics.client_transactions[method_label(client.method)].observe(took)
                user = self._users.get(ev.key)
                if user is not None:
                    out += user.tx_event(ev, clock)
        return out
