"""Registrar and dispatcher decisions, sans-IO: requests in, actions out, no sockets."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.peers import NOW, SECRET, TCP, UDP

from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import BindingEvent, BindingEventKind, Persist, Publish, Send
from siptrio.core.proxy import ProxyConfig
from siptrio.core.registrar import RegistrarConfig
from siptrio.core.types import Clock, Peer, Transport
from siptrio.sip import Request, Response, parse_message_untrusted


def register(
    user: str = "alice",
    *,
    contacts: list[str] | None = None,
    expires: int | None = None,
    call_id: str = "cid-1",
    cseq: int = 1,
    branch: str = "z9hG4bK-1",
    extra: list[str] | None = None,
    domain: str = "example.com",
) -> Request:
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag=ft",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    for c in contacts if contacts is not None else [f"<sip:{user}@127.0.0.1:5070>"]:
        lines.append(f"Contact: {c}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += extra or []
    lines.append("Content-Length: 0")
    msg = parse_message_untrusted(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def make(**registrar: object) -> Dispatcher:
    return Dispatcher(DispatcherConfig(registrar=RegistrarConfig(**registrar)), secret=SECRET)  # type: ignore[arg-type]


def response_of(d: Dispatcher, actions: list[object]) -> Response:
    """The response the actions send, at once or (REGISTER) once the store committed."""
    for a in actions:
        if isinstance(a, Send):
            msg = parse_message_untrusted(a.data)
            assert isinstance(msg, Response)
            return msg
        if isinstance(a, Persist):
            return response_of(d, d.committed(a.txn_key, True, Clock.at(NOW)))
    raise AssertionError(f"no response in {actions}")


def test_add_refresh_remove() -> None:
    d = make()
    acts = d.receive_request(register(expires=600), UDP, Clock.at(NOW))
    persist = [a for a in acts if isinstance(a, Persist)]
    assert len(persist) == 1 and len(persist[0].upserts) == 1 and not persist[0].deletes
    resp = response_of(d, acts)
    assert resp.status == 200
    assert resp.values("contact") == ["<sip:alice@127.0.0.1:5070>;expires=600"]
    events = [a.event for a in acts if isinstance(a, Publish)]
    assert [e.kind for e in events if isinstance(e, BindingEvent)] == [BindingEventKind.ADDED]

    acts = d.receive_request(
        register(expires=300, cseq=2, branch="z9hG4bK-2"), UDP, Clock.at(NOW + 10)
    )
    assert response_of(d, acts).values("contact") == ["<sip:alice@127.0.0.1:5070>;expires=300"]
    assert [a.event.kind for a in acts if isinstance(a, Publish)] == [BindingEventKind.REFRESHED]
    b = d.location.lookup("sip:alice@example.com", NOW + 10)[0]
    assert b.registered_at == NOW and b.updated_at == NOW + 10 and b.cseq == 2

    acts = d.receive_request(
        register(expires=0, cseq=3, branch="z9hG4bK-3"), UDP, Clock.at(NOW + 20)
    )
    resp = response_of(d, acts)
    assert resp.status == 200 and resp.values("contact") == []
    persist = [a for a in acts if isinstance(a, Persist)]
    assert persist[0].deletes == (("sip:alice@example.com", persist[0].deletes[0][1]),)
    assert d.location.lookup("sip:alice@example.com", NOW + 20) == []


def test_contact_param_expires_beats_header_and_header_beats_default() -> None:
    d = make(default_expires=3600, max_expires=7200)
    acts = d.receive_request(
        register(contacts=["<sip:a@127.0.0.1:1>;expires=120", "<sip:b@127.0.0.1:2>"], expires=900),
        UDP,
        Clock.at(NOW),
    )
    assert sorted(response_of(d, acts).values("contact")) == [
        "<sip:a@127.0.0.1:1>;expires=120",
        "<sip:b@127.0.0.1:2>;expires=900",
    ]
    d2 = make(default_expires=3600, max_expires=7200)
    acts = d2.receive_request(register(), UDP, Clock.at(NOW))
    assert response_of(d2, acts).values("contact") == ["<sip:alice@127.0.0.1:5070>;expires=3600"]


def test_above_max_is_clamped_below_min_is_423() -> None:
    d = make(min_expires=60, max_expires=7200)
    resp = response_of(d, d.receive_request(register(expires=10**12), UDP, Clock.at(NOW)))
    assert resp.values("contact") == ["<sip:alice@127.0.0.1:5070>;expires=7200"]
    resp = response_of(
        d, d.receive_request(register(expires=30, cseq=2, branch="z9hG4bK-b"), UDP, Clock.at(NOW))
    )
    assert resp.status == 423 and resp.first("min-expires") == "60"
    # the refused REGISTER changed nothing
    assert d.location.lookup("sip:alice@example.com", NOW)[0].expires_at == NOW + 7200


def test_star_requires_expires_zero_and_removes_all() -> None:
    d = make()
    d.receive_request(
        register(contacts=["<sip:a@h1>", "<sip:b@h2>"], expires=600), UDP, Clock.at(NOW)
    )
    resp = response_of(
        d,
        d.receive_request(
            register(contacts=["*"], expires=600, cseq=2, branch="z9hG4bK-x"), UDP, Clock.at(NOW)
        ),
    )
    assert resp.status == 400 and "Expires: 0" in resp.reason
    resp = response_of(
        d,
        d.receive_request(
            register(contacts=["*", "<sip:c@h3>"], expires=0, cseq=3, branch="z9hG4bK-y"),
            UDP,
            Clock.at(NOW),
        ),
    )
    assert resp.status == 400
    acts = d.receive_request(
        register(contacts=["*"], expires=0, cseq=4, branch="z9hG4bK-z"), UDP, Clock.at(NOW)
    )
    resp = response_of(d, acts)
    assert resp.status == 200 and resp.values("contact") == []
    assert len(next(a for a in acts if isinstance(a, Persist)).deletes) == 2
    assert d.location.lookup("sip:alice@example.com", NOW) == []


def test_fetch_without_contact_lists_bindings_and_changes_nothing() -> None:
    d = make()
    d.receive_request(
        register(contacts=['<sip:a@h1>;+sip.instance="<urn:uuid:1>";reg-id=1'], expires=600),
        UDP,
        Clock.at(NOW),
    )
    acts = d.receive_request(
        register(contacts=[], cseq=2, branch="z9hG4bK-f"), UDP, Clock.at(NOW + 100)
    )
    assert not any(isinstance(a, Persist) for a in acts)
    assert response_of(d, acts).values("contact") == [
        '<sip:a@h1>;+sip.instance="<urn:uuid:1>";reg-id=1;expires=500'
    ]


@pytest.mark.parametrize("cseq", [1, 0])
def test_repeated_or_lower_cseq_same_call_id_rejected(cseq: int) -> None:
    d = make()
    d.receive_request(register(expires=600, cseq=1), UDP, Clock.at(NOW))
    resp = response_of(
        d,
        d.receive_request(
            register(expires=300, cseq=cseq, branch="z9hG4bK-new"), UDP, Clock.at(NOW + 1)
        ),
    )
    assert resp.status == 400 and "CSeq" in resp.reason
    assert d.location.lookup("sip:alice@example.com", NOW + 1)[0].expires_at == NOW + 600


def test_lower_cseq_with_other_call_id_is_accepted() -> None:
    d = make()
    d.receive_request(register(expires=600, cseq=5), UDP, Clock.at(NOW))
    resp = response_of(
        d,
        d.receive_request(
            register(expires=300, cseq=1, call_id="cid-2", branch="z9hG4bK-n"), UDP, Clock.at(NOW)
        ),
    )
    assert resp.status == 200


def test_retransmission_replays_the_same_answer_after_commit() -> None:
    d = make()
    req = register(expires=600)
    acts = d.receive_request(req, UDP, Clock.at(NOW))
    persist = next(a for a in acts if isinstance(a, Persist))
    # before the commit, a retransmission is absorbed (no second 200, no second write)
    assert d.receive_request(req, UDP, Clock.at(NOW + 0.1)) == []
    (sent,) = d.committed(persist.txn_key, True, Clock.at(NOW + 0.2))
    assert isinstance(sent, Send) and sent.data.startswith(b"SIP/2.0 200 OK")
    again = d.receive_request(req, UDP, Clock.at(NOW + 0.5))
    assert [a.data for a in again if isinstance(a, Send)] == [sent.data]


def test_store_failure_answers_500() -> None:
    d = make()
    acts = d.receive_request(register(expires=600), UDP, Clock.at(NOW))
    persist = next(a for a in acts if isinstance(a, Persist))
    (sent,) = d.committed(persist.txn_key, False, Clock.at(NOW))
    assert isinstance(sent, Send) and sent.data.startswith(b"SIP/2.0 500 ")


def test_unknown_require_gets_420_with_unsupported() -> None:
    d = make()
    resp = response_of(
        d, d.receive_request(register(extra=["Require: path, foo, bar"]), UDP, Clock.at(NOW))
    )
    assert resp.status == 420 and resp.first("unsupported") == "foo, bar"


def test_contact_echoed_exactly_like_jssip_expects() -> None:
    d = make()
    contact = '<sip:k3u8sq1r@0kbc0ovlj2vf.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:6a1ed8f5-1f0c-4b8c-9a3b-2f1d5d6c0e1f>";expires=600'
    resp = response_of(d, d.receive_request(register(contacts=[contact]), TCP, Clock.at(NOW)))
    assert resp.values("contact") == [contact]
    b = d.location.lookup("sip:alice@example.com", NOW)[0]
    assert b.instance == "<urn:uuid:6a1ed8f5-1f0c-4b8c-9a3b-2f1d5d6c0e1f>" and b.reg_id == 1
    assert b.flow_id == "tcp-x-1" and b.transport is Transport.TCP


def test_same_instance_and_reg_id_on_a_new_flow_replaces_the_binding() -> None:
    d = make()
    c = '<sip:x@a.invalid;transport=ws>;reg-id=1;+sip.instance="<urn:uuid:1>"'
    d.receive_request(register(contacts=[c], expires=600), TCP, Clock.at(NOW))
    other = replace(TCP, port=40001, flow_id="tcp-x-2")  # the same phone on a new flow
    c2 = '<sip:y@b.invalid;transport=ws>;reg-id=1;+sip.instance="<urn:uuid:1>"'
    acts = d.receive_request(
        register(contacts=[c2], expires=600, call_id="cid-9", branch="z9hG4bK-r"),
        other,
        Clock.at(NOW),
    )
    kinds = [a.event.kind for a in acts if isinstance(a, Publish)]
    assert BindingEventKind.REPLACED in kinds
    live = d.location.lookup("sip:alice@example.com", NOW)
    assert [b.flow_id for b in live] == ["tcp-x-2"]
    assert d.location.on_flow("tcp-x-1") == []


def test_two_reg_id_contacts_is_400() -> None:
    d = make()
    resp = response_of(
        d,
        d.receive_request(
            register(
                contacts=[
                    '<sip:a@h>;reg-id=1;+sip.instance="<urn:uuid:1>"',
                    '<sip:b@h>;reg-id=2;+sip.instance="<urn:uuid:1>"',
                ]
            ),
            UDP,
            Clock.at(NOW),
        ),
    )
    assert resp.status == 400


def test_per_aor_contact_limit() -> None:
    d = make(max_contacts=2)
    d.receive_request(register(contacts=["<sip:a@h1>", "<sip:b@h2>"]), UDP, Clock.at(NOW))
    resp = response_of(
        d,
        d.receive_request(
            register(contacts=["<sip:c@h3>"], cseq=2, branch="z9hG4bK-l"), UDP, Clock.at(NOW)
        ),
    )
    assert resp.status == 403 and "limit 2" in resp.reason
    # refreshing an existing contact is still fine at the limit
    resp = response_of(
        d,
        d.receive_request(
            register(contacts=["<sip:a@h1>"], cseq=3, branch="z9hG4bK-m"), UDP, Clock.at(NOW)
        ),
    )
    assert resp.status == 200


def test_flow_close_removes_its_bindings() -> None:
    d = make()
    d.receive_request(register(contacts=["<sip:a@h.invalid;transport=tcp>"]), TCP, Clock.at(NOW))
    acts = d.flow_closed("tcp-x-1", Clock.at(NOW + 1))
    assert [a.event.kind for a in acts if isinstance(a, Publish)] == [BindingEventKind.FLOW_CLOSED]
    assert d.location.lookup("sip:alice@example.com", NOW + 1) == []


def test_expiry_purge_on_tick() -> None:
    d = make(min_expires=60)
    d.receive_request(register(expires=60), UDP, Clock.at(NOW))
    assert d.tick(Clock.at(NOW + 59)) == []
    acts = d.tick(Clock.at(NOW + 61))
    assert [a.event.kind for a in acts if isinstance(a, Publish)] == [BindingEventKind.EXPIRED]
    assert len(d.location) == 0


def test_domains_enforced_when_configured() -> None:
    d = make(domains=("example.com",))
    assert (
        response_of(d, d.receive_request(register(domain="other.org"), UDP, Clock.at(NOW))).status
        == 403
    )
    assert (
        response_of(d, d.receive_request(register(branch="z9hG4bK-d"), UDP, Clock.at(NOW))).status
        == 200
    )


def test_escaped_user_parts_are_one_aor() -> None:
    d = make()
    d.receive_request(register(user="%61lice", contacts=["<sip:a@h1>"]), UDP, Clock.at(NOW))
    assert len(d.location.lookup("sip:alice@example.com", NOW)) == 1


def test_stamp_via_received_and_rport() -> None:
    d = make()
    req = register()
    peer = Peer(
        transport=Transport.UDP,
        host="127.0.0.9",
        port=6000,
        local_host="127.0.0.1",
        local_port=5060,
    )
    resp = response_of(d, d.receive_request(req, peer, Clock.at(NOW)))
    assert resp.vias[0].rport == "6000" and resp.vias[0].received == "127.0.0.9"


def test_options_to_server_and_unknown_requests() -> None:
    d = make()
    opts = parse_message_untrusted(
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-o\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(opts, Request)
    resp = response_of(d, d.receive_request(opts, UDP, Clock.at(NOW)))
    assert resp.status == 200 and "REGISTER" in (resp.first("allow") or "")
    assert resp.first("accept") == "application/sdp" and resp.to.tag
    inv = parse_message_untrusted(
        b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: i1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(inv, Request)
    acts = d.receive_request(inv, UDP, Clock.at(NOW))
    statuses = [parse_message_untrusted(a.data).status for a in acts if isinstance(a, Send)]  # type: ignore[union-attr]
    assert statuses == [403]  # example.com is not ours here: no relaying (and no 100 first)
    local = Dispatcher(DispatcherConfig(proxy=ProxyConfig(domains=("example.com",))), secret=SECRET)
    acts = local.receive_request(inv, UDP, Clock.at(NOW))
    statuses = [parse_message_untrusted(a.data).status for a in acts if isinstance(a, Send)]  # type: ignore[union-attr]
    assert statuses == [404]  # ours, but nobody by that name
    tel = parse_message_untrusted(
        b"OPTIONS tel:+123 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-t\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <tel:+123>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(tel, Request)
    assert response_of(d, d.receive_request(tel, UDP, Clock.at(NOW))).status == 416
