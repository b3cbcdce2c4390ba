"""What the monitor knows, rebuilt from the control socket's snapshot and events.

Plain Python, no Textual: the app renders this model, and tests can feed it the
JSON lines the server sends and check the result without a terminal.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MonitorState", "TraceMessage", "parse_time"]

ENDED_VISIBLE = 10.0  # seconds an ended dialog stays in the live table
MAX_HISTORY = 500
MAX_TRACED_CALLS = 300
MAX_MESSAGES_PER_CALL = 200


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def binding_key(b: dict[str, Any]) -> str:
    return f"{b.get('aor')}|{b.get('contact')}"


@dataclass(frozen=True, slots=True)
class TraceMessage:
    time: float
    direction: str  # "recv" or "send", as siptrio sees it
    transport: str
    peer: str
    local: str
    first_line: str
    call_id: str | None
    text: str | None


@dataclass
class MonitorState:
    server: dict[str, Any] = field(default_factory=dict)
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)
    dialogs: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    trace: OrderedDict[str, list[TraceMessage]] = field(default_factory=OrderedDict)
    # In a cluster: this node's name, every live node, and the other nodes' dialogs and
    # flows as they last published them, keyed "node|id" (ids repeat across nodes).
    node: str | None = None
    nodes: list[str] = field(default_factory=list)
    remote_dialogs: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote_flows: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshot_at: float | None = None
    _last_counters: tuple[float, dict[str, int]] | None = None

    def reset(self) -> None:
        self.server.clear()
        self.bindings.clear()
        self.dialogs.clear()
        self.flows.clear()
        self.counters.clear()
        self.gauges.clear()
        self.rates.clear()
        self._take_cluster(None)
        self._last_counters = None

    # --- feeding ----------------------------------------------------------------------

    def apply(self, msg: dict[str, Any], now: float) -> str | None:
        """Fold one message from the server in; returns what changed (for redrawing)."""
        kind = msg.get("type")
        if kind == "snapshot":
            self.reset()
            self.server.update(msg.get("server") or {})
            for b in msg.get("bindings") or []:
                self.bindings[binding_key(b)] = b
            for d in msg.get("dialogs") or []:
                self._put_dialog(d, now)
            for f in msg.get("flows") or []:
                self.flows[f["id"]] = f
            self.gauges = dict(msg.get("gauges") or {})
            self._take_counters(msg.get("counters") or {}, now)
            self._take_cluster(msg.get("cluster"))
            self.snapshot_at = now
            return "snapshot"
        if kind == "binding":
            b = msg.get("binding") or {}
            if msg.get("event") in ("added", "refreshed"):
                self.bindings[binding_key(b)] = b
            else:
                self.bindings.pop(binding_key(b), None)
            return "bindings"
        if kind == "dialog":
            self._put_dialog(msg.get("dialog") or {}, now)
            return "dialogs"
        if kind == "flow":
            f = msg.get("flow") or {}
            if msg.get("event") == "closed":
                self.flows.pop(str(f.get("id")), None)
            elif f.get("id"):
                self.flows[f["id"]] = f
            return "flows"
        if kind == "counters":
            self.gauges = dict(msg.get("gauges") or self.gauges)
            self._take_counters(msg.get("counters") or {}, now)
            if msg.get("cluster") is not None:
                self._take_cluster(msg["cluster"])
                return "cluster"
            return "counters"
        if kind == "sip":
            self._trace(msg)
            return "trace"
        return None

    def _put_dialog(self, d: dict[str, Any], now: float) -> None:
        if not d.get("id"):
            return
        d = dict(d)
        d["_seen"] = now
        if d.get("state") == "terminated" and "_ended_seen" not in d:
            d["_ended_seen"] = now
        self.dialogs[d["id"]] = d

    def _take_cluster(self, view: dict[str, Any] | None) -> None:
        """The other nodes' view replaces the last one whole: there are no events for it."""
        if not view:
            self.node = None
            self.nodes = []
            self.remote_dialogs = {}
            self.remote_flows = {}
            return
        self.node = str(view.get("node") or "") or None
        self.nodes = [str(n) for n in view.get("nodes") or []]
        self.remote_dialogs = {
            f"{d.get('node')}|{d['id']}": d for d in view.get("dialogs") or [] if d.get("id")
        }
        self.remote_flows = {
            f"{f.get('node')}|{f['id']}": f for f in view.get("flows") or [] if f.get("id")
        }

    def _take_counters(self, counters: dict[str, int], now: float) -> None:
        if self._last_counters is not None:
            then, before = self._last_counters
            elapsed = now - then
            if elapsed > 0:
                self.rates = {
                    "in": (_messages_in(counters) - _messages_in(before)) / elapsed,
                    "out": (_messages_out(counters) - _messages_out(before)) / elapsed,
                }
        self.counters = dict(counters)
        self._last_counters = (now, dict(counters))

    def _trace(self, msg: dict[str, Any]) -> None:
        call_id = msg.get("call_id")
        if not call_id:
            return
        entry = TraceMessage(
            time=parse_time(msg.get("time")) or 0.0,
            direction=str(msg.get("direction", "")),
            transport=str(msg.get("transport", "")),
            peer=str(msg.get("peer", "")),
            local=str(msg.get("local", "")),
            first_line=str(msg.get("first_line", "")),
            call_id=call_id,
            text=msg.get("text"),
        )
        messages = self.trace.get(call_id)
        if messages is None:
            messages = self.trace[call_id] = []
            while len(self.trace) > MAX_TRACED_CALLS:
                self.trace.popitem(last=False)
        messages.append(entry)
        del messages[:-MAX_MESSAGES_PER_CALL]

    # --- housekeeping ------------------------------------------------------------------

    def retire_dialogs(self, now: float) -> bool:
        """Ended dialogs leave the live table after a while, for the history view."""
        moved = False
        for key, d in list(self.dialogs.items()):
            ended = d.get("_ended_seen")
            if ended is not None and now - ended >= ENDED_VISIBLE:
                self.history.appendleft(self.dialogs.pop(key))
                moved = True
        return moved

    def messages_for(self, call_id: str) -> list[TraceMessage]:
        return list(self.trace.get(call_id, ()))


def _messages_in(c: dict[str, int]) -> int:
    return sum(v for k, v in c.items() if k.startswith("requests_in.")) + c.get("responses_in", 0)


def _messages_out(c: dict[str, int]) -> int:
    return sum(v for k, v in c.items() if k.startswith(("responses_out.", "forwarded.")))
