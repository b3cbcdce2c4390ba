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
