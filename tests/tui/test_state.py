"""The monitor's model and ladder, fed the JSON lines the control socket sends."""

from __future__ import annotations

from tui.ladder import build_ladder
from tui.state import ENDED_VISIBLE, MonitorState


def binding(user: str, event: str = "added") -> dict[str, object]:
    return {
        "type": "binding",
        "event": event,
        "binding": {"aor": f"sip:{user}@x", "contact": f"sip:{user}@h"},
    }


def test_snapshot_then_events() -> None:
    s = MonitorState()
    s.apply({"type": "snapshot", "server": {"version": "1"}, "bindings": [], "dialogs": [], "flows": [],
             "gauges": {}, "counters": {"requests_in.INVITE": 1}}, 0)  # fmt: skip
    assert s.apply(binding("a"), 1) == "bindings" and list(s.bindings) == ["sip:a@x|sip:a@h"]
    s.apply(binding("a", "refreshed"), 2)
    assert len(s.bindings) == 1
    s.apply(binding("a", "expired"), 3)
    assert s.bindings == {}
    s.apply({"type": "flow", "event": "opened", "flow": {"id": "ws-1"}}, 4)
    assert "ws-1" in s.flows
    s.apply({"type": "flow", "event": "closed", "flow": {"id": "ws-1"}}, 5)
    assert s.flows == {}


def test_rates_from_counter_deltas() -> None:
    s = MonitorState()
    s.apply(
        {"type": "counters", "counters": {"requests_in.INVITE": 10, "responses_out.2xx": 5}}, 100
    )
    s.apply(
        {
            "type": "counters",
            "counters": {"requests_in.INVITE": 30, "responses_out.2xx": 15, "responses_in": 10},
        },
        102,
    )
    assert s.rates == {"in": 15.0, "out": 5.0}


def test_ended_dialogs_move_to_history() -> None:
    s = MonitorState()
    s.apply({"type": "dialog", "event": "created", "dialog": {"id": "d1", "state": "early"}}, 0)
    s.apply({"type": "dialog", "event": "ended", "dialog": {"id": "d1", "state": "terminated"}}, 10)
    assert not s.retire_dialogs(10 + ENDED_VISIBLE - 1)
    assert s.retire_dialogs(10 + ENDED_VISIBLE)
    assert s.dialogs == {} and [d["id"] for d in s.history] == ["d1"]


def test_a_new_snapshot_replaces_everything() -> None:
    s = MonitorState()
    s.apply(binding("a"), 0)
    s.apply({"type": "snapshot", "bindings": [{"aor": "sip:b@x", "contact": "sip:b@h"}]}, 1)
    assert list(s.bindings) == ["sip:b@x|sip:b@h"]


def sip(direction: str, peer: str, first: str, t: float) -> dict[str, object]:
    return {"type": "sip", "time": f"2026-01-01T00:00:{t:06.3f}Z", "direction": direction, "transport": "udp",
            "peer": peer, "local": "127.0.0.1:5060", "first_line": first, "call_id": "c1"}  # fmt: skip


def test_ladder_puts_the_caller_left_and_the_callee_right() -> None:
    s = MonitorState()
    for m in (
        sip("recv", "10.0.0.1:5062", "INVITE sip:b@x SIP/2.0", 1),
        sip("send", "10.0.0.1:5062", "SIP/2.0 100 Trying", 1.1),
        sip("send", "10.0.0.2:5070", "INVITE sip:b@h SIP/2.0", 1.2),
        sip("recv", "10.0.0.2:5070", "SIP/2.0 200 OK", 2),
    ):
        s.apply(m, 0)
    ladder = build_ladder(s.messages_for("c1"))
    assert ladder.parties == ["udp 10.0.0.1:5062", "siptrio", "udp 10.0.0.2:5070"]
    lines = ladder.render()
    assert "INVITE" in lines[1] and lines[1].index(">") > lines[1].index("INVITE")  # left to right
    assert "100 Trying" in lines[2] and "<" in lines[2]
    assert "200 OK" in lines[4] and lines[4].index("<") < lines[4].index("200 OK")  # right to left


def cluster_view(*dialog_ids: str) -> dict[str, object]:
    return {
        "node": "a",
        "nodes": ["a", "b"],
        "dialogs": [{"id": i, "node": "b", "state": "early"} for i in dialog_ids],
        "flows": [{"id": "ws-1", "node": "b"}],
    }


def test_other_nodes_come_from_the_cluster_view_and_are_replaced_whole() -> None:
    s = MonitorState()
    s.apply({"type": "snapshot", "dialogs": [{"id": "d1", "state": "early"}],
             "flows": [{"id": "ws-1"}], "cluster": cluster_view("d1", "d2")}, 0)  # fmt: skip
    assert (s.node, s.nodes) == ("a", ["a", "b"])
    # ids repeat across nodes: ours by id, theirs by node and id
    assert list(s.dialogs) == ["d1"] and list(s.remote_dialogs) == ["b|d1", "b|d2"]
    assert list(s.flows) == ["ws-1"] and list(s.remote_flows) == ["b|ws-1"]
    assert s.apply({"type": "counters", "counters": {}, "cluster": cluster_view("d2")}, 1) == (
        "cluster"
    )
    assert list(s.remote_dialogs) == ["b|d2"]  # d1 ended on b: gone from its view
    assert s.apply({"type": "counters", "counters": {}}, 2) == "counters"
    assert list(s.remote_dialogs) == ["b|d2"]
    # a single node's snapshot (after a reconnect) has no cluster: nothing of b is left
    s.apply({"type": "snapshot", "cluster": None}, 3)
    assert (s.node, s.nodes, s.remote_dialogs, s.remote_flows) == (None, [], {}, {})


def traced(call_id: str, t: float, first: str, cseq: str = "1 INVITE") -> dict[str, object]:
    text = f'{first}\r\nFrom: "A" <sip:a@x>;tag=1\r\nt: <sip:b@x>\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n\r\n'
    return {"type": "sip", "time": f"2026-01-01T00:00:{t:06.3f}Z", "direction": "recv",
            "first_line": first, "call_id": call_id, "text": text}  # fmt: skip


def test_transactions_summarise_each_call_id_and_stay_bounded() -> None:
    import tui.state as state

    s = MonitorState()
    s.apply(traced("r1", 1, "REGISTER sip:x SIP/2.0", "1 REGISTER"), 0)
    s.apply(traced("r1", 1.1, "SIP/2.0 401 Unauthorized", "1 REGISTER"), 0)
    s.apply(traced("r1", 1.2, "REGISTER sip:x SIP/2.0", "2 REGISTER"), 0)
    s.apply(traced("r1", 1.3, "SIP/2.0 200 OK", "2 REGISTER"), 0)
    s.apply(traced("i1", 2, "INVITE sip:b@x SIP/2.0"), 0)
    s.apply(traced("i1", 2.1, "SIP/2.0 404 Not Found"), 0)
    s.apply(traced("i1", 2.2, "ACK sip:b@x SIP/2.0", "1 ACK"), 0)
    r1, i1 = s.recent_transactions()
    assert (r1.method, r1.status, r1.reason, r1.messages) == ("REGISTER", 200, "OK", 4)
    assert (i1.method, i1.status, i1.from_, i1.to) == ("INVITE", 404, "sip:a@x", "sip:b@x")
    old = (state.MAX_TRACED_CALLS, state.MAX_TRACED_MESSAGES)
    try:
        state.MAX_TRACED_CALLS, state.MAX_TRACED_MESSAGES = 100, 10
        for n in range(12):
            s.apply(traced(f"o{n}", 3 + n, "OPTIONS sip:x SIP/2.0", "1 OPTIONS"), 0)
    finally:
        state.MAX_TRACED_CALLS, state.MAX_TRACED_MESSAGES = old
    assert [t.call_id for t in s.recent_transactions()] == [f"o{n}" for n in range(2, 12)]
    assert set(s.trace) == set(s.transactions) and sum(map(len, s.trace.values())) == 10


def test_failed_calls_go_to_the_history_and_answered_ones_with_their_start() -> None:
    s = MonitorState()
    call = {"call_id": "c1", "caller": "sip:a@x", "started_at": "2026-01-01T00:00:01.000Z"}
    s.apply({"type": "call", "event": "setup", "call": call}, 0)
    s.apply(
        {"type": "call", "event": "answered", "call": {**call, "status": 200, "reason": "OK"}}, 1
    )
    s.apply({"type": "call", "event": "failed", "call": {"call_id": "c2", "status": 486, "reason": "Busy Here",
                                                         "ended_by": "callee"}}, 2)  # fmt: skip
    assert [h["status"] for h in s.history] == [486]
    # the early dialog of c2 was ended by its failure: not twice in the history
    s.apply({"type": "dialog", "event": "ended", "dialog": {"id": "d2", "call_id": "c2",
             "state": "terminated", "answered_at": None}}, 3)  # fmt: skip
    s.apply({"type": "dialog", "event": "ended", "dialog": {"id": "d1", "call_id": "c1",
             "state": "terminated", "answered_at": "2026-01-01T00:00:02.000Z",
             "created_at": "2026-01-01T00:00:01.500Z"}}, 3)  # fmt: skip
    assert s.retire_dialogs(3 + ENDED_VISIBLE)
    assert [(h["call_id"], h["status"]) for h in s.history] == [("c1", 200), ("c2", 486)]
    assert s.history[0]["started_at"] == "2026-01-01T00:00:01.000Z"  # the INVITE's, not the 1xx's


def test_a_flows_bindings_are_the_bindings_made_over_it() -> None:
    s = MonitorState()
    s.apply({"type": "flow", "event": "opened", "flow": {"id": "ws-1", "bindings": []}}, 0)
    s.apply(
        {
            "type": "binding",
            "event": "added",
            "binding": {"aor": "sip:a@x", "contact": "c", "flow": "ws-1"},
        },
        1,
    )
    assert [b["aor"] for b in s.flow_bindings("ws-1")] == ["sip:a@x"]
    s.apply(
        {
            "type": "binding",
            "event": "removed",
            "binding": {"aor": "sip:a@x", "contact": "c", "flow": "ws-1"},
        },
        2,
    )
    assert s.flow_bindings("ws-1") == []


def test_state_sizes_come_with_the_snapshot_and_every_counters_message() -> None:
    s = MonitorState()
    s.apply({"type": "snapshot", "state": {"transactions": 4, "timer_heap": 9}}, 0)
    assert s.tables == {"transactions": 4, "timer_heap": 9}
    s.apply({"type": "counters", "counters": {}, "state": {"transactions": 0}}, 1)
    assert s.tables == {"transactions": 0}
    s.apply({"type": "counters", "counters": {}}, 2)  # an older server: keep what we had
    assert s.tables == {"transactions": 0}
