"""A minimal but honest SIP user agent for call tests, on top of ``SipClient``.

It keeps an inbox so requests and responses can arrive in any order, builds
responses the way RFC 3261 section 8.2.6 says (Vias and Record-Route copied, a To
tag added), and keeps a dialog's route set and remote target (section 12) so that
ACK and BYE really follow the Record-Route the proxy inserted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from siptrio.sip import Request, Response
from support.client import SipClient, new_branch

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


@dataclass
class Dialog:
    call_id: str
    local_uri: str  # our From/To value with tag, as we send it
    remote_uri: str
    remote_target: str
    route_set: list[str]
    cseq: int
    invite_cseq: int = 0


@dataclass
class UA:
    client: SipClient
    user: str
    domain: str = "example.com"
    inbox: list[Request | Response] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact(self) -> str:
        t = "ws" if self.client.transport in ("ws", "wss") else self.client.transport
        return f"<sip:{self.user}@{self.client.local_hostport};transport={t}>"

    async def register(self, expires: int = 600) -> Response:
        r = await self.client.request(
            self.client.register(
                self.user, domain=self.domain, contact=self.contact, expires=expires
            )
        )
        assert r.status == 200, f"REGISTER of {self.user} got {r.status} {r.reason}"
        return r

    async def next(
        self, pred: Callable[[Request | Response], bool], timeout: float = 5.0
    ) -> Request | Response:
        for i, m in enumerate(self.inbox):
            if pred(m):
                return self.inbox.pop(i)
        with trio.fail_after(timeout):
            while True:
                m = await self.client.receive(timeout)
                if pred(m):
                    return m
                self.inbox.append(m)

    async def expect_request(self, method: str, timeout: float = 5.0) -> Request:
        m = await self.next(lambda m: isinstance(m, Request) and m.method == method, timeout)
        assert isinstance(m, Request)
        return m

    async def expect_response(
        self, method: str, *, final: bool = True, timeout: float = 5.0
    ) -> Response:
        def match(m: Request | Response) -> bool:
            return (
                isinstance(m, Response)
                and m.cseq.method == method
                and (m.status >= 200 or not final)
            )

        m = await self.next(match, timeout)
        assert isinstance(m, Response)
        return m

    # --- UAS side ----------------------------------------------------------------------

    def response(
        self, req: Request, status: int, reason: str, *, body: str = "", to_tag: str | None = None
    ) -> bytes:
        lines = [f"SIP/2.0 {status} {reason}"]
        for h in req.headers:
            if h.name in ("via", "record-route", "from", "call-id", "cseq"):
                lines.append(h.raw.decode())
            elif h.name == "to":
                tag = "" if req.to.tag else f";tag={to_tag or self.tag}"
                lines.append(f"To: {req.to.text}{tag}")
        if req.method in ("INVITE",) and status < 300:
            lines.append(f"Contact: {self.contact}")
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def reply(self, req: Request, status: int, reason: str, **kw: object) -> None:
        await self.client.send(self.response(req, status, reason, **kw))  # type: ignore[arg-type]

    def uas_dialog(self, invite: Request) -> Dialog:
        contact = invite.contacts[0].uri_text
        return Dialog(
            call_id=invite.call_id,
            local_uri=f"{invite.to.text};tag={self.tag}",
            remote_uri=invite.from_.text,
            remote_target=contact,
            route_set=[r.text for r in invite.record_routes],
            cseq=1000,
        )

    # --- UAC side ----------------------------------------------------------------------

    def invite(
        self, to_user: str, *, call_id: str | None = None, body: str = SDP, uri: str | None = None
    ) -> tuple[bytes, str]:
        """An INVITE for ``to_user`` in our domain, or for ``uri`` (a number, a trunk)."""
        call_id = call_id or f"{uuid.uuid4().hex}@test"
        self.client.cseq += 1
        target = uri or f"sip:{to_user}@{self.domain}"
        msg = self.client.build(
            "INVITE",
            target,
            to=f"<{target}>",
            from_=f"<{self.aor}>",
            headers=(("Contact", self.contact), ("Content-Type", "application/sdp")),
            body=body.encode(),
            call_id=call_id,
        )
        # SipClient.build adds its own From tag; use ours consistently
        msg = msg.replace(f";tag={self.client.from_tag}".encode(), f";tag={self.tag}".encode(), 1)
        return msg, call_id

    def uac_dialog(self, invite: bytes, final: Response) -> Dialog:
        from siptrio.sip import parse_message_untrusted

        req = parse_message_untrusted(invite)
        assert isinstance(req, Request)
        return Dialog(
            call_id=req.call_id,
            local_uri=req.from_.text,
            remote_uri=final.to.text,
            remote_target=final.contacts[0].uri_text,
            route_set=[r.text for r in reversed(final.record_routes)],
            cseq=req.cseq.number,
            invite_cseq=req.cseq.number,
        )

    def in_dialog(self, d: Dialog, method: str, *, cseq: int | None = None) -> bytes:
        if cseq is None:
            d.cseq += 1
            cseq = d.cseq
        t = self.client.via_transport
        lines = [
            f"{method} {d.remote_target} SIP/2.0",
            f"Via: SIP/2.0/{t} {self.client.local_hostport};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: {d.local_uri}",
            f"To: {d.remote_uri}",
            f"Call-ID: {d.call_id}",
            f"CSeq: {cseq} {method}",
        ]
        lines += [f"Route: {r}" for r in d.route_set]
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def ack(self, d: Dialog) -> bytes:
        return self.in_dialog(d, "ACK", cseq=d.invite_cseq)
