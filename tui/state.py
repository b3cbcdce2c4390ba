"""What the monitor knows, rebuilt from the control socket's snapshot and events.

Plain Python, no Textual: the app renders this model, and tests can feed it the
JSON lines the server sends and check the result without a terminal.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MonitorState", "TraceMessage", "Transaction", "parse_time"]

ENDED_VISIBLE = 10.0  # seconds an ended dialog stays in the live table
MAX_HISTORY = 500
MAX_TRACED_CALLS = 300  # Call-IDs whose messages are kept (the Transactions view) ...
MAX_MESSAGES_PER_CALL = 200
MAX_TRACED_MESSAGES = 20_000  # ... and messages in all, whichever limit comes first
MAX_CALLS = 2000  # call attempts remembered for the history's start time and status


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
class Transaction:
    """What the Transactions view shows of one Call-ID, from its traced messages."""

    call_id: str
    first: float
    last: float
    method: str = ""  # of the first request seen (REGISTER, INVITE, MESSAGE ...)
    from_: str = ""
    to: str = ""
    status: int | None = None  # the last final answer to that method
    reason: str = ""
    messages: int = 0

    def take(self, m: TraceMessage) -> None:
        self.last = m.time
        self.messages += 1
        first = m.first_line
        if first.startswith("SIP/2.0 "):
            code, _, reason = first[8:].partition(" ")
            cseq = _header(m.text, "cseq", "")
            method = cseq.rpartition(" ")[2]
            mine = not self.method or not method or method == self.method
            if code.isdigit() and int(code) >= 200 and mine:
                self.status, self.reason = int(code), reason
        elif not self.method:
            self.method = first.partition(" ")[0]
            self.from_ = _uri(_header(m.text, "from", "f"))
            self.to = _uri(_header(m.text, "to", "t"))


def _header(text: str | None, name: str, compact: str) -> str:
    if not text:
        return ""
    for line in text.split("\r\n\r\n", 1)[0].split("\n")[1:]:
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() in (name, compact):
            return value.strip()
    return ""


def _uri(value: str) -> str:
    """The URI of a From/To value: ``"Bob" <sip:bob@x>;tag=1`` -> ``sip:bob@x``."""
    if "<" in value:
        return value.partition("<")[2].partition(">")[0]
    return value.partition(";")[0].strip()


@dataclass
class MonitorState:
    server: dict[str, Any] = field(default_factory=dict)
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)
    dialogs: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    # the server's state sizes (entries per table, heap and cache), as /metrics has them
    tables: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    trace: OrderedDict[str, list[TraceMessage]] = field(default_factory=OrderedDict)
    transactions: dict[str, Transaction] = field(default_factory=dict)  # by Call-ID, as trace
    # call attempts by Call-ID (call events): their start and final answer, for the history
    calls: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    _traced: int = 0  # messages in ``trace``
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
        self.tables.clear()
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
            self.tables = dict(msg.get("state") or {})
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
            self.tables = dict(msg.get("state") or self.tables)
            self._take_counters(msg.get("counters") or {}, now)
            if msg.get("cluster") is not None:
                self._take_cluster(msg["cluster"])
                return "cluster"
            return "counters"
        if kind == "sip":
            self._trace(msg)
            return "trace"
        if kind == "call":
            return self._call(msg.get("event"), msg.get("call") or {})
        return None

    def _call(self, event: object, call: dict[str, Any]) -> str | None:
        """A call attempt's setup, answer or failure; a failure goes to the history now
        (it has no dialog to retire), an answer waits for its dialog's end."""
        call_id = call.get("call_id")
        if not call_id:
            return None
        known = self.calls.get(call_id, {})
        self.calls[call_id] = {**known, **{k: v for k, v in call.items() if v is not None}}
        self.calls.move_to_end(call_id)
        while len(self.calls) > MAX_CALLS:
            self.calls.popitem(last=False)
        if event != "failed":
            return "calls"
        c = self.calls[call_id]
        self.history.appendleft(
            {
                "id": f"call:{call_id}",
                "call_id": call_id,
                "caller": c.get("caller"),
                "callee": c.get("callee"),
                "caller_transport": c.get("caller_transport"),
                "callee_transport": c.get("callee_transport"),
                "started_at": c.get("started_at"),
                "ended_at": c.get("at"),
                "status": c.get("status"),
                "reason": c.get("reason"),
                "ended_by": c.get("ended_by"),
                "media": c.get("media"),
                "state": "failed",
            }
        )
        return "history"

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
            self.transactions[call_id] = Transaction(call_id, entry.time, entry.time)
        messages.append(entry)
        self.transactions[call_id].take(entry)
        self._traced += 1
        if len(messages) > MAX_MESSAGES_PER_CALL:
            del messages[0]
            self._traced -= 1
        while len(self.trace) > MAX_TRACED_CALLS or self._traced > MAX_TRACED_MESSAGES:
            gone, dropped = self.trace.popitem(last=False)
            self.transactions.pop(gone, None)
            self._traced -= len(dropped)

    # --- housekeeping ------------------------------------------------------------------

    def retire_dialogs(self, now: float) -> bool:
        """Ended dialogs leave the live table after a while, for the history view, with
        their call's start and final answer. A dialog that was never answered is there
        already as its call's failure (when the server sends call events)."""
        moved = False
        for key, d in list(self.dialogs.items()):
            ended = d.get("_ended_seen")
            if ended is not None and now - ended >= ENDED_VISIBLE:
                d = self.dialogs.pop(key)
                call = self.calls.get(str(d.get("call_id")))
                if call is not None and d.get("answered_at") is None:
                    continue  # its call's "failed" event is in the history
                d = dict(d)
                d["started_at"] = (call or {}).get("started_at") or d.get("created_at")
                if d.get("answered_at") is not None:
                    d.setdefault("status", (call or {}).get("status", 200))
                    d.setdefault("reason", (call or {}).get("reason", "OK"))
                self.history.appendleft(d)
                moved = True
        return moved

    def recent_transactions(self) -> list[Transaction]:
        """Every traced Call-ID, in the order they began."""
        return sorted(self.transactions.values(), key=lambda t: t.first)

    def flow_bindings(self, flow_id: str) -> list[dict[str, Any]]:
        """The bindings made over a flow, as the bindings now are (a flow's own list
        is only as new as its last flow event)."""
        return [b for b in self.bindings.values() if b.get("flow") == flow_id]

    def messages_for(self, call_id: str) -> list[TraceMessage]:
        return list(self.trace.get(call_id, ()))


def _messages_in(c: dict[str, int]) -> int:
    return sum(v for k, v in c.items() if k.startswith("requests_in.")) + c.get("responses_in", 0)


def _messages_out(c: dict[str, int]) -> int:
    return sum(v for k, v in c.items() if k.startswith(("responses_out.", "forwarded.")))
