"""The server's frame reader and writer against wsproto, the library browsers' frames are checked with."""

from __future__ import annotations

import struct

import pytest
import wsproto.events as wse
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType

from siptrio.transport.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    close_payload,
    frame,
)

REGISTER = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1\r\n\r\n"


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)  # masks every frame, as browsers must


def test_a_text_message_in_one_frame_and_in_pieces() -> None:
    data = client().send(wse.TextMessage(data=REGISTER))
    assert FrameReader(65535).feed_untrusted(data) == [(OP_TEXT, REGISTER.encode())]
    reader = FrameReader(65535)
    got = []
    for i in range(len(data)):  # a byte at a time
        got += reader.feed_untrusted(data[i : i + 1])
    assert got == [(OP_TEXT, REGISTER.encode())]


def test_fragments_with_a_ping_between() -> None:
    c = client()
    data = c.send(wse.TextMessage(data="REGISTER ", message_finished=False))
    data += c.send(wse.Ping(payload=b"p1"))
    data += c.send(wse.TextMessage(data="sip:x SIP/2.0", message_finished=True))
    data += c.send(wse.BytesMessage(data=b"\xff\x00"))
    assert FrameReader(100).feed_untrusted(data) == [
        (OP_PING, b"p1"),
        (OP_TEXT, b"REGISTER sip:x SIP/2.0"),
        (OP_BINARY, b"\xff\x00"),
    ]


@given(st.binary(max_size=70000), st.integers(1, 5000))
def test_any_binary_message_any_chunking(payload: bytes, chunk: int) -> None:
    data = client().send(wse.BytesMessage(data=payload))
    reader = FrameReader(1 << 20)
    got = []
    for i in range(0, len(data), chunk):
        got += reader.feed_untrusted(data[i : i + chunk])
    assert got == [(OP_BINARY, payload)]


def test_pong_and_close() -> None:
    c = client()
    data = c.send(wse.Pong(payload=b"\x00\x00\x00\x07"))
    data += c.send(wse.CloseConnection(code=1001, reason="bye"))
    assert FrameReader(100).feed_untrusted(data) == [
        (OP_PONG, b"\x00\x00\x00\x07"),
        (OP_CLOSE, struct.pack("!H", 1001) + b"bye"),
    ]


def test_too_big_before_it_is_all_there() -> None:
    data = client().send(wse.TextMessage(data="x" * 5000))
    with pytest.raises(FrameError) as info:
        FrameReader(4096).feed_untrusted(data[:10])  # the header says enough
    assert info.value.code == 1009


def masked(first: int, payload: bytes, second: int | None = None) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((first, (0x80 | len(payload)) if second is None else second)) + mask + body


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(OP_TEXT, b"unmasked"), 1002),
        (masked(0xC1, b"x"), 1002),  # RSV1: no extension agreed
        (masked(0x83, b"x"), 1002),  # opcode 3
        (masked(0x09, b"x"), 1002),  # a fragmented ping
        (masked(0x80, b"x"), 1002),  # continuation of nothing
        (masked(0x01, b"a") + masked(0x81, b"b"), 1002),  # a new message inside one
        (masked(0x81, b"\xc3\x28"), 1007),  # not UTF-8
        (masked(0x88, b"\x03"), 1002),  # one-byte close
        (masked(0x88, struct.pack("!H", 1005)), 1002),  # a code never sent
        (masked(0x88, struct.pack("!H", 1000) + b"\xff"), 1007),
    ],
)
def test_protocol_errors_name_their_close_code(data: bytes, code: int) -> None:
    with pytest.raises(FrameError) as info:
        FrameReader(100).feed_untrusted(data)
    assert info.value.code == code


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_our_frames_read_by_wsproto(size: int) -> None:
    server_bytes = (
        frame(OP_TEXT, b"a" * size)
        + frame(OP_PING, b"k")
        + frame(OP_CLOSE, close_payload(1000, "done"))
    )
    c = client()
    c.receive_data(server_bytes)
    events = list(c.events())
    assert events[0] == wse.TextMessage(data="a" * size, frame_finished=True, message_finished=True)
    assert events[1] == wse.Ping(payload=b"k")
    assert isinstance(events[2], wse.CloseConnection) and events[2].code == 1000
