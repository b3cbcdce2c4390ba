"""A SIP ladder (sequence diagram) of one dialog's messages, drawn as text like sngrep.

Columns are the parties: the caller's address, siptrio, the callee's address (and
any other peer that took part, in order of appearance). Each message is one row:
an arrow from sender to receiver labelled with its first line.
"""

from __future__ import annotations

import datetime

from .state import TraceMessage

__all__ = ["Ladder", "build_ladder"]

SERVER = "siptrio"
COLUMN = 26  # characters between two parties


class Ladder:
    def __init__(self, parties: list[str], rows: list[tuple[TraceMessage, int, int]]) -> None:
        self.parties = parties
        self.rows = rows  # (message, from column, to column)

    def render(self, width: int = 0) -> list[str]:
        """One header line, then one line per message."""
        n = len(self.parties)
        col = max(COLUMN, min(48, (width - 14) // max(1, n - 1))) if width and n > 1 else COLUMN
        lines = [" " * 13 + "".join(_fit(p, col) for p in self.parties)]
        for msg, a, b in self.rows:
            stamp = datetime.datetime.fromtimestamp(msg.time).strftime("%H:%M:%S.%f")[:12]
            cells = [" "] * (col * (n - 1) + 1)
            for i in range(n):
                cells[i * col] = "|"
            lo, hi = sorted((a, b))
            label = _label(msg)
            span = (hi - lo) * col
            arrow = "-" * (span - 1)
            arrow = (arrow[:-1] + ">") if b > a else ("<" + arrow[1:])
            text = label[: max(0, span - 3)]
            start = max(0, (span - 1 - len(text)) // 2)
            arrow = arrow[:start] + text + arrow[start + len(text) :]
            for i, ch in enumerate(arrow):
                cells[lo * col + 1 + i] = ch
            lines.append(f"{stamp} " + "".join(cells))
        return lines


def _fit(text: str, width: int) -> str:
    text = text if len(text) < width else text[: width - 2] + "~"
    return text.ljust(width)


def _label(msg: TraceMessage) -> str:
    first = msg.first_line
    if first.startswith("SIP/2.0 "):
        return first[8:]  # "180 Ringing"
    return first.split(" ", 1)[0]  # the method


def build_ladder(messages: list[TraceMessage]) -> Ladder:
    """Place siptrio in the middle: parties that sent first to it go left."""
    left: list[str] = []
    right: list[str] = []
    for m in messages:
        peer = f"{m.transport} {m.peer}"
        if peer in left or peer in right:
            continue
        # the first party we hear from is the caller (left); those we send to first, right
        (left if m.direction == "recv" and not left else right).append(peer)
    parties = [*left, SERVER, *right]
    index = {p: i for i, p in enumerate(parties)}
    server = index[SERVER]
    rows: list[tuple[TraceMessage, int, int]] = []
    for m in messages:
        other = index[f"{m.transport} {m.peer}"]
        rows.append((m, other, server) if m.direction == "recv" else (m, server, other))
    return Ladder(parties, rows)
