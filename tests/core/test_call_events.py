"""Call attempts and refusals as the core publishes them (core/calls.py), sans-IO.

Every initial INVITE the proxy handles is reported when it sets out and once when the
caller gets its final answer, whether a dialog ever existed (404, 486, 487) or not;
requests the server refuses itself are reported with the reason the client got.
"""

from __future__ import annotations

from support.peers import NOW, SECRET, UDP

from siptrio.core.auth import AuthConfig
from siptrio.core.calls import CallEvent, CallEventKind, Refused
from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Persist, Publish, Send
from siptrio.core.proxy import ProxyConfig
from siptrio.core.registrar import RegistrarConfig
from siptrio.core.types import Clock, Listener, Peer, Transport
from siptrio.sip import Request, Response, parse_message_untrusted

US = Listener(transport=Transport.UDP, host="127.0.0.1", port=5060)
BOB = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5080, local_host="127.0.0.1", local_port=5060
)


def dispatcher(**auth: object) -> Dispatcher:
    config = DispatcherConfig(
        registrar=RegistrarConfig(domains=("example.com",)),
        proxy=ProxyConfig(domains=("example.com",)),
        auth=AuthConfig(**auth) if auth else AuthConfig(),  # type: ignore[arg-type]
    )
    d = Dispatcher(config, secret=SECRET)
    d.set_listeners([US])
    return d


def parse(text: str) -> Request | Response:
    return parse_message_untrusted(text.replace("\n", "\r\n").encode())


def request(
    method: str, to: str, *, call_id: str = "call-1", branch: str = "z9hG4bK-c1"
) -> Request:
    msg = parse(
        f"{method} sip:{to}@example.com SIP/2.0\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\n"
        "Max-Forwards: 70\n"
        "From: <sip:alice@example.com>;tag=fa\n"
        f"To: <sip:{to}@example.com>\n"
        f"Call-ID: {call_id}\n"
        f"CSeq: 1 {method}\n"
        "Content-Length: 0\n\n"
    )
    assert isinstance(msg, Request)
    return msg


def register_bob(d: Dispatcher) -> None:
    reg = parse(
        "REGISTER sip:example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-r1\n"
        "Max-Forwards: 70\nFrom: <sip:bob@example.com>;tag=fb\nTo: <sip:bob@example.com>\n"
        "Call-ID: reg-1\nCSeq: 1 REGISTER\nContact: <sip:bob@127.0.0.1:5080>\n"
        "Content-Length: 0\n\n"
    )
    assert isinstance(reg, Request)
    actions = d.receive_request(reg, BOB, Clock.at(0.0, NOW))
    (persist,) = [a for a in actions if isinstance(a, Persist)]
    d.committed(persist.txn_key, True, Clock.at(0.0, NOW))


def published(actions: list[object]) -> list[object]:
    return [a.event for a in actions if isinstance(a, Publish)]


def calls(actions: list[object]) -> list[CallEvent]:
    return [e for e in published(actions) if isinstance(e, CallEvent)]


def forwarded(actions: list[object]) -> Request:
    (fwd,) = [
        m
        for a in actions
        if isinstance(a, Send)
        if isinstance(m := parse_message_untrusted(a.data), Request)
    ]
    return fwd


def answer(fwd: Request, status: int, reason: str, *, tag: str | None = "tb") -> Response:
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v.text}" for v in fwd.vias]
    lines += [
        f"From: {fwd.from_.text}",
        f"To: {fwd.to.text}{';tag=' + tag if tag else ''}",
        f"Call-ID: {fwd.call_id}",
        f"CSeq: {fwd.cseq.number} {fwd.cseq.method}",
        "Contact: <sip:bob@127.0.0.1:5080>",
        "Content-Length: 0",
    ]
    msg = parse("\n".join(lines) + "\n\n")
    assert isinstance(msg, Response)
    return msg


def test_a_call_to_nobody_fails_404_by_the_proxy_with_no_dialog() -> None:
    d = dispatcher()
    actions = d.receive_request(request("INVITE", "nobody"), UDP, Clock.at(1.0, NOW + 1))
    (failed,) = calls(actions)
    assert failed.kind is CallEventKind.FAILED and failed.status == 404
    assert failed.ended_by == "proxy" and failed.callee_peer is None
    assert failed.caller == "sip:alice@example.com" and failed.callee == "sip:nobody@example.com"
    assert failed.started_at == failed.at == NOW + 1 and failed.call_id == "call-1"
    # the call's own event says it: no second "refused" line for the same INVITE
    assert not [e for e in published(actions) if isinstance(e, Refused)]
    assert len(d.dialogs) == 0


def test_set_up_then_busy_is_failed_by_the_callee() -> None:
    d = dispatcher()
    register_bob(d)
    actions = d.receive_request(request("INVITE", "bob"), UDP, Clock.at(1.0, NOW + 1))
    (setup,) = calls(actions)
    assert setup.kind is CallEventKind.SETUP and setup.branches == 1 and setup.status is None
    fwd = forwarded(actions)
    actions = d.receive_response(answer(fwd, 486, "Busy Here"), BOB, Clock.at(2.0, NOW + 2))
    (failed,) = calls(actions)
    assert failed.kind is CallEventKind.FAILED and (failed.status, failed.reason) == (
        486,
        "Busy Here",
    )
    assert failed.ended_by == "callee" and failed.started_at == NOW + 1 and failed.at == NOW + 2
    assert failed.callee_peer == BOB


def test_answered_once_with_the_callee_leg() -> None:
    d = dispatcher()
    register_bob(d)
    fwd = forwarded(d.receive_request(request("INVITE", "bob"), UDP, Clock.at(1.0, NOW + 1)))
    actions = d.receive_response(answer(fwd, 200, "OK"), BOB, Clock.at(3.0, NOW + 3))
    (answered,) = calls(actions)
    assert answered.kind is CallEventKind.ANSWERED and answered.status == 200
    assert answered.callee_peer == BOB and not answered.bridged and answered.ended_by is None
    # a retransmitted 2xx is no second answer
    assert calls(d.receive_response(answer(fwd, 200, "OK"), BOB, Clock.at(3.5, NOW + 3.5))) == []


def test_cancelled_is_487_ended_by_the_caller() -> None:
    d = dispatcher()
    register_bob(d)
    invite = request("INVITE", "bob")
    fwd = forwarded(d.receive_request(invite, UDP, Clock.at(1.0, NOW + 1)))
    d.receive_response(answer(fwd, 180, "Ringing"), BOB, Clock.at(1.5, NOW + 1.5))
    cancel = parse(invite.serialise().decode().replace("INVITE", "CANCEL").replace("\r\n", "\n"))
    assert isinstance(cancel, Request)
    d.receive_request(cancel, UDP, Clock.at(2.0, NOW + 2))
    actions = d.receive_response(
        answer(fwd, 487, "Request Terminated"), BOB, Clock.at(2.1, NOW + 2.1)
    )
    (failed,) = calls(actions)
    assert failed.status == 487 and failed.ended_by == "caller"


def test_other_requests_refused_by_us_say_why() -> None:
    d = dispatcher()
    actions = d.receive_request(request("MESSAGE", "nobody"), UDP, Clock.at(1.0, NOW))
    (refused,) = published(actions)
    assert isinstance(refused, Refused) and refused.method == "MESSAGE" and refused.status == 404
    assert refused.peer == UDP and refused.call_id == "call-1" and refused.reason
    reg = parse(
        "REGISTER sip:other.org SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-r9\n"
        "Max-Forwards: 70\nFrom: <sip:eve@other.org>;tag=fe\nTo: <sip:eve@other.org>\n"
        "Call-ID: reg-9\nCSeq: 1 REGISTER\nContact: <sip:eve@127.0.0.1:5070>\nContent-Length: 0\n\n"
    )
    assert isinstance(reg, Request)
    (refused,) = published(d.receive_request(reg, UDP, Clock.at(1.0, NOW)))
    assert isinstance(refused, Refused) and refused.status == 403
    assert refused.reason == "Domain other.org is not served here"
    assert refused.to_uri == "sip:eve@other.org"


def test_a_first_challenge_is_no_refusal_a_wrong_password_is() -> None:
    d = dispatcher(enabled=True, realm="example.com")
    d.auth.users = {"alice": {"MD5": "0" * 32, "SHA-256": "0" * 64}}
    first = d.receive_request(
        request("MESSAGE", "bob", branch="z9hG4bK-a1"), UDP, Clock.at(1.0, NOW)
    )
    assert published(first) == []
    (sent,) = [a for a in first if isinstance(a, Send)]
    challenge = parse_message_untrusted(sent.data)
    assert isinstance(challenge, Response) and challenge.status == 407
    nonce = challenge.values("proxy-authenticate")[-1].split('nonce="')[1].split('"')[0]
    wrong = request("MESSAGE", "bob", branch="z9hG4bK-a2")
    text = (
        wrong.serialise()
        .decode()
        .replace(
            "Content-Length: 0",
            'Proxy-Authorization: Digest username="alice", realm="example.com", '
            f'nonce="{nonce}", uri="sip:bob@example.com", response="{"0" * 32}", algorithm=MD5\r\n'
            "Content-Length: 0",
        )
    )
    again = parse_message_untrusted(text.encode())
    assert isinstance(again, Request)
    (refused,) = published(d.receive_request(again, UDP, Clock.at(2.0, NOW + 1)))
    assert isinstance(refused, Refused) and refused.status == 407
