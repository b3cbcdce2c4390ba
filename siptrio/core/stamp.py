"""RFC 3261 section 18.2.1 and RFC 3581: a request's top Via says where it really came from."""

from __future__ import annotations

from ..sip.headers import Via, remember_via
from ..sip.message import Request, with_top_via
from .types import Peer

__all__ = ["stamp_via", "stamped_via"]


def stamp_via(request: Request, peer: Peer) -> Request:
    """RFC 3261 section 18.2.1 and RFC 3581: record where the request really came from.

    ``received`` is added when the sent-by host differs from the source address;
    an empty ``rport`` is filled with the source port (and then ``received`` is
    always added, as RFC 3581 requires).
    """
    new = stamped_via(request.top_via, peer)
    if new is None:
        return request
    stamped = request.edited(with_top_via(request.headers, new.text), ("via",))
    if "vias" in request.__dict__:
        stamped.__dict__["vias"] = (new, *request.vias[1:])
    return stamped


def stamped_via(via: Via, peer: Peer) -> Via | None:
    """The top Via as stamp_via leaves it (None: unchanged), known to parse_via."""
    host = via.host[1:-1] if via.host.startswith("[") else via.host
    rport = via.rport
    if rport == "":
        new = via.with_params({"rport": str(peer.port), "received": peer.host})
    elif host != peer.host:
        new = via.with_params({"received": peer.host})
    else:
        return None
    remember_via(new)
    return new
