"""Hostile input: each gets its documented answer while another client keeps registering.

The table in README.md ("What siptrio answers to malformed input") is what these
tests check.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient, new_branch
from support.server import RunningServer, running_server

from siptrio.sip import Response


def request(
    via_host: str = "127.0.0.1:9", *, extra: bytes = b"", body: bytes = b"", cl: str | None = None
) -> bytes:
    head = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP "
        + via_host.encode()
        + b";branch="
        + new_branch().encode()
        + b";rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:mallory@example.com>;tag=m1\r\n"
        b"To: <sip:mallory@example.com>\r\n"
        b"Call-ID: hostile-" + new_branch().encode() + b"\r\n"
        b"CSeq: 1 REGISTER\r\n" + extra
    )
    length = str(len(body)) if cl is None else cl
    return head + b"Content-Length: " + length.encode() + b"\r\n\r\n" + body


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path, {"sip.idle_timeout": "30"}) as rs:
        yield rs


class Bystander:
    """A legitimate client that keeps registering while the attack runs."""

    def __init__(self) -> None:
        self.ok = 0
        self.failures: list[str] = []

    async def run(
        self, server: RunningServer, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        client = await SipClient.connect("udp", *server.addr("udp"))
        task_status.started()
        while True:
            r = await client.request(client.register("bystander"), timeout=2)
            if r.status == 200:
                self.ok += 1
            else:
                self.failures.append(f"{r.status} {r.reason}")
            await trio.sleep(0.02)


async def udp_answer(server: RunningServer, data: bytes, timeout: float = 1.0) -> Response | None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    await c.send(data)
    try:
        msg = await c.receive(timeout)
    except trio.TooSlowError:
        return None
    finally:
        await c.aclose()
    assert isinstance(msg, Response)
    return msg


async def tcp_exchange(
    server: RunningServer, data: bytes, timeout: float = 2.0
) -> tuple[list[Response], bool]:
    """Send on a fresh TCP connection; collect answers until close or timeout."""
    c = await SipClient.connect("tcp", *server.addr("tcp"))
    answers: list[Response] = []
    closed = False

    async def sender() -> None:
        # the server may answer and close before all of a huge message is sent
        with contextlib.suppress(trio.BrokenResourceError):
            await c.send(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        try:
            while True:
                msg = await c.receive(timeout)
                assert isinstance(msg, Response)
                answers.append(msg)
        except (EOFError, trio.BrokenResourceError):
            closed = True
        except trio.TooSlowError:
            pass
        nursery.cancel_scope.cancel()
    await c.aclose()
    return answers, closed


@pytest.fixture
async def bystander(server: RunningServer) -> AsyncIterator[Bystander]:
    b = Bystander()
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run, server)
        yield b
        # after the attack the bystander must still get answers
        after = b.ok
        with trio.fail_after(5):
            while b.ok < after + 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert b.failures == []
    assert b.ok > 0


CASES_UDP = {
    # name: (datagram, expected status or None for silence, reason fragment)
    "truncated": (request()[:-10], 400, "Incomplete message"),
    "truncated_before_cseq": (request()[:120], None, ""),
    "content_length_larger": (request(body=b"abc", cl="500"), 400, "Content-Length larger"),
    "negative_content_length": (request(cl="-5"), 400, "Negative Content-Length"),
    "ten_thousand_headers": (request(extra=b"a:b\r\n" * 10_000), 400, "Too many header fields"),
    "nul_byte": (request(extra=b"X-Evil: a\x00b\r\n"), 400, "NUL"),
    "non_utf8_in_from": (request().replace(b"mallory@", b"mal\xff\xfe@"), 400, "UTF-8"),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), None, ""),
}


@pytest.mark.parametrize("name", sorted(CASES_UDP))
async def test_udp_hostile(server: RunningServer, bystander: Bystander, name: str) -> None:
    data, status, reason = CASES_UDP[name]
    answer = await udp_answer(server, data)
    if status is None:
        assert answer is None
    else:
        assert answer is not None and answer.status == status and reason in answer.reason


async def test_udp_content_length_smaller_ignores_the_rest(
    server: RunningServer, bystander: Bystander
) -> None:
    answer = await udp_answer(server, request(body=b"hello", cl="2"))
    assert answer is not None and answer.status == 200


async def test_udp_non_utf8_in_unknown_header_is_kept(
    server: RunningServer, bystander: Bystander
) -> None:
    answer = await udp_answer(
        server, request(extra=b"X-Latin1: caf\xe9\r\nContact: <sip:m@127.0.0.1:9>\r\n")
    )
    assert answer is not None and answer.status == 200


async def test_udp_oversize_datagram_413(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"sip.max_message_size": "16384"}) as server:
        answer = await udp_answer(server, request(extra=b"X-Pad: " + b"p" * 30_000 + b"\r\n"))
        assert answer is not None and answer.status == 413


async def test_tcp_one_megabyte_message_413_and_close(
    server: RunningServer, bystander: Bystander
) -> None:
    answers, closed = await tcp_exchange(
        server, request(extra=b"X-Big: " + b"x" * (1 << 20) + b"\r\n")
    )
    assert [a.status for a in answers] == [413] and closed


async def test_tcp_100kb_header_line_413_and_close(
    server: RunningServer, bystander: Bystander
) -> None:
    answers, closed = await tcp_exchange(
        server, request(extra=b"Subject: " + b"s" * 100_000 + b"\r\n")
    )
    assert [a.status for a in answers] == [413] and closed


async def test_tcp_without_content_length_400_and_close(
    server: RunningServer, bystander: Bystander
) -> None:
    data = request().replace(b"Content-Length: 0\r\n", b"")
    answers, closed = await tcp_exchange(server, data)
    assert [a.status for a in answers] == [400] and closed
    assert "Content-Length is required" in answers[0].reason


async def test_tcp_negative_content_length_400_and_close(
    server: RunningServer, bystander: Bystander
) -> None:
    answers, closed = await tcp_exchange(server, request(cl="-1"))
    assert [a.status for a in answers] == [400] and closed


async def test_tcp_content_length_larger_waits_for_more(
    server: RunningServer, bystander: Bystander
) -> None:
    answers, closed = await tcp_exchange(server, request(body=b"abc", cl="500"), timeout=1.0)
    assert answers == [] and not closed


async def test_tcp_truncated_waits_then_bad_follow_up_gets_400(
    server: RunningServer, bystander: Bystander
) -> None:
    c = await SipClient.connect("tcp", *server.addr("tcp"))
    await c.send(request()[:120])
    with pytest.raises(trio.TooSlowError):
        await c.receive(0.5)
    await c.aclose()


async def test_tcp_nul_and_10000_headers_400_connection_stays(
    server: RunningServer, bystander: Bystander
) -> None:
    c = await SipClient.connect("tcp", *server.addr("tcp"))
    for data, fragment in (
        (request(extra=b"X-Evil: a\x00b\r\n"), "NUL"),
        (request(extra=b"a:b\r\n" * 10_000), "Too many header fields"),
    ):
        r = await c.request(data)
        assert r.status == 400 and fragment in r.reason
    # framing was never lost, so the same connection still works
    assert (await c.request(c.register("still-here"))).status == 200
    await c.aclose()


async def test_flood_of_garbage_does_not_stop_service(
    server: RunningServer, bystander: Bystander
) -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.connect(server.addr("udp"))
    for i in range(3000):
        await sock.send(b"\xde\xad" * (i % 50 + 1))
        if i % 200 == 0:
            await trio.sleep(0.01)
    sock.close()
    await trio.sleep(0.3)
    assert server.counters()["dropped.unaddressable"] >= 1000
