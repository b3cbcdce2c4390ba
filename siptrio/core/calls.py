"""Facts about call attempts and refused requests, for the log and the call records.

A dialog (dialogs.py) exists only once a callee answers with a tag; a call that
fails before that (404, 480, 486 without a tag, 487, 408) leaves no dialog, yet the
operator wants a line in the log and a call record for it. So the forker reports
every initial INVITE twice: when it sets out (``SETUP``, its first branch is
forwarded) and when the caller gets its final answer (``ANSWERED`` for the first
2xx, ``FAILED`` otherwise, with who ended it). What a call does after its answer is
the dialog's story (``DialogEvent``).

``Refused`` is a request the server answered itself with an error: the reason the
client was given, so an operator reading the log sees why without a SIP trace.
First digest challenges are no refusal (every client gets one); a wrong password is.
Nothing here does I/O: these are values the core publishes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .types import Clock, Peer

if TYPE_CHECKING:
    from .branches import Branch, Context

__all__ = ["CallEvent", "CallEventKind", "Refused", "call_setup", "told"]


class CallEventKind(enum.Enum):
    SETUP = "setup"  # an initial INVITE went to its first callee
    ANSWERED = "answered"  # the caller got a 2xx (the first one, when forked)
    FAILED = "failed"  # the caller got a final error answer


@dataclass(slots=True, kw_only=True)  # as the other events: not frozen, cheaper to make
class CallEvent:
    kind: CallEventKind
    call_id: str
    caller: str  # the From URI
    callee: str  # the To URI
    request_uri: str
    caller_peer: Peer  # where the INVITE came from
    callee_peer: Peer | None  # the branch that answered (or the last one tried); None: none
    started_at: float  # wall clock: the INVITE's arrival at the proxy
    at: float  # wall clock: this event
    status: int | None = None  # the final answer (None at SETUP)
    reason: str | None = None
    ended_by: str | None = None  # FAILED: "caller" (cancelled), "callee", "proxy"
    bridged: bool = False  # ANSWERED: the answering branch's media goes through rtpengine
    branches: int = 0  # SETUP: how many branches the INVITE forked to


@dataclass(slots=True, kw_only=True)
class Refused:
    """A request answered by the server itself with ``status`` >= 300."""

    method: str
    status: int
    reason: str
    call_id: str
    from_uri: str
    to_uri: str
    peer: Peer


# --- what the forker reports ------------------------------------------------------------


def call_setup(ctx: Context, branches: int, clock: Clock) -> CallEvent:
    """An initial INVITE sets out (its first branch is forwarded)."""
    ctx.started_at = clock.wall
    return _call_event(ctx, CallEventKind.SETUP, None, clock, branches=branches)


def told(
    ctx: Context,
    status: int,
    reason: str,
    branch: Branch | None,
    clock: Clock,
    *,
    local: bool = True,
) -> CallEvent | Refused | None:
    """The caller's final answer: an initial INVITE's outcome (once), or a refusal."""
    req = ctx.request
    if req.method != "INVITE" or req.to.tag is not None:
        if local and status >= 300 and status != 487:
            refused = Refused(
                method=req.method,
                status=status,
                reason=reason,
                call_id=req.call_id,
                from_uri=str(req.from_.uri),
                to_uri=str(req.to.uri),
                peer=ctx.peer,
            )
            return refused
        return None
    if ctx.reported:
        return None  # a forked call's second 2xx
    ctx.reported = True
    if status < 300:
        kind, by = CallEventKind.ANSWERED, None
    else:
        kind = CallEventKind.FAILED
        by = "caller" if ctx.cancelled else ("proxy" if local else "callee")
    if branch is None:
        branch = next((b for b in reversed(ctx.branches) if b.peer is not None), None)
    event = _call_event(ctx, kind, branch, clock, status=status, reason=reason, ended_by=by)
    return event


def _call_event(
    ctx: Context,
    kind: CallEventKind,
    branch: Branch | None,
    clock: Clock,
    *,
    status: int | None = None,
    reason: str | None = None,
    ended_by: str | None = None,
    branches: int = 0,
) -> CallEvent:
    req = ctx.request
    return CallEvent(
        kind=kind,
        call_id=req.call_id,
        caller=str(req.from_.uri),
        callee=str(req.to.uri),
        request_uri=ctx.txn.request.uri_text,
        caller_peer=ctx.peer,
        callee_peer=branch.peer if branch is not None else None,
        started_at=clock.wall if ctx.started_at is None else ctx.started_at,
        at=clock.wall,
        status=status,
        reason=reason,
        ended_by=ended_by,
        bridged=branch is not None and branch.bridged and kind is CallEventKind.ANSWERED,
        branches=branches,
    )
