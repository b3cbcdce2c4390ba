"""Property tests for the message layer (hypothesis): untrusted input.

No input makes the parser (or the stream framer) raise anything but SipParseError:
arbitrary bytes, junk spliced into a valid message or a generated one, and every
truncation of them. Valid messages are test_properties.py.
"""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st
from support.sip_strategies import FEW, SETTINGS, Expected, messages, parse_or_error

from siptrio.sip import SipParseError, StreamFramer, parse_message_untrusted

# --- untrusted input only ever raises SipParseError -------------------------------------------

SAMPLE = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'f: "A \\"b\\"" <sip:a%41@example.com>;tag=1\r\n'
    b"t: sip:a@example.com\r\n"
    b"i: c@h\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b'm: <sip:a@192.0.2.1;ob>;+sip.instance="<urn:uuid:1>";reg-id=1, sip:b@h;q=0.5\r\n'
    b"Route: <sip:p;lr>\r\n"
    b"Require: path\r\n"
    b"X-Folded: a,\r\n b\r\n"
    b"Expires: 600\r\n"
    b"l: 3\r\n"
    b"\r\n"
    b"abc"
)


def test_sample_is_valid() -> None:
    msg = parse_message_untrusted(SAMPLE)
    assert msg.serialise() == SAMPLE
    assert len(msg.contacts) == 2


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    parse_or_error(data)
    parse_or_error(SAMPLE[:40] + data)
    framer = StreamFramer(max_size=300)
    framer.receive_data(data)
    with contextlib.suppress(SipParseError):
        while framer.next_event() is not None:
            pass


sip_ish = st.lists(
    st.sampled_from(
        [
            b"\r\n",
            b" ",
            b"\t",
            b":",
            b";",
            b",",
            b"<",
            b">",
            b'"',
            b"\\",
            b"\x00",
            b"%",
            b"=",
            b"@",
            b"[",
            b"]",
            b"?",
            b"&",
            b"sip:",
            b"SIP/2.0",
            b"/",
            b"Via",
            b"v",
            b"l",
            b"0",
            b"-1",
            b"\xff",
            b"\xc3\xa9",
            b"\r",
            b"\n",
            b"tag",
            b"branch",
            b"*",
            b"9" * 12,
        ]
    ),
    max_size=12,
).map(b"".join)


@SETTINGS
@given(st.integers(0, len(SAMPLE)), st.integers(0, 20), st.binary(max_size=20) | sip_ish)
def test_bytes_spliced_into_a_valid_message(at: int, cut: int, junk: bytes) -> None:
    parse_or_error(SAMPLE[:at] + junk + SAMPLE[at + cut :])
    parse_or_error(SAMPLE[:at] + junk + SAMPLE[at:])


@FEW
@given(messages(), st.data())
def test_bytes_spliced_into_generated_messages(
    case: tuple[bytes, Expected], data: st.DataObject
) -> None:
    wire, _ = case
    at = data.draw(st.integers(0, len(wire)))
    junk = data.draw(st.binary(max_size=8) | sip_ish)
    cut = data.draw(st.integers(0, 8))
    parse_or_error(wire[:at] + junk + wire[at + cut :])


def test_every_truncation_of_a_valid_message() -> None:
    for end in range(len(SAMPLE) + 1):
        result = parse_or_error(SAMPLE[:end])
        if not isinstance(result, SipParseError):
            # A cut at a line end inside the header section still parses (a datagram's
            # header section may run to its end: RFC 4475 baddn), but only without the
            # Content-Length line; a body shorter than Content-Length never parses.
            assert end == len(SAMPLE) or result.content_length is None
            assert result.serialise() in (SAMPLE[:end], SAMPLE[:end] + b"\r\n")


@settings(FEW, max_examples=30)
@given(messages())
def test_every_truncation_of_generated_messages(case: tuple[bytes, Expected]) -> None:
    data, _ = case
    for end in range(len(data)):
        result = parse_or_error(data[:end])
        if not isinstance(result, SipParseError):
            # Still readable (a cut at a line end: the datagram rule of RFC 4475 baddn),
            # then read as exactly the bytes that arrived, never padded or shifted.
            assert result.serialise() in (data[:end], data[:end] + b"\r\n")
