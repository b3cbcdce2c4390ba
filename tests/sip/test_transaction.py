"""Transaction state machines (RFC 3261 section 17, RFC 6026) driven with explicit times."""

from __future__ import annotations

import itertools

from siptrio.sip import Request, Response, parse_message_untrusted
from siptrio.sip.transaction import Timers, TransactionLayer, TxEvent, TxKind, TxSend, TxState

T = Timers(t1=0.5, t2=4.0, t4=5.0)


def request(method: str = "INVITE", branch: str = "z9hG4bK-1") -> Request:
    m = parse_message_untrusted(
        f"{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
        f"From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(m, Request)
    return m


def response(status: int, method: str = "INVITE", branch: str = "z9hG4bK-1") -> Response:
    m = parse_message_untrusted(
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
        f"From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\nCall-ID: c1\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(m, Response)
    return m


def sends(out: list[TxSend | TxEvent]) -> list[bytes]:
    return [o.data for o in out if isinstance(o, TxSend)]


def kinds(out: list[TxSend | TxEvent]) -> list[TxKind]:
    return [o.kind for o in out if isinstance(o, TxEvent)]


def run_until(layer: TransactionLayer, end: float) -> list[tuple[float, list[TxSend | TxEvent]]]:
    """Fire every timer up to ``end``, as the shell's timer task would."""
    fired = []
    while (t := layer.next_deadline()) <= end:
        fired.append(
            (t, [o for owner, name in layer.heap.pop_due(t) for o in _fire(layer, owner, name, t)])
        )
    return fired


def _fire(layer: TransactionLayer, owner: object, name: str, now: float) -> list[TxSend | TxEvent]:
    txn = layer.servers.get(owner) or layer.clients.get(owner)  # type: ignore[call-overload]
    return txn.on_timer(name, now) if txn else []


def test_client_invite_timer_a_doubles_until_timer_b() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_client(
        branch="z9hG4bK-1", method="INVITE", data=b"INVITE", dest=None, reliable=False
    )
    assert sends(txn.start(0.0)) == [b"INVITE"]
    fired = run_until(layer, 100)
    retransmit_times = [t for t, out in fired if sends(out)]
    assert retransmit_times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # T1, then doubling without a cap
    (timeout_at, _out) = next((t, o) for t, o in fired if TxKind.TIMEOUT in kinds(o))
    assert timeout_at == 32.0 and txn.state is TxState.TERMINATED


def test_client_invite_reliable_never_retransmits() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_client(
        branch="z9hG4bK-1", method="INVITE", data=b"INVITE", dest=None, reliable=True
    )
    txn.start(0.0)
    fired = run_until(layer, 100)
    assert [sends(o) for _, o in fired] == [[]]
    assert kinds(fired[0][1]) == [TxKind.TIMEOUT, TxKind.TERMINATED]


def test_client_invite_provisional_stops_a_2xx_accepted_then_m() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_client(
        branch="z9hG4bK-1", method="INVITE", data=b"INVITE", dest=None, reliable=False
    )
    txn.start(0.0)
    assert kinds(txn.on_response(response(180), None, 0.1)) == [TxKind.RESPONSE]
    assert txn.state is TxState.PROCEEDING
    assert run_until(layer, 10) == []  # no more Timer A, and Timer B stays armed until 32
    assert kinds(txn.on_response(response(200), None, 11)) == [TxKind.RESPONSE]
    assert txn.state is TxState.ACCEPTED
    # RFC 6026: 2xx retransmissions are passed up, in Accepted, until Timer M
    assert kinds(txn.on_response(response(200), None, 12)) == [TxKind.RESPONSE]
    fired = run_until(layer, 11 + 32)
    assert kinds(fired[-1][1]) == [TxKind.TERMINATED] and fired[-1][0] == 43


def test_client_invite_failure_acks_and_reacks_retransmissions() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_client(
        branch="z9hG4bK-1", method="INVITE", data=b"INVITE", dest=None, reliable=False
    )
    txn.start(0.0)
    out = txn.on_response(response(486), b"ACK", 0.2)
    assert kinds(out) == [TxKind.RESPONSE] and sends(out) == [b"ACK"]
    assert txn.state is TxState.COMPLETED
    out = txn.on_response(response(486), b"ACK-again", 0.3)
    assert sends(out) == [b"ACK"] and kinds(out) == []  # absorbed, ACK re-sent
    fired = run_until(layer, 40)
    assert fired[-1][0] == 0.2 + 32 and kinds(fired[-1][1]) == [TxKind.TERMINATED]


def test_client_non_invite_timer_e_capped_at_t2_then_f() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_client(branch="z9hG4bK-1", method="BYE", data=b"BYE", dest=None, reliable=False)
    txn.start(0.0)
    fired = run_until(layer, 40)
    times = [t for t, o in fired if sends(o)]
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # 0.5, 1, 2, 4, 4 (T2) apart
    assert all(b - a == 4.0 for a, b in itertools.pairwise(times[3:]))
    assert any(TxKind.TIMEOUT in kinds(o) and t == 32 for t, o in fired)


def test_client_non_invite_proceeding_retransmits_every_t2_and_k_after_final() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_client(
        branch="z9hG4bK-1", method="MESSAGE", data=b"M", dest=None, reliable=False
    )
    txn.start(0.0)
    txn.on_response(response(100, "MESSAGE"), None, 0.1)
    fired = run_until(layer, 9)
    assert [t for t, o in fired if sends(o)] == [0.5, 4.5, 8.5]
    txn.on_response(response(200, "MESSAGE"), None, 9)
    fired = run_until(layer, 20)
    assert [(t, kinds(o)) for t, o in fired] == [(14.0, [TxKind.TERMINATED])]  # Timer K = T4


def test_server_invite_final_retransmitted_by_g_until_ack() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_server(request(), dest=None, reliable=False)
    assert txn.state is TxState.PROCEEDING
    txn.respond(b"100", 100, 0.0)
    assert sends(txn.on_retransmission(0.1)) == [b"100"]  # the last provisional again
    txn.respond(b"486", 486, 1.0)
    fired = run_until(layer, 5)
    assert [t for t, o in fired if sends(o)] == [1.5, 2.5, 4.5]
    assert sends(txn.on_retransmission(5.0)) == [b"486"]
    txn.on_ack(5.0)
    assert txn.state is TxState.CONFIRMED
    fired = run_until(layer, 20)
    assert [(t, kinds(o)) for t, o in fired] == [(10.0, [TxKind.TERMINATED])]  # Timer I = T4


def test_server_invite_without_ack_times_out_with_h() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_server(request(), dest=None, reliable=False)
    txn.respond(b"404", 404, 0.0)
    fired = run_until(layer, 40)
    assert TxKind.NO_ACK in kinds(fired[-1][1]) and fired[-1][0] == 32.0


def test_server_invite_2xx_goes_accepted_and_absorbs_the_invite() -> None:
    layer = TransactionLayer(T)
    txn = layer.new_server(request(), dest=None, reliable=False)
    txn.respond(b"200", 200, 0.0)
    assert txn.state is TxState.ACCEPTED
    assert txn.on_retransmission(0.5) == []  # RFC 6026: not answered by the transaction
    assert sends(txn.respond(b"200-again", 200, 0.6)) == [
        b"200-again"
    ]  # the proxy forwards 2xx retransmissions
    fired = run_until(layer, 40)
    assert fired[-1][0] == 32.0 and kinds(fired[-1][1]) == [TxKind.TERMINATED]  # Timer L


def test_server_non_invite_j_on_udp_immediate_on_tcp() -> None:
    layer = TransactionLayer(T)
    udp = layer.new_server(request("OPTIONS"), dest=None, reliable=False)
    assert udp.state is TxState.TRYING and udp.on_retransmission(0.1) == []  # nothing to repeat yet
    udp.respond(b"200", 200, 0.2)
    assert sends(udp.on_retransmission(1.0)) == [b"200"]
    assert [(t, kinds(o)) for t, o in run_until(layer, 40)] == [(32.2, [TxKind.TERMINATED])]
    tcp = layer.new_server(request("OPTIONS", "z9hG4bK-2"), dest=None, reliable=True)
    assert kinds(tcp.respond(b"200", 200, 0.0)) == [TxKind.TERMINATED]


def test_matching_ack_and_cancel_to_the_invite_and_rfc2543_fallback() -> None:
    layer = TransactionLayer(T)
    inv = layer.new_server(request(), dest=None, reliable=False)
    assert layer.find_server(request("ACK")) is inv  # ACK matches the INVITE transaction
    assert layer.find_server(request("CANCEL")) is None  # CANCEL is its own transaction
    old = request(branch="1234")  # no magic cookie: RFC 2543 matching
    txn = layer.new_server(old, dest=None, reliable=False)
    assert layer.find_server(request("ACK", branch="1234")) is txn
    assert layer.find_server(request(branch="z9hG4bK-other")) is None


def test_client_matching_by_branch_and_method() -> None:
    layer = TransactionLayer(T)
    inv = layer.new_client(branch="z9hG4bK-9", method="INVITE", data=b"", dest=None, reliable=True)
    can = layer.new_client(branch="z9hG4bK-9", method="CANCEL", data=b"", dest=None, reliable=True)
    assert layer.find_client(response(200, "INVITE", "z9hG4bK-9")) is inv
    assert layer.find_client(response(200, "CANCEL", "z9hG4bK-9")) is can
    assert layer.find_client(response(200, "INVITE", "z9hG4bK-x")) is None
