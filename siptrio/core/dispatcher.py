"""The core's front door: every parsed message enters here and leaves as actions.

It stamps the top Via (RFC 3581), puts every request through a server transaction
(so retransmissions are absorbed and answered again by the transaction, never seen
twice by the registrar or the proxy), and sends each request to the one part that
owns it: the registrar, the server's own OPTIONS answer, or the proxy.

Time comes in as a ``Clock`` (core/types.py), read once per event by the shell:
its monotonic ``now`` drives the transaction timers; bindings carry its ``wall``
times. (The shell
keeps current. Nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..sip.errors import SipParseError
from ..sip.message import Message, Request, Response, make_response
from ..sip.transaction import ServerTransaction, Timers, TransactionLayer, TxEvent, TxSend
from ..sip.uri import SipUri
from .admission import Admission, AdmissionConfig
from .auth import AuthConfig, Authenticator
from .calls import Refused
from .dialogs import DialogEvent, DialogEventKind, Dialogs
from .events import Action, BindingEvent, BindingEventKind, FlowValid, Persist, Publish, Send
from .fastreg import FastRegister
from .location import Binding, Location
from .metrics import CoreMetrics, method_label
from .overload import Overload, OverloadConfig, Priority, priority_of
from .plumbing import Plumbing
from .proxy import Proxy, ProxyConfig
from .registrar import SUPPORTED_OPTIONS, Registrar, RegistrarConfig
from .routing import Answer, Router
from .stamp import stamp_via, stamped_via
from .types import Clock, Listener, Peer

__all__ = ["ALLOW", "Dispatcher", "DispatcherConfig", "stamp_via", "stamped_via"]  # (stamp.py)

log = logging.getLogger("siptrio.core")

ALLOW = ", ".join(
    [
        *("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE"),
        *("INFO", "UPDATE", "PRACK", "NOTIFY", "REFER", "SUBSCRIBE"),
    ]
)
ACCEPT = "application/sdp"
SERVER = f"siptrio/{__version__}"


@dataclass(frozen=True, kw_only=True)
class DispatcherConfig:
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    timers: Timers = field(default_factory=Timers)
    server_name: str = SERVER
    auth: AuthConfig = field(default_factory=AuthConfig)
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)


class Dispatcher:
    def __init__(
        self, config: DispatcherConfig, location: Location | None = None, *, secret: bytes
    ) -> None:
        """``secret``: random bytes from the shell. Nonces are HMACs under it and our
        branches carry a tag made from it, so they differ from any other process's."""
        if len(secret) < 8:
            raise ValueError("the core needs a secret of at least 8 random bytes")
        self.config = config
        self.location = location if location is not None else Location()
        self.stats: Counter[str] = Counter()
        self.metrics = CoreMetrics()  # answers by method and status, latencies
        self.registrar = Registrar(config.registrar, self.location, server=config.server_name)
        self.layer = TransactionLayer(config.timers)
        self.plumbing = Plumbing(self.layer, self.metrics)
        self.dialogs = Dialogs(max_duration=config.proxy.max_dialog_duration)
        proxy_config = config.proxy
        if proxy_config.server_name != config.server_name:
            from dataclasses import replace

            proxy_config = replace(proxy_config, server_name=config.server_name)
        self.proxy = Proxy(
            proxy_config,
            location=self.location,
            layer=self.layer,
            plumbing=self.plumbing,
            dialogs=self.dialogs,
            stats=self.stats,
            secret=secret,
        )
        self.auth = Authenticator(config.auth, secret)
        self.overload = Overload(config.overload)
        self.admission = Admission(
            config.admission,
            stats=self.stats,
            metrics=self.metrics,
            server_name=config.server_name,
        )
        # a private strategy of receive_datagram: tidy REGISTERs in one pass
        self._fast = self._fast_path(config)
        # peers that never authenticate: the built-in simulated client's socket
        self.trusted: set[tuple[str, int]] = set()
        self.newly_banned: list[str] = []  # for the shell to log
        # REGISTER answers waiting for their bindings to be durable (the fast path's are
        # already bytes)
        self._awaiting_store: dict[Hashable, Response | bytes] = {}

    def set_listeners(self, listeners: list[Listener]) -> None:
        self.proxy.set_listeners(listeners)

    def reconfigure(self, config: DispatcherConfig) -> None:
        """A reload's settings, from the next message on. What was built from the old
        ones is rebuilt; what the server holds (bindings, dialogs, transactions, nonces,
        bans) stays. The shell keeps the keys that need a restart (the timers, the
        server name) as they were."""
        self.config = config
        self.registrar.config = config.registrar
        proxy_config = config.proxy
        if proxy_config.server_name != config.server_name:
            from dataclasses import replace

            proxy_config = replace(proxy_config, server_name=config.server_name)
        self.proxy.reconfigure(proxy_config)
        self.dialogs.max_duration = config.proxy.max_dialog_duration
        self.auth.reconfigure(config.auth)
        self.admission.reconfigure(config.admission)
        self._fast = self._fast_path(config)

    def _fast_path(self, config: DispatcherConfig) -> FastRegister | None:
        limits = config.admission
        if not limits.fast_path:
            return None
        return FastRegister(self, max_size=limits.max_size, max_headers=limits.max_headers)

    def state_sizes(self) -> dict[str, int]:
        """Entries in each table and heap of the core that traffic fills.

        Each is bounded by what is live: transactions while their RFC 3261 timers
        run, dialogs until their linger time is over, bindings until they expire; the
        timer structure holds no cancelled timer but the short retransmission ones
        (sip/timers.py), and the binding expiry heap at most about twice the bindings.
        Over a long run of steady traffic every one of them is flat; /metrics shows
        them as ``siptrio_state_entries``.
        """
        layer = self.layer
        location = self.location
        return {
            "transactions": len(layer.servers) + len(layer.clients),
            "transaction_users": len(self.plumbing),
            "timer_heap": layer.heap.entries,
            "dialogs": len(self.dialogs),
            "deadline_heap": self.dialogs.deadline_entries,
            "bindings": len(location),
            "binding_expiry_heap": location.expiry_entries,
            "known_aors": location.known_aors,
            "awaiting_store": len(self._awaiting_store),
        }

    # --- entry points ---------------------------------------------------------------------

    def receive_datagram(self, data: bytes, peer: Peer, clock: Clock) -> list[Action]:
        """The front door: the bytes of one message from any transport (a UDP datagram,
        or one message framed off a TCP, TLS or WebSocket flow).

        A banned address is dropped, a tidy REGISTER may take the fast path, what does
        not parse is answered (or dropped), an address over its rate is refused, and
        the rest is handled as ``receive`` handles a parsed message.
        """
        now = clock.now
        if self.auth.is_banned(peer.host, now):
            self.stats["dropped.banned"] += 1
            return []
        if self._fast is not None and data.startswith(b"REGISTER "):
            taken = self._register_fast(data, peer, clock)
            if taken is not None:
                return taken
        admission = self.admission
        message = admission.parse(data)
        if isinstance(message, SipParseError):
            return admission.reject(data, message, peer)
        refused = admission.allowed(message, peer, now)
        if refused is not None:
            return refused
        out = self.receive(message, peer, clock)
        if peer.flow_id is not None:
            out.append(FlowValid(flow_id=peer.flow_id))
        return out

    def receive(self, message: Message, peer: Peer, clock: Clock) -> list[Action]:
        """A message already parsed (the simulated client's, a test's)."""
        if isinstance(message, Request):
            return self.receive_request(message, peer, clock)
        assert isinstance(message, Response)
        return self.receive_response(message, peer, clock)

    def rejected(self, data: bytes, error: SipParseError, peer: Peer) -> list[Action]:
        """A message the shell could not even frame (a stream's): its error answer."""
        self.stats["parse_errors"] += 1
        return self.admission.reject(data, error, peer)

    def _register_fast(self, data: bytes, peer: Peer, clock: Clock) -> list[Action] | None:
        """A REGISTER taken by the fast path (fastreg.py), or None: the general path's."""
        assert self._fast is not None
        now = clock.now
        if not self.admission.may(peer.host, now):
            return None  # the general path drops it, or answers 503
        if self.overload.shedding(now):
            return None  # the general path tells refreshes from new REGISTERs
        try:
            actions = self._fast.handle(data, peer, clock)
        except Exception:
            # A bug. Up to the point where it takes a REGISTER it has changed nothing,
            # and the general path answers instead; after it, the general path finds
            # the transaction and keeps quiet, as for a retransmission.
            self.stats["internal_errors"] += 1
            log.exception("internal error in the REGISTER fast path, from %s", peer)
            return None
        if actions is None:
            return None
        self.admission.took(peer.host, now)
        if peer.flow_id is not None:
            actions.append(FlowValid(flow_id=peer.flow_id))
        return actions

    def receive_request(self, request: Request, peer: Peer, clock: Clock) -> list[Action]:
        self.stats["requests_in." + method_label(request.method)] += 1
        now = clock.now
        layer = self.layer
        if self.overload.level < Priority.NEW and request.method != "ACK":
            # Shedding: refused before anything is made for it, the Via stamp included
            # (half of what a refusal costs; the 503 goes to the source all the same).
            refused = self._shed(request, peer, now)
            if refused is not None:
                return refused
        request = stamp_via(request, peer)
        txn = layer.find_server(request)
        if request.method == "ACK":
            if txn is not None and txn.is_invite:
                self.stats["ack_absorbed"] += 1  # hop-by-hop ACK for our non-2xx answer
                return self._tx(txn.on_ack(now), clock)
            return self.proxy.handle_ack(request, peer, clock)
        if txn is not None:
            self.stats["retransmissions_absorbed"] += 1
            return self._tx(txn.on_retransmission(now), clock)
        txn = layer.new_server(request, peer, reliable=peer.transport.is_stream, now=now)
        try:
            if request.method == "CANCEL":
                return self.proxy.handle_cancel(txn, peer, clock)
            if self.auth.config.enabled and (peer.host, peer.port) not in self.trusted:
                refused = self._authorize(txn, peer, clock)
                if refused is not None:
                    return refused
            if request.method == "REGISTER":
                return self._register(txn, peer, clock)
            uri = request.uri
            if request.method == "OPTIONS" and isinstance(uri, SipUri) and uri.user is None:
                return self._options(txn, clock)
            return self.proxy.handle_request(txn, peer, clock)
        except SipParseError as e:
            # A header parsed lazily (Contact, Expires, Require, Route ...) was malformed.
            return self._answer(txn, e.status, e.reason, clock)

    def receive_response(self, response: Response, peer: Peer, clock: Clock) -> list[Action]:
        self.metrics.responses_received[(method_label(response.cseq.method), response.status)] += 1
        return self.proxy.on_response(response, peer, clock)

    def answer_when_stored(self, txn_key: Hashable, answer: Response | bytes) -> None:
        """Keep a REGISTER's answer until its Persist is committed (see ``committed``).

        Bytes are a 200 already serialised (the fast path's); a store failure turns
        either into a 500.
        """
        self._awaiting_store[txn_key] = answer

    def awaiting_store(self) -> frozenset[Hashable]:
        """The REGISTER transactions whose answers wait for the store."""
        return frozenset(self._awaiting_store)

    def committed(self, txn_key: Hashable, ok: bool, clock: Clock) -> list[Action]:
        """The store finished (or failed) a REGISTER's write: now it may be answered."""
        resp = self._awaiting_store.pop(txn_key, None)
        txn = self.layer.servers.get(txn_key)
        if resp is None or txn is None:
            return []
        if not ok:
            resp = make_response(
                txn.request,
                500,
                "Server Internal Error (binding store write failed)",
                headers=(("Retry-After", "5"), ("Server", self.config.server_name)),
            )
        if isinstance(resp, bytes):
            return self.plumbing.respond(txn, resp, 200, clock)
        return self.plumbing.respond(txn, resp.serialise(), resp.status, clock)

    def media_result(
        self, op: int, reply: dict[str, Any] | None, error: str | None, clock: Clock
    ) -> list[Action]:
        """rtpengine answered (or failed to) the MediaRequest ``op``."""
        return self.proxy.media_result(op, reply, error, clock)

    def resolved(self, op: int, answer: Answer, clock: Clock) -> list[Action]:
        """The DNS answered (or failed to) the Resolve action ``op``."""
        return self.proxy.resolved(op, answer, clock)

    @property
    def router(self) -> Router:
        return self.proxy.router

    def join_cluster(self, secret: bytes) -> None:
        """One secret for every node: nonces and flow tokens made by one are good at all."""
        self.auth.rekey(secret)
        self.router.cluster_secret = secret

    def send_failed(self, owner: Hashable, reason: str, clock: Clock) -> list[Action]:
        return self.proxy.send_failed(owner, reason, clock)

    def flow_closed(self, flow_id: str, clock: Clock) -> list[Action]:
        ended = self.dialogs.on_flow_closed(flow_id, clock.now, clock.wall)
        out: list[Action] = [Publish(event=e) for e in ended]
        out += self._release_media(ended)
        removed = self.location.remove_flow(flow_id)
        if removed:
            out.insert(0, Persist(deletes=tuple((b.aor, b.key) for b in removed)))
            out += [
                Publish(event=BindingEvent(kind=BindingEventKind.FLOW_CLOSED, binding=b))
                for b in removed
            ]
        return out

    def remove_bindings(self, aor: str, contact: str | None, clock: Clock) -> list[Action]:
        """An operator kicks a client: its bindings go, its flow is told nothing."""
        bindings = list(self.location.bindings(aor).values())
        if contact is not None:
            bindings = [b for b in bindings if b.contact_uri == contact or b.key == contact]
        for b in bindings:
            self.location.remove(b.aor, b.key)
        if not bindings:
            return []
        self.stats["bindings_kicked"] += len(bindings)
        return [
            Persist(deletes=tuple((b.aor, b.key) for b in bindings)),
            *(
                Publish(event=BindingEvent(kind=BindingEventKind.REMOVED, binding=b))
                for b in bindings
            ),
        ]

    def apply_remote(
        self, upserts: list[Binding], deletes: list[tuple[str, str]], clock: Clock
    ) -> list[Action]:
        """Another node of the cluster changed bindings (already in Redis): mirror them."""
        out: list[Action] = []
        for aor, key in deletes:
            b = self.location.remove(aor, key)
            if b is not None:
                out.append(Publish(event=BindingEvent(kind=BindingEventKind.REMOVED, binding=b)))
        for b in upserts:
            old = self.location.put(b)
            kind = BindingEventKind.ADDED if old is None else BindingEventKind.REFRESHED
            out.append(Publish(event=BindingEvent(kind=kind, binding=b)))
        return out

    def node_gone(self, node: str, clock: Clock) -> list[Action]:
        """A node stopped heartbeating: the bindings made over its flows cannot be reached."""
        gone = [b for b in self.location if b.node == node and b.flow_id is not None]
        for b in gone:
            self.location.remove(b.aor, b.key)
        self.stats["cluster_bindings_dropped"] += len(gone)
        return [
            Publish(event=BindingEvent(kind=BindingEventKind.FLOW_CLOSED, binding=b)) for b in gone
        ]

    def next_deadline(self) -> float:
        return self.layer.next_deadline()

    def fire_timers(self, clock: Clock) -> list[Action]:
        out: list[Action] = []
        now = clock.now
        layer = self.layer
        for owner, name in layer.heap.pop_due(now):
            if name == "C":
                out += self.proxy.timer_c(owner, clock)
                continue
            txn = layer.servers.get(owner) or layer.clients.get(owner)
            if txn is not None:
                out += self._tx(txn.on_timer(name, now), clock)
        return out

    def tick(self, clock: Clock) -> list[Action]:
        """Once a second: expired bindings and dialogs."""
        wall = clock.wall
        ended = self.dialogs.expire(clock.now, wall)
        out: list[Action] = [Publish(event=e) for e in ended]
        out += self._release_media(ended)
        expired = self.location.purge_expired(wall)
        if expired:
            self.stats["bindings_expired"] += len(expired)
            out.insert(0, Persist(deletes=tuple((b.aor, b.key) for b in expired)))
            out += [
                Publish(event=BindingEvent(kind=BindingEventKind.EXPIRED, binding=b))
                for b in expired
            ]
        return out

    def _release_media(self, events: list[DialogEvent]) -> list[Action]:
        out: list[Action] = []
        for e in events:
            if e.kind is DialogEventKind.ENDED and e.dialog.media == "bridged":
                d = self.dialogs.get_by_id(e.dialog.id)
                if d is not None:
                    out += self.proxy.bridge.delete_dialog(d)
        return out

    # --- the server's own answers ----------------------------------------------------------------

    def _shed(self, request: Request, peer: Peer, now: float) -> list[Action] | None:
        """A 503 with Retry-After for a request of a class being refused, else None.

        Stateless: no transaction, nothing kept. A lost 503 is sent again when the
        request is retransmitted; its ACK matches nothing. A retransmission of a
        request already taken goes on to its transaction.
        """
        try:
            priority = priority_of(request, self.location)
            if not self.overload.refuses(priority, now):
                return None
            if self.layer.find_server(request) is not None:
                return None
        except SipParseError:
            return None  # the general path answers the fault
        self.stats[f"overload_refused.{priority.name.lower()}"] += 1
        self.metrics.responses_sent[(method_label(request.method), 503)] += 1
        response = make_response(
            request,
            503,
            "Service Unavailable (overloaded)",
            headers=(
                ("Retry-After", str(self.overload.config.retry_after)),
                ("Server", self.config.server_name),
            ),
        )
        return [Send(data=response.serialise(), peer=peer)]

    def _tx(self, events: list[TxSend | TxEvent], clock: Clock) -> list[Action]:
        return self.plumbing.actions(events, clock)

    def _answer(
        self,
        txn: ServerTransaction,
        status: int,
        reason: str,
        clock: Clock,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        quiet: bool = False,
    ) -> list[Action]:
        """Answer a request ourselves; an error answer is published as a refusal
        unless ``quiet`` (a first digest challenge: every client gets one)."""
        response = make_response(
            txn.request, status, reason, headers=(*headers, ("Server", self.config.server_name))
        )
        out = self.plumbing.respond(txn, response.serialise(), status, clock)
        if status >= 300 and not quiet:
            out.append(_refused(txn, status, reason))
        return out

    def _authorize(self, txn: ServerTransaction, peer: Peer, clock: Clock) -> list[Action] | None:
        """Challenge, refuse, or let through (None); RFC 3261 section 22."""
        req = txn.request
        uri = req.uri
        if req.method == "REGISTER":
            proxy = False
        elif req.method in ("ACK", "CANCEL"):
            return None  # never challenged (RFC 3261 section 22.1)
        elif req.to.tag is not None:
            if self.dialogs.find(req.call_id, req.from_.tag, req.to.tag) is not None:
                return None  # in-dialog requests ride on a dialog the proxy knows
            proxy = True  # outside any dialog it could only be relayed: prove who you are
        elif req.method == "OPTIONS" and isinstance(uri, SipUri) and uri.user is None:
            return None  # a ping of the server itself
        else:
            from_uri = req.from_.uri
            from_ours = isinstance(from_uri, SipUri) and self.proxy.is_local_domain(from_uri)
            # a number of our domain that a [routes] rule sends to a trunk is no call to us
            to_ours = (
                isinstance(uri, SipUri)
                and self.proxy.is_local_domain(uri)
                and not self.router.routed_out(uri, clock.wall)
            )
            if not from_ours and to_ours:
                return None  # a call from outside to one of ours
            # our users, and anyone who wants to leave through us (toll fraud), authenticate
            proxy = True
        result = self.auth.verify(req, proxy=proxy, now=clock.wall)
        if result.user is None:
            if result.failed:
                self.stats["auth_failures"] += 1
                if self.auth.failed(peer.host, clock.now):
                    self.stats["auth_bans"] += 1
                    self.newly_banned.append(peer.host)
            if result.final:
                return self._answer(txn, 403, f"Forbidden: {result.told}", clock)
            status, reason = (
                (407, "Proxy Authentication Required") if proxy else (401, "Unauthorized")
            )
            reason += f": {result.told}" if result.told else ""
            challenge = self.auth.challenge(proxy=proxy, now=clock.wall, stale=result.stale)
            return self._answer(
                txn, status, reason, clock, headers=tuple(challenge), quiet=not result.failed
            )
        claimed = req.to.uri if req.method == "REGISTER" else req.from_.uri
        if not self.auth.may_claim(result.user, claimed):
            self.stats["auth_identity_refused"] += 1
            what = (
                "register only its own address"
                if req.method == "REGISTER"
                else "send only as itself"
            )
            return self._answer(txn, 403, f"Forbidden: {result.user} may {what}", clock)
        self.stats["auth_ok"] += 1
        return None

    def _options(self, txn: ServerTransaction, clock: Clock) -> list[Action]:
        bad = [t for t in txn.request.require if t.lower() not in SUPPORTED_OPTIONS]
        if bad:
            return self._answer(
                txn, 420, "Bad Extension", clock, headers=(("Unsupported", ", ".join(bad)),)
            )
        return self._answer(
            txn,
            200,
            "OK",
            clock,
            headers=(
                ("Allow", ALLOW),
                ("Accept", ACCEPT),
                ("Supported", ", ".join(SUPPORTED_OPTIONS)),
            ),
        )

    def _register(self, txn: ServerTransaction, peer: Peer, clock: Clock) -> list[Action]:
        request = txn.request
        bad = [t for t in request.require if t.lower() not in SUPPORTED_OPTIONS]
        if bad:
            return self._answer(
                txn, 420, "Bad Extension", clock, headers=(("Unsupported", ", ".join(bad)),)
            )
        outcome = self.registrar.register(request, peer, clock.wall)
        status = outcome.response.status
        if not outcome.upserts and not outcome.deletes:
            out = self.plumbing.respond(txn, outcome.response.serialise(), status, clock)
            if status >= 300:
                out.append(_refused(txn, status, outcome.response.reason))
            return out
        self.answer_when_stored(txn.key, outcome.response)
        return [
            Persist(
                upserts=tuple(outcome.upserts), deletes=tuple(outcome.deletes), txn_key=txn.key
            ),
            *(Publish(event=e) for e in outcome.events),
        ]


def _refused(txn: ServerTransaction, status: int, reason: str) -> Publish:
    req = txn.request
    peer = txn.dest
    assert isinstance(peer, Peer)
    return Publish(
        event=Refused(
            method=req.method,
            status=status,
            reason=reason,
            call_id=req.call_id,
            from_uri=str(req.from_.uri),
            to_uri=str(req.to.uri),
            peer=peer,
        )
    )
