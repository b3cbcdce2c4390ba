"""The core's front door: every parsed message enters here and leaves as actions.

It stamps the top Via (RFC 3581), absorbs retransmissions by replaying the answer
already given (a minimal non-INVITE server transaction until the full transaction
layer arrives with the proxy), and routes requests to the registrar or to the
server's own answers. Time comes in as ``now``; nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .. import __version__
from ..sip.errors import SipParseError
from ..sip.headers import split_list
from ..sip.message import HeaderField, Request, Response, make_response
from ..sip.uri import SipUri
from .events import Action, BindingEvent, BindingEventKind, Persist, Publish, Send
from .location import Location
from .registrar import SUPPORTED_OPTIONS, Registrar, RegistrarConfig
from .types import Peer

__all__ = ["ALLOW", "Dispatcher", "DispatcherConfig"]

ALLOW = "REGISTER, OPTIONS, ACK, CANCEL"
ACCEPT = "application/sdp"
SERVER = f"siptrio/{__version__}"
# Timer J (64*T1) for unreliable transports: how long an answer is replayed.
TXN_LINGER_UDP = 32.0
TXN_LINGER_STREAM = 0.5


@dataclass(frozen=True, kw_only=True)
class DispatcherConfig:
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    server_name: str = SERVER


@dataclass(slots=True)
class _Answer:
    """The answer given to one server transaction, replayed to retransmissions."""

    expires_at: float
    send: Send | None = None  # None while the answer waits for the store


class Dispatcher:
    def __init__(self, config: DispatcherConfig, location: Location | None = None) -> None:
        self.config = config
        self.location = location if location is not None else Location()
        self.registrar = Registrar(config.registrar, self.location, server=config.server_name)
        self.stats: Counter[str] = Counter()
        self._answers: dict[tuple[str, ...], _Answer] = {}

    # --- entry points -----------------------------------------------------------------

    def receive_request(self, request: Request, peer: Peer, now: float) -> list[Action]:
        self.stats[f"requests_in.{request.method}"] += 1
        request = stamp_via(request, peer)
        if request.method == "ACK":
            # ACK for a non-2xx final answer ends a transaction we answered statelessly.
            self.stats["ack_absorbed"] += 1
            return []
        key = _txn_key(request)
        answer = self._answers.get(key)
        if answer is not None:
            self.stats["retransmissions_absorbed"] += 1
            return [answer.send] if answer.send is not None else []
        linger = TXN_LINGER_STREAM if peer.transport.is_stream else TXN_LINGER_UDP
        try:
            return self._route(request, peer, now, key, now + linger)
        except SipParseError as e:
            # A header parsed lazily (Contact, Expires, Require ...) was malformed.
            return self._answer(key, now + linger, request, peer, e.status, e.reason)

    def receive_response(self, response: Response, peer: Peer, now: float) -> list[Action]:
        self.stats["responses_in"] += 1
        self.stats["responses_dropped_unmatched"] += 1
        return []

    def committed(self, txn_key: tuple[str, ...] | None, send: Send | None) -> None:
        """The store made a REGISTER durable: its answer may now be replayed."""
        if txn_key is not None and txn_key in self._answers:
            self._answers[txn_key].send = send

    def flow_closed(self, flow_id: str, now: float) -> list[Action]:
        removed = self.location.remove_flow(flow_id)
        if not removed:
            return []
        events: list[Action] = [
            Publish(event=BindingEvent(kind=BindingEventKind.FLOW_CLOSED, binding=b))
            for b in removed
        ]
        return [Persist(deletes=tuple((b.aor, b.key) for b in removed)), *events]

    def tick(self, now: float) -> list[Action]:
        """Periodic housekeeping: expired bindings and finished transactions."""
        for key in [
            k for k, a in self._answers.items() if a.expires_at <= now and a.send is not None
        ]:
            del self._answers[key]
        expired = self.location.purge_expired(now)
        if not expired:
            return []
        self.stats["bindings_expired"] += len(expired)
        return [
            Persist(deletes=tuple((b.aor, b.key) for b in expired)),
            *(
                Publish(event=BindingEvent(kind=BindingEventKind.EXPIRED, binding=b))
                for b in expired
            ),
        ]

    # --- routing --------------------------------------------------------------------------

    def _route(
        self, request: Request, peer: Peer, now: float, key: tuple[str, ...], linger: float
    ) -> list[Action]:
        method = request.method
        uri = request.uri
        if uri.scheme not in ("sip", "sips"):
            return self._answer(
                key, linger, request, peer, 416, f"Unsupported URI Scheme {uri.scheme}"
            )
        if method == "REGISTER":
            if (bad := self._unsupported(request)) is not None:
                return self._bad_extension(key, linger, request, peer, bad)
            return self._register(request, peer, now, key, linger)
        assert isinstance(uri, SipUri)
        if method == "OPTIONS" and uri.user is None:
            if (bad := self._unsupported(request)) is not None:
                return self._bad_extension(key, linger, request, peer, bad)
            return self._answer(
                key,
                linger,
                request,
                peer,
                200,
                "OK",
                headers=(
                    ("Allow", ALLOW),
                    ("Accept", ACCEPT),
                    ("Supported", ", ".join(SUPPORTED_OPTIONS)),
                ),
            )
        if method == "CANCEL" or request.to.tag is not None:
            return self._answer(key, linger, request, peer, 481, "Call/Transaction Does Not Exist")
        if request.max_forwards == 0:
            return self._answer(key, linger, request, peer, 483, "Too Many Hops")
        return self._answer(
            key,
            linger,
            request,
            peer,
            501,
            f"Not Implemented: siptrio does not proxy {method} requests yet",
            headers=(("Allow", ALLOW),),
        )

    def _unsupported(self, request: Request) -> list[str] | None:
        unknown = [t for t in request.require if t.lower() not in SUPPORTED_OPTIONS]
        return unknown or None

    def _bad_extension(
        self, key: tuple[str, ...], linger: float, request: Request, peer: Peer, tags: list[str]
    ) -> list[Action]:
        return self._answer(
            key,
            linger,
            request,
            peer,
            420,
            "Bad Extension",
            headers=(("Unsupported", ", ".join(tags)),),
        )

    def _register(
        self, request: Request, peer: Peer, now: float, key: tuple[str, ...], linger: float
    ) -> list[Action]:
        outcome = self.registrar.register(request, peer, now)
        status = outcome.response.status
        self.stats[f"register_{status}"] += 1
        send = Send(data=outcome.response.serialise(), peer=peer, message=outcome.response)
        if not outcome.upserts and not outcome.deletes:
            self._answers[key] = _Answer(expires_at=linger, send=send)
            return [send]
        self._answers[key] = _Answer(expires_at=linger, send=None)
        failed = make_response(
            request,
            500,
            "Server Internal Error (binding store write failed)",
            headers=(("Retry-After", "5"), ("Server", self.config.server_name)),
        )
        return [
            Persist(
                upserts=tuple(outcome.upserts),
                deletes=tuple(outcome.deletes),
                then=(send,),
                on_failure=(Send(data=failed.serialise(), peer=peer, message=failed),),
                txn_key=key,
            ),
            *(Publish(event=e) for e in outcome.events),
        ]

    def _answer(
        self,
        key: tuple[str, ...],
        linger: float,
        request: Request,
        peer: Peer,
        status: int,
        reason: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> list[Action]:
        response = make_response(
            request, status, reason, headers=(*headers, ("Server", self.config.server_name))
        )
        self.stats[f"responses_out.{status // 100}xx"] += 1
        send = Send(data=response.serialise(), peer=peer, message=response)
        self._answers[key] = _Answer(expires_at=linger, send=send)
        return [send]


def _txn_key(request: Request) -> tuple[str, ...]:
    """RFC 3261 section 17.2.3 matching: branch + sent-by + method, else RFC 2543 style."""
    via = request.top_via
    branch = via.branch
    method = "INVITE" if request.method == "ACK" else request.method
    if branch and branch.startswith("z9hG4bK") and len(branch) > 7:
        return (branch, via.sent_by, method)
    return (
        request.uri_text,
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        via.text,
        method,
    )


def stamp_via(request: Request, peer: Peer) -> Request:
    """RFC 3261 section 18.2.1 and RFC 3581: record where the request really came from.

    ``received`` is added when the sent-by host differs from the source address;
    an empty ``rport`` is filled with the source port (and then ``received`` is
    always added, as RFC 3581 requires).
    """
    via = request.top_via
    new = via
    host = via.host[1:-1] if via.host.startswith("[") else via.host
    rport = via.rport
    if rport == "":
        new = new.with_param("rport", str(peer.port)).with_param("received", peer.host)
    elif host != peer.host:
        new = new.with_param("received", peer.host)
    if new is via:
        return request
    # Rewrite the first Via line: the stamped value first, the line's other values after.
    headers = list(request.headers)
    for i, h in enumerate(headers):
        if h.name == "via":
            rest = split_list(h.value.decode("utf-8"), "Via")[1:]
            lines = [HeaderField.make("via", new.serialise())]
            if rest:
                lines.append(HeaderField.make("via", ", ".join(rest)))
            headers[i : i + 1] = lines
            break
    stamped = Request(
        headers=tuple(headers),
        body=request.body,
        method=request.method,
        uri=request.uri,
        uri_text=request.uri_text,
    )
    # Keep already parsed views: they did not change except the top Via.
    for attr in ("from_", "to", "call_id", "cseq", "max_forwards"):
        if attr in request.__dict__:
            stamped.__dict__[attr] = request.__dict__[attr]
    if "vias" in request.__dict__:
        stamped.__dict__["vias"] = (new, *request.vias[1:])
    return stamped
