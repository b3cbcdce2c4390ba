"""The activity log: one INFO line per registration change, per call and per refusal.

An operator tailing the log (or searching it in Loki) should see what Kamailio's
``xlog`` lines would show: who registered where, who called whom and how it ended,
and why a request was refused, each with its Call-ID, without turning on a SIP trace.
Each line is a plain sentence for the text log and carries its facts as fields for
the JSON log (app/logs.py): ``call_id``, ``method``, ``status``, ``reason``,
``peer``, ``transport``, ``flow``, ``aor``, ``ended_by`` ...

It listens to the event bus (app/events.py) and writes synchronously; refreshes of
a registration and dialog states already told by a call line are DEBUG. Refusals
can come in floods (a scanner), so at most ``REFUSALS_PER_SECOND`` are written per
second and the rest are counted in one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..core.calls import CallEvent, CallEventKind, Refused
from ..core.dialogs import DialogEvent, DialogEventKind, DialogInfo
from ..core.events import BindingEvent, BindingEventKind, Event
from ..core.types import Peer

__all__ = ["REFUSALS_PER_SECOND", "ActivityLog"]

registrar_log = logging.getLogger("siptrio.registrar")
calls_log = logging.getLogger("siptrio.calls")
refused_log = logging.getLogger("siptrio.refused")

REFUSALS_PER_SECOND = 50

_BINDING_WORDS = {
    BindingEventKind.ADDED: "registered",
    BindingEventKind.REFRESHED: "refreshed",
    BindingEventKind.REMOVED: "unregistered",
    BindingEventKind.EXPIRED: "registration expired",
    BindingEventKind.FLOW_CLOSED: "unregistered: its connection closed",
    BindingEventKind.REPLACED: "registration replaced by one on a newer connection",
}


def _where(peer: Peer) -> str:
    return f"{peer.transport.value}:{peer.address}"


class ActivityLog:
    """An event-bus listener (``EventBus.listen``) writing the activity lines."""

    def __init__(self, *, node: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.node = node  # in a cluster: other nodes' registrations are theirs to log
        self.clock = clock
        self._window = 0.0
        self._written = 0
        self._suppressed = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, BindingEvent):
            self._binding(event)
        elif isinstance(event, CallEvent):
            self._call(event)
        elif isinstance(event, DialogEvent):
            self._dialog(event)
        elif isinstance(event, Refused):
            self._refused(event)

    def _binding(self, event: BindingEvent) -> None:
        b = event.binding
        remote = b.node is not None and self.node is not None and b.node != self.node
        quiet = event.kind is BindingEventKind.REFRESHED or remote
        level = logging.DEBUG if quiet else logging.INFO
        if not registrar_log.isEnabledFor(level):
            return
        left = max(0, round(b.expires_at - time.time()))
        tail = (
            f" for {left} s"
            if event.kind in (BindingEventKind.ADDED, BindingEventKind.REFRESHED)
            else ""
        )
        registrar_log.log(
            level,
            "%s %s at %s over %s from %s:%d%s",
            b.aor,
            _BINDING_WORDS[event.kind],
            b.contact_uri,
            b.transport.value,
            b.source_host,
            b.source_port,
            tail,
            extra={
                "change": event.kind.value,
                "aor": b.aor,
                "contact": b.contact_uri,
                "transport": b.transport.value,
                "peer": f"{b.source_host}:{b.source_port}",
                "flow": b.flow_id,
                "expires": left,
                "user_agent": b.user_agent,
                "call_id": b.call_id,
                "node": b.node,
            },
        )

    def _call(self, e: CallEvent) -> None:
        if not calls_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "call": e.kind.value,
            "call_id": e.call_id,
            "method": "INVITE",
            "caller": e.caller,
            "callee": e.callee,
            "peer": e.caller_peer.address,
            "transport": e.caller_peer.transport.value,
            "flow": e.caller_peer.flow_id,
        }
        if e.callee_peer is not None:
            fields["callee_transport"] = e.callee_peer.transport.value
            fields["callee_peer"] = e.callee_peer.address
        if e.kind is CallEventKind.SETUP:
            calls_log.info(
                "call set up: %s -> %s from %s (%d branch%s), Call-ID %s",
                e.caller,
                e.callee,
                _where(e.caller_peer),
                e.branches,
                "" if e.branches == 1 else "es",
                e.call_id,
                extra={**fields, "branches": e.branches},
            )
            return
        after = round(e.at - e.started_at, 3)
        fields |= {"status": e.status, "reason": e.reason, "after": after}
        if e.kind is CallEventKind.ANSWERED:
            media = "bridged" if e.bridged else "direct"
            calls_log.info(
                "call answered: %s -> %s, %d %s after %.1f s (media %s), Call-ID %s",
                e.caller,
                e.callee,
                e.status,
                e.reason,
                after,
                media,
                e.call_id,
                extra={**fields, "media": media},
            )
            return
        calls_log.info(
            "call failed: %s -> %s, %d %s after %.1f s (ended by %s), Call-ID %s",
            e.caller,
            e.callee,
            e.status,
            e.reason,
            after,
            e.ended_by,
            e.call_id,
            extra={**fields, "ended_by": e.ended_by},
        )

    def _dialog(self, event: DialogEvent) -> None:
        d: DialogInfo = event.dialog
        answered = d.answered_at is not None
        if event.kind is not DialogEventKind.ENDED or not answered:
            # its set-up, answer and failure are the call lines' (CallEvent)
            calls_log.debug(
                "dialog %s %s: %s -> %s", d.id, event.kind.value, d.caller, d.callee,
                extra={"call_id": d.call_id, "dialog": d.id, "state": d.state.value},
            )  # fmt: skip
            return
        assert d.answered_at is not None
        talk = round(max(0.0, (d.ended_at or d.answered_at) - d.answered_at), 3)
        calls_log.info(
            "call ended: %s -> %s after %.1f s, ended by %s (%s), Call-ID %s",
            d.caller,
            d.callee,
            talk,
            d.ended_by,
            d.end_reason,
            d.call_id,
            extra={
                "call": "ended",
                "call_id": d.call_id,
                "caller": d.caller,
                "callee": d.callee,
                "dialog": d.id,
                "duration": talk,
                "ended_by": d.ended_by,
                "reason": d.end_reason,
                "status": 200,  # the call's final answer: it was answered
                "media": d.media,
                "transport": d.caller_transport,
                "callee_transport": d.callee_transport,
            },
        )

    def _refused(self, e: Refused) -> None:
        if not refused_log.isEnabledFor(logging.INFO):
            return
        now = self.clock()
        if now - self._window >= 1.0:
            if self._suppressed:
                refused_log.warning(
                    "%d more refused requests were not logged (over %d a second)",
                    self._suppressed,
                    REFUSALS_PER_SECOND,
                    extra={"suppressed": self._suppressed},
                )
            self._window, self._written, self._suppressed = now, 0, 0
        if self._written >= REFUSALS_PER_SECOND:
            self._suppressed += 1
            return
        self._written += 1
        aor = e.to_uri if e.method == "REGISTER" else e.from_uri
        refused_log.info(
            "refused %s from %s (%s -> %s): %d %s, Call-ID %s",
            e.method,
            _where(e.peer),
            e.from_uri,
            e.to_uri,
            e.status,
            e.reason,
            e.call_id,
            extra={
                "method": e.method,
                "status": e.status,
                "reason": e.reason,
                "call_id": e.call_id,
                "aor": aor,
                "from": e.from_uri,
                "to": e.to_uri,
                "peer": e.peer.address,
                "transport": e.peer.transport.value,
                "flow": e.peer.flow_id,
            },
        )
