"""Dialogs the proxy has record-routed: who is talking to whom, over what, since when.

A dialog is keyed by Call-ID and both tags (RFC 3261 section 12). The proxy uses it
to route in-dialog requests to the other leg (over that leg's flow when it has one,
never by resolving a browser's ``.invalid`` host) and to refuse in-dialog requests
for dialogs it never saw, so a forged Route cannot turn siptrio into a relay.
Ended dialogs linger briefly so late requests get a precise answer and observers
can show them.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass

from ..sip.timers import TimerHeap
from .types import Peer, Transport

__all__ = [
    "Dialog",
    "DialogEvent",
    "DialogEventKind",
    "DialogInfo",
    "DialogState",
    "Dialogs",
    "Leg",
]

LINGER = 32.0  # seconds an ended dialog stays visible and answerable


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class Leg:
    uri: str  # the party's address (From or To URI)
    tag: str
    peer: Peer  # where its messages come from and go to

    @property
    def transport(self) -> Transport:
        return self.peer.transport


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class DialogInfo:
    """An immutable snapshot for observers (admin API, control socket, TUI)."""

    id: str
    call_id: str
    state: DialogState
    caller: str
    callee: str
    caller_transport: str
    callee_transport: str
    caller_flow: str | None
    callee_flow: str | None
    created_at: float
    answered_at: float | None
    ended_at: float | None
    ended_by: str | None
    end_reason: str | None
    media: str = "direct"  # or "bridged" (through rtpengine)


class DialogEventKind(enum.Enum):
    CREATED = "created"
    STATE_CHANGED = "state_changed"
    ENDED = "ended"


@dataclass(slots=True, kw_only=True, unsafe_hash=True)
class DialogEvent:
    kind: DialogEventKind
    dialog: DialogInfo


@dataclass(eq=False, kw_only=True)
class Dialog:
    call_id: str
    caller: Leg
    callee: Leg
    state: DialogState
    created_at: float  # wall clock
    deadline: float  # monotonic: max duration while alive, linger once ended
    id: str = ""  # "d1", "d2" ... given by Dialogs
    answered_at: float | None = None
    ended_at: float | None = None
    ended_by: str | None = None
    end_reason: str | None = None
    failed_flow: str | None = None  # set when a leg's flow closed under it
    invite_key: object = None  # the INVITE server transaction that created it
    bridged: bool = False  # its media goes through rtpengine
    late_offer_pending: bool = False  # the 2xx carried the offer: the ACK's SDP is the answer

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.caller.tag, self.callee.tag)

    def info(self) -> DialogInfo:
        return DialogInfo(
            id=self.id,
            call_id=self.call_id,
            state=self.state,
            caller=self.caller.uri,
            callee=self.callee.uri,
            caller_transport=self.caller.transport.value,
            callee_transport=self.callee.transport.value,
            caller_flow=self.caller.peer.flow_id,
            callee_flow=self.callee.peer.flow_id,
            created_at=self.created_at,
            answered_at=self.answered_at,
            ended_at=self.ended_at,
            ended_by=self.ended_by,
            end_reason=self.end_reason,
            media="bridged" if self.bridged else "direct",
        )


class Dialogs:
    def __init__(self, *, max_duration: float = 43200.0) -> None:
        self.max_duration = max_duration
        self._by_key: dict[tuple[str, str, str], Dialog] = {}
        # Early dialogs by the INVITE transaction that made them: every final answer
        # asks for them, and a scan of all dialogs made that O(dialogs) per call.
        self._early: dict[object, dict[tuple[str, str, str], Dialog]] = {}
        # One deadline per dialog, its maximum duration while it runs, its linger time
        # once ended: expiry looks at what is due, not at every dialog each second. The
        # transactions' timer structure keeps them (two fixed lengths: two queues in
        # deadline order), so a dialog that ends takes its 12 hours with it at once.
        self._deadlines = TimerHeap()
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_key.values()))

    def find(
        self, call_id: str, from_tag: str | None, to_tag: str | None
    ) -> tuple[Dialog, bool] | None:
        """The dialog of an in-dialog request, and whether it comes from the caller."""
        if from_tag is None or to_tag is None:
            return None
        d = self._by_key.get((call_id, from_tag, to_tag))
        if d is not None:
            return d, True
        d = self._by_key.get((call_id, to_tag, from_tag))
        if d is not None:
            return d, False
        return None

    def get(self, key: tuple[str, str, str]) -> Dialog | None:
        return self._by_key.get(key)

    def get_by_id(self, dialog_id: str) -> Dialog | None:
        return next((d for d in self._by_key.values() if d.id == dialog_id), None)

    def upsert(
        self,
        *,
        call_id: str,
        caller: Leg,
        callee: Leg,
        confirmed: bool,
        now: float,
        wall: float,
        invite_key: object,
    ) -> list[DialogEvent]:
        key = (call_id, caller.tag, callee.tag)
        d = self._by_key.get(key)
        events: list[DialogEvent] = []
        if d is None:
            d = Dialog(
                id=f"d{next(self._ids)}",
                call_id=call_id,
                caller=caller,
                callee=callee,
                state=DialogState.EARLY,
                created_at=wall,
                deadline=now + self.max_duration,
                invite_key=invite_key,
            )
            self._by_key[key] = d
            self._due(d)
            self._early.setdefault(invite_key, {})[key] = d
            events.append(DialogEvent(kind=DialogEventKind.CREATED, dialog=d.info()))
        if confirmed and d.state is DialogState.EARLY:
            self._not_early(d)
            d.state = DialogState.CONFIRMED
            d.answered_at = wall
            d.deadline = now + self.max_duration
            self._due(d)
            events.append(DialogEvent(kind=DialogEventKind.STATE_CHANGED, dialog=d.info()))
        return events

    def end(self, d: Dialog, *, by: str, reason: str, now: float, wall: float) -> list[DialogEvent]:
        if d.state is DialogState.TERMINATED:
            return []
        if d.state is DialogState.EARLY:
            self._not_early(d)
        d.state = DialogState.TERMINATED
        d.ended_at = wall
        d.ended_by = by
        d.end_reason = reason
        d.deadline = now + LINGER
        self._due(d)
        return [DialogEvent(kind=DialogEventKind.ENDED, dialog=d.info())]

    def early_of(self, invite_key: object) -> list[Dialog]:
        return list(self._early.get(invite_key, {}).values())

    def _not_early(self, d: Dialog) -> None:
        early = self._early.get(d.invite_key)
        if early is not None:
            early.pop(d.key, None)
            if not early:
                del self._early[d.invite_key]

    def on_flow_closed(self, flow_id: str, now: float, wall: float) -> list[DialogEvent]:
        events: list[DialogEvent] = []
        for d in list(self._by_key.values()):
            if d.state is DialogState.TERMINATED:
                continue
            for side, leg in (("caller", d.caller), ("callee", d.callee)):
                if leg.peer.flow_id == flow_id:
                    d.failed_flow = flow_id
                    events += self.end(d, by=side, reason="flow closed", now=now, wall=wall)
                    break
        return events

    @property
    def deadline_entries(self) -> int:
        """Entries the deadlines hold (one per dialog)."""
        return self._deadlines.entries

    def _due(self, d: Dialog) -> None:
        lane = "linger" if d.state is DialogState.TERMINATED else "run"
        self._deadlines.cancel(d.key, "run")
        self._deadlines.start(d.deadline, d.key, lane)

    def expire(self, now: float, wall: float) -> list[DialogEvent]:
        events: list[DialogEvent] = []
        for owner, _lane in self._deadlines.pop_due(now):
            d = self._by_key.get(owner)  # type: ignore[call-overload]  # our keys
            if d is None:
                continue
            if d.state is DialogState.TERMINATED:
                del self._by_key[d.key]
            else:
                events += self.end(
                    d, by="timeout", reason="maximum dialog duration reached", now=now, wall=wall
                )
        return events
