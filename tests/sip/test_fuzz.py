"""Bounded fuzzing (hypothesis): the parser, the WebSocket message path, the digest path.

Three properties, each a few hundred examples and seconds:

* ``parse_message_untrusted`` on mutations of valid messages raises nothing but
  ``SipParseError``, nor do the lazily parsed views or the error reply;
* a real in-process server fed arbitrary WebSocket messages (mutated SIP, random
  bytes and text; text and binary frames) never hits an internal error, keeps the
  connection unless the message was over the size limit (close 1009), never answers
  500, and still answers a valid REGISTER right after;
* with digest authentication on, a REGISTER with any Authorization value is answered
  401 (or 400 when it is not even UTF-8), never 500.

The servers run in a thread of their own (one per module, not per example); the
hypothesis tests are plain functions that hand each example to the server's Trio loop.
Fuzzed REGISTERs can bind any Contact and fuzzed INVITEs can then be routed there, so
the servers' sends to anything but loopback are refused before they leave.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.client import SipClient
from support.server import RunningServer, running_server
from trio_websocket import ConnectionClosed

from siptrio.core.types import Peer
from siptrio.sip import (
    Message,
    Request,
    Response,
    SipParseError,
    SipUri,
    error_response_untrusted,
    parse_message_untrusted,
)
from siptrio.sip.digest import ha1, parse_credentials
from siptrio.store.sqlite import SqliteStore

T = TypeVar("T")
FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_WS_MESSAGE = 65535  # [sip_websocket] max_message_size, the default

# --- valid messages to start from -------------------------------------------------------------


def _msg(start: str, headers: list[str], body: str = "") -> bytes:
    lines = [start, *headers, f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


_VIA = "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK-fuzz1;rport"
_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SEEDS = [
    _msg(
        "REGISTER sip:example.com SIP/2.0",
        [
            _VIA,
            "Max-Forwards: 70",
            "From: <sip:alice@example.com>;tag=a73kszlfl",
            "To: <sip:alice@example.com>",
            "Call-ID: 1j9FpLxk3uxtm8tn@df7jal23ls0d.invalid",
            "CSeq: 1 REGISTER",
            'Contact: <sip:k3u8sq1r@df7jal23ls0d.invalid;transport=ws>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:3ba2c29a-a76b-4d86-92c3-2b1b0f6a6e35>";expires=600',
            "Supported: path, gruu, outbound",
            "Expires: 600",
        ],
    ),
    _msg(
        "INVITE sip:bob@example.com SIP/2.0",
        [
            _VIA,
            "Max-Forwards: 70",
            'From: "Alice" <sip:alice@example.com>;tag=9fxced76sl',
            "To: <sip:bob@example.com>",
            "Call-ID: 3848276298220188511@df7jal23ls0d.invalid",
            "CSeq: 1 INVITE",
            "Contact: <sip:k3u8sq1r@df7jal23ls0d.invalid;transport=ws;ob>",
            "Route: <sip:127.0.0.1;lr;transport=ws>",
            "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS",
            "Content-Type: application/sdp",
        ],
        _SDP,
    ),
    _msg(
        "OPTIONS sip:127.0.0.1 SIP/2.0",
        [
            _VIA,
            "Max-Forwards: 70",
            "From: <sip:alice@example.com>;tag=opt1",
            "To: <sip:127.0.0.1>",
            "Call-ID: opt-1@df7jal23ls0d.invalid",
            "CSeq: 7 OPTIONS",
            "Accept: application/sdp",
            "Require: outbound",
        ],
    ),
    _msg(
        "MESSAGE sip:bob@example.com SIP/2.0",
        [
            _VIA,
            "Max-Forwards: 70",
            "f: <sip:alice@example.com>;tag=m1",
            "t: <sip:bob@example.com>",
            "i: msg-1@df7jal23ls0d.invalid",
            "CSeq: 2 MESSAGE",
            "c: text/plain;charset=utf-8",
        ],
        "h\u00e9llo",
    ),
    _msg(
        "BYE sip:bob@127.0.0.1:5062;transport=tcp SIP/2.0",
        [
            _VIA,
            "Max-Forwards: 70",
            "From: <sip:alice@example.com>;tag=9fxced76sl",
            "To: <sip:bob@example.com>;tag=b0b",
            "Call-ID: 3848276298220188511@df7jal23ls0d.invalid",
            "CSeq: 2 BYE",
            "Route: <sip:127.0.0.1:5060;lr;transport=tcp>, <sip:127.0.0.1:8080;lr;transport=ws>",
        ],
    ),
    _msg(
        "SIP/2.0 200 OK",
        [
            "Via: SIP/2.0/WS 127.0.0.1:8080;branch=z9hG4bK-proxy1",
            _VIA,
            'From: "Alice" <sip:alice@example.com>;tag=9fxced76sl',
            "To: <sip:bob@example.com>;tag=b0b",
            "Call-ID: 3848276298220188511@df7jal23ls0d.invalid",
            "CSeq: 1 INVITE",
            "Record-Route: <sip:127.0.0.1:8080;lr;transport=ws>",
            "Contact: <sip:bob@df7jal23ls0d.invalid;transport=ws>",
            "Content-Type: application/sdp",
        ],
        _SDP,
    ),
    _msg(
        "CANCEL sip:bob@example.com SIP/2.0",
        [
            _VIA,
            "Max-Forwards: 70",
            "From: <sip:alice@example.com>;tag=9fxced76sl",
            "To: <sip:bob@example.com>",
            "Call-ID: 3848276298220188511@df7jal23ls0d.invalid",
            "CSeq: 1 CANCEL",
        ],
    ),
]
TOKENS = [
    *(b"\x00", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\r\n ", b" ", b"\t", b":", b";", b","),
    *(b'"', b"\\", b"<", b">", b"@", b"=", b"%", b"%00", b"[", b"]", b"?", b"&", b"\xff"),
    *(b"\xc3", "\u00e9".encode(), "\U0001f600".encode(), b"0", b"-1", b"4294967296"),
    *(b"99999999999999999999999", b"sip:", b"sips:", b"tel:", b"urn:x", b";lr", b";tag="),
    *(b";branch=z9hG4bK", b";rport", b";received=", b";maddr=10.0.0.1", b";transport=xyz"),
    *(b"Content-Length: 0\r\n", b"Content-Length: 99999\r\n", b"Via: SIP/2.0/UDP h\r\n"),
    *(
        b"Route: <sip:127.0.0.1;lr>\r\n",
        b"Contact: *\r\n",
        b"Expires: 0\r\n",
        b"Max-Forwards: 0\r\n",
    ),
    *(b"Require: foo\r\n", b"Proxy-Require: bar\r\n", b"CSeq: 1 ACK\r\n"),
]


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    """A valid message, then one to eight byte-, token- or line-level edits."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["byte", "token", "delete", "line", "value", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "byte" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if op == "line":
                how = draw(st.sampled_from(["dup", "drop", "swap"]))
                if how == "dup":
                    lines.insert(j, lines[i])
                elif how == "drop":
                    del lines[i]
                else:
                    lines[i], lines[j] = lines[j], lines[i]
            elif b":" in lines[i]:
                name = lines[i].split(b":", 1)[0]
                value = draw(st.sampled_from(TOKENS) | st.binary(max_size=40))
                lines[i] = name + b": " + value
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


def payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        mutants(),
        mutants(),
        mutants(),
        st.binary(max_size=1500),
        st.text(max_size=400).map(str.encode),
        st.sampled_from(SEEDS).map(lambda s: s + b"X" * 70_000),  # over the WS size limit
    )


# --- (1) the parser ------------------------------------------------------------------------------

VIEWS = (
    *("vias", "top_via", "from_", "to", "call_id", "cseq", "max_forwards", "contacts"),
    *("routes", "record_routes", "expires", "require", "proxy_require", "content_type"),
)


def touch_views(msg: Message) -> None:
    for name in VIEWS:
        with contextlib.suppress(SipParseError, AttributeError):
            getattr(msg, name)
    with contextlib.suppress(SipParseError):
        for na in (*msg.contacts, msg.to, msg.from_):
            with contextlib.suppress(SipParseError):
                na.tag  # noqa: B018
            if isinstance(na.uri, SipUri):
                na.uri.aor()


@FUZZ
@given(mutants())
def test_parser_on_mutated_messages(data: bytes) -> None:
    try:
        msg = parse_message_untrusted(data)
    except SipParseError as error:
        reply = error_response_untrusted(data, error, server="fuzz")
        # (the reply copies the sender's Via, From, To and Call-ID, however odd they are)
        assert reply is None or reply.startswith(f"SIP/2.0 {error.status} ".encode())
        return
    touch_views(msg)
    if isinstance(msg, Request):
        again = parse_message_untrusted(msg.serialise())
        assert isinstance(again, Request) and again.method == msg.method


# --- a server in a thread of its own ----------------------------------------------------------------


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Collect(logging.Handler):
    """Keeps every record at ERROR or above."""

    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


class ServerThread:
    """``running_server`` on a Trio loop in another thread, driven with ``call``."""

    def __init__(self, tmp_path: Path, overrides: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.overrides = overrides
        self.rs: RunningServer | None = None
        self.blocked: list[Peer] = []  # sends refused for leaving loopback
        self.errors: list[logging.LogRecord] = []
        self._errors_seen = 0
        self._internal_seen = 0
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._handler = _Collect(self.errors)
        logging.getLogger("siptrio").addHandler(self._handler)
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None or self.rs is None:
            raise RuntimeError("the server did not start") from self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        logging.getLogger("siptrio").removeHandler(self._handler)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    @property
    def server(self) -> RunningServer:
        assert self.rs is not None
        return self.rs

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:
            self._failure = e
            self._ready.set()

    async def _main(self) -> None:
        async with running_server(self.tmp_path, self.overrides) as rs:
            self._guard(rs)
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery  # for the WebSocket clients' reader tasks
                self.rs = rs
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    def _guard(self, rs: RunningServer) -> None:
        hub = rs.server.hub
        send = hub.send

        async def loopback_only(data: bytes, peer: Peer, owner: Hashable = None) -> bool:
            if peer.flow_id is None and not _loopback(peer.host):
                self.blocked.append(peer)
                hub.failed(owner, "the fuzz test keeps traffic on loopback")
                return False
            return await send(data, peer, owner)

        hub.send = loopback_only

    def healthy(self) -> None:
        """No internal error and nothing logged at ERROR since the last check.

        Only what is new counts, so that hypothesis blames (and shrinks) the example
        that caused it, not every one after it.
        """
        internal = (
            self.server.server.stats["internal_errors"]
            + self.server.server.core_stats["internal_errors"]
        )
        errors = [r.getMessage() for r in self.errors[self._errors_seen :]]
        new_internal = internal - self._internal_seen
        self._internal_seen, self._errors_seen = internal, len(self.errors)
        assert new_internal == 0 and not errors, errors


# --- (2) the WebSocket message path ----------------------------------------------------------------


class WsFuzzer:
    """One WebSocket connection that takes fuzz and proves after each message it still works."""

    def __init__(self, st_: ServerThread) -> None:
        self.st = st_
        self.client: SipClient | None = None
        self.reconnects = 0
        self.answers: list[int] = []

    async def _connect(self) -> SipClient:
        host, port = self.st.server.addr("ws")
        return await SipClient.connect("ws", host, port, nursery=self.st.nursery)

    async def exchange(self, payload: bytes, as_text: bool) -> None:
        if self.client is None:
            self.client = await self._connect()
        client = self.client
        assert client.ws is not None
        wire: str | bytes = payload.decode("utf-8", errors="replace") if as_text else payload
        size = len(wire.encode()) if isinstance(wire, str) else len(wire)
        with contextlib.suppress(ConnectionClosed):
            await client.ws.send_message(wire)
        try:
            await self._still_served(client)
        except ConnectionClosed as closed:
            code = closed.reason.code if closed.reason else None
            assert size > MAX_WS_MESSAGE and code == 1009, (
                f"connection closed ({code}) after a {size}-byte message"
            )
            self.reconnects += 1
            self.client = await self._connect()
            await self._still_served(self.client)
        self.st.healthy()

    async def _still_served(self, client: SipClient) -> None:
        """A valid REGISTER (a query: no Contact) is answered; nothing on the way is a 500."""
        call_id = f"probe-{uuid.uuid4().hex}"
        await client.send(client.register("prober", contact="", expires=None, call_id=call_id))
        with trio.fail_after(5):
            while True:
                assert client.ws is not None
                m = await client.ws.get_message()
                data = m.encode() if isinstance(m, str) else m
                if not data.strip(b"\r\n"):
                    continue  # a keep-alive answer
                try:
                    msg = parse_message_untrusted(data)
                except SipParseError:
                    # an error reply to a fuzzed request copies its odd Via, From, To ...
                    assert data[:9] in (b"SIP/2.0 4", b"SIP/2.0 5"), data
                    assert not data.startswith(b"SIP/2.0 500"), data
                    continue
                if isinstance(msg, Response):
                    assert msg.status != 500, data
                    self.answers.append(msg.status)
                    if msg.call_id == call_id and msg.status >= 200:
                        assert msg.status == 200
                        return


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    overrides = {"sip.domains": "example.com", "sip_websocket.enable": "true"}
    with ServerThread(tmp_path_factory.mktemp("ws-fuzz"), overrides) as st_:
        yield st_


@pytest.fixture(scope="module")
def ws_fuzzer(ws_server: ServerThread) -> WsFuzzer:
    return WsFuzzer(ws_server)


@FUZZ
@given(payload=payloads(), as_text=st.booleans())
@example(payload=SEEDS[0], as_text=True)
@example(payload=b"\r\n\r\n", as_text=True)
@example(payload=SEEDS[1] + b"X" * 70_000, as_text=False)
def test_websocket_messages(ws_fuzzer: WsFuzzer, payload: bytes, as_text: bool) -> None:
    ws_fuzzer.st.call(ws_fuzzer.exchange, payload, as_text)


def test_websocket_fuzz_reached_the_core(ws_fuzzer: WsFuzzer) -> None:
    """After the fuzz run: the messages got parsed, answered and routed, not just dropped."""
    if not ws_fuzzer.answers:
        pytest.skip("runs after test_websocket_messages, on the same server")
    stats = ws_fuzzer.st.server.counters()
    assert stats["parse_errors"] > 0 and stats["ws_message_too_big"] > 0
    assert {400, 200} <= set(ws_fuzzer.answers), sorted(set(ws_fuzzer.answers))
    ws_fuzzer.st.healthy()


# --- (3) the digest path -------------------------------------------------------------------------

REALM = "example.com"
_PRINTABLE = st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\x00")
_FUZZ_TEXT = st.text(_PRINTABLE, max_size=30)
_FUZZ_VALUES = st.one_of(
    st.sampled_from(
        [
            *(REALM, "sip:example.com", "alice", "MD5", "SHA-256", "md5-sess", "auth"),
            *("auth-int", "auth,auth-int", "00000001", "ffffffff", "0x10", "", "0" * 64, "true"),
        ]
    ),
    _FUZZ_TEXT,
    st.builds(lambda a, b: f"{a}.{b}", _FUZZ_TEXT, _FUZZ_TEXT),  # shaped like our nonces
    _FUZZ_TEXT.map(lambda t: "NONCE" + t),  # a real nonce, with something after it
)
# what SIP.js sends; "NONCE" becomes a nonce the server really issued
_WELL_FORMED = {
    "username": "alice",
    "realm": REALM,
    "nonce": "NONCE",
    "uri": "sip:example.com",
    "response": "0" * 32,
    "algorithm": "MD5",
    "qop": "auth",
    "cnonce": "a0b1c2d3",
    "nc": "00000001",
}
_NAMES = st.sampled_from([*_WELL_FORMED, "opaque", "stale", "userhash", "USERNAME"]) | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz-*", min_size=1, max_size=10
)


@st.composite
def authorization_values(draw: st.DrawFn) -> bytes:
    """Well-formed credentials with a few parameters fuzzed, dropped or added; or junk."""
    kind = draw(st.sampled_from(["digest", "digest", "digest", "digest", "text", "bytes"]))
    if kind == "text":
        return draw(st.text(_PRINTABLE, max_size=200)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=120)).replace(b"\r", b"").replace(b"\n", b"")
    params = dict(_WELL_FORMED)
    for name in draw(st.lists(st.sampled_from(list(_WELL_FORMED)), max_size=3, unique=True)):
        params[name] = draw(_FUZZ_VALUES)
    for name in draw(st.lists(st.sampled_from(list(_WELL_FORMED)), max_size=1)):
        params.pop(name, None)
    for name, value in draw(st.lists(st.tuples(_NAMES, _FUZZ_VALUES), max_size=2)):
        params[name] = value
    parts = []
    for name, value in params.items():
        quoted = name not in ("algorithm", "qop", "nc") or draw(st.booleans())
        parts.append(f'{name}="{value}"' if quoted else f"{name}={value}")
    sep = draw(st.sampled_from([", ", ", ", ",", " , ", ",,", ";"]))
    scheme = draw(st.sampled_from(["Digest", "Digest", "digest", "DIGEST", "Basic", "Digest\t"]))
    return (scheme + " " + sep.join(parts)).encode()


class DigestFuzzer:
    def __init__(self, st_: ServerThread) -> None:
        self.st = st_
        self.client: SipClient | None = None
        self.nonce = ""
        self.statuses: set[int] = set()

    async def exchange(self, values: list[bytes]) -> None:
        if self.client is None:
            self.client = await SipClient.connect("udp", *self.st.server.addr("udp"))
            first = await self.client.request(self.client.register("alice"))
            assert first.status == 401
            value = first.values("www-authenticate")[0]
            self.nonce = value.split('nonce="')[1].split('"')[0]
        client = self.client
        call_id = f"digest-{uuid.uuid4().hex}"
        headers = [b"Authorization: " + v.replace(b"NONCE", self.nonce.encode()) for v in values]
        request = client.register("alice", call_id=call_id).replace(
            b"Max-Forwards: 70\r\n",
            b"Max-Forwards: 70\r\n" + b"".join(h + b"\r\n" for h in headers),
        )
        await client.send(request)
        with trio.fail_after(5):
            while True:
                msg = await client.receive(5)
                if isinstance(msg, Response) and msg.call_id == call_id:
                    break
        self.statuses.add(msg.status)
        assert msg.status in (400, 401), (msg.status, msg.reason, values)
        self.st.healthy()


@pytest.fixture(scope="module")
def digest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    overrides = {
        "sip.domains": REALM,
        "auth.enable": "true",
        "security.ban_after": "1000000",  # every example is a failed authentication
    }
    tmp_path = tmp_path_factory.mktemp("digest-fuzz")
    with SqliteStore(str(tmp_path / "location.sqlite")) as store:  # alice exists
        md5, sha256 = (ha1("alice", REALM, "wonderland", a) for a in ("MD5", "SHA-256"))
        store.set_user("alice", REALM, md5, sha256, 0.0)
    with ServerThread(tmp_path, overrides) as st_:
        yield st_


@pytest.fixture(scope="module")
def digest_fuzzer(digest_server: ServerThread) -> DigestFuzzer:
    return DigestFuzzer(digest_server)


@FUZZ
@given(st.lists(authorization_values(), min_size=1, max_size=3))
@example(
    [b'Digest username="alice", realm="example.com", nonce="1a.\xc3\xa9", uri="u", response="r"']
)
@example(
    [b'Digest username="alice", realm="example.com", nonce="NONCE", uri="u", response="\xc3\xa9"']
)
def test_authorization_values_never_cause_a_500(
    digest_fuzzer: DigestFuzzer, values: list[bytes]
) -> None:
    digest_fuzzer.st.call(digest_fuzzer.exchange, values)


@FUZZ
@given(st.text(_PRINTABLE, max_size=300))
def test_parse_credentials_raises_only_parse_errors(value: str) -> None:
    with contextlib.suppress(SipParseError):
        parse_credentials(value)
