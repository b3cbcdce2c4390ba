"""The simulated SIP client: a real user agent inside siptrio that places test calls.

It owns a UDP socket on loopback and calls through siptrio's own UDP listener, so a
simulated call takes exactly the path a phone's call would: the proxy looks the
callee up, forks to its bindings over whatever transport they registered on (a
browser's WebSocket included), and record-routes. The agent ACKs the answer,
hangs up with BYE after ``duration``, CANCELs when nobody answers within
``answer_timeout``, and answers a BYE from the callee.

Retransmissions follow RFC 3261 timers (A/E doubling from T1), although on loopback
they are rarely needed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket as stdsocket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..core.types import Transport
from ..sip import Request, Response, SipParseError, parse_message_untrusted, parse_uri_untrusted
from ..sip.uri import SipUri
from .formats import iso
from .simcall_sdp import PLAIN_SDP, WEBRTC_SDP

if TYPE_CHECKING:
    from ..core.location import Location
    from ..core.types import Listener
    from .config import Config


class SimHost(Protocol):
    """What the simulated client needs of the server: it places calls from the server's
    own UDP socket to the bindings it finds."""

    config: Config
    listeners: list[Listener]
    location: Location


__all__ = ["PLAIN_SDP", "WEBRTC_SDP", "SimCall", "SimCallError", "Simulator"]

log = logging.getLogger("siptrio.simcall")

_ids = itertools.count(1)


class SimCallError(ValueError):
    """Bad input for a simulated call (the API answers 4xx with this message)."""


@dataclass(eq=False)
class SimCall:
    to: str
    from_: str
    duration: float
    answer_timeout: float
    id: str = field(default_factory=lambda: f"c{next(_ids)}")
    call_id: str = field(default_factory=lambda: f"{uuid.uuid4().hex}@siptrio-simulator")
    state: str = "calling"  # calling | ringing | answered | ended | failed
    final_status: int | None = None
    final_reason: str | None = None
    answered: bool = False
    ended_by: str | None = None  # simulator | callee | None
    created_at: float = field(default_factory=time.time)
    ringing_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    cancelled: bool = False
    done: trio.Event = field(default_factory=trio.Event)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call_id": self.call_id,
            "to": self.to,
            "from": self.from_,
            "state": self.state,
            "final_status": self.final_status,
            "final_reason": self.final_reason,
            "answered": self.answered,
            "cancelled": self.cancelled,
            "ended_by": self.ended_by,
            "duration": self.duration,
            "answer_timeout": self.answer_timeout,
            "created_at": iso(self.created_at),
            "ringing_at": iso(self.ringing_at),
            "answered_at": iso(self.answered_at),
            "ended_at": iso(self.ended_at),
            "talk_seconds": (
                round(self.ended_at - self.answered_at, 3)
                if self.ended_at is not None and self.answered_at is not None
                else None
            ),
            "error": self.error,
        }

    def finish(self, state: str) -> None:
        self.state = state
        self.ended_at = time.time()
        self.done.set()


class Simulator:
    """Owns the agent's socket, the receive loop, and one task per call."""

    MAX_KEPT = 1000  # finished calls kept for polling

    def __init__(self, server: SimHost) -> None:
        self.server = server
        self._calls: dict[str, SimCall] = {}
        self._inboxes: dict[str, trio.MemorySendChannel[Request | Response]] = {}
        self._sock: trio.socket.SocketType | None = None
        self._target: tuple[str, int] | None = None
        self._local = ("127.0.0.1", 0)
        self.local: tuple[str, int] | None = None  # its socket, once bound
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        udp = [li for li in self.server.listeners if li.transport is Transport.UDP]
        if not udp:
            log.info("no UDP listener: the simulated client is disabled")
            task_status.started()
            await trio.sleep_forever()
        li = udp[0]
        host = li.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        family = stdsocket.AF_INET6 if ":" in host else stdsocket.AF_INET
        sock = trio.socket.socket(family, stdsocket.SOCK_DGRAM)
        await sock.bind((host, 0))
        self._sock = sock
        self._target = (host, li.port)
        self._local = (host, sock.getsockname()[1])
        self.local = self._local
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                task_status.started()
                await self._receive_loop()
        finally:
            sock.close()

    async def _receive_loop(self) -> None:
        assert self._sock is not None
        while True:
            data, _ = await self._sock.recvfrom(65536)
            try:
                msg = parse_message_untrusted(data)
            except SipParseError:
                continue
            inbox = self._inboxes.get(msg.call_id)
            if inbox is None:
                if isinstance(msg, Request) and msg.method != "ACK":
                    await self._send(_reply(msg, 481, "Call/Transaction Does Not Exist"))
                continue
            with contextlib.suppress(trio.WouldBlock):
                inbox.send_nowait(msg)

    async def _send(self, data: bytes) -> None:
        assert self._sock is not None and self._target is not None
        await self._sock.sendto(data, self._target)

    # --- the API --------------------------------------------------------------------------

    def get(self, call_id_or_id: str) -> SimCall | None:
        call = self._calls.get(call_id_or_id)
        if call is not None:
            return call
        return next((c for c in self._calls.values() if c.call_id == call_id_or_id), None)

    def calls(self) -> list[SimCall]:
        return list(self._calls.values())

    async def start_call(
        self,
        *,
        to: str,
        from_: str | None = None,
        duration: float = 5.0,
        answer_timeout: float = 30.0,
        sdp: str | None = None,
    ) -> SimCall:
        if not (0 < duration <= 3600) or not math.isfinite(duration):
            raise SimCallError("duration must be > 0 and <= 3600 seconds")
        if not (0 < answer_timeout <= 600) or not math.isfinite(answer_timeout):
            raise SimCallError("answer_timeout must be > 0 and <= 600 seconds")
        to_uri = self._resolve_to(to)
        from_uri = self._resolve_from(from_, to_uri)
        if sdp is None:
            sdp = WEBRTC_SDP if self._callee_is_browser(to_uri) else PLAIN_SDP
        await self._ready.wait()
        if self._nursery is None:
            raise SimCallError("the simulated client needs a UDP listener")
        call = SimCall(
            to=str(to_uri), from_=str(from_uri), duration=duration, answer_timeout=answer_timeout
        )
        self._calls[call.id] = call
        self._forget_old()
        send, receive = trio.open_memory_channel[Request | Response](64)
        self._inboxes[call.call_id] = send
        started = trio.Event()
        self._nursery.start_soon(self._run_call, call, to_uri, from_uri, sdp, receive, started)
        await started.wait()
        return call

    def _forget_old(self) -> None:
        if len(self._calls) <= self.MAX_KEPT:
            return
        for key, c in list(self._calls.items()):
            if c.done.is_set():
                del self._calls[key]
                if len(self._calls) <= self.MAX_KEPT:
                    return

    def _resolve_to(self, to: str) -> SipUri:
        to = to.strip()
        if not to:
            raise SimCallError("'to' is empty")
        if ":" in to.split("@")[0] and not to.startswith(("sip:", "sips:")):
            raise SimCallError(f"'to' must be a sip: URI or a user name, not {to!r}")
        if to.startswith(("sip:", "sips:")):
            text = to
        elif "@" in to:
            text = f"sip:{to}"
        else:
            text = self._user_to_uri(to)
        try:
            uri = parse_uri_untrusted(text)
        except SipParseError as e:
            raise SimCallError(f"'to' is not a valid SIP URI: {e.reason}") from None
        if not isinstance(uri, SipUri):
            raise SimCallError("'to' must be a sip: URI")
        return uri

    def _user_to_uri(self, user: str) -> str:
        domains = self.server.config.sip.domains
        if domains:
            return f"sip:{user}@{domains[0]}"
        matches = sorted({b.aor for b in self.server.location if b.aor.startswith(f"sip:{user}@")})
        if len(matches) > 1:
            raise SimCallError(f"'{user}' is registered in several domains: {', '.join(matches)}")
        if matches:
            return matches[0]
        host = self._target[0] if self._target else "127.0.0.1"
        return f"sip:{user}@{f'[{host}]' if ':' in host else host}"

    def _resolve_from(self, from_: str | None, to_uri: SipUri) -> SipUri:
        text = from_ or f"sip:simulator@{to_uri.host}"
        if not text.startswith(("sip:", "sips:")):
            text = f"sip:{text}" if "@" in text else f"sip:{text}@{to_uri.host}"
        try:
            uri = parse_uri_untrusted(text)
        except SipParseError as e:
            raise SimCallError(f"'from' is not a valid SIP URI: {e.reason}") from None
        if not isinstance(uri, SipUri):
            raise SimCallError("'from' must be a sip: URI")
        return uri

    def _callee_is_browser(self, to_uri: SipUri) -> bool:
        bindings = self.server.location.lookup(to_uri.aor(), time.time())
        return bool(bindings) and all(
            b.transport in (Transport.WS, Transport.WSS) for b in bindings
        )

    # --- one call --------------------------------------------------------------------------

    async def _run_call(
        self,
        call: SimCall,
        to_uri: SipUri,
        from_uri: SipUri,
        sdp: str,
        inbox: trio.MemoryReceiveChannel[Request | Response],
        started: trio.Event,
    ) -> None:
        agent = _Agent(self, call, to_uri, from_uri, sdp, inbox)
        try:
            await agent.run(started)
        except Exception as e:  # a bug in the agent must not take the server down
            log.exception("simulated call %s failed", call.id)
            call.error = f"internal error: {e!r}"
            call.finish("failed")
        finally:
            started.set()
            self._inboxes.pop(call.call_id, None)
            if not call.done.is_set():
                call.error = call.error or "interrupted"
                call.finish("failed")


def _reply(req: Request, status: int, reason: str, extra: str = "") -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    for h in req.headers:
        if h.name in ("via", "from", "to", "call-id", "cseq", "record-route"):
            lines.append(h.raw.decode("utf-8", "surrogateescape"))
    lines.append("Server: siptrio-simulator")
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


class _Agent:
    """The UAC side of one simulated call (RFC 3261 sections 13, 15, 17.1)."""

    def __init__(
        self,
        sim: Simulator,
        call: SimCall,
        to_uri: SipUri,
        from_uri: SipUri,
        sdp: str,
        inbox: trio.MemoryReceiveChannel[Request | Response],
    ) -> None:
        self.sim = sim
        self.call = call
        self.to_uri = to_uri
        self.from_uri = from_uri
        self.sdp = sdp
        self.inbox = inbox
        self.tag = uuid.uuid4().hex[:10]
        self.cseq = 1
        timers = sim.server.config.sip
        self.t1, self.t2 = timers.t1, timers.t2
        host, port = sim._local
        self.hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.remote_tag: str | None = None
        self.route_set: list[str] = []
        self.remote_target = str(to_uri)
        self.invite_branch = self._branch()
        self.invite: bytes = b""
        self.bye_seen = False

    @staticmethod
    def _branch() -> str:
        return f"z9hG4bK-sim-{uuid.uuid4().hex[:16]}"

    def _request(
        self,
        method: str,
        uri: str,
        *,
        branch: str,
        cseq: int,
        to: str,
        routes: list[str] = (),  # type: ignore[assignment]
        body: str = "",
        content_type: str | None = None,
    ) -> bytes:
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.hostport};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <{self.from_uri}>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call.call_id}",
            f"CSeq: {cseq} {method}",
        ]
        lines += [f"Route: {r}" for r in routes]
        if method in ("INVITE",):
            user = self.from_uri.user or "simulator"
            lines.append(f"Contact: <sip:{user}@{self.hostport}>")
            lines.append("User-Agent: siptrio-simulator")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def run(self, started: trio.Event) -> None:
        call = self.call
        self.invite = self._request(
            "INVITE",
            str(self.to_uri),
            branch=self.invite_branch,
            cseq=1,
            to=f"<{self.to_uri}>",
            body=self.sdp,
            content_type="application/sdp",
        )
        final = await self._invite(started)
        if final is None:
            call.error = call.error or "no final response"
            call.finish("failed")
            return
        call.final_status = final.status
        call.final_reason = final.reason
        if final.status >= 300:
            await self._send(self._ack_for(final, self.invite_branch, routes=[]))
            call.finish("failed")
            return
        call.answered = True
        call.answered_at = time.time()
        call.state = "answered"
        self.remote_tag = final.to.tag
        self.route_set = [r.text for r in reversed(final.record_routes)]
        if final.contacts:
            self.remote_target = final.contacts[0].uri_text
        ack = self._ack()
        await self._send(ack)
        with trio.move_on_after(call.duration):
            while True:
                msg = await self.inbox.receive()
                if isinstance(msg, Response) and msg.status < 300 and msg.cseq.method == "INVITE":
                    await self._send(ack)  # the 2xx was retransmitted: our ACK was lost
                elif isinstance(msg, Request) and await self._handle_request(msg):
                    call.ended_by = "callee"
                    call.finish("ended")
                    return
        await self._bye()
        call.ended_by = "simulator"
        call.finish("ended")

    async def _invite(self, started: trio.Event) -> Response | None:
        """Send the INVITE (Timer A/B), CANCEL it at answer_timeout; the final response."""
        call = self.call
        await self._send(self.invite)
        started.set()
        interval = self.t1
        next_retransmit = trio.current_time() + interval
        deadline_b = trio.current_time() + 64 * self.t1
        answer_by = trio.current_time() + call.answer_timeout
        provisional = False
        cancel_sent = False
        cancel_data = b""
        while True:
            now = trio.current_time()
            wake = min(deadline_b, answer_by if not cancel_sent else math.inf)
            if not provisional:
                wake = min(wake, next_retransmit)
            if cancel_sent:
                wake = min(wake, next_retransmit)
            msg = None
            with trio.move_on_at(wake):
                msg = await self.inbox.receive()
            now = trio.current_time()
            if msg is None:
                if now >= deadline_b:
                    call.error = (
                        "no final response after CANCEL"
                        if cancel_sent
                        else "no final response (Timer B)"
                        if not provisional
                        else "no final response"
                    )
                    return None
                if not cancel_sent and now >= answer_by:
                    if provisional:
                        cancel_data = self._cancel()
                        await self._send(cancel_data)
                        cancel_sent = True
                        call.cancelled = True
                        interval = self.t1
                        next_retransmit = now + interval
                        deadline_b = now + 64 * self.t1
                    else:
                        answer_by = math.inf  # RFC 3261 9.1: wait for a provisional first
                    continue
                if (cancel_sent or not provisional) and now >= next_retransmit:
                    await self._send(cancel_data if cancel_sent else self.invite)
                    interval = min(2 * interval, self.t2) if cancel_sent else 2 * interval
                    next_retransmit = now + interval
                continue
            if isinstance(msg, Request):
                await self._handle_request(msg)
                continue
            if msg.cseq.method == "CANCEL":
                next_retransmit = math.inf  # the CANCEL was answered
                continue
            if msg.cseq.method != "INVITE":
                continue
            if msg.status < 200:
                if msg.status > 100 and call.ringing_at is None:
                    call.ringing_at = time.time()
                    call.state = "ringing"
                provisional = True
                deadline_b = max(deadline_b, now + 180.0)  # Timer C territory: the proxy has it
                if not cancel_sent and answer_by == math.inf:
                    cancel_data = self._cancel()
                    await self._send(cancel_data)
                    cancel_sent = True
                    call.cancelled = True
                    interval = self.t1
                    next_retransmit = now + interval
                continue
            return msg

    async def _handle_request(self, req: Request) -> bool:
        """Answer what the callee sends; True when it hung up."""
        if req.method == "ACK":
            return False
        if req.method == "BYE":
            await self._send(_reply(req, 200, "OK"))
            return True
        if req.method in ("INVITE", "UPDATE"):
            await self._send(
                _reply(req, 488, "Not Acceptable Here (the simulator does not renegotiate)")
            )
            return False
        await self._send(
            _reply(req, 200 if req.method in ("INFO", "OPTIONS", "NOTIFY") else 501, "OK")
        )
        return False

    def _to_with_tag(self) -> str:
        return f"<{self.to_uri}>;tag={self.remote_tag}" if self.remote_tag else f"<{self.to_uri}>"

    def _ack(self) -> bytes:
        return self._request(
            "ACK",
            self.remote_target,
            branch=self._branch(),
            cseq=1,
            to=self._to_with_tag(),
            routes=self.route_set,
        )

    def _ack_for(self, final: Response, branch: str, routes: list[str]) -> bytes:
        return self._request(
            "ACK", str(self.to_uri), branch=branch, cseq=1, to=final.to.text, routes=routes
        )

    def _cancel(self) -> bytes:
        return self._request(
            "CANCEL", str(self.to_uri), branch=self.invite_branch, cseq=1, to=f"<{self.to_uri}>"
        )

    async def _bye(self) -> None:
        self.cseq += 1
        bye = self._request(
            "BYE",
            self.remote_target,
            branch=self._branch(),
            cseq=self.cseq,
            to=self._to_with_tag(),
            routes=self.route_set,
        )
        await self._send(bye)
        interval = self.t1
        deadline = trio.current_time() + 64 * self.t1
        while trio.current_time() < deadline:
            with trio.move_on_after(interval):
                while True:
                    msg = await self.inbox.receive()
                    if isinstance(msg, Response) and msg.cseq.method == "BYE" and msg.status >= 200:
                        return
                    if isinstance(msg, Request):
                        await self._handle_request(msg)
            interval = min(2 * interval, self.t2)
            await self._send(bye)

    async def _send(self, data: bytes) -> None:
        await self.sim._send(data)
