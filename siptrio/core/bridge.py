"""The media bridge's bookkeeping: rtpengine requests in flight and what resumes them.

The proxy asks rtpengine (offer, answer, delete; commands made by media.py) through a
``MediaRequest`` action and carries on when the shell hands the reply back. This module
keeps the continuations by operation id and normalises failures (an rtpengine ``error``
reply is a failure like a timeout); the shell's client (transport/rtpengine.py) counts
and times the requests. The decisions of what to rewrite stay
with the forker (a branch's offer and answers) and the proxy (a late offer's ACK).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from .dialogs import Dialog
from .events import Action, MediaRequest
from .media import delete_command
from .types import Clock

__all__ = ["MediaBridge", "MediaResume", "sdp_bytes"]

MediaResume = Callable[[dict[str, Any], str | None, Clock], list[Action]]


def sdp_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value or "").encode("utf-8")


class MediaBridge:
    def __init__(self) -> None:
        self._ops: dict[int, MediaResume] = {}
        self._op_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._ops)

    def request(self, command: dict[str, Any], resume: MediaResume) -> list[Action]:
        op = next(self._op_ids)
        self._ops[op] = resume
        return [MediaRequest(op=op, command=command)]

    def forget(self, command: dict[str, Any]) -> list[Action]:
        """A request nobody waits for (a delete)."""
        return self.request(command, lambda reply, error, clock: [])

    def delete_dialog(self, d: Dialog) -> list[Action]:
        if not d.bridged:
            return []
        return self.forget(delete_command(call_id=d.call_id, from_tag=d.caller.tag))

    def result(
        self, op: int, reply: dict[str, Any] | None, error: str | None, clock: Clock
    ) -> list[Action]:
        """rtpengine answered (or failed to) request ``op``: resume what waited."""
        resume = self._ops.pop(op, None)
        if resume is None:
            return []
        if error is None and (reply or {}).get("result") != "ok":
            reply = reply or {}
            error = str(reply.get("error-reason") or f"rtpengine answered {reply.get('result')!r}")
        return resume(reply or {}, error, clock)
