"""What the proxy's calls do to the dialog table: early and confirmed dialogs, their end.

The forker tells this module what happened to a request (a callee rang, answered, the
attempt ended, a BYE was answered); it turns that into dialog changes (core/dialogs.py),
the events observers see, and the rtpengine deletes a bridged call needs when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sip.message import Response
from .bridge import MediaBridge
from .dialogs import DialogEvent, Dialogs, Leg
from .events import Action, Publish
from .media import delete_command
from .types import Clock

if TYPE_CHECKING:
    from .branches import Branch, Context

__all__ = ["DialogTracker"]


def _publish(events: list[DialogEvent]) -> list[Action]:
    return [Publish(event=e) for e in events]


class DialogTracker:
    def __init__(self, dialogs: Dialogs, bridge: MediaBridge, *, record_route: bool) -> None:
        self.dialogs = dialogs
        self.bridge = bridge
        self.record_route = record_route  # without our Record-Route we see no dialog

    def rang(self, b: Branch, resp: Response, clock: Clock) -> list[Action]:
        """A 101-199 with a To tag: an early dialog."""
        return self._from_response(b, resp, confirmed=False, clock=clock)

    def answered(self, b: Branch, resp: Response, clock: Clock) -> list[Action]:
        """A 2xx to an INVITE: its dialog is confirmed, the other early ones are over."""
        ctx = b.ctx
        out = self._from_response(b, resp, confirmed=True, clock=clock)
        for d in self.dialogs.early_of(ctx.txn.key):
            if d.callee.tag != resp.to.tag:
                ended = self.dialogs.end(
                    d, by="callee", reason="answered elsewhere", now=clock.now, wall=clock.wall
                )
                out += _publish(ended)
        return out

    def attempt_over(self, ctx: Context, status: int, clock: Clock) -> list[Action]:
        """The caller got its final answer ``status``."""
        req = ctx.request
        if req.method != "INVITE" or req.to.tag is not None:
            return self.in_dialog_done(ctx, status, clock)
        out: list[Action] = []
        if any(b.bridged for b in ctx.branches) and status >= 300:
            out += self.bridge.forget(
                delete_command(call_id=req.call_id, from_tag=req.from_.tag or "")
            )
        by = "caller" if ctx.cancelled else "callee"
        for d in self.dialogs.early_of(ctx.txn.key):
            ended = self.dialogs.end(d, by=by, reason=f"{status}", now=clock.now, wall=clock.wall)
            out += _publish(ended)
        return out

    def in_dialog_done(self, ctx: Context, status: int, clock: Clock) -> list[Action]:
        """A BYE's final answer ends its dialog, whatever the answer was."""
        if ctx.request.method != "BYE" or ctx.dialog_key is None:
            return []
        d = self.dialogs.get(ctx.dialog_key)
        if d is None:
            return []
        by = "caller" if ctx.from_caller else "callee"
        ended = self.dialogs.end(d, by=by, reason=f"BYE ({status})", now=clock.now, wall=clock.wall)
        return _publish(ended) + self.bridge.delete_dialog(d)

    def _from_response(
        self, b: Branch, resp: Response, *, confirmed: bool, clock: Clock
    ) -> list[Action]:
        ctx = b.ctx
        req = ctx.request
        to_tag = resp.to.tag
        if to_tag is None or req.to.tag is not None or not self.record_route:
            return []
        assert b.peer is not None
        caller = Leg(uri=str(req.from_.uri), tag=req.from_.tag or "", peer=ctx.peer)
        callee = Leg(uri=str(req.to.uri), tag=to_tag, peer=b.peer)
        events = self.dialogs.upsert(
            call_id=req.call_id,
            caller=caller,
            callee=callee,
            confirmed=confirmed,
            now=clock.now,
            wall=clock.wall,
            invite_key=ctx.txn.key,
        )
        d = self.dialogs.get((req.call_id, caller.tag, to_tag))
        if d is not None and b.bridged:
            d.bridged = True
            if confirmed and b.late_offer:
                d.late_offer_pending = True
        return _publish(events)
