"""The stateful proxy's decisions (RFC 3261 section 16, RFC 5658, RFC 3327), sans-IO.

For each request that is not for the server itself: validate (16.3), strip our own
Routes (16.4), ask the router (routing/) for targets and their next hops (16.5), and
forward each through a client transaction with our Via and, for dialog-creating
requests, Record-Route, doubled when the two sides differ (RFC 5658). A next hop named
by a URI is located first (RFC 3263); a 503, a transport error or a timeout moves a
branch on to its next hop in a new transaction (RFC 3263 4.3). Responses come back
through the client transactions; 1xx and every 2xx go upstream at once, the best
final answer when all branches are done (16.7). CANCEL fans out to pending branches
(16.10). In-dialog requests follow the dialog table.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..sip.headers import remember_via
from ..sip.message import HeaderField, Request, Response, make_response, with_top_via
from ..sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
    TxEvent,
    TxKind,
    TxSend,
    TxState,
)
from ..sip.uri import SipUri
from .dialogs import Dialog, DialogEvent, Dialogs, DialogState, Leg
from .events import Action, MediaRequest, Publish, Send
from .location import Binding, Location
from .media import (
    MediaConfig,
    answer_command,
    delete_command,
    has_sdp,
    offer_command,
    should_bridge,
)
from .routing import (
    Candidate,
    Locate,
    LocateError,
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
from .routing.router import Hop, IPNetwork
from .types import Clock, Listener, Peer

__all__ = ["Proxy", "ProxyConfig", "node_tag"]

SUPPORTED_PROXY_OPTIONS: tuple[str, ...] = ()
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
_MAGIC = "z9hG4bK"


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


@dataclass(eq=False)
class Branch:
    ctx: Context
    branch: str
    request: Request  # as sent
    peer: Peer | None  # None until its first next hop is known
    binding: Binding | None
    txn: ClientTransaction | None  # None while rtpengine rewrites its offer or DNS answers
    target: Target | None = None
    hops: list[Hop] = field(default_factory=list)  # the next hops still to try
    failure: tuple[int, str] | None = None  # why the last hop failed (when none is left)
    provisional: bool = False
    ringing: bool = False  # a 101-199 came: the hop is alive, no failover
    final: Response | None = None
    local_failure: tuple[int, str] | None = None
    cancel_pending: bool = False
    cancel_sent: bool = False
    bridged: bool = False  # its SDP goes through rtpengine
    late_offer: bool = False  # bridged INVITE without SDP: the 2xx will carry the offer
    rewritten: dict[bytes, bytes] = field(default_factory=dict)  # SDP seen -> SDP sent on

    @property
    def done(self) -> bool:
        return self.final is not None or self.local_failure is not None


@dataclass(eq=False)
class Context:
    """The proxy's state for one server transaction (one incoming request)."""

    txn: ServerTransaction
    request: Request
    peer: Peer
    branches: list[Branch] = field(default_factory=list)
    final_sent: bool = False
    got_2xx: bool = False
    cancelled: bool = False
    from_caller: bool = True  # in-dialog: which side sent it
    dialog_key: tuple[str, str, str] | None = None
    bridged_dialog: bool = False  # in-dialog request of a bridged dialog
    # The server transaction plus every client transaction working for this context.
    # When the last one ends the context lets go of its branches: context, branches
    # and transactions point at each other, and without this each call would leave
    # ~120 objects for the cyclic collector (a full collection) to find.
    live: int = 1


def _branch_node_tag(resp: Response) -> str | None:
    vias = resp.vias
    branch = vias[0].branch if vias else None
    if not branch or not branch.startswith(_MAGIC):
        return None
    return branch.partition(".")[2][:6] or None


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        location: Location,
        layer: TransactionLayer,
        dialogs: Dialogs,
        stats: Counter[str],
        secret: bytes,
    ) -> None:
        self.config = config
        self.location = location
        self.layer = layer
        self.dialogs = dialogs
        self.stats = stats
        self.router = Router(
            RoutingConfig(
                domains=config.domains,
                allowed_destinations=config.allowed_destinations,
                advertised_address=config.advertised_address,
                node_id=config.node_id,
                nat=config.nat,
                routes=config.routes,
                outbound_proxy=config.outbound_proxy,
                trust_contacts=config.trust_contacts,
                dns=config.dns,
            ),
            location=location,
            stats=stats,
        )
        self.branches: dict[Hashable, Branch] = {}
        self._media_ops: dict[int, MediaResume] = {}
        # In a cluster our branches and Record-Route entries carry a tag of this node, so
        # that a worker sharing our ports can pass on what the kernel gave it but is ours.
        unique = hashlib.sha256(b"branch tag" + secret).hexdigest()
        self._branch_tag = (self.router.node_tag or unique[:6]) + unique[6:10]
        self._branches = itertools.count(1)
        self._op_ids = itertools.count(1)

    def set_listeners(self, listeners: list[Listener]) -> None:
        self.router.set_listeners(listeners)

    def is_local_domain(self, uri: SipUri) -> bool:
        return self.router.is_local_domain(uri)

    # --- entry: a new request that is not for the server itself --------------------------

    def handle_request(self, txn: ServerTransaction, peer: Peer, clock: Clock) -> list[Action]:
        req = txn.request
        ctx = Context(txn=txn, request=req, peer=peer)
        txn.context = ctx
        if bad := [t for t in req.proxy_require if t.lower() not in SUPPORTED_PROXY_OPTIONS]:
            return self._respond(
                ctx, 420, "Bad Extension", clock, headers=(("Unsupported", ", ".join(bad)),)
            )
        if not isinstance(req.uri, SipUri):
            return self._respond(ctx, 416, f"Unsupported URI Scheme {req.uri.scheme}", clock)
        mf = req.max_forwards
        if mf == 0:
            return self._respond(ctx, 483, "Too Many Hops", clock)
        if self._is_loop(req):
            return self._respond(ctx, 482, "Loop Detected", clock)

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
                mine = mine or self._loop_hash(req)
                if via.branch.startswith(_MAGIC + mine):
                    return True
        return False

    @staticmethod
    def _loop_hash(req: Request) -> str:
        seed = "|".join(
            (
                req.uri_text,
                req.to.tag or "",
                req.from_.tag or "",
                req.call_id,
                str(req.cseq.number),
                ",".join(req.proxy_require),
            )
        )
        return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=5).hexdigest()

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
            return self._respond(ctx, decision.status, decision.reason, clock)
        return self._fork(ctx, decision, clock)

    def _to_flow(self, ctx: Context, token: str, clock: Clock) -> list[Action]:
        """A request another node routed here for one of our flows (RFC 5626 flow token)."""
        flow_id = self.router.check_token(token)
        if flow_id is None:
            return self._respond(ctx, 403, "Forbidden (bad flow token)", clock)
        bindings = self.location.on_flow(flow_id)
        if not bindings:
            return self._respond(ctx, 430, "Flow Failed", clock)
        b = bindings[0]
        dest = self.router.source_peer(b)
        return self._fork(ctx, [Target(ctx.request.uri_text, (), (dest,), b)], clock)

    def _to_binding(self, ctx: Context, token: str, clock: Clock) -> list[Action]:
        """Another node routed here a request for a UDP binding made through us.

        We send it from the socket the client registered with: a NAT in front of the
        client lets in only what comes from there.
        """
        ref = self.router.check_token(token)
        if ref is None:
            return self._respond(ctx, 403, "Forbidden (bad binding token)", clock)
        try:
            aor, key = (
                base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
                for part in ref.split("~", 1)
            )
        except ValueError:
            return self._respond(ctx, 403, "Forbidden (bad binding token)", clock)
        b = self.location.bindings(aor).get(key)
        if b is None or b.expires_at <= clock.wall or self.router.remote(b):
            return self._respond(ctx, 480, "Temporarily Unavailable", clock)
        hop = self.router.binding_hop(b)
        if hop is None:
            return self._respond(ctx, 480, "Temporarily Unavailable", clock)
        return self._fork(ctx, [Target(ctx.request.uri_text, (), (hop,), b)], clock)

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
                return self._fork(ctx, [Target(req.uri_text, (), (dest,))], clock)
            if req.routes:
                return self._route(ctx, router.via_route(req), clock)
            # Outside any dialog we know, only an allowed destination is reachable: a
            # forged Route of ours does not open a relay.
            targets = router.to_uri(req)
            if targets is not None:
                return self._fork(ctx, targets, clock)
            return self._respond(ctx, 481, "Call/Transaction Does Not Exist", clock)
        dialog, from_caller = found
        ctx.from_caller = from_caller
        ctx.dialog_key = dialog.key
        ctx.bridged_dialog = dialog.bridged
        if dialog.state is DialogState.TERMINATED:
            if dialog.failed_flow is not None:
                return self._respond(ctx, 430, "Flow Failed", clock)
            return self._respond(ctx, 481, "Call/Transaction Does Not Exist", clock)
        # The other leg: its flow or address (routes left beyond ours go on with it,
        # e.g. to the next node of a cluster).
        leg = dialog.callee if from_caller else dialog.caller
        return self._fork(ctx, [Target(req.uri_text, (), (leg.peer,))], clock)

    # --- forwarding -------------------------------------------------------------------------

    def _fork(self, ctx: Context, targets: Sequence[Target], clock: Clock) -> list[Action]:
        out: list[Action] = []
        if ctx.request.method == "INVITE" and not ctx.branches:
            # 100 Trying only once the INVITE is really going somewhere: a request we
            # refuse gets its final answer alone.
            out += self._respond(ctx, 100, "Trying", clock)
        for target in targets:
            b = Branch(
                ctx=ctx,
                branch="",
                request=ctx.request,
                peer=None,
                binding=target.binding,
                txn=None,
                target=target,
                hops=list(target.hops),
            )
            ctx.branches.append(b)
            out += self._next_hop(b, clock)
        return out

    def _next_hop(self, b: Branch, clock: Clock) -> list[Action]:
        """Send the branch to its next hop (locating it first if a URI names it); when
        none is left, the branch fails with why the last one did."""
        ctx = b.ctx
        if b.done or ctx.final_sent:
            return []  # cancelled, or answered elsewhere, while we looked
        if b.hops:
            hop = b.hops.pop(0)
            if isinstance(hop, Locate):
                return self.router.locate(hop, clock, partial(self._located, b, hop))
            return self._launch(b, hop, clock)
        b.local_failure = b.failure or (480, "Temporarily Unavailable")
        return self._maybe_finish(ctx, clock)

    def _located(
        self,
        b: Branch,
        hop: Locate,
        result: list[Candidate] | LocateError,
        clock: Clock,
    ) -> list[Action]:
        if isinstance(result, LocateError):
            self.stats["dns_unresolved"] += 1
            b.failure = (result.status, result.reason)
        else:
            peers = self.router.peers(hop, result)
            if isinstance(peers, Refuse):
                b.failure = (peers.status, peers.reason)
            else:
                b.hops[0:0] = peers
        return self._next_hop(b, clock)

    def resolved(self, op: int, answer: Answer, clock: Clock) -> list[Action]:
        """The shell's answer to a Resolve action."""
        return self.router.resolver.resolved(op, answer, clock)

    def _launch(self, b: Branch, dest: Peer, clock: Clock) -> list[Action]:
        """A new client transaction for the branch, towards ``dest``."""
        ctx = b.ctx
        target = b.target
        assert target is not None
        loop = self._loop_hash(ctx.txn.request)
        branch = f"{_MAGIC}{loop}.{self._branch_tag}{next(self._branches):x}"
        fwd = self._forwarded(ctx, target.uri, dest, branch, target.route)
        b.branch = branch
        b.peer = dest
        b.request = fwd
        if not self._bridges(ctx, dest):
            return self._start_branch(b, fwd, clock)
        b.bridged = True
        if not has_sdp(fwd.content_type, fwd.body):
            b.late_offer = fwd.method == "INVITE"  # the offer will come in the 2xx
            return self._start_branch(b, fwd, clock)
        req = ctx.request
        cmd = offer_command(
            call_id=req.call_id,
            from_tag=req.from_.tag or "",
            via_branch=branch,
            sdp=fwd.body,
            towards=dest,
        )
        return self._media(cmd, partial(self._offer_done, b, fwd))

    def _failover(self, b: Branch, status: int, reason: str, clock: Clock) -> list[Action] | None:
        """RFC 3263 4.3: a 503, a transport error or a timeout moves the branch to its
        next hop, in a new client transaction. None: no hop is left, or the caller no
        longer wants one (cancelled, answered, or the hop is ringing)."""
        ctx = b.ctx
        if not b.hops or b.ringing or ctx.cancelled or ctx.final_sent or b.cancel_pending:
            return None
        out: list[Action] = []
        old = b.txn
        if old is not None:
            self.layer.heap.cancel(old.key, "C")
        if b.bridged:
            req = ctx.request
            old_branch = delete_command(
                call_id=req.call_id, from_tag=req.from_.tag or "", via_branch=b.branch
            )
            out += self._forget_media(old_branch)
            b.bridged = b.late_offer = False
            b.rewritten.clear()
        b.txn = None
        b.provisional = False
        b.failure = (status, reason)
        self.stats["failovers"] += 1
        return out + self._next_hop(b, clock)

    def _bridges(self, ctx: Context, dest: Peer) -> bool:
        req = ctx.request
        if req.to.tag is not None:
            return ctx.bridged_dialog  # in-dialog: the dialog decided when it began
        return req.method == "INVITE" and should_bridge(self.config.media, ctx.peer, dest)

    def _start_branch(self, b: Branch, fwd: Request, clock: Clock) -> list[Action]:
        """Create the branch's client transaction and send the request."""
        b.request = fwd
        assert b.peer is not None
        txn = self.layer.new_client(
            branch=b.branch,
            method=fwd.method,
            data=fwd.serialise(),
            dest=b.peer,
            reliable=b.peer.transport.is_stream,
        )
        b.txn = txn
        txn.context = b
        self.branches[txn.key] = b
        b.ctx.live += 1
        self.stats[f"forwarded.{fwd.method}"] += 1
        out = self.tx_actions(txn.start(clock.now), clock)
        if fwd.method == "INVITE":
            self.layer.heap.start(clock.now + self.config.timer_c, txn.key, "C")
        return out

    # --- media (rtpengine) ------------------------------------------------------------------

    def _media(self, command: dict[str, Any], resume: MediaResume) -> list[Action]:
        op = next(self._op_ids)
        self._media_ops[op] = resume
        self.stats[f"media.{command['command']}"] += 1
        return [MediaRequest(op=op, command=command)]

    def media_result(
        self, op: int, reply: dict[str, Any] | None, error: str | None, clock: Clock
    ) -> list[Action]:
        resume = self._media_ops.pop(op, None)
        if resume is None:
            return []
        if error is None and (reply or {}).get("result") != "ok":
            reply = reply or {}
            error = str(reply.get("error-reason") or f"rtpengine answered {reply.get('result')!r}")
        if error is not None:
            self.stats["media.failures"] += 1
        return resume(reply or {}, error, clock)

    def _forget_media(self, command: dict[str, Any]) -> list[Action]:
        """A delete nobody waits for."""
        return self._media(command, lambda reply, error, clock: [])

    def media_delete_dialog(self, d: Dialog) -> list[Action]:
        if not d.bridged:
            return []
        return self._forget_media(delete_command(call_id=d.call_id, from_tag=d.caller.tag))

    def _offer_done(
        self,
        b: Branch,
        fwd: Request,
        reply: dict[str, Any],
        error: str | None,
        clock: Clock,
    ) -> list[Action]:
        ctx = b.ctx
        req = ctx.request
        if b.done or (ctx.final_sent and not ctx.got_2xx) or ctx.cancelled:
            # The call ended (or was cancelled) while rtpengine was busy: nothing to send.
            b.local_failure = b.local_failure or (487, "Request Terminated")
            cleanup = self._forget_media(
                delete_command(
                    call_id=req.call_id, from_tag=req.from_.tag or "", via_branch=b.branch
                )
            )
            return cleanup + self._maybe_finish(ctx, clock)
        if error is not None:
            if self.config.media.fail_open:
                b.bridged = False
                return self._start_branch(b, fwd, clock)
            b.local_failure = (503, f"Service Unavailable (media relay: {error})"[:200])
            return self._maybe_finish(ctx, clock)
        sdp = _sdp_bytes(reply.get("sdp"))
        return self._start_branch(b, fwd.with_body(sdp, "application/sdp"), clock)

    def _rewrite_response_sdp(self, b: Branch, resp: Response, clock: Clock) -> list[Action] | None:
        """Bridged branch, SDP in a 1xx/2xx: ask rtpengine first, then carry on."""
        if not b.bridged or resp.status == 100 or resp.status >= 300:
            return None
        if not has_sdp(resp.content_type, resp.body):
            return None
        if resp.body in b.rewritten:  # a retransmitted 2xx: same answer again
            return self._branch_response(
                b, _with_sdp(resp, b.rewritten[resp.body]), clock, media_done=True
            )
        ctx = b.ctx
        req = ctx.request
        offerer = req.from_.tag or ""
        if b.late_offer and 200 <= resp.status < 300:
            # Late offer: the callee's 2xx carries the offer; the caller's ACK answers it.
            cmd = offer_command(
                call_id=req.call_id,
                from_tag=resp.to.tag or "",
                via_branch=b.branch,
                sdp=resp.body,
                towards=ctx.peer,
            )
        else:
            cmd = answer_command(
                call_id=req.call_id,
                from_tag=offerer,
                to_tag=resp.to.tag or "",
                via_branch=b.branch,
                sdp=resp.body,
                towards=ctx.peer,
            )
        original = resp.body

        def resume(reply: dict[str, Any], error: str | None, clock: Clock) -> list[Action]:
            if error is not None:
                # The callee has answered: refusing now helps nobody. Pass it on as it is.
                return self._branch_response(b, resp, clock, media_done=True)
            sdp = _sdp_bytes(reply.get("sdp"))
            b.rewritten[original] = sdp
            return self._branch_response(b, _with_sdp(resp, sdp), clock, media_done=True)

        return self._media(cmd, resume)

    def _forwarded(
        self, ctx: Context, target_uri: str, dest: Peer, branch: str, path: tuple[str, ...]
    ) -> Request:
        req = ctx.request
        fwd: Request = req
        if target_uri != req.uri_text:
            from ..sip.uri import parse_uri_untrusted

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

    # --- responses --------------------------------------------------------------------------

    def on_response(self, resp: Response, peer: Peer, clock: Clock) -> list[Action]:
        txn = self.layer.find_client(resp)
        if txn is None:
            node = self.router.node_by_tag(_branch_node_tag(resp))
            if node is not None:
                # A worker beside us sent the request from our shared port; the kernel
                # gave us the answer. Hand it to its transaction over there.
                self.stats["responses_to_node"] += 1
                return [Send(data=resp.serialise(), peer=self.router.node_peer(node), message=resp)]
            self.stats["responses_stray"] += 1
            return []
        ack = None
        if txn.is_invite and resp.status >= 300 and isinstance(txn.context, Branch):
            ack = self._hop_ack(txn.context, resp)
        return self.tx_actions(txn.on_response(resp, ack, clock.now), clock)

    def _hop_ack(self, b: Branch, resp: Response) -> bytes:
        """RFC 3261 17.1.1.3: the ACK for a non-2xx answer, same branch as the INVITE."""
        req = b.request
        lines = [
            f"ACK {req.uri_text} SIP/2.0",
            f"Via: {req.vias[0]}",
            "Max-Forwards: 70",
            f"From: {req.from_.text}",
            f"To: {resp.to.text}",
            f"Call-ID: {req.call_id}",
            f"CSeq: {req.cseq.number} ACK",
        ]
        lines += [f"Route: {r.text}" for r in req.routes]
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def tx_actions(self, events: list[TxSend | TxEvent], clock: Clock) -> list[Action]:
        """Turn transaction output into actions, and feed TU events to the branches."""
        out: list[Action] = []
        for ev in events:
            if isinstance(ev, TxSend):
                dest = ev.dest
                assert isinstance(dest, Peer)
                out.append(Send(data=ev.data, peer=dest, owner=ev.owner))
                continue
            if ev.kind is TxKind.TERMINATED:
                b = self.branches.pop(ev.key, None)
                if b is not None:
                    ended = self.layer.clients.get(ev.key)
                    if ended is not None:
                        ended.context = None
                    self._release(b.ctx)
                else:
                    server = self.layer.servers.get(ev.key)
                    if server is not None and isinstance(server.context, Context):
                        self._release(server.context)
                        server.context = None
                self.layer.forget(ev.key)
                continue
            b = self.branches.get(ev.key)
            if b is None or b.txn is None or b.txn.key != ev.key:
                continue  # (an earlier hop's transaction, after a failover)
            if ev.kind is TxKind.RESPONSE and ev.response is not None:
                out += self._branch_response(b, ev.response, clock)
            elif ev.kind is TxKind.TIMEOUT:
                if b.txn.method == "CANCEL":
                    continue
                moved = self._failover(b, 408, "Request Timeout", clock)
                out += (
                    moved
                    if moved is not None
                    else self._branch_failed(b, 408, "Request Timeout", clock)
                )
        return out

    @staticmethod
    def _release(ctx: Context) -> None:
        """One of the context's transactions ended; after the last, break the cycles."""
        ctx.live -= 1
        if ctx.live == 0:
            ctx.branches.clear()

    def timer_c(self, key: Hashable, clock: Clock) -> list[Action]:
        """Timer C (16.6 step 11): an INVITE branch that never finishes is cancelled."""
        b = self.branches.get(key)
        if b is None or b.done:
            return []
        if b.provisional:
            return self._cancel_branch(b, clock)
        return self._branch_failed(b, 408, "Request Timeout", clock)

    def send_failed(self, owner: Hashable, reason: str, clock: Clock) -> list[Action]:
        b = self.branches.get(owner)
        txn = self.layer.clients.get(owner)
        if b is None or b.done or txn is None or b.txn is not txn:
            return []
        self.stats["transport_errors"] += 1
        assert b.peer is not None
        status, text = (
            (430, "Flow Failed") if b.peer.flow_id else (503, f"Service Unavailable ({reason})")
        )
        moved = self._failover(b, status, text, clock)
        out = moved if moved is not None else self._branch_failed(b, status, text, clock)
        out += self.tx_actions(txn.transport_error(), clock)
        return out

    def _branch_failed(self, b: Branch, status: int, reason: str, clock: Clock) -> list[Action]:
        if b.done:
            return []
        b.local_failure = (status, reason)
        return self._maybe_finish(b.ctx, clock)

    def _branch_response(
        self, b: Branch, resp: Response, clock: Clock, *, media_done: bool = False
    ) -> list[Action]:
        txn = b.txn
        assert txn is not None
        if txn.method == "CANCEL":
            return []  # the answer to our own CANCEL: nothing to forward
        if not media_done:
            pending = self._rewrite_response_sdp(b, resp, clock)
            if pending is not None:
                return pending
        ctx = b.ctx
        status = resp.status
        out: list[Action] = []
        up = _without_top_via(resp)
        if status < 200:
            b.provisional = True
            b.ringing = b.ringing or status > 100
            if b.cancel_pending and not b.cancel_sent:
                b.local_failure = None  # let _cancel_branch send it
                out += self._cancel_branch(b, clock)
                b.local_failure = b.local_failure or (487, "Request Terminated")
            if status == 100:
                return out
            if txn.is_invite and not ctx.final_sent:
                # Once the caller has its final answer (a CANCEL that beat the callee's
                # first provisional), an early dialog would never be ended: none is made.
                out += self._dialog_from_response(b, resp, confirmed=False, clock=clock)
            if not ctx.final_sent:
                out += self._respond_raw(ctx, up, clock)
            return out
        if status < 300:
            b.final = resp
            if txn.is_invite:
                self.layer.heap.cancel(txn.key, "C")
                out += self._dialog_from_response(b, resp, confirmed=True, clock=clock)
                for d in self.dialogs.early_of(ctx.txn.key):
                    if d.callee.tag != resp.to.tag:
                        ended = self.dialogs.end(
                            d,
                            by="callee",
                            reason="answered elsewhere",
                            now=clock.now,
                            wall=clock.wall,
                        )
                        out += self._publish(ended)
                if not ctx.got_2xx:
                    ctx.got_2xx = True
                    for other in ctx.branches:
                        if other is not b and not other.done:
                            out += self._cancel_branch(other, clock)
                        if other is not b and other.bridged:
                            req = ctx.request
                            out += self._forget_media(  # the losers' media branches
                                delete_command(
                                    call_id=req.call_id,
                                    from_tag=req.from_.tag or "",
                                    via_branch=other.branch,
                                )
                            )
            else:
                out += self._in_dialog_done(ctx, status, clock)
            ctx.final_sent = True
            out += self._respond_raw(ctx, up, clock)  # every 2xx goes upstream
            return out
        if status == 503:
            moved = self._failover(b, 503, resp.reason, clock)
            if moved is not None:
                return moved
        b.final = resp
        if txn.is_invite:
            self.layer.heap.cancel(txn.key, "C")
            if status >= 600 and not ctx.got_2xx:
                for other in ctx.branches:
                    if other is not b and not other.done:
                        out += self._cancel_branch(other, clock)
        out += self._maybe_finish(ctx, clock)
        return out

    def _maybe_finish(self, ctx: Context, clock: Clock) -> list[Action]:
        if ctx.final_sent or not all(b.done for b in ctx.branches):
            return []
        best: Response | None = None
        local: tuple[int, str] | None = None
        for b in ctx.branches:
            if b.final is not None and b.final.status >= 300:
                if best is None or _rank(b.final.status) < _rank(best.status):
                    best = b.final
            elif b.local_failure is not None and (
                local is None or _rank(b.local_failure[0]) < _rank(local[0])
            ):
                local = b.local_failure
        ctx.final_sent = True
        out: list[Action] = []
        if ctx.cancelled and (best is None or best.status < 600):
            best, local = None, (487, "Request Terminated")  # the caller cancelled
        if best is not None and (local is None or _rank(best.status) <= _rank(local[0])):
            up = _without_top_via(best)
            if up.status == 503:
                up = _restatus(up, 500, "Server Internal Error (downstream 503)")
            status = up.status
            out += self._respond_raw(ctx, up, clock)
        else:
            status, reason = local or (480, "Temporarily Unavailable")
            out += self._respond(ctx, status, reason, clock)
        if ctx.request.method == "INVITE" and ctx.request.to.tag is None:
            if any(b.bridged for b in ctx.branches) and status >= 300:
                req = ctx.request
                out += self._forget_media(
                    delete_command(call_id=req.call_id, from_tag=req.from_.tag or "")
                )
            for d in self.dialogs.early_of(ctx.txn.key):
                by = "caller" if ctx.cancelled else "callee"
                out += self._publish(
                    self.dialogs.end(d, by=by, reason=f"{status}", now=clock.now, wall=clock.wall)
                )
        else:
            out += self._in_dialog_done(ctx, status, clock)
        return out

    def _in_dialog_done(self, ctx: Context, status: int, clock: Clock) -> list[Action]:
        """A BYE's final answer ends its dialog, whatever the answer was."""
        if ctx.request.method != "BYE" or ctx.dialog_key is None:
            return []
        d = self.dialogs.get(ctx.dialog_key)
        if d is None:
            return []
        by = "caller" if ctx.from_caller else "callee"
        ended = self.dialogs.end(d, by=by, reason=f"BYE ({status})", now=clock.now, wall=clock.wall)
        return self._publish(ended) + self.media_delete_dialog(d)

    def _dialog_from_response(
        self, b: Branch, resp: Response, *, confirmed: bool, clock: Clock
    ) -> list[Action]:
        ctx = b.ctx
        req = ctx.request
        to_tag = resp.to.tag
        if to_tag is None or req.to.tag is not None or not self.config.record_route:
            return []
        assert b.peer is not None
        caller = Leg(uri=str(req.from_.uri), tag=req.from_.tag or "", peer=ctx.peer)
        callee = Leg(uri=str(req.to.uri), tag=to_tag, peer=b.peer)
        events = self.dialogs.upsert(
            call_id=req.call_id,
            caller=caller,
            callee=callee,
            confirmed=confirmed,
            now=clock.now,
            wall=clock.wall,
            invite_key=ctx.txn.key,
        )
        d = self.dialogs.get((req.call_id, caller.tag, to_tag))
        if d is not None and b.bridged:
            d.bridged = True
            if confirmed and b.late_offer:
                d.late_offer_pending = True
        return self._publish(events)

    @staticmethod
    def _publish(events: list[DialogEvent]) -> list[Action]:
        return [Publish(event=e) for e in events]

    # --- CANCEL and ACK ------------------------------------------------------------------------

    def handle_cancel(self, txn: ServerTransaction, peer: Peer, clock: Clock) -> list[Action]:
        """RFC 3261 16.10: 200 to the CANCEL, CANCEL to every pending branch."""
        req = txn.request
        key = txn.key
        assert isinstance(key, tuple)
        inv = self.layer.servers.get((*key[:-1], "INVITE"))
        ok = make_response(req, 200, "OK", headers=(("Server", self.config.server_name),))
        if (
            inv is None
            or not isinstance(inv.context, Context)
            or inv.state is not TxState.PROCEEDING
        ):
            resp = make_response(
                req,
                481,
                "Call/Transaction Does Not Exist",
                headers=(("Server", self.config.server_name),),
            )
            return self.tx_actions(txn.respond(resp.serialise(), 481, clock.now), clock)
        out = self.tx_actions(txn.respond(ok.serialise(), 200, clock.now), clock)
        ctx = inv.context
        ctx.cancelled = True
        pending = [b for b in ctx.branches if not b.done]
        if not pending and not ctx.final_sent:
            ctx.final_sent = True
            return out + self._respond(ctx, 487, "Request Terminated", clock)
        for b in pending:
            if not b.provisional:
                # RFC 3261 9.1: no CANCEL before a provisional response; one goes out if
                # a provisional still arrives. The caller need not wait for Timer B.
                b.cancel_pending = True
                b.local_failure = (487, "Request Terminated")
            else:
                out += self._cancel_branch(b, clock)
        out += self._maybe_finish(ctx, clock)
        return out

    def _cancel_branch(self, b: Branch, clock: Clock) -> list[Action]:
        if b.txn is None:  # still waiting for rtpengine: it will not be sent
            b.local_failure = b.local_failure or (487, "Request Terminated")
            return []
        if b.cancel_sent or b.done or b.txn.method != "INVITE":
            return []
        if not b.provisional:
            b.cancel_pending = True  # RFC 3261 9.1: wait for a provisional response
            return []
        b.cancel_sent = True
        req = b.request
        lines = [
            f"CANCEL {req.uri_text} SIP/2.0",
            f"Via: {req.vias[0]}",
            "Max-Forwards: 70",
            f"From: {req.from_.text}",
            f"To: {req.to.text}",
            f"Call-ID: {req.call_id}",
            f"CSeq: {req.cseq.number} CANCEL",
        ]
        lines += [f"Route: {r.text}" for r in req.routes]
        lines.append("Content-Length: 0")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        assert b.peer is not None
        txn = self.layer.new_client(
            branch=b.branch,
            method="CANCEL",
            data=data,
            dest=b.peer,
            reliable=b.peer.transport.is_stream,
        )
        cb = Branch(ctx=b.ctx, branch=b.branch, request=req, peer=b.peer, binding=None, txn=txn)
        txn.context = cb
        self.branches[txn.key] = cb
        cb.ctx.live += 1
        self.stats["cancels_sent"] += 1
        return self.tx_actions(txn.start(clock.now), clock)

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
        branch = _MAGIC + "a" + hashlib.blake2s(seed.encode(), digest_size=8).hexdigest()
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
                    else fwd.with_body(_sdp_bytes(reply.get("sdp")), "application/sdp")
                )
                return [Send(data=body.serialise(), peer=leg.peer)]

            return self._media(cmd, resume)
        return [Send(data=fwd.serialise(), peer=leg.peer)]

    # --- answering the caller ---------------------------------------------------------------------

    def _respond(
        self,
        ctx: Context,
        status: int,
        reason: str,
        clock: Clock,
        *,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> list[Action]:
        resp = make_response(
            ctx.txn.request, status, reason, headers=(*headers, ("Server", self.config.server_name))
        )
        if status >= 200:
            ctx.final_sent = True
        self.stats[f"responses_out.{status // 100}xx"] += 1
        return self.tx_actions(ctx.txn.respond(resp.serialise(), status, clock.now), clock)

    def _respond_raw(self, ctx: Context, resp: Response, clock: Clock) -> list[Action]:
        self.stats[f"responses_out.{resp.status // 100}xx"] += 1
        return self.tx_actions(ctx.txn.respond(resp.serialise(), resp.status, clock.now), clock)


MediaResume = Callable[[dict[str, Any], str | None, Clock], list[Action]]


def _sdp_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value or "").encode("utf-8")


def _with_sdp(resp: Response, sdp: bytes) -> Response:
    return resp.with_body(sdp, "application/sdp")


def _rank(status: int) -> int:
    """RFC 3261 16.7 step 6: 6xx beats everything, then the lowest class."""
    return 0 if status >= 600 else status


def _without_top_via(resp: Response) -> Response:
    return resp.with_headers(with_top_via(resp.headers, None))


def _restatus(resp: Response, status: int, reason: str) -> Response:
    return Response(headers=resp.headers, body=resp.body, status=status, reason=reason)
