"""RFC 4475 and RFC 5118 torture messages at the parse level (no sockets).

The fixtures are in ``tests/data/torture`` (a byte-exact copy; see its README):
each row of ``rfc4475/index.tsv`` and ``rfc5118/index.tsv`` is one test case here.
"""

from __future__ import annotations

import contextlib
import csv
import re
from pathlib import Path

import pytest
from support.sip_strategies import VIEWS

from siptrio.sip import (
    Request,
    Response,
    SipParseError,
    SipUri,
    error_response_untrusted,
    parse_message_untrusted,
    parse_uri_untrusted,
)

REPO = Path(__file__).resolve().parents[2]
TORTURE = REPO / "tests" / "data" / "torture"  # a byte-exact copy of shared/torture
SUITES = ("rfc4475", "rfc5118")


def _rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for suite in SUITES:
        index = TORTURE / suite / "index.tsv"
        if not index.is_file():
            continue
        with index.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                row["suite"] = suite
                rows.append(row)
    return rows


ROWS = _rows()
BY_NAME = {row["name"]: row for row in ROWS}


def _params(cls: str) -> list[object]:
    return [
        pytest.param(row, id=f"{row['suite']}-{row['name']}") for row in ROWS if row["class"] == cls
    ]


def _data(row: dict[str, str]) -> bytes:
    return (TORTURE / row["suite"] / row["file"]).read_bytes()


def load(name: str) -> bytes:
    if name not in BY_NAME:
        pytest.skip(f"{name} is not in the torture index")
    return _data(BY_NAME[name])


def parse(name: str) -> Request | Response:
    return parse_message_untrusted(load(name))


def preferred(row: dict[str, str]) -> set[int]:
    return {int(code) for code in row["preferred"].split("|") if code.strip().isdigit()}


_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([0-9]+)", re.I | re.M)


def message_bytes(data: bytes) -> bytes:
    """The bytes of the one message in a datagram, in the form ``serialise()`` gives.

    Leading CRLFs are not part of the message; bytes after Content-Length are not
    either (dblreq); without Content-Length the body is the rest of the datagram
    (inv2543); a header section that runs to the end without its empty line (baddn
    as printed in the RFC) gains that empty line.
    """
    while data.startswith(b"\r\n"):
        data = data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        assert data.endswith(b"\r\n")
        return data + b"\r\n"
    match = _CONTENT_LENGTH.search(data[:end])
    if match is None:
        return data
    return data[: end + 4 + int(match.group(1))]


def check_round_trip(msg: Request | Response, data: bytes) -> None:
    wire = msg.serialise()
    assert wire == message_bytes(data)
    again = parse_message_untrusted(wire)
    assert again == msg
    assert again.serialise() == wire


def check_routing_views(msg: Request | Response) -> None:
    """The views every request or response is routed and answered by."""
    assert msg.vias
    for via in msg.vias:
        assert via.host
    assert msg.call_id
    assert msg.cseq.number >= 0
    if isinstance(msg, Request):
        assert msg.from_.uri is not None
        assert msg.to.uri is not None
        assert msg.cseq.method == msg.method
        if msg.method == "REGISTER" and not msg.contact_star:
            for contact in msg.contacts:
                assert contact.uri_text


def check_views_only_raise_parse_errors(msg: Request | Response) -> None:
    for name in VIEWS:
        with contextlib.suppress(SipParseError):
            getattr(msg, name)
    with contextlib.suppress(SipParseError):
        for contact in msg.contacts:
            contact.q  # noqa: B018
            contact.expires  # noqa: B018
            if isinstance(contact.uri, SipUri):
                contact.uri.aor()
                contact.uri.key()


def check_error_reply(row: dict[str, str], data: bytes, err: SipParseError) -> None:
    reply = error_response_untrusted(data, err)
    if row["kind"] == "response":
        assert reply is None, "a response must never be answered"
        return
    if row["name"] == "test":
        # No SIP-Version and a line without a colon: no readable Via to answer to.
        assert reply is None
        return
    assert reply is not None, f"{row['name']}: a request with a readable Via gets an answer"
    assert reply.startswith(f"SIP/2.0 {err.status} ".encode())
    assert reply.endswith(b"\r\n\r\n")
    # Everything but Content-Length is copied byte for byte from the request
    # (RFC 3261 section 8.2.6.2), folded lines included.
    head = reply[: -len(b"\r\n\r\n")]
    blocks = re.split(rb"\r\n(?![ \t])", head)[1:]
    for block in blocks:
        if block.lower().startswith(b"content-length:"):
            continue
        assert block in data, f"{block!r} is not copied from the request"
    try:
        resp = parse_message_untrusted(reply)
    except SipParseError as reply_err:
        # The reply echoes the request's own Via / CSeq verbatim, as RFC 3261
        # requires, and those are what is broken (or missing) in these three: the
        # sender's parser will choke on them exactly as ours did on the request.
        assert row["name"] in ECHOES_THE_FAULT, f"{row['name']}: {reply_err} in {reply!r}"
        assert ECHOES_THE_FAULT[row["name"]] in reply_err.reason
    else:
        assert isinstance(resp, Response)
        assert resp.status == err.status


ECHOES_THE_FAULT = {
    "badinv01": "Via",  # Via: SIP/2.0/UDP 192.0.2.15;;,;,,
    "scalar02": "CSeq",  # CSeq: 36893488147419103232 REGISTER
    "insuf": "Call-ID",  # no Call-ID to copy
}


@pytest.mark.parametrize("row", _params("valid"))
def test_valid(row: dict[str, str]) -> None:
    data = _data(row)
    msg = parse_message_untrusted(data)
    assert isinstance(msg, Request if row["kind"] == "request" else Response)
    check_round_trip(msg, data)
    check_routing_views(msg)


@pytest.mark.parametrize("row", _params("invalid"))
def test_invalid(row: dict[str, str]) -> None:
    data = _data(row)
    try:
        msg = parse_message_untrusted(data)
    except SipParseError as err:
        codes = preferred(row)
        if codes:
            assert err.status in codes, f"{err.status} {err.reason}"
        check_error_reply(row, data, err)
        if row["kind"] == "response":
            assert error_response_untrusted(data, err) is None
        return
    assert row["liberal_ok"] == "yes", f"{row['name']} must be rejected"
    # Accepted liberally: still a faithful message, and no view crashes.
    assert isinstance(msg, Request if row["kind"] == "request" else Response)
    check_round_trip(msg, data)
    check_views_only_raise_parse_errors(msg)


@pytest.mark.parametrize("row", _params("valid-but-unusual"))
def test_valid_but_unusual(row: dict[str, str]) -> None:
    data = _data(row)
    if row["expect"] == "reject":
        with pytest.raises(SipParseError) as info:
            parse_message_untrusted(data)
        assert info.value.status == 400
        check_error_reply(row, data, info.value)
        return
    try:
        msg = parse_message_untrusted(data)
    except SipParseError as err:
        pytest.fail(f"{row['name']} is well-formed but was rejected: {err}")
    assert isinstance(msg, Request if row["kind"] == "request" else Response)
    check_round_trip(msg, data)
    check_views_only_raise_parse_errors(msg)
    if row["expect"] == "answer":
        check_routing_views(msg)


def test_every_row_has_its_file() -> None:
    assert len([r for r in ROWS if r["suite"] == "rfc4475"]) == 50
    assert len([r for r in ROWS if r["suite"] == "rfc5118"]) == 12
    for row in ROWS:
        assert (TORTURE / row["suite"] / row["file"]).is_file(), row["file"]


# --- what the RFC descriptions single out --------------------------------------------


def test_wsinv_typed_values() -> None:
    msg = parse("wsinv")
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri_text == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.to.tag == "1918181833n"
    assert msg.to.uri_text == "sip:vivekg@chair-dnrc.example.com"
    # "J Rosenberg \\\"" on the wire: the quoted-pairs \\ and \" unquote to \ and ".
    assert msg.from_.display == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert [v.host for v in msg.vias] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert all(v.protocol == "SIP/2.0" for v in msg.vias)
    (contact,) = msg.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.q == 0.33
    assert contact.param("newparam") == "newvalue"
    assert contact.param("secondparam") == ""  # present, no value
    assert ("secondparam", None) in contact.params
    (route,) = msg.routes
    assert route.uri_text == "sip:services.example.com;lr;unknownwith=value;unknown-no-value"
    assert isinstance(route.uri, SipUri) and route.uri.lr
    assert msg.content_length == 150 == len(msg.body)
    assert msg.values("newfangledheader") == ["newfangled value continued newfangled value"]
    assert msg.values("unknownheaderwithunusualvalue") == [";;,,;;,;"]
    assert msg.values("subject") == [""]


def test_intmeth_keeps_unusual_characters() -> None:
    msg = parse("intmeth")
    assert isinstance(msg, Request)
    assert msg.method == msg.cseq.method
    assert msg.method.startswith("!interesting-Method0123456789_*+`.%indeed'~")
    assert b"\x00" in msg.serialise()  # the quoted NUL survives


def test_esc01_escapes_unescape_only_where_the_grammar_says() -> None:
    msg = parse("esc01")
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    # ':' and '@' are not user-unreserved: they stay escaped, the host is example.net.
    assert msg.uri.host == "example.net"
    assert msg.uri.aor() == "sip:sips%3Auser%40example.com@example.net"
    to_uri, from_uri = msg.to.uri, msg.from_.uri
    assert isinstance(to_uri, SipUri) and isinstance(from_uri, SipUri)
    assert to_uri.aor() == "sip:user@example.com"  # %75se%72
    assert from_uri.aor() == "sip:I%20have%20spaces@example.net"
    (contact,) = msg.contacts
    assert contact.uri_text == "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"
    plain = parse_uri_untrusted("sip:caller@host5.example.net;lr;name=value%2541")
    assert isinstance(contact.uri, SipUri) and isinstance(plain, SipUri)
    assert contact.uri.key() == plain.key()
    assert msg.serialise() == load("esc01")  # nothing rewritten on the way through


def test_esc02_method_is_not_register() -> None:
    msg = parse("esc02")
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"
    assert msg.cseq.method == "RE%47IST%45R"
    assert [c.uri_text for c in msg.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert msg.values("c%6fntact") == ["<sip:alias2@host2.example.com>"]
    assert msg.from_.display == "%Z%45"
    assert msg.to.display == "%Z%45"


def test_escnull_contacts_are_distinct() -> None:
    msg = parse("escnull")
    assert isinstance(msg, Request)
    first, second = msg.contacts
    assert isinstance(first.uri, SipUri) and isinstance(second.uri, SipUri)
    assert first.uri.key() != second.uri.key()
    assert first.uri.user == "%00" and second.uri.user == "%00%00"
    # Unescaping must not truncate at the NUL.
    assert msg.to.uri.aor() == "sip:null-%00-null@example.com"  # type: ignore[union-attr]


def test_longreq_values_are_not_truncated() -> None:
    msg = parse("longreq")
    assert isinstance(msg, Request)
    assert len(msg.vias) == 34
    assert msg.to.display is not None and "extreme" * 10 in msg.to.display
    to_uri = msg.to.uri
    assert isinstance(to_uri, SipUri) and to_uri.port == 6000
    assert to_uri.param("unknownparam1") == "very" + "long" * 20 + "value"
    from_uri = msg.from_.uri
    assert isinstance(from_uri, SipUri)
    assert from_uri.user == "amazinglylongcallername" * 5
    assert msg.from_.tag is not None and len(msg.from_.tag) > 100
    assert msg.call_id == "longreq.one" + "really" * 20 + "longcallid"
    name = "unknown-" + "long" * 20 + "-name"
    (value,) = msg.values(name)
    assert value.startswith("unknown-" + "long" * 20 + "-value")
    branches = [v.branch for v in msg.vias if v.branch]
    assert any(b.endswith("branchvalue") and len(b) > 100 for b in branches)
    assert len(msg.body) == msg.content_length == 150


def test_dblreq_trailing_octets_ignored() -> None:
    data = load("dblreq")
    msg = parse_message_untrusted(data)
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert b"INVITE" not in msg.serialise()
    assert data.startswith(msg.serialise())


def test_inv2543_body_runs_to_end_of_datagram() -> None:
    data = load("inv2543")
    msg = parse_message_untrusted(data)
    assert msg.content_length is None
    assert data.endswith(msg.body) and msg.body.startswith(b"v=0")
    assert msg.serialise() == data


def test_mpart01_binary_body_framed_by_content_length() -> None:
    msg = parse("mpart01")
    assert msg.content_length == len(msg.body) == 553


def test_cparam01_param_belongs_to_contact() -> None:
    (contact,) = parse("cparam01").contacts
    assert contact.uri_text == "sip:+19725552222@gw1.example.net"
    assert contact.params == (("unknownparam", None),)
    assert isinstance(contact.uri, SipUri) and contact.uri.params == ()


def test_cparam02_param_belongs_to_uri() -> None:
    (contact,) = parse("cparam02").contacts
    assert contact.uri_text == "sip:+19725552222@gw1.example.net;unknownparam"
    assert contact.params == ()
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.params == (("unknownparam", None),)


def test_regescrt_contact_keeps_escaped_header() -> None:
    (contact,) = parse("regescrt").contacts
    assert contact.uri_text.endswith("?Route=%3Csip:sip.example.com%3E")
    assert contact.uri_text == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.headers == ("Route=%3Csip:sip.example.com%3E",)


def test_regbadct_contact_needs_brackets() -> None:
    # Liberal message-level acceptance is allowed; the Contact itself is rejected.
    msg = parse("regbadct")
    with pytest.raises(SipParseError) as info:
        msg.contacts  # noqa: B018
    assert info.value.status == 400


def test_unknown_schemes_parse_opaquely() -> None:
    msg = parse("unkscm")
    assert isinstance(msg, Request) and not isinstance(msg.uri, SipUri)
    msg = parse("unksm2")
    assert not isinstance(msg.to.uri, SipUri)


def test_badvers_gets_505() -> None:
    with pytest.raises(SipParseError) as info:
        parse("badvers")
    assert info.value.status == 505


@pytest.mark.parametrize(("name", "close"), [("ncl", True), ("mcl01", True), ("clerr", False)])
def test_framing_faults_say_whether_to_close(name: str, close: bool) -> None:
    with pytest.raises(SipParseError) as info:
        parse(name)
    assert info.value.status == 400
    assert info.value.close is close


def test_rfc5118_port_ambiguous() -> None:
    msg = parse("port-ambiguous")
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.host == "[2001:db8::10:5070]"
    assert msg.uri.port is None
    assert msg.uri.host_ip == "2001:db8::10:5070"


def test_rfc5118_port_unambiguous() -> None:
    msg = parse("port-unambiguous")
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.host == "[2001:db8::10]"
    assert msg.uri.port == 5070


def test_rfc5118_three_colons_parse_leniently() -> None:
    msg = parse("ipv6-bug-abnf-3-colons")
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.host == "[2001:db8:::192.0.2.1]"
    msg = parse("ipv6-correct-abnf-2-colons")
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.host == "[2001:db8::192.0.2.1]"


def test_rfc5118_ipv6_without_brackets_is_rejected() -> None:
    with pytest.raises(SipParseError) as info:
        parse("ipv6-bad")
    assert info.value.status == 400


def test_rfc5118_via_received() -> None:
    (via,) = parse("via-received-param-with-delim").vias
    assert via.host == "[2001:db8::9:1]" and via.received == "[2001:db8::9:255]"
    (via,) = parse("via-received-param-no-delim").vias
    assert via.received == "2001:db8::9:255"


def test_rfc5118_mixed_vias() -> None:
    vias = parse("mult-ip-in-header").vias
    assert [(v.host, v.port) for v in vias] == [
        ("[2001:db8::9:1]", 6050),
        ("192.0.2.1", None),
        ("[2001:db8::9:255]", None),
    ]
    assert vias[2].received == "192.0.2.200"


def test_rfc5118_ipv4_mapped() -> None:
    msg = parse("ipv4-mapped-ipv6")
    assert (msg.top_via.host, msg.top_via.port) == ("[::ffff:192.0.2.10]", 19823)
