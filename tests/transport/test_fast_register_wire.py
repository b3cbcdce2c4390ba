"""The REGISTER fast path in a running server: real UDP on 127.0.0.1, real SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import trio
from support.client import SipClient
from support.server import running_server

from siptrio.sip import Response, parse_message_untrusted
from siptrio.store.sqlite import SqliteStore


def _register(port: int, user: str, branch: str, *, extra: str = "") -> bytes:
    return (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{branch};rport\r\n"
        f"From: <sip:{user}@example.com>;tag=ft1\r\n"
        f"To: <sip:{user}@example.com>\r\n"
        f"Call-ID: {user}-{branch}@127.0.0.1\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{port};transport=udp>\r\n"
        f"Max-Forwards: 70\r\n"
        f"Expires: 600\r\n{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


async def test_same_answer_bytes_with_and_without_it(tmp_path: Path) -> None:
    """One socket sends the same REGISTER to a server with the fast path and one without."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    data = _register(port, "alice", "same")
    answers: dict[str, bytes] = {}
    with sock:
        for fast in ("true", "false"):
            async with running_server(tmp_path / fast, {"registrar.fast_path": fast}) as server:
                await sock.sendto(data, server.addr("udp"))
                with trio.fail_after(5):
                    answers[fast] = await sock.recv(65536)
                taken = server.server.core_stats["register_fast"]
                assert taken == (1 if fast == "true" else 0)
            loaded = SqliteStore(str(tmp_path / fast / "location.sqlite")).load(time.time())
            assert [(b.aor, b.contact_uri) for b in loaded.bindings] == [
                ("sip:alice@example.com", f"sip:alice@127.0.0.1:{port};transport=udp")
            ]
    assert answers["true"] == answers["false"]
    answer = parse_message_untrusted(answers["true"])
    assert isinstance(answer, Response) and answer.status == 200
    assert answer.top_via.received == "127.0.0.1" and answer.top_via.rport == str(port)


async def test_rate_limit_counts_each_register_once(tmp_path: Path) -> None:
    """Taken or given back, a REGISTER costs one token: 5 answers, then one 503."""
    overrides = {
        "security.rate_limit": "1",
        "security.rate_burst": "5",
        "security.rate_limit_exempt": "",
    }
    async with running_server(tmp_path, overrides) as server:
        c = await SipClient.connect("udp", *server.addr("udp"))
        port = int(c.local_hostport.rsplit(":", 1)[1])
        for i in range(3):
            await c.send(_register(port, f"u{i}", f"t{i}"))  # the fast path's
        for i in range(3, 30):  # Require: the general path's 420
            await c.send(_register(port, f"u{i}", f"t{i}", extra="Require: foo\r\n"))
        answers = []
        with trio.move_on_after(1):
            while True:
                answers.append(await c.receive(1))
        statuses = sorted(a.status for a in answers)  # type: ignore[union-attr]
        assert statuses == [200, 200, 200, 420, 420, 503]
        assert server.server.core_stats["register_fast"] == 3
        await c.aclose()
