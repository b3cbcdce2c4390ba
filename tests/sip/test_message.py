"""Messages: control bytes, encodings, edits that keep the rest byte-identical, responses."""

from __future__ import annotations

import pytest

from siptrio.sip import (
    LazyRequest,
    Request,
    Response,
    SipParseError,
    error_response_untrusted,
    make_response,
    parse_message_untrusted,
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds\r\n"
    b"max-forwards:70\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"f: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.example.com>\r\n"
    b"X-Folded: one,\r\n two\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def request(data: bytes = INVITE) -> Request:
    msg = parse_message_untrusted(data)
    assert isinstance(msg, Request)
    return msg


def add_header(line: bytes) -> bytes:
    return INVITE.replace(b"Content-Type:", line + b"\r\nContent-Type:")


def test_round_trip_is_byte_identical() -> None:
    msg = request()
    assert msg.serialise() == INVITE
    assert bytes(msg) == INVITE
    assert parse_message_untrusted(msg.serialise()) == msg
    assert msg.method == "INVITE" and msg.uri_text == "sip:bob@example.com"
    assert msg.max_forwards == 70
    assert msg.body == b"v=0\n"


# --- control bytes and encodings ---------------------------------------------------------


def test_nul_byte_outside_a_quoted_pair_is_400() -> None:
    for line in [b"X-A: a\x00b", b"X-A: \x00", b'X-A: "a\\\\\x00"', b"\x00X-A: b"]:
        with pytest.raises(SipParseError) as info:
            parse_message_untrusted(add_header(line))
        assert info.value.status == 400, line


def test_nul_in_a_quoted_pair_is_kept() -> None:
    # RFC 4475 intmeth: "NUL:\<00>" inside a quoted string is legal.
    data = add_header(b'X-A: "NUL:\\\x00 BEL:\\\x07 DEL:\\\x7f"')
    assert request(data).serialise() == data


def test_nul_in_the_start_line_is_400() -> None:
    with pytest.raises(SipParseError):
        parse_message_untrusted(INVITE.replace(b"sip:bob@", b"sip:b\x00b@", 1))


@pytest.mark.parametrize("junk", [b"a\rb", b"a\nb", b"a\r"])
def test_bare_cr_or_lf_in_the_header_section_is_400(junk: bytes) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(add_header(b"X-A: " + junk))
    assert info.value.status == 400


def test_non_utf8_in_a_typed_header_is_400() -> None:
    data = INVITE.replace(b"Alice", b"Al\xffce")
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(data)
    assert info.value.status == 400
    assert "From" in info.value.reason
    reply = error_response_untrusted(data, info.value)
    assert reply is not None and reply.startswith(b"SIP/2.0 400 ")


def test_non_utf8_in_an_unknown_header_is_kept_byte_for_byte() -> None:
    data = add_header(b"X-Latin1: caf\xe9 \xff\xfe")
    msg = request(data)
    assert msg.serialise() == data
    assert msg.raw_values("x-latin1") == [b"caf\xe9 \xff\xfe"]
    with pytest.raises(SipParseError):
        msg.values("x-latin1")
    forwarded = msg.set("max-forwards", "69")
    assert b"X-Latin1: caf\xe9 \xff\xfe\r\n" in forwarded.serialise()


def test_utf8_is_fine_everywhere_text_is_allowed() -> None:
    data = INVITE.replace(b"Bob <", '"B\u00f6b \u2603" <'.encode())
    assert request(data).to.display == "B\u00f6b \u2603"


def test_non_utf8_reason_phrase_is_400() -> None:
    resp = make_response(request(), 200).serialise().replace(b" OK", b" O\xff")
    with pytest.raises(SipParseError):
        parse_message_untrusted(resp)


# --- start lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"INVITE  sip:bob@example.com SIP/2.0", 400),
        (b"INVITE sip:bob@example.com SIP/2.0 ", 400),
        (b"INVITE sip:bob@example.com", 400),
        (b"INVITE <sip:bob@example.com> SIP/2.0", 400),
        (b"INV@TE sip:bob@example.com SIP/2.0", 400),
        (b"INVITE sip:bob@example.com?Route=x SIP/2.0", 400),
        (b"INVITE sip:bob@example.com SIP/7.0", 505),
    ],
)
def test_bad_request_lines(line: bytes, status: int) -> None:
    data = INVITE.replace(b"INVITE sip:bob@example.com SIP/2.0", line, 1)
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(data)
    assert info.value.status == status


def test_cseq_method_must_match() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(INVITE.replace(b"314159 INVITE", b"314159 BYE"))
    assert info.value.status == 400


@pytest.mark.parametrize("value", [b"256", b"-1", b"seventy", b"70, 69"])
def test_bad_max_forwards(value: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message_untrusted(INVITE.replace(b"max-forwards:70", b"Max-Forwards: " + value))


def test_responses() -> None:
    base = make_response(request(), 180).serialise()
    for line, status, reason in [
        (b"SIP/2.0 180 Ringing", 180, "Ringing"),
        (b"SIP/2.0 100 ", 100, ""),
        ("SIP/2.0 200 \u00c7a va, merci!".encode(), 200, "\u00c7a va, merci!"),
        (b"SIP/2.0 699 x", 699, "x"),
    ]:
        resp = parse_message_untrusted(base.replace(b"SIP/2.0 180 Ringing", line))
        assert isinstance(resp, Response)
        assert (resp.status, resp.reason) == (status, reason)
    for line in [b"SIP/2.0 99 Low", b"SIP/2.0 700 High", b"SIP/2.0 4294967301 Big", b"SIP/2.0"]:
        with pytest.raises(SipParseError):
            parse_message_untrusted(base.replace(b"SIP/2.0 180 Ringing", line))
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(base.replace(b"SIP/2.0 180", b"SIP/3.0 180"))
    assert info.value.status == 505


# --- edits ---------------------------------------------------------------------------


def test_forwarded_request_differs_only_in_the_touched_lines() -> None:
    msg = request()
    fwd = msg.prepend("via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1").set(
        "max-forwards", "69"
    )
    old_lines = INVITE.split(b"\r\n")
    new_lines = fwd.serialise().split(b"\r\n")
    assert new_lines[0] == old_lines[0]
    assert new_lines[1] == b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1"
    assert new_lines[3] == b"Max-Forwards: 69"
    assert old_lines[2] == b"max-forwards:70"
    assert new_lines[2:3] + new_lines[4:] == old_lines[1:2] + old_lines[3:]
    again = parse_message_untrusted(fwd.serialise())
    assert again == fwd
    assert [v.branch for v in again.vias] == ["z9hG4bKp1", "z9hG4bK776asdhds"]
    assert again.max_forwards == 69
    # The original is untouched (frozen, and edits return new messages).
    assert msg.serialise() == INVITE
    assert msg.max_forwards == 70


def test_remove_append_and_with_body() -> None:
    msg = request().remove("contact").append("record-route", "<sip:p.example.com;lr>")
    assert not msg.has("contact")
    assert msg.headers[-1].raw == b"Record-Route: <sip:p.example.com;lr>"
    body = b"hello"
    new = msg.with_body(body, "text/plain")
    assert new.body == body
    assert new.values("content-length") == ["5"]
    assert new.values("content-type") == ["text/plain"]
    again = parse_message_untrusted(new.serialise())
    assert again == new and again.body == body


def test_with_uri() -> None:
    msg = request()
    target = request(INVITE.replace(b"INVITE sip:bob@example.com", b"INVITE sip:bob@192.0.2.4"))
    moved = msg.with_uri(target.uri)
    assert moved.serialise().startswith(b"INVITE sip:bob@192.0.2.4 SIP/2.0\r\n")
    assert moved.serialise().split(b"\r\n")[1:] == INVITE.split(b"\r\n")[1:]


# --- make_response -----------------------------------------------------------------------


def test_make_response_copies_and_tags() -> None:
    req = request()
    resp = make_response(req, 486)
    assert (resp.status, resp.reason) == (486, "Busy Here")
    lines = resp.serialise().split(b"\r\n")
    assert lines[0] == b"SIP/2.0 486 Busy Here"
    assert lines[1] == b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds"
    assert b"f: Alice <sip:alice@example.com>;tag=1928301774" in lines
    assert b"Call-ID: a84b4c76e66710@pc33.example.com" in lines
    assert b"CSeq: 314159 INVITE" in lines
    assert not any(line.lower().startswith((b"contact", b"x-folded")) for line in lines)
    parsed = parse_message_untrusted(resp.serialise())
    assert isinstance(parsed, Response) and parsed == resp
    assert parsed.to.uri_text == "sip:bob@example.com"
    assert parsed.to.display == "Bob"
    tag = parsed.to.tag
    assert tag
    # Stable for the same request (a retransmission gets the same tag) ...
    assert make_response(request(), 486).to.tag == tag
    assert make_response(request(), 200).to.tag == tag
    # ... and different for a different transaction.
    other = request(INVITE.replace(b"z9hG4bK776asdhds", b"z9hG4bK776asdhdt"))
    assert make_response(other, 486).to.tag != tag
    assert parsed.content_length == 0 and parsed.body == b""


def test_make_response_keeps_an_existing_to_tag_and_skips_it_for_100() -> None:
    tagged = request(INVITE.replace(b"To: Bob <sip:bob@example.com>", b"t: <sip:b@x>;tag=abc"))
    resp = make_response(tagged, 200)
    assert resp.to.tag == "abc"
    assert b"t: <sip:b@x>;tag=abc" in resp.serialise()
    trying = make_response(request(), 100)
    assert trying.to.tag is None
    assert make_response(request(), 404, to_tag="fixed").to.tag == "fixed"


def test_make_response_with_every_via_and_a_body() -> None:
    req = request().prepend("via", "SIP/2.0/TCP p.example.com;branch=z9hG4bKp")
    assert isinstance(req, Request)
    resp = make_response(
        req, 200, "Fine", headers=[("Allow", "INVITE, ACK")], body=b"x=1", content_type="t/p"
    )
    parsed = parse_message_untrusted(resp.serialise())
    assert [v.branch for v in parsed.vias] == ["z9hG4bKp", "z9hG4bK776asdhds"]
    assert parsed.values("allow") == ["INVITE, ACK"]
    assert (parsed.content_type, parsed.body, parsed.content_length) == ("t/p", b"x=1", 3)
    assert isinstance(parsed, Response) and parsed.reason == "Fine"


# --- error_response_untrusted ---------------------------------------------------------------


def _reply(data: bytes) -> bytes | None:
    try:
        parse_message_untrusted(data)
    except SipParseError as err:
        return error_response_untrusted(data, err)
    raise AssertionError("expected a parse error")


def test_error_reply_copies_the_identifying_headers() -> None:
    data = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    reply = _reply(data)
    assert reply is not None
    resp = parse_message_untrusted(reply)
    assert isinstance(resp, Response) and resp.status == 400
    assert resp.call_id == "a84b4c76e66710@pc33.example.com"
    assert resp.top_via.branch == "z9hG4bK776asdhds"
    assert resp.content_length == 0


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nCSeq: x INVITE\r\n\r\n",
        INVITE.replace(b"INVITE sip", b"ACK sip", 1).replace(b"CSeq: 314159 INVITE", b"CSeq: x"),
        INVITE.replace(b"Via: SIP/2.0/UDP", b"Via: garbage", 1).replace(b"314159", b"x"),
        b"\x00\x01\x02",
        b"",
    ],
    ids=["response", "ack", "no-via", "binary", "empty"],
)
def test_no_error_reply_when_it_cannot_be_addressed(data: bytes) -> None:
    assert _reply(data) is None


def test_error_reply_reason_is_sanitised() -> None:
    err = SipParseError("bad \r\n header \x00 \u00e9")
    reply = error_response_untrusted(INVITE, err)
    assert reply is not None
    first = reply.split(b"\r\n", 1)[0]
    assert first == b"SIP/2.0 400 bad ?? header ? ?"
    assert isinstance(parse_message_untrusted(reply), Response)


def test_error_reply_extra_headers_and_server() -> None:
    err = SipParseError("Bad Extension", status=420, extra_headers=(("Unsupported", "foo"),))
    reply = error_response_untrusted(INVITE, err, server="siptrio")
    assert reply is not None
    resp = parse_message_untrusted(reply)
    assert resp.values("unsupported") == ["foo"]
    assert resp.values("server") == ["siptrio"]
    assert isinstance(resp, Response) and resp.status == 420


def test_lazy_request_loads_once_on_first_read() -> None:
    data = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-lazy\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
        b"Call-ID: lazy-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
    loads: list[int] = []

    def load() -> Request:
        loads.append(1)
        return request(data)

    lazy = LazyRequest("REGISTER", load)
    assert lazy.method == "REGISTER" and lazy.body == b"" and not loads  # known without it
    assert lazy.call_id == "lazy-1"  # a view: loads
    assert lazy.serialise() == data and lazy.top_via.branch == "z9hG4bK-lazy"
    assert isinstance(lazy, Request) and loads == [1]
    with pytest.raises(AttributeError):
        lazy.no_such_thing  # noqa: B018
    assert loads == [1]
