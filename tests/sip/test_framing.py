"""Content-Length framing: StreamFramer for TCP/TLS, and whole datagrams."""

from __future__ import annotations

import pytest

from siptrio.sip import (
    KeepAlive,
    Response,
    SipParseError,
    StreamFramer,
    error_response_untrusted,
    parse_message_untrusted,
)

HEAD = (
    b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKfr4m3\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=49583\r\n"
    b"Call-ID: framing@192.0.2.1\r\n"
    b"CSeq: 1 MESSAGE\r\n"
)


def message(body: bytes = b"hello\r\n\r\nworld", length: bytes | None = None) -> bytes:
    cl = str(len(body)).encode() if length is None else length
    return HEAD + b"Content-Length: " + cl + b"\r\n\r\n" + body


def drain(framer: StreamFramer) -> list[bytes | KeepAlive]:
    out: list[bytes | KeepAlive] = []
    while (event := framer.next_event()) is not None:
        out.append(event)
    return out


# --- StreamFramer ---------------------------------------------------------------------


def test_one_message_with_crlfcrlf_in_its_body() -> None:
    framer = StreamFramer()
    framer.receive_data(message())
    assert drain(framer) == [message()]
    assert framer.buffered == 0


def test_messages_and_keepalives_in_one_chunk() -> None:
    a, b = message(b"a"), message(b"")
    framer = StreamFramer()
    framer.receive_data(b"\r\n\r\n" + a + b"\r\n\r\n" + b + b"\r\n")
    assert drain(framer) == [KeepAlive.PING, a, KeepAlive.PING, b, KeepAlive.PONG]


def test_byte_at_a_time() -> None:
    data = message() + b"\r\n\r\n" + message(b"x")
    framer = StreamFramer()
    events: list[bytes | KeepAlive] = []
    for i in range(len(data)):
        framer.receive_data(data[i : i + 1])
        events.extend(drain(framer))
    # The ping arrives one byte at a time too: see test_ping_split_after_its_first_crlf.
    assert events[0] == message()
    assert events[-1] == message(b"x")
    assert all(isinstance(e, KeepAlive) for e in events[1:-1])


def test_incomplete_body_waits() -> None:
    framer = StreamFramer()
    framer.receive_data(message()[:-1])
    assert framer.next_event() is None
    framer.receive_data(message()[-1:])
    assert framer.next_event() == message()
    assert framer.next_event() is None


def test_partial_ping_waits() -> None:
    framer = StreamFramer()
    framer.receive_data(b"\r\n\r")
    assert framer.next_event() is None
    framer.receive_data(b"\n")
    assert framer.next_event() is KeepAlive.PING


def test_ping_split_after_its_first_crlf() -> None:
    # A lone CRLF at the end of the buffer cannot be told from half a ping; the
    # framer reports keep-alives for it and never a message or an error.
    framer = StreamFramer()
    framer.receive_data(b"\r\n")
    first = drain(framer)
    framer.receive_data(b"\r\n" + message())
    rest = drain(framer)
    events = first + rest
    assert events[-1] == message()
    assert events[:-1] and all(isinstance(e, KeepAlive) for e in events[:-1])


def test_compact_and_spaced_content_length() -> None:
    data = HEAD + b"l  :   3\r\n\r\nabc"
    framer = StreamFramer()
    framer.receive_data(data + data)
    assert drain(framer) == [data, data]
    assert parse_message_untrusted(data).body == b"abc"


def _framing_error(data: bytes, max_size: int = 65535) -> SipParseError:
    framer = StreamFramer(max_size=max_size)
    framer.receive_data(data)
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    return info.value


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (HEAD + b"\r\nbody", 400),  # no Content-Length on a stream
        (message(length=b"-5"), 400),
        (message(length=b"5x"), 400),
        (message(length=b""), 400),
        (HEAD + b"Content-Length: 4\r\nl: 5\r\n\r\nbody", 400),  # conflicting
        (message(length=b"70000"), 413),
    ],
    ids=["missing", "negative", "malformed", "empty", "conflicting", "oversize"],
)
def test_stream_framing_errors_close(data: bytes, status: int) -> None:
    err = _framing_error(data)
    assert err.status == status
    assert err.close
    # The offending head is kept so that the error can still be answered.
    framer_reply = error_response_untrusted(data[: data.index(b"\r\n\r\n") + 4], err)
    assert framer_reply is not None
    reply = parse_message_untrusted(framer_reply)
    assert isinstance(reply, Response) and reply.status == status


def test_stream_error_head_addresses_the_reply() -> None:
    framer = StreamFramer()
    framer.receive_data(message(length=b"-1"))
    with pytest.raises(SipParseError) as info:
        framer.next_event()
    reply = error_response_untrusted(framer.error_head, info.value)
    assert reply is not None
    assert b"branch=z9hG4bKfr4m3" in reply
    assert reply.startswith(b"SIP/2.0 400 ")


def test_stream_oversize_without_end_of_header() -> None:
    err = _framing_error(HEAD + b"X-Long: " + b"a" * 200, max_size=100)
    assert (err.status, err.close) == (413, True)


def test_stream_oversize_by_content_length() -> None:
    err = _framing_error(message(b"x" * 10, length=b"1000"), max_size=500)
    assert (err.status, err.close) == (413, True)


# --- datagrams (parse_message_untrusted) --------------------------------------------------


def test_datagram_content_length_larger_than_data() -> None:
    # RFC 4475 clerr: 400 on a datagram; the datagram is discarded, nothing to close.
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(message(b"short", length=b"9999"))
    assert (info.value.status, info.value.close) == (400, False)


@pytest.mark.parametrize(
    "length",
    [b"-1", b"-999", b"1.5", b"0x10", b"+5", b"99999999999", b"\xd9\xa5"],
)
def test_datagram_bad_content_length(length: bytes) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(message(b"abcde", length=length))
    assert info.value.status == 400
    assert info.value.close


def test_datagram_conflicting_content_length() -> None:
    data = HEAD + b"Content-Length: 5\r\nl: 3\r\n\r\nabcde"
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(data)
    assert (info.value.status, info.value.close) == (400, True)


def test_datagram_repeated_equal_content_length_is_fine() -> None:
    data = HEAD + b"Content-Length: 5\r\nl: 5\r\n\r\nabcde"
    assert parse_message_untrusted(data).body == b"abcde"


def test_datagram_trailing_bytes_after_content_length_are_ignored() -> None:
    msg = parse_message_untrusted(message(b"abc") + b"garbage")
    assert msg.body == b"abc"
    assert msg.serialise() == message(b"abc")


def test_datagram_without_content_length_body_runs_to_the_end() -> None:
    msg = parse_message_untrusted(HEAD + b"\r\nno length here")
    assert msg.body == b"no length here"
    assert msg.content_length is None


def test_leading_crlfs_are_skipped() -> None:
    msg = parse_message_untrusted(b"\r\n\r\n\r\n" + message())
    assert msg.serialise() == message()


def test_message_over_max_size_is_413() -> None:
    data = message(b"x" * 100)
    assert parse_message_untrusted(data, max_size=len(data)).body == b"x" * 100
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(data, max_size=len(data) - 1)
    assert info.value.status == 413
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(data + b"\x00" * 70000)
    assert info.value.status == 413


def test_too_many_headers_is_400() -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    data = HEAD + extra + b"Content-Length: 0\r\n\r\n"
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(data, max_headers=256)
    assert info.value.status == 400
    assert len(parse_message_untrusted(data, max_headers=400).headers) == 307


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n", b"\r\n\r\n", HEAD[:-2], HEAD[:-1], b"INVITE"],
    ids=["empty", "crlf", "crlfcrlf", "truncated", "half-crlf", "one-word"],
)
def test_incomplete_datagrams_are_400(data: bytes) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message_untrusted(data)
    assert info.value.status == 400


def test_datagram_without_the_final_blank_line_is_still_readable() -> None:
    # RFC 4475 baddn as printed: the header section runs to the end of the datagram.
    msg = parse_message_untrusted(HEAD)
    assert msg.body == b""
    assert msg.serialise() == HEAD + b"\r\n"
