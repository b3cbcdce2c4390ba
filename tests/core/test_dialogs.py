"""The dialog table: keys in both directions, flow failure, maximum duration, linger."""

from __future__ import annotations

from support.peers import UDP

from siptrio.core.dialogs import LINGER, DialogEventKind, Dialogs, DialogState, Leg
from siptrio.core.types import Peer, Transport

WS = Peer(
    transport=Transport.WS,
    host="127.0.0.1",
    port=40000,
    local_host="127.0.0.1",
    local_port=8080,
    flow_id="ws-1",
)


def table(max_duration: float = 100.0) -> Dialogs:
    d = Dialogs(max_duration=max_duration)
    events = d.upsert(
        call_id="c1",
        caller=Leg(uri="sip:a@x", tag="ta", peer=WS),
        callee=Leg(uri="sip:b@x", tag="tb", peer=UDP),
        confirmed=False,
        now=0,
        wall=1000,
        invite_key="k",
    )
    assert [e.kind for e in events] == [DialogEventKind.CREATED]
    return d


def test_found_from_either_side() -> None:
    d = table()
    dialog, from_caller = d.find("c1", "ta", "tb")  # type: ignore[misc]
    assert from_caller and dialog.state is DialogState.EARLY
    dialog2, from_caller2 = d.find("c1", "tb", "ta")  # type: ignore[misc]
    assert dialog2 is dialog and not from_caller2
    assert d.find("c1", "ta", "zz") is None and d.find("c1", None, "tb") is None


def test_confirm_then_maximum_duration_then_linger() -> None:
    d = table(max_duration=100)
    events = d.upsert(
        call_id="c1",
        caller=Leg(uri="sip:a@x", tag="ta", peer=WS),
        callee=Leg(uri="sip:b@x", tag="tb", peer=UDP),
        confirmed=True,
        now=10,
        wall=1010,
        invite_key="k",
    )
    assert [e.kind for e in events] == [DialogEventKind.STATE_CHANGED]
    assert events[0].dialog.answered_at == 1010
    assert d.expire(109, 1109) == []
    (ended,) = d.expire(110, 1110)
    assert ended.kind is DialogEventKind.ENDED and ended.dialog.ended_by == "timeout"
    assert len(d) == 1  # lingers, visible and answerable
    assert d.expire(110 + LINGER, 0) == [] and len(d) == 0


def test_flow_closing_ends_the_dialog_and_remembers_why() -> None:
    d = table()
    (ended,) = d.on_flow_closed("ws-1", 5, 1005)
    assert ended.dialog.ended_by == "caller" and ended.dialog.end_reason == "flow closed"
    dialog, _ = d.find("c1", "tb", "ta")  # type: ignore[misc]
    assert dialog.failed_flow == "ws-1"
    assert d.on_flow_closed("ws-1", 6, 1006) == []  # already ended


def test_early_dialogs_of_an_invite_leave_the_list_when_confirmed_or_ended() -> None:
    d = table()  # c1 / ta / tb, early, from INVITE "k"

    def early(tag: str, invite_key: str, *, confirmed: bool = False) -> None:
        d.upsert(
            call_id="c1" if invite_key == "k" else "c2",
            caller=Leg(uri="sip:a@x", tag="ta", peer=WS),
            callee=Leg(uri="sip:b@x", tag=tag, peer=UDP),
            confirmed=confirmed,
            now=1,
            wall=1001,
            invite_key=invite_key,
        )

    early("tc", "k")  # a second fork of the same INVITE
    early("td", "other")
    assert [x.callee.tag for x in d.early_of("k")] == ["tb", "tc"]
    assert [x.callee.tag for x in d.early_of("other")] == ["td"]

    early("tb", "k", confirmed=True)  # the 200 from the first fork
    assert [x.callee.tag for x in d.early_of("k")] == ["tc"]
    (fork,) = d.early_of("k")
    d.end(fork, by="proxy", reason="another fork answered", now=2, wall=1002)
    assert d.early_of("k") == []
    assert [x.callee.tag for x in d.early_of("other")] == ["td"]
    assert d.early_of("nobody") == []
