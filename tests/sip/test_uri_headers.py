"""URIs (siptrio.sip.uri) and typed header values (siptrio.sip.headers)."""

from __future__ import annotations

import pytest

from siptrio.sip import (
    AbsoluteUri,
    Request,
    SipParseError,
    SipUri,
    TelUri,
    parse_message_untrusted,
    parse_name_addr,
    parse_uri_untrusted,
    parse_via,
)
from siptrio.sip.headers import (
    canonical_name,
    display_name,
    is_list_header,
    parse_cseq,
    parse_token_list,
    split_list,
)


def sip(text: str) -> SipUri:
    uri = parse_uri_untrusted(text)
    assert isinstance(uri, SipUri)
    return uri


# --- URIs ------------------------------------------------------------------------------


def test_sip_uri_parts() -> None:
    text = (
        "sip:alice:se%20cret@Atlanta.Example.COM:5070;transport=TCP;lr;maddr=239.255.255.1"
        "?subject=project%20x&priority=urgent"
    )
    uri = sip(text)
    assert uri.scheme == "sip"
    assert uri.user == "alice"
    assert uri.password == "se%20cret"
    assert uri.host == "Atlanta.Example.COM"
    assert uri.port == 5070
    assert uri.params == (("transport", "TCP"), ("lr", None), ("maddr", "239.255.255.1"))
    assert uri.transport == "tcp"
    assert uri.lr
    assert uri.param("MADDR") == "239.255.255.1"
    assert uri.param("lr") == ""
    assert uri.param("ttl") is None
    assert uri.headers == ("subject=project%20x", "priority=urgent")
    assert str(uri) == text
    assert uri.serialise() == text


def test_sips_uri_with_ipv6_reference() -> None:
    uri = sip("sips:bob@[2001:db8::1]:5061")
    assert uri.scheme == "sips"
    assert uri.host == "[2001:db8::1]"
    assert uri.host_ip == "2001:db8::1"
    assert uri.port == 5061
    no_port = sip("sip:[::ffff:192.0.2.1]")
    assert no_port.user is None
    assert no_port.host_ip == "::ffff:192.0.2.1"
    assert no_port.port is None


def test_scheme_is_case_insensitive() -> None:
    uri = sip("SIP:Alice@EXAMPLE.com")
    assert uri.scheme == "sip"
    assert str(uri) == "SIP:Alice@EXAMPLE.com"  # the text is kept as sent
    assert uri.aor() == "sip:Alice@example.com"


def test_user_with_semicolons_and_escaped_at() -> None:
    # RFC 4475 semiuri: the user part is "user;par=u@example.net".
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert uri.params == ()


def test_tel_uri() -> None:
    uri = parse_uri_untrusted("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(uri, TelUri)
    assert uri.scheme == "tel"
    assert uri.number == "+1-201-555-0123"
    assert uri.params == (("phone-context", "example.com"),)
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


@pytest.mark.parametrize(
    ("text", "scheme", "rest"),
    [
        ("mailto:alice@example.com", "mailto", "alice@example.com"),
        ("http://www.example.com/x?y=z", "http", "//www.example.com/x?y=z"),
        (
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "urn",
            "uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        ),
        ("IM:alice@example.com", "im", "alice@example.com"),
        ("soap.beep://192.0.2.103:3002", "soap.beep", "//192.0.2.103:3002"),
        ("isbn:2983792873", "isbn", "2983792873"),
    ],
)
def test_other_schemes_are_opaque_absolute_uris(text: str, scheme: str, rest: str) -> None:
    # The 416-worthy schemes: parsed, never routed on; deciding 416 is the core's job.
    uri = parse_uri_untrusted(text)
    assert isinstance(uri, AbsoluteUri)
    assert (uri.scheme, uri.rest, str(uri)) == (scheme, rest, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        ":x",
        "1sip:x",
        "sip:",
        "sip:@example.com",
        "sip:alice@",
        "sip:alice@example.com;",
        "sip:alice@example.com;;lr",
        "sip:alice@example.com;=x",
        "sip:alice@example.com;maddr=",
        "sip:alice@example.com;a=b=c",
        "sip:alice@example.com?",
        "sip:alice@example.com?subject",
        "sip:alice@example.com?=x",
        "sip:al%2@example.com",
        "sip:al%zzice@example.com",
        "sip:al ice@example.com",
        "sip:<alice@example.com>",
        'sip:"alice"@example.com',
        "sip:\u00e9@example.com",
        "sip:alice@ex\u00e4mple.com",
        "sip:alice@-example.com",
        "sip:alice@.example.com",
        "sip:alice@example.com:",
        "sip:alice@example.com:65536",
        "sip:alice@example.com:5060:5060",
        "sip:alice@example.com:\u0665",
        "sip:alice@[2001:db8::1",
        "sip:alice@[]",
        "sip:alice@[192.0.2.1]",
        "sip:alice@[2001:db8::1]x",
        "sip:2001:db8::10",
        "tel:",
        "mailto:",
    ],
)
def test_malformed_uris_are_400(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_uri_untrusted(text)
    assert info.value.status == 400


def test_aor_normalises_escapes_case_scheme_and_drops_the_rest() -> None:
    assert sip("sip:%41lice@example.com").aor() == "sip:Alice@example.com"
    assert sip("sip:Alice@EXAMPLE.COM").aor() == "sip:Alice@example.com"
    assert sip("sips:Alice@example.com:5061;transport=tls?x=y").aor() == "sip:Alice@example.com"
    assert sip("sip:alice:pw@example.com").aor() == "sip:alice@example.com"
    assert sip("sip:example.com").aor() == "sip:example.com"
    # User parts are case-sensitive (RFC 3261 section 19.1.4).
    assert sip("sip:alice@example.com").aor() != sip("sip:Alice@example.com").aor()
    # Escapes of characters that must stay escaped are one canonical spelling.
    assert sip("sip:a%3ab@x").aor() == sip("sip:a%3Ab@x").aor() == "sip:a%3Ab@x"
    assert sip("sip:null-%00-null@x").aor() == "sip:null-%00-null@x"


def test_key_equality_follows_rfc3261_19_1_4() -> None:
    base = sip("sip:Alice@example.com;transport=tcp;lr").key()
    assert sip("sip:%41lice@EXAMPLE.com;LR;Transport=TCP").key() == base
    assert sip("sip:Alice@example.com;l%72;transport=t%63p").key() == base
    assert sip("sip:alice@example.com;transport=tcp;lr").key() != base
    assert sip("sip:Alice@example.com:5060;transport=tcp;lr").key() != base
    assert sip("sips:Alice@example.com;transport=tcp;lr").key() != base
    assert sip("sip:Alice@example.com;transport=udp;lr").key() != base
    assert sip("sip:Alice:pw@example.com;transport=tcp;lr").key() != base
    assert sip("sip:%00@x").key() != sip("sip:%00%00@x").key()
    assert sip("sip:[2001:DB8::1]").key() == sip("sip:[2001:db8::1]").key()


def test_evolve_reserialises() -> None:
    uri = sip("sip:alice@example.com;transport=tcp").evolve(port=5070, params=(("lr", None),))
    assert str(uri) == "sip:alice@example.com:5070;lr"
    assert parse_uri_untrusted(str(uri)) == uri


# --- Via ----------------------------------------------------------------------------


def test_via_parts() -> None:
    via = parse_via("SIP/2.0/UDP pc33.example.com:5066;branch=z9hG4bK776;rport;received=192.0.2.4")
    assert via.protocol == "SIP/2.0"
    assert via.transport == "UDP"
    assert (via.host, via.port, via.sent_by) == ("pc33.example.com", 5066, "pc33.example.com:5066")
    assert via.branch == "z9hG4bK776"
    assert via.rport == ""  # asked for, not yet filled in
    assert via.received == "192.0.2.4"
    filled = via.with_param("rport", "5067").with_param("received", "198.51.100.1")
    assert filled.rport == "5067"
    assert str(filled) == (
        "SIP/2.0/UDP pc33.example.com:5066;branch=z9hG4bK776;rport=5067;received=198.51.100.1"
    )
    assert parse_via(str(filled)) == filled


def test_via_without_optional_parts() -> None:
    via = parse_via("SIP/2.0/tls client.example.com")
    assert via.transport == "TLS"
    assert (via.port, via.branch, via.rport, via.received) == (None, None, None, None)


@pytest.mark.parametrize(
    ("text", "received"),
    [
        ("SIP/2.0/UDP [2001:db8::9:1]:5060;received=[2001:db8::9:255]", "[2001:db8::9:255]"),
        ("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKx", "2001:db8::9:255"),
        ("SIP/2.0/UDP [::1];received=::ffff:192.0.2.1", "::ffff:192.0.2.1"),
    ],
)
def test_via_ipv6_received(text: str, received: str) -> None:
    via = parse_via(text)
    assert via.host.startswith("[")
    assert via.received == received


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP host;branch=x",
        "SIP / 2.0 / UDP host;branch=x",
        "SIP/ 2.0 /UDP host;branch=x",
        "SIP\t/\t2.0\t/\tUDP\thost\t;\tbranch\t=\tx",
        "  SIP /2.0/ UDP   host ; branch = x  ",
    ],
)
def test_via_lws_around_slash_semicolon_and_equals(text: str) -> None:
    via = parse_via(text)
    assert (via.protocol, via.transport, via.host, via.branch) == ("SIP/2.0", "UDP", "host", "x")
    assert via.text == text.strip(" \t")


def test_via_lws_around_port_colon() -> None:
    assert parse_via("SIP/2.0/UDP host : 5060").port == 5060
    via = parse_via("SIP/2.0/UDP [2001:db8::1] :5070 ;branch=z9hG4bKy")
    assert (via.host, via.port, via.branch) == ("[2001:db8::1]", 5070, "z9hG4bKy")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0",
        "SIP/2.0 UDP host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP ",
        "SIP/2.0/UDPhost",
        "XIP/2.0/UDP host",
        "SIP/2.0/UDP host;branch",
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host;received",
        "SIP/2.0/UDP host;;branch=x",
        "SIP/2.0/UDP host extra",  # LWS inside the host is not allowed ...
        "SIP/2.0/UDP 10.0.0.1 0",  # ... and must never turn into 10.0.0.10
        "SIP/2.0/UDP [2001:db8::1",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;received=[zz]",
    ],
)
def test_malformed_via_is_400(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_via(text)
    assert info.value.status == 400


# --- name-addr / addr-spec --------------------------------------------------------------


def test_quoted_display_name_with_escapes() -> None:
    na = parse_name_addr(r'"Alice \"The Boss\" \\ Smith" <sip:alice@example.com>;tag=x1', "From")
    assert na.display == 'Alice "The Boss" \\ Smith'
    assert na.uri_text == "sip:alice@example.com"
    assert na.tag == "x1"
    assert parse_name_addr(na.serialise(), "From") == na


def test_quoted_display_name_may_hold_delimiters_and_utf8() -> None:
    na = parse_name_addr('"Bob, Jr. <boss>; \u00e9l\u00e8ve"<sip:bob@example.com>', "To")
    assert na.display == "Bob, Jr. <boss>; \u00e9l\u00e8ve"
    assert na.uri_text == "sip:bob@example.com"


def test_token_display_name() -> None:
    na = parse_name_addr("Alice  Q.\tSmith <sip:alice@example.com>", "To")
    assert na.display == "Alice Q. Smith"
    assert parse_name_addr("caller<sip:caller@example.com>;tag=1", "From").display == "caller"


def test_addr_spec_params_are_header_params() -> None:
    na = parse_name_addr("sip:alice@example.com;transport=tcp;tag=88", "From")
    assert na.display is None
    assert na.uri_text == "sip:alice@example.com"
    assert na.params == (("transport", "tcp"), ("tag", "88"))
    assert isinstance(na.uri, SipUri) and na.uri.params == ()


def test_name_addr_params_inside_brackets_are_uri_params() -> None:
    na = parse_name_addr("<sip:alice@example.com;transport=tcp>;tag=88", "From")
    assert na.params == (("tag", "88"),)
    assert isinstance(na.uri, SipUri) and na.uri.params == (("transport", "tcp"),)


def test_addr_spec_with_quoted_angle_brackets_in_a_param() -> None:
    text = 'sip:alice@192.0.2.1;+sip.instance="<urn:uuid:0000-1111>";reg-id=1'
    na = parse_name_addr(text, "Contact")
    assert na.uri_text == "sip:alice@192.0.2.1"
    assert na.instance == "<urn:uuid:0000-1111>"
    assert na.reg_id == 1


def test_contact_params() -> None:
    na = parse_name_addr(
        '<sip:alice@192.0.2.1;ob>;expires=3600;q=0.7;+sip.instance="<urn:uuid:ab>";reg-id=2',
        "Contact",
    )
    assert (na.expires, na.q, na.instance, na.reg_id) == (3600, 0.7, "<urn:uuid:ab>", 2)
    assert isinstance(na.uri, SipUri) and na.uri.param("ob") == ""
    bare = parse_name_addr("<sip:alice@192.0.2.1>", "Contact")
    assert (bare.expires, bare.q, bare.instance, bare.reg_id, bare.tag) == (None,) * 5
    with pytest.raises(SipParseError):
        parse_name_addr("<sip:a@b>;q=1.5", "Contact").q  # noqa: B018
    with pytest.raises(SipParseError):
        parse_name_addr("<sip:a@b>;expires=soon", "Contact").expires  # noqa: B018


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:alice@example.com>',
        '"Alice <sip:alice@example.com>;tag=1',
        '"Alice" sip:alice@example.com',
        "Bob, Jr. <sip:bob@example.com>",  # RFC 4475 baddn
        "Bob@home <sip:bob@example.com>",
        "\u00c9l\u00e8ve <sip:bob@example.com>",
        "<sip:bob@example.com",
        "<sip:bob@example.com>junk",
        "< sip:bob@example.com >",  # RFC 4475 badaspec
        "sip:bob@example.com?Route=%3Csip:x%3E",  # RFC 4475 regbadct
        "<sip:bob@example.com>;;tag=1",
        "<sip:bob@example.com>;tag=",
        "*",
    ],
)
def test_malformed_name_addr_is_400(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_name_addr(text, "To")
    assert info.value.status == 400


def test_name_addr_with_other_schemes() -> None:
    assert isinstance(parse_name_addr("tel:+1555;tag=1", "From").uri, TelUri)
    assert isinstance(parse_name_addr("<urn:service:sos>", "To").uri, AbsoluteUri)


# --- lists, CSeq, names ---------------------------------------------------------------


def test_split_list_outside_quotes_and_brackets() -> None:
    assert split_list('"a,b" <sip:x@y>, <sip:z@w;p=a,b>', "Contact") == [
        '"a,b" <sip:x@y>',
        "<sip:z@w;p=a,b>",  # the comma inside <> belongs to the URI
    ]
    assert split_list(r'"a\"," <sip:x@y>,<sip:1@2>', "Contact") == [
        r'"a\"," <sip:x@y>',
        "<sip:1@2>",
    ]
    assert split_list('<sip:x@y>;p="a,b" , <sip:z@w>', "Contact") == [
        '<sip:x@y>;p="a,b"',
        "<sip:z@w>",
    ]
    assert split_list("SIP/2.0/UDP a ,SIP/2.0/TCP b", "Via") == ["SIP/2.0/UDP a", "SIP/2.0/TCP b"]


@pytest.mark.parametrize("text", ["a,,b", "a,", ",a", '"a,b <sip:x@y>', "<sip:x@y, z"])
def test_split_list_errors(text: str) -> None:
    with pytest.raises(SipParseError):
        split_list(text, "Contact")


INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.example.com>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def with_lines(*lines: bytes, drop: tuple[bytes, ...] = ()) -> Request:
    """INVITE with the header lines named in ``drop`` removed and ``lines`` added."""
    head = INVITE[: -len(b"\r\n\r\n")].split(b"\r\n")
    dropped = {d.lower() for d in drop}
    kept = [x for x in head if x.split(b":", 1)[0].strip().lower() not in dropped]
    msg = parse_message_untrusted(b"\r\n".join([*kept, *lines]) + b"\r\n\r\n")
    assert isinstance(msg, Request)
    return msg


def test_contact_list_across_lines_and_commas() -> None:
    msg = with_lines(
        b'Contact: "a,b" <sip:x@y>, <sip:z@w;p=a%2Cb>',
        b"m: sip:q@r;expires=0",
        drop=(b"Contact",),
    )
    assert [c.uri_text for c in msg.contacts] == ["sip:x@y", "sip:z@w;p=a%2Cb", "sip:q@r"]
    assert msg.contacts[0].display == "a,b"
    assert msg.contacts[2].expires == 0
    assert not msg.contact_star


def test_contact_comma_inside_brackets_is_not_a_separator() -> None:
    msg = with_lines(b'Contact: "a,b" <sip:x@y>, <sip:z@w;p=a,b>', drop=(b"Contact",))
    assert msg.elements("contact") == ['"a,b" <sip:x@y>', "<sip:z@w;p=a,b>"]
    with pytest.raises(SipParseError):  # ',' is not allowed unescaped in a URI param
        msg.contacts  # noqa: B018


def test_contact_star() -> None:
    msg = with_lines(b"Contact: *", b"Expires: 0", drop=(b"Contact",))
    assert msg.contact_star and msg.contacts == () and msg.expires == 0
    mixed = with_lines(b"Contact: *, <sip:a@b>", drop=(b"Contact",))
    with pytest.raises(SipParseError):
        mixed.contacts  # noqa: B018


def test_single_valued_headers() -> None:
    with pytest.raises(SipParseError):
        with_lines(b"From: <sip:a@b>;tag=1, <sip:c@d>;tag=2", drop=(b"From",))
    with pytest.raises(SipParseError):
        with_lines(b"To: <sip:a@b>", b"t: <sip:c@d>", drop=(b"To",))
    with pytest.raises(SipParseError):
        with_lines(b"i: another-call-id")
    # A comma in a quoted display name is not a second value.
    msg = with_lines(b'From: "Doe, John" <sip:jd@example.com>;tag=9', drop=(b"From",))
    assert msg.from_.display == "Doe, John"


def test_token_lists_and_expires() -> None:
    msg = with_lines(
        b"Supported: path, outbound",
        b"k: gruu",
        b"Require: 100rel",
        b"Proxy-Require: foo ,bar",
        b"Expires: 99999999999",
    )
    assert msg.supported == ("path", "outbound", "gruu")
    assert msg.require == ("100rel",)
    assert msg.proxy_require == ("foo", "bar")
    assert msg.expires == 2**32 - 1
    assert with_lines().supported == ()
    with pytest.raises(SipParseError):
        parse_token_list(["a b"], "Require")


def test_cseq() -> None:
    cseq = parse_cseq("  0009 \t INVITE ")
    assert (cseq.number, cseq.method, str(cseq)) == (9, "INVITE", "9 INVITE")
    assert parse_cseq("4294967295 ACK").number == 2**32 - 1
    for bad in ["4294967296 INVITE", "INVITE", "1", "1 INVITE x", "-1 INVITE", "1 INV/TE"]:
        with pytest.raises(SipParseError):
            parse_cseq(bad)


COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "f": "from",
    "t": "to",
    "v": "via",
    "k": "supported",
    "c": "content-type",
    "s": "subject",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "d": "request-disposition",
    "a": "accept-contact",
    "j": "reject-contact",
}


COMPACT_VALUES = {
    "call-id": "compact@example.com",
    "contact": "<sip:alice@192.0.2.1>",
    "content-length": "0",
    "from": "<sip:alice@example.com>;tag=1",
    "to": "<sip:bob@example.com>",
    "via": "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKcompact",
    "content-type": "text/plain",
}


@pytest.mark.parametrize(("short", "long"), sorted(COMPACT.items()))
def test_compact_forms(short: str, long: str) -> None:
    assert canonical_name(short.encode()) == long
    assert canonical_name(short.upper().encode()) == long
    assert canonical_name(long.upper().encode()) == long
    value = COMPACT_VALUES.get(long, "x-value")
    for name in (short, short.upper()):
        msg = with_lines(f"{name}: {value}".encode(), drop=(long.encode(),))
        assert msg.values(long) == [value]
        assert msg.serialise().count(f"\r\n{name}: {value}\r\n".encode()) == 1


def test_compact_forms_feed_the_typed_views() -> None:
    lines = [
        f"{s}: {COMPACT_VALUES[n]}".encode() for s, n in COMPACT.items() if n in COMPACT_VALUES
    ]
    msg = with_lines(*lines, drop=tuple(n.encode() for n in COMPACT_VALUES))
    assert all(h.raw[1:2] == b":" for h in msg.headers if h.name in COMPACT_VALUES)
    assert msg.call_id == "compact@example.com"
    assert msg.from_.tag == "1"
    assert msg.to.uri_text == "sip:bob@example.com"
    assert msg.top_via.branch == "z9hG4bKcompact"
    assert msg.contacts[0].uri_text == "sip:alice@192.0.2.1"
    assert msg.content_length == 0
    assert msg.content_type == "text/plain"


def test_header_names_and_lists() -> None:
    assert canonical_name(b"NewFangledHeader") == "newfangledheader"
    assert display_name("call-id") == "Call-ID"
    assert display_name("cseq") == "CSeq"
    assert display_name("www-authenticate") == "WWW-Authenticate"
    assert display_name("record-route") == "Record-Route"
    assert is_list_header("via") and is_list_header("contact")
    assert not is_list_header("date") and not is_list_header("www-authenticate")


def test_folded_header_lines() -> None:
    msg = with_lines(
        b"From:",
        b"  Alice",
        b"\t<sip:alice@example.com>",
        b" ;tag=1928301774",
        b"X-Note: one",
        b"    two",
        drop=(b"From",),
    )
    assert msg.from_.display == "Alice"
    assert msg.from_.tag == "1928301774"
    assert msg.values("x-note") == ["one two"]
    assert b"From:\r\n  Alice\r\n\t<sip:alice@example.com>\r\n ;tag=1928301774" in msg.serialise()


def test_routes_and_paths() -> None:
    msg = with_lines(
        b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
        b"Record-Route: <sip:rr.example.com;lr>",
        b"Path: <sip:edge.example.com;lr;ob>",
    )
    assert [r.uri_text for r in msg.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert all(isinstance(r.uri, SipUri) and r.uri.lr for r in msg.routes)
    assert [r.uri_text for r in msg.record_routes] == ["sip:rr.example.com;lr"]
    assert [p.uri_text for p in msg.paths] == ["sip:edge.example.com;lr;ob"]
