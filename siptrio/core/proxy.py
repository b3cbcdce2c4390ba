"""The stateful proxy's decisions (RFC 3261 section 16, RFC 5658, RFC 3327), sans-IO.

For each request that is not for the server itself: validate it (16.3), strip our own
Routes (16.4), ask the router (routing/) for targets and their next hops (16.5), and
hand them to the forker (forking.py: branches, failover, the best answer, CANCEL),
building each forwarded request here (16.6): our Via, Record-Route for dialog-creating
requests (doubled when the two sides differ, RFC 5658), Max-Forwards, the Route set.
In-dialog requests follow the dialog table; a 2xx's ACK is relayed statelessly;
responses go to their client transactions.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..sip.headers import remember_via
from ..sip.message import HeaderField, Request, Response
from ..sip.transaction import ServerTransaction, TransactionLayer
from ..sip.uri import SipUri, parse_uri_untrusted
from .branches import MAGIC, Branch, Context, branch_node_tag, loop_hash
from .bridge import MediaBridge, sdp_bytes
from .dialogs import Dialogs, DialogState
from .events import Action, Send
from .forking import Forker
from .location import Location
from .media import MediaConfig, answer_command, has_sdp
from .plumbing import Plumbing
from .routing import (
    NatMode,
    Refuse,
    ResolverConfig,
    Router,
    RouteRule,
    RoutingConfig,
    Target,
    node_tag,
)
from .routing.rfc3263 import Answer
from .routing.router import IPNetwork
from .tracking import DialogTracker
from .types import Clock, Listener, Peer

__all__ = ["Proxy", "ProxyConfig", "node_tag"]

SUPPORTED_PROXY_OPTIONS: tuple[str, ...] = ()
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    domains: tuple[str, ...] = ()
    allowed_destinations: tuple[IPNetwork, ...] = ()
    record_route: bool = True
    max_dialog_duration: float = 43200.0
    timer_c: float = 180.0
    server_name: str = "siptrio"
    advertised_address: str | None = None
    media: MediaConfig = field(default_factory=MediaConfig)
    node_id: str | None = None  # set in a cluster: bindings of other nodes route via them
    nat: NatMode = NatMode.AUTO
    routes: tuple[RouteRule, ...] = ()
    outbound_proxy: SipUri | None = None
    trust_contacts: bool = False  # authenticated REGISTERs: every Contact is honoured
    dns: ResolverConfig = field(default_factory=ResolverConfig)


def _routing_config(config: ProxyConfig) -> RoutingConfig:
    return RoutingConfig(
        domains=config.domains,
        allowed_destinations=config.allowed_destinations,
        advertised_address=config.advertised_address,
        node_id=config.node_id,
        nat=config.nat,
        routes=config.routes,
        outbound_proxy=config.outbound_proxy,
        trust_contacts=config.trust_contacts,
        dns=config.dns,
    )


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        location: Location,
        layer: TransactionLayer,
        plumbing: Plumbing,
        dialogs: Dialogs,
        stats: Counter[str],
        secret: bytes,
    ) -> None:
        self.config = config
        self.location = location
        self.layer = layer
        self.plumbing = plumbing
        self.dialogs = dialogs
        self.stats = stats
        self.router = Router(_routing_config(config), location=location, stats=stats)
        self.bridge = MediaBridge()
        self.forker = Forker(
            config,
            layer=layer,
            plumbing=plumbing,
            router=self.router,
            bridge=self.bridge,
            tracker=DialogTracker(dialogs, self.bridge, record_route=config.record_route),
            forward=self._forwarded,
            stats=stats,
            secret=secret,
        )

    def set_listeners(self, listeners: list[Listener]) -> None:
        self.router.set_listeners(listeners)

    def reconfigure(self, config: ProxyConfig) -> None:
        """A reload's settings (Dispatcher.reconfigure): calls under way keep going."""
        self.config = config
        self.router.reconfigure(_routing_config(config))
        self.forker.config = config
        self.forker.tracker.record_route = config.record_route

    def is_local_domain(self, uri: SipUri) -> bool:
        return self.router.is_local_domain(uri)

    # --- entry: a new request that is not for the server itself --------------------------

    def handle_request(self, txn: ServerTransaction, peer: Peer, clock: Clock) -> list[Action]:
        req = txn.request
        ctx = self.forker.open(txn, peer)
        if bad := [t for t in req.proxy_require if t.lower() not in SUPPORTED_PROXY_OPTIONS]:
            return self.forker.respond(
                ctx, 420, "Bad Extension", clock, headers=(("Unsupported", ", ".join(bad)),)
            )
        if not isinstance(req.uri, SipUri):
            return self.forker.respond(ctx, 416, f"Unsupported URI Scheme {req.uri.scheme}", clock)
        mf = req.max_forwards
        if mf == 0:
            return self.forker.respond(ctx, 483, "Too Many Hops", clock)
        if self._is_loop(req):
            return self.forker.respond(ctx, 482, "Loop Detected", clock)

        req, last_own = self._preprocess_routes(req)
        ctx.request = req
        if last_own is not None and last_own.param("ft"):
            return self._to_flow(ctx, last_own.param("ft") or "", clock)
        if last_own is not None and last_own.param("bt"):
            return self._to_binding(ctx, last_own.param("bt") or "", clock)
        if req.to.tag is not None:
            return self._in_dialog(ctx, last_own, clock)
        if req.routes:
            return self._route(ctx, self.router.via_route(req), clock)
        return self._route(ctx, self.router.initial(req, clock.wall), clock)

    def _is_loop(self, req: Request) -> bool:
        """RFC 3261 16.3 step 4: our Via with the branch this very request would get."""
        mine = None
        own = self.router.is_own_address
        for via in req.vias[1:] if len(req.vias) > 1 else req.vias:
            host = via.host[1:-1] if via.host.startswith("[") else via.host
            if own(host, via.port or 5060) and via.branch:
                mine = mine or loop_hash(req)
                if via.branch.startswith(MAGIC + mine):
                    return True
        return False

    def _preprocess_routes(self, req: Request) -> tuple[Request, SipUri | None]:
        """RFC 3261 16.4: undo strict routing, then pop every Route of ours on top."""
        last_own: SipUri | None = None
        uri = req.uri
        is_own = self.router.is_own
        if isinstance(uri, SipUri) and is_own(uri) and req.routes:
            # A strict router put our Record-Route in the Request-URI (16.4).
            last = req.routes[-1]
            rest = [r.text for r in req.routes[:-1]]
            req = req.with_uri(last.uri)
            req = req.set("route", *rest) if rest else req.remove("route")
            last_own = uri
        routes = req.routes
        popped = 0
        for r in routes:
            if isinstance(r.uri, SipUri) and is_own(r.uri):
                last_own = r.uri
                popped += 1
            else:
                break
        if popped:
            rest = [r.text for r in routes[popped:]]
            req = req.set("route", *rest) if rest else req.remove("route")
        return req, last_own

    # --- targets ----------------------------------------------------------------------

    def _route(self, ctx: Context, decision: list[Target] | Refuse, clock: Clock) -> list[Action]:
        if isinstance(decision, Refuse):
            return self.forker.respond(ctx, decision.status, decision.reason, clock)
        return self.forker.fork(ctx, decision, clock)

    def _to_flow(self, ctx: Context, token: str, clock: Clock) -> list[Action]:
        """A request another node routed here for one of our flows (RFC 5626 flow token)."""
        flow_id = self.router.check_token(token)
        if flow_id is None:
            return self.forker.respond(ctx, 403, "Forbidden (bad flow token)", clock)
        bindings = self.location.on_flow(flow_id)
        if not bindings:
            return self.forker.respond(ctx, 430, "Flow Failed", clock)
        b = bindings[0]
        dest = self.router.source_peer(b)
        return self.forker.fork(ctx, [Target(ctx.request.uri_text, (), (dest,), b)], clock)

    def _to_binding(self, ctx: Context, token: str, clock: Clock) -> list[Action]:
        """Another node routed here a request for a UDP binding made through us.

        We send it from the socket the client registered with: a NAT in front of the
        client lets in only what comes from there.
        """
        ref = self.router.check_token(token)
        if ref is None:
            return self.forker.respond(ctx, 403, "Forbidden (bad binding token)", clock)
        try:
            aor, key = (
                base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
                for part in ref.split("~", 1)
            )
        except ValueError:
            return self.forker.respond(ctx, 403, "Forbidden (bad binding token)", clock)
        b = self.location.bindings(aor).get(key)
        if b is None or b.expires_at <= clock.wall or self.router.remote(b):
            return self.forker.respond(ctx, 480, "Temporarily Unavailable", clock)
        hop = self.router.binding_hop(b)
        if hop is None:
            return self.forker.respond(ctx, 480, "Temporarily Unavailable", clock)
        return self.forker.fork(ctx, [Target(ctx.request.uri_text, (), (hop,), b)], clock)

    def _in_dialog(self, ctx: Context, last_own: SipUri | None, clock: Clock) -> list[Action]:
        req = ctx.request
        found = self.dialogs.find(req.call_id, req.from_.tag, req.to.tag)
        if found is None:
            router = self.router
            node = router.node_by_tag(last_own.param("nd") if last_own is not None else None)
            if node is not None:
                # The dialog is held by a worker sharing our address: route it through there.
                self.stats["in_dialog_to_node"] += 1
                dest = router.node_peer(node)
                return self.forker.fork(ctx, [Target(req.uri_text, (), (dest,))], clock)
            if req.routes:
                return self._route(ctx, router.via_route(req), clock)
            # Outside any dialog we know, only an allowed destination is reachable: a
            # forged Route of ours does not open a relay.
            targets = router.to_uri(req)
            if targets is not None:
                return self.forker.fork(ctx, targets, clock)
            return self.forker.respond(ctx, 481, "Call/Transaction Does Not Exist", clock)
        dialog, from_caller = found
        ctx.from_caller = from_caller
        ctx.dialog_key = dialog.key
        ctx.bridged_dialog = dialog.bridged
        if dialog.state is DialogState.TERMINATED:
            if dialog.failed_flow is not None:
                return self.forker.respond(ctx, 430, "Flow Failed", clock)
            return self.forker.respond(ctx, 481, "Call/Transaction Does Not Exist", clock)
        # The other leg: its flow or address (routes left beyond ours go on with it,
        # e.g. to the next node of a cluster).
        leg = dialog.callee if from_caller else dialog.caller
        return self.forker.fork(ctx, [Target(req.uri_text, (), (leg.peer,))], clock)

    # --- the request a branch sends ---------------------------------------------------------

    def _forwarded(self, ctx: Context, target: Target, dest: Peer, branch: str) -> Request:
        """RFC 3261 16.6 steps 1-8: the request one branch sends to one next hop."""
        req = ctx.request
        target_uri, path = target.uri, target.route
        fwd: Request = req
        if target_uri != req.uri_text:
            fwd = fwd.with_uri(parse_uri_untrusted(target_uri))
        # One pass over the header lines, one new message: our Via and Record-Route on
        # top, Max-Forwards one less and Route (with the binding's Path) where they stood.
        mf = req.max_forwards
        make = HeaderField.make
        via = self.router.via(dest, branch)
        # The next hop echoes it in every answer: put it where parse_via looks first, as
        # stamp_via does with the Vias it stamps (the answers then skip a parse each).
        remember_via(via)
        top = [make("via", via.text)]
        if self.config.record_route and req.method in DIALOG_CREATING and req.to.tag is None:
            top += [make("record-route", rr) for rr in self.router.record_routes(ctx.peer, dest)]
        max_forwards: HeaderField | None = make("max-forwards", str((70 if mf is None else mf) - 1))
        routes = (
            [make("route", r) for r in (*path, *(r.text for r in req.routes))] if path else None
        )
        out = top
        for h in fwd.headers:
            name = h.name
            if name == "max-forwards":
                if max_forwards is not None:
                    out.append(max_forwards)
                    max_forwards = None
                continue
            if routes is not None and name == "route":
                out += routes
                routes = []
                continue
            out.append(h)
        if max_forwards is not None:
            out.append(max_forwards)
        if routes:
            out += routes
        if not req.has("content-length"):
            out.append(make("content-length", str(len(fwd.body))))
        return fwd.with_headers(out)

    # --- what other parts of the core and the shell hand back ------------------------------

    def resolved(self, op: int, answer: Answer, clock: Clock) -> list[Action]:
        """The shell's answer to a Resolve action."""
        return self.router.resolver.resolved(op, answer, clock)

    def media_result(
        self, op: int, reply: dict[str, Any] | None, error: str | None, clock: Clock
    ) -> list[Action]:
        return self.bridge.result(op, reply, error, clock)

    def handle_cancel(self, txn: ServerTransaction, peer: Peer, clock: Clock) -> list[Action]:
        return self.forker.cancel(txn, clock)

    def timer_c(self, key: object, clock: Clock) -> list[Action]:
        return self.forker.timer_c(key, clock)

    def send_failed(self, owner: object, reason: str, clock: Clock) -> list[Action]:
        return self.forker.send_failed(owner, reason, clock)

    # --- responses and ACKs -----------------------------------------------------------------

    def on_response(self, resp: Response, peer: Peer, clock: Clock) -> list[Action]:
        txn = self.layer.find_client(resp)
        if txn is None:
            node = self.router.node_by_tag(branch_node_tag(resp))
            if node is not None:
                # A worker beside us sent the request from our shared port; the kernel
                # gave us the answer. Hand it to its transaction over there.
                self.stats["responses_to_node"] += 1
                return [Send(data=resp.serialise(), peer=self.router.node_peer(node), message=resp)]
            self.stats["responses_stray"] += 1
            return []
        ack = None
        if txn.is_invite and resp.status >= 300 and isinstance(txn.context, Branch):
            ack = self.forker.hop_ack(txn.context, resp)
        return self.plumbing.on_response(txn, resp, ack, clock)

    def handle_ack(self, req: Request, peer: Peer, clock: Clock) -> list[Action]:
        """An ACK that matched no INVITE transaction: a 2xx ACK, routed statelessly."""
        req, _ = self._preprocess_routes(req)
        found = self.dialogs.find(req.call_id, req.from_.tag, req.to.tag)
        if found is None:
            self.stats["ack_unmatched"] += 1
            return []
        dialog, from_caller = found
        leg = dialog.callee if from_caller else dialog.caller
        # a stateless branch: the same for retransmissions of this ACK
        seed = f"{req.top_via.branch}|{req.call_id}|{req.cseq.number}"
        branch = MAGIC + "a" + hashlib.blake2s(seed.encode(), digest_size=8).hexdigest()
        mf = req.max_forwards
        fwd = req.set("max-forwards", str((70 if mf is None else mf) - 1))
        if mf == 0:
            return []
        # an ACK: nothing echoes our Via
        fwd = fwd.prepend("via", self.router.via(leg.peer, branch).text)
        self.stats["forwarded.ACK"] += 1
        if dialog.bridged and dialog.late_offer_pending and has_sdp(req.content_type, req.body):
            # Late offer: this ACK's SDP answers the offer the callee put in its 2xx.
            dialog.late_offer_pending = False
            cmd = answer_command(
                call_id=req.call_id,
                from_tag=dialog.callee.tag,
                to_tag=dialog.caller.tag,
                via_branch=None,
                sdp=req.body,
                towards=dialog.callee.peer,
            )

            def resume(reply: dict[str, Any], error: str | None, clock: Clock) -> list[Action]:
                body = (
                    fwd
                    if error is not None
                    else fwd.with_body(sdp_bytes(reply.get("sdp")), "application/sdp")
                )
                return [Send(data=body.serialise(), peer=leg.peer)]

            return self.bridge.request(cmd, resume)
        return [Send(data=fwd.serialise(), peer=leg.peer)]
