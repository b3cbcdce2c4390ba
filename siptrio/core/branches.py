"""The state of one proxied request, sans-IO: its context and one branch per target.

A Context is the proxy's side of one server transaction; a Branch one forked leg and
the client transactions it goes through, next hop after next hop (forking.py drives
them). Both point at each other and at their transactions: a context lets go of its
branches when the last of its transactions ends, so no call is left for the cyclic
collector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..sip.message import Request, Response
from ..sip.transaction import ClientTransaction, ServerTransaction
from .location import Binding
from .routing import Target
from .routing.router import Hop
from .types import Peer

__all__ = ["MAGIC", "Branch", "Context", "Forward", "branch_node_tag", "loop_hash"]

MAGIC = "z9hG4bK"
# The request a branch sends to one next hop: the proxy builds it (16.6 steps 1-8).
Forward = Callable[["Context", Target, Peer, str], Request]


def loop_hash(req: Request) -> str:
    """RFC 3261 16.6 step 8: what a branch value must carry for loop detection (16.3)."""
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
    request_uri: str | None = None  # the hop being tried wants its own Request-URI
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
    rang: bool = False  # a 101-199 went to the caller (post-dial delay measured)
    cancelled: bool = False
    from_caller: bool = True  # in-dialog: which side sent it
    dialog_key: tuple[str, str, str] | None = None
    bridged_dialog: bool = False  # in-dialog request of a bridged dialog
    # The server transaction plus every client transaction working for this context.
    # When the last one ends the context lets go of its branches: context, branches
    # and transactions point at each other, and without this each call would leave
    # ~120 objects for the cyclic collector (a full collection) to find.
    live: int = 1
    started_at: float | None = None  # wall clock of an initial INVITE's first fork
    reported: bool = False  # its outcome went out as a CallEvent (once per attempt)


def branch_node_tag(resp: Response) -> str | None:
    vias = resp.vias
    branch = vias[0].branch if vias else None
    if not branch or not branch.startswith(MAGIC):
        return None
    return branch.partition(".")[2][:6] or None
