"""The rtpengine "ng" control protocol client (Trio): cookies, bencode, retransmission.

Each request is ``<cookie> <bencoded dict>`` in one UDP datagram; the answer echoes
the cookie. rtpengine caches answers by cookie, so a retransmission (same cookie)
is safe and a new request must have a new cookie. Several engines may be
configured: a request that gets no answer within ``timeout`` goes to the next one.
The client counts requests by command, failures by reason and times each answered
request (``/metrics``: siptrio_rtpengine_*). bencode.py decodes rtpengine's answers,
whose dictionaries are not key-sorted (the strict decoders refuse them).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket as stdsocket
from collections import Counter
from typing import Any

import bencode  # type: ignore[import-untyped]
import trio

from ..core.metrics import LATENCY, Histogram

__all__ = ["COMMANDS", "FAILURES", "MediaError", "NgClient", "parse_engine"]

log = logging.getLogger("siptrio.media")

RETRANSMIT = 0.5
COMMANDS = ("offer", "answer", "delete", "query")  # what siptrio sends (core/media.py)
# why one engine failed one request: no answer in time, the send failed, an answer
# that is not bencode, or rtpengine answered with an error
FAILURES = ("timeout", "send_error", "undecodable", "error_reply")


class MediaError(Exception):
    pass


def parse_engine(spec: str) -> tuple[str, int]:
    """``udp:127.0.0.1:2223`` (or ``udp:[::1]:2223``) to an address."""
    scheme, _, rest = spec.partition(":")
    if scheme.lower() != "udp" or not rest:
        raise ValueError(f"{spec!r}: expected udp:HOST:PORT")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    ipaddress.ip_address(host)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r}: bad port")
    return host, int(port)


def families(engines: list[tuple[str, int]]) -> set[int]:
    return {stdsocket.AF_INET6 if ":" in h else stdsocket.AF_INET for h, _ in engines}


def _plain(value: Any) -> Any:
    """OrderedDicts and bytes from bencode.py to plain JSON-able values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class NgClient:
    def __init__(self, engines: list[tuple[str, int]], *, timeout: float = 3.0) -> None:
        self.engines = engines
        self.timeout = timeout
        self._preferred = 0
        self._sockets: dict[int, trio.socket.SocketType] = {}
        self._waiting: dict[bytes, tuple[trio.Event, list[bytes]]] = {}
        self.requests: Counter[str] = Counter()  # by command
        self.failures: Counter[str] = Counter()  # by reason (FAILURES), per engine tried
        self.latency = {c: Histogram(LATENCY) for c in (*COMMANDS, "other")}  # answered

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for family in families(self.engines):
                sock = trio.socket.socket(family, stdsocket.SOCK_DGRAM)
                await sock.bind(("::1" if family == stdsocket.AF_INET6 else "127.0.0.1", 0))
                self._sockets[family] = sock
                nursery.start_soon(self._receive, sock)
            task_status.started()

    def can_reach(self, engines: list[tuple[str, int]]) -> bool:
        """Whether ``retarget`` can take these: their address families have sockets."""
        return families(engines) <= set(self._sockets)

    def retarget(self, engines: list[tuple[str, int]], timeout: float) -> None:
        """A reload's engines (of families ``can_reach``); requests under way finish."""
        self.engines = engines
        self.timeout = timeout
        self._preferred = 0

    async def _receive(self, sock: trio.socket.SocketType) -> None:
        try:
            while True:
                try:
                    data = await sock.recv(65535)
                except OSError:
                    continue  # ICMP unreachable from a dead engine
                cookie, _, body = data.partition(b" ")
                waiter = self._waiting.get(cookie)
                if waiter is not None:
                    waiter[1].append(body)
                    waiter[0].set()
        finally:
            sock.close()

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command; the decoded answer, or MediaError when no engine answers."""
        if not self._sockets:
            raise MediaError("no rtpengine configured")
        name = str(command.get("command"))
        if name not in COMMANDS:
            name = "other"
        self.requests[name] += 1
        start = trio.current_time()
        data = bencode.bencode(command)
        errors = []
        n = len(self.engines)
        for i in range(n):
            index = (self._preferred + i) % n
            host, port = self.engines[index]
            try:
                reply = await self._one(host, port, data)
            except MediaError as e:
                errors.append(str(e))
                continue
            self._preferred = index
            self.latency[name].observe(trio.current_time() - start)
            if reply.get("result") != "ok":
                self.failures["error_reply"] += 1
            return reply
        raise MediaError("; ".join(errors))

    async def _one(self, host: str, port: int, data: bytes) -> dict[str, Any]:
        family = stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET
        sock = self._sockets[family]
        cookie = os.urandom(8).hex().encode()
        event = trio.Event()
        box: list[bytes] = []
        self._waiting[cookie] = (event, box)
        packet = cookie + b" " + data
        where = f"rtpengine udp:{host}:{port}"
        try:
            with trio.move_on_after(self.timeout):
                interval = RETRANSMIT
                while True:
                    try:
                        await sock.sendto(packet, (host, port))
                    except OSError as e:
                        self.failures["send_error"] += 1
                        raise MediaError(f"{where}: {e.strerror or e}") from None
                    with trio.move_on_after(interval):
                        await event.wait()
                    if box:
                        break
                    interval = min(interval * 2, 2.0)
            if not box:
                self.failures["timeout"] += 1
                raise MediaError(f"{where}: no answer within {self.timeout:g} s")
            try:
                reply = bencode.bdecode(box[0])
            except Exception as e:
                self.failures["undecodable"] += 1
                raise MediaError(f"{where}: undecodable answer ({e})") from None
            if not isinstance(reply, dict):
                self.failures["undecodable"] += 1
                raise MediaError(f"{where}: answer is not a dictionary")
            return _plain(reply)  # type: ignore[no-any-return,unused-ignore]
        finally:
            self._waiting.pop(cookie, None)
