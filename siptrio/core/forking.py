"""Forking (RFC 3261 sections 16.6, 16.7 and 16.10), sans-IO: one request's branches.

For each target the router found, a branch: its next hops tried in turn (a URI located
first by RFC 3263; a 503, a transport error or a timeout moves to the next hop in a new
client transaction, RFC 3263 4.3), the request built for each by the proxy, a bridged
branch's SDP through rtpengine, 1xx and every 2xx sent upstream at once, the best final
answer once all branches are done (16.7), CANCEL to the pending ones (16.10), Timer C.
The proxy decides where requests go; this module keeps the promise made to the caller.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ..sip.message import Request, Response, make_response, with_top_via
from ..sip.transaction import (
    ServerTransaction,
    TransactionLayer,
    TxEvent,
    TxKind,
    TxState,
)
from .branches import MAGIC, Branch, Context, Forward, loop_hash
from .bridge import MediaBridge, sdp_bytes
from .calls import CallEvent, Refused, call_setup, told
from .events import Action, Publish
from .media import answer_command, delete_command, has_sdp, offer_command, should_bridge
from .metrics import method_label
from .plumbing import Plumbing
from .routing import Candidate, Locate, LocateError, Refuse, Router, Target
from .tracking import DialogTracker
from .types import Clock, Peer

if TYPE_CHECKING:
    from .proxy import ProxyConfig

__all__ = ["Forker"]


class Forker:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        layer: TransactionLayer,
        plumbing: Plumbing,
        router: Router,
        bridge: MediaBridge,
        tracker: DialogTracker,
        forward: Forward,
        stats: Counter[str],
        secret: bytes,
    ) -> None:
        self.config = config
        self.layer = layer
        self.plumbing = plumbing
        self.router = router
        self.bridge = bridge
        self.tracker = tracker
        self.forward = forward
        self.stats = stats
        self.branches: dict[Hashable, Branch] = {}
        # In a cluster our branches carry a tag of this node, so that a worker sharing
        # our ports can pass on what the kernel gave it but is ours; otherwise a tag
        # from the secret keeps them apart from any other process's.
        unique = hashlib.sha256(b"branch tag" + secret).hexdigest()
        self._branch_tag = (router.node_tag or unique[:6]) + unique[6:10]
        self._branch_ids = itertools.count(1)

    def open(self, txn: ServerTransaction, peer: Peer) -> Context:
        """The proxy's state for a new server transaction; its end releases it."""
        ctx = Context(txn=txn, request=txn.request, peer=peer)
        txn.context = ctx
        self.plumbing.claim(txn.key, self)
        return ctx

    # --- branches ------------------------------------------------------------------------

    def fork(self, ctx: Context, targets: Sequence[Target], clock: Clock) -> list[Action]:
        out: list[Action] = []
        if ctx.request.method == "INVITE" and not ctx.branches:
            # 100 Trying only once the INVITE is really going somewhere: a request we
            # refuse gets its final answer alone.
            out += self.respond(ctx, 100, "Trying", clock)
            if ctx.request.to.tag is None:
                out.append(Publish(event=call_setup(ctx, len(targets), clock)))
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
                b.request_uri = hop.request_uri  # for every address this hop resolves to
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

    def _launch(self, b: Branch, dest: Peer, clock: Clock) -> list[Action]:
        """A new client transaction for the branch, towards ``dest``."""
        ctx = b.ctx
        target = b.target
        assert target is not None
        loop = loop_hash(ctx.txn.request)
        branch = f"{MAGIC}{loop}.{self._branch_tag}{next(self._branch_ids):x}"
        if b.request_uri is not None:
            target = replace(target, uri=b.request_uri)
        fwd = self.forward(ctx, target, dest, branch)
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
        return self.bridge.request(cmd, partial(self._offer_done, b, fwd))

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
            out += self.bridge.forget(old_branch)
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
        self.plumbing.claim(txn.key, self)
        b.ctx.live += 1
        self.stats["forwarded." + method_label(fwd.method)] += 1
        out = self.plumbing.actions(txn.start(clock.now), clock)
        if fwd.method == "INVITE":
            self.layer.heap.start(clock.now + self.config.timer_c, txn.key, "C")
        return out

    # --- a branch's media (rtpengine) ----------------------------------------------------

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
            cleanup = self.bridge.forget(
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
        sdp = sdp_bytes(reply.get("sdp"))
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
                from_tag=req.from_.tag or "",
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
            sdp = sdp_bytes(reply.get("sdp"))
            b.rewritten[original] = sdp
            return self._branch_response(b, _with_sdp(resp, sdp), clock, media_done=True)

        return self.bridge.request(cmd, resume)

    # --- transactions ------------------------------------------------------------------------

    @staticmethod
    def hop_ack(b: Branch, resp: Response) -> bytes:
        """RFC 3261 17.1.1.3: the ACK for a non-2xx answer, same branch as the INVITE."""
        return _hop_request("ACK", b.request, resp.to.text)

    def tx_event(self, ev: TxEvent, clock: Clock) -> list[Action]:
        """A response or timeout for one of our client transactions (plumbing.py)."""
        b = self.branches.get(ev.key)
        if b is None or b.txn is None or b.txn.key != ev.key:
            return []  # (an earlier hop's transaction, after a failover)
        if ev.kind is TxKind.RESPONSE and ev.response is not None:
            return self._branch_response(b, ev.response, clock)
        if ev.kind is TxKind.TIMEOUT and b.txn.method != "CANCEL":
            moved = self._failover(b, 408, "Request Timeout", clock)
            if moved is not None:
                return moved
            return self._branch_failed(b, 408, "Request Timeout", clock)
        return []

    def tx_ended(self, key: Hashable) -> None:
        b = self.branches.pop(key, None)
        if b is not None:
            ended = self.layer.clients.get(key)
            if ended is not None:
                ended.context = None
            self._release(b.ctx)
            return
        server = self.layer.servers.get(key)
        if server is not None and isinstance(server.context, Context):
            self._release(server.context)
            server.context = None

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
        out += self.plumbing.actions(txn.transport_error(), clock)
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
                out += self.tracker.rang(b, resp, clock)
                if not ctx.rang and ctx.request.to.tag is None:
                    ctx.rang = True  # post-dial delay: the caller hears it ring
                    self.plumbing.metrics.call_ringing.observe(clock.now - ctx.txn.started)
            if not ctx.final_sent:
                out += self.respond_raw(ctx, up, clock)
            return out
        if status < 300:
            b.final = resp
            if txn.is_invite:
                self.layer.heap.cancel(txn.key, "C")
                out += self.tracker.answered(b, resp, clock)
                if not ctx.got_2xx:
                    ctx.got_2xx = True
                    if ctx.request.to.tag is None:  # a call (not a re-INVITE) answered
                        self.plumbing.metrics.call_answer.observe(clock.now - ctx.txn.started)
                    for other in ctx.branches:
                        if other is not b and not other.done:
                            out += self._cancel_branch(other, clock)
                        if other is not b and other.bridged:
                            req = ctx.request
                            out += self.bridge.forget(  # the losers' media branches
                                delete_command(
                                    call_id=req.call_id,
                                    from_tag=req.from_.tag or "",
                                    via_branch=other.branch,
                                )
                            )
            else:
                out += self.tracker.in_dialog_done(ctx, status, clock)
            ctx.final_sent = True
            out += self.respond_raw(ctx, up, clock, branch=b)  # every 2xx goes upstream
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
            answering = next((b for b in ctx.branches if b.final is best), None)
            out += self.respond_raw(ctx, up, clock, branch=answering)
        else:
            status, reason = local or (480, "Temporarily Unavailable")
            out += self.respond(ctx, status, reason, clock)
        out += self.tracker.attempt_over(ctx, status, clock)
        return out

    # --- CANCEL (16.10) ------------------------------------------------------------------------

    def cancel(self, txn: ServerTransaction, clock: Clock) -> list[Action]:
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
            return self.plumbing.respond(txn, resp.serialise(), 481, clock)
        out = self.plumbing.respond(txn, ok.serialise(), 200, clock)
        ctx = inv.context
        ctx.cancelled = True
        pending = [b for b in ctx.branches if not b.done]
        if not pending and not ctx.final_sent:
            ctx.final_sent = True
            return out + self.respond(ctx, 487, "Request Terminated", clock)
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
        data = _hop_request("CANCEL", req, req.to.text)  # RFC 3261 9.1
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
        self.plumbing.claim(txn.key, self)
        cb.ctx.live += 1
        self.stats["cancels_sent"] += 1
        return self.plumbing.actions(txn.start(clock.now), clock)

    # --- answering the caller -----------------------------------------------------------------

    def respond(
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
        sent = self.plumbing.respond(ctx.txn, resp.serialise(), status, clock)
        if status >= 200:
            sent += _published(told(ctx, status, reason, None, clock))
        return sent

    def respond_raw(
        self, ctx: Context, resp: Response, clock: Clock, *, branch: Branch | None = None
    ) -> list[Action]:
        """Pass on a callee's answer; ``branch``: the one it came from."""
        sent = self.plumbing.respond(ctx.txn, resp.serialise(), resp.status, clock)
        if resp.status >= 200:
            sent += _published(told(ctx, resp.status, resp.reason, branch, clock, local=False))
        return sent


def _published(event: CallEvent | Refused | None) -> list[Action]:
    return [] if event is None else [Publish(event=event)]


def _with_sdp(resp: Response, sdp: bytes) -> Response:
    return resp.with_body(sdp, "application/sdp")


def _rank(status: int) -> int:
    """RFC 3261 16.7 step 6: 6xx beats everything, then the lowest class."""
    return 0 if status >= 600 else status


def _without_top_via(resp: Response) -> Response:
    return resp.with_headers(with_top_via(resp.headers, None))


def _restatus(resp: Response, status: int, reason: str) -> Response:
    return Response(headers=resp.headers, body=resp.body, status=status, reason=reason)


def _hop_request(method: str, req: Request, to: str) -> bytes:
    """An ACK or CANCEL for the request a branch sent: the same Via (and so branch),
    From, Call-ID, CSeq number and Route set (RFC 3261 9.1, 17.1.1.3)."""
    lines = [
        f"{method} {req.uri_text} SIP/2.0",
        f"Via: {req.vias[0]}",
        "Max-Forwards: 70",
        f"From: {req.from_.text}",
        f"To: {to}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.cseq.number} {method}",
        *(f"Route: {r.text}" for r in req.routes),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
