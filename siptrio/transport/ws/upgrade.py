"""The server's side of the opening handshake (RFC 6455 section 4.2), sans-IO.

h11 parses and judges the HTTP request (its 400s and 431 for what is not HTTP/1.1)
and writes every refusal; wsproto computes the accept token and, once the 101 is
out, its frame ``Connection`` carries the flow, fed with whatever the client sent
after its request. What is ours is the part in between, which wsproto's
``H11Handshake`` (behind ``WSConnection``) also does on top of h11: reading the
upgrade's headers off h11's ``Request``, and the 101 itself. That 101 is four fixed
lines and the accept token; wsproto has h11 write it, and h11's checks of the
headers it is handed and its state machine cost as much again as its parse of the
request (a third of a WebSocket set-up's CPU went to the handshake: bench/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import h11
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.utilities import generate_accept_token

__all__ = ["Upgrade", "UpgradeRefused", "UpgradeRequest"]

WEBSOCKET_VERSION = b"13"  # RFC 6455 section 4.2.1, item 6
_BODY = (b"content-length", b"transfer-encoding")


class UpgradeRefused(Exception):
    """A request that cannot be upgraded, with the refusal it calls for."""

    def __init__(
        self, status: int, reason: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers  # to send with the refusal (426: the version we speak)


class UpgradeRequest(NamedTuple):
    """What an upgrade request asked for. A named tuple, not a frozen dataclass: made
    once per connection, and a frozen dataclass's ``__init__`` cost 2 us of it."""

    target: str
    key: bytes
    subprotocols: tuple[str, ...]
    origin: str | None
    headers: Sequence[tuple[bytes, bytes]]  # h11's: names in lower case (X-Forwarded-For)
    body: bool  # it has one (Content-Length or Transfer-Encoding), which nothing reads


class Upgrade:
    """One connection's opening: bytes in until the request is whole, then the 101
    (``accept``) or a refusal (``refuse``)."""

    __slots__ = ("_h11", "_request")

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER)
        self._request: UpgradeRequest | None = None

    def receive_untrusted(self, data: bytes) -> UpgradeRequest | None:
        """Feed the peer's bytes; the request once it is whole, None until then.

        Raises UpgradeRefused for a request that is not HTTP/1.1 (h11's status and
        reason) or not a WebSocket upgrade (RFC 6455's checks, as wsproto makes them).
        """
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as e:
                raise UpgradeRefused(e.error_status_hint, f"bad HTTP request: {e}") from None
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Request):
                self._request = _judge_untrusted(event)
                if not self._request.body:
                    return self._request  # what follows its head is frames
            elif event is h11.PAUSED:  # the request and its body are whole
                return self._request
            # Data, EndOfMessage: a body, which an upgrade does not use

    def accept(self, request: UpgradeRequest, subprotocol: str) -> tuple[bytes, Connection]:
        """The 101 for ``request``, and wsproto's frame protocol for what follows."""
        if subprotocol not in request.subprotocols:
            raise ValueError(f"the client did not offer subprotocol {subprotocol!r}")
        response = b"".join(
            (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: ",
                generate_accept_token(request.key),
                b"\r\nSec-WebSocket-Protocol: ",
                subprotocol.encode("ascii"),
                b"\r\n\r\n",
            )
        )
        conn = Connection(ConnectionType.SERVER)
        trailing, _ = self._h11.trailing_data
        if trailing:  # frames the client sent without waiting for the 101
            conn.receive_data(trailing)
        return response, conn

    def refuse(
        self, status: int, reason: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> bytes:
        """An HTTP refusal whose body says why, written by h11; b"" where h11 cannot
        answer in the state the request left it in (then the connection just closes)."""
        body = (reason + "\n").encode()
        head = [
            *headers,
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        try:
            return b"".join(
                self._h11.send(event) or b""
                for event in (
                    h11.Response(status_code=status, headers=head),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                )
            )
        except h11.LocalProtocolError:
            return b""


def _judge_untrusted(request: h11.Request) -> UpgradeRequest:
    """RFC 6455 section 4.2.1's checks, in wsproto's order and with its reasons."""
    if request.method != b"GET":
        raise UpgradeRefused(400, "Request method must be GET")
    seen: dict[bytes, bytes] = {}
    connection: list[bytes] = []
    subprotocols: list[str] = []
    body = False
    # h11 checked every name and value; raw_items() is a plain list, where iterating
    # its Headers goes through Sequence.__getitem__ for each
    for raw_name, value in request.headers.raw_items():
        name = raw_name.lower()
        if name == b"connection":
            connection += _tokens(value.lower())
        elif name == b"sec-websocket-protocol":
            subprotocols += (t.decode("latin-1") for t in _tokens(value))
        elif name in _BODY:
            body = body or value != b"0"
        else:
            seen[name] = value  # the last of each, as wsproto reads them
    if b"upgrade" not in connection:
        raise UpgradeRefused(400, "Missing header, 'Connection: Upgrade'")
    version = seen.get(b"sec-websocket-version")
    if version != WEBSOCKET_VERSION:
        raise UpgradeRefused(
            426 if version else 400,
            "Missing header, 'Sec-WebSocket-Version'",
            ((b"Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    key = seen.get(b"sec-websocket-key")
    if key is None:
        raise UpgradeRefused(400, "Missing header, 'Sec-WebSocket-Key'")
    if seen.get(b"upgrade", b"").lower() != b"websocket":
        raise UpgradeRefused(400, "Missing header, 'Upgrade: websocket'")
    if b"host" not in seen:
        raise UpgradeRefused(400, "Missing header, 'Host'")
    origin = seen.get(b"origin")
    return UpgradeRequest(
        target=request.target.decode("latin-1"),
        key=key,
        subprotocols=tuple(subprotocols),
        origin=None if origin is None else origin.decode("latin-1"),
        headers=request.headers,
        body=body,
    )


def _tokens(value: bytes) -> list[bytes]:
    """A comma-separated header's elements (``1#token``), stripped."""
    return [t.strip() for t in value.split(b",") if t.strip()]
