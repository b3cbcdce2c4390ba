"""How a binding will be reached, decided once, when it registers.

A registrar can reach a contact three ways: over the connection it registered on (its
flow), at the address its REGISTER came from (a client behind NAT, which only that
address and port reach), or at the Contact URI it gave (RFC 3261 section 10: a
registration on behalf of another address, such as one SIPp registering for another).
Which one is a fact of the REGISTER, so it is decided here and kept with the binding:
``nat`` says the source address is the way in, ``flow_bound`` that the flow is.

NAT is detected, not assumed (``NatMode.AUTO``), with the tests of Kamailio's
``nat_uac_test(19)``: the top Via's sent-by host is not the source address; the Via
asks for ``rport`` and its sent-by port is not the source port; the Contact names a
private or shared address (RFC 1918, RFC 6598, fc00::/7) that is not the source.

One exception to the port test: a Contact on the source's own address whose port is
neither the Via's nor the source's is registered for another socket on that host (a
third-party registration: ``sipsak -C``, one SIPp registering for another). sipsak
sends from one socket and names another in its Via, with ``rport``; that tells how
to reach sipsak, not the Contact it registered.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from typing import NamedTuple

from ...sip.errors import SipParseError
from ...sip.headers import parse_name_addr
from ...sip.uri import SipUri, Uri
from ..types import Peer, Transport

__all__ = ["NatMode", "Reach", "ViaFacts", "classify", "ip_of", "is_private"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


class NatMode(enum.Enum):
    AUTO = "auto"  # detect per binding
    CONTACT = "contact"  # always the Contact (a LAN without NAT)
    SOURCE = "source"  # always the source address (everyone is behind NAT)


class ViaFacts(NamedTuple):
    """What NAT detection reads of the top Via, as sent (before ``received`` stamps)."""

    host: str  # sent-by host, brackets kept
    port: int | None  # sent-by port
    rport: bool  # the rport parameter is there (RFC 3581)


class Reach(NamedTuple):
    nat: bool
    flow_bound: bool


_BEHIND_NAT = Reach(nat=True, flow_bound=False)
_DIRECT = Reach(nat=False, flow_bound=False)


@functools.lru_cache(maxsize=4096)
def ip_of(host: str) -> IPAddress | None:
    """An IP literal (brackets allowed; ``localhost`` is 127.0.0.1), else None.

    Remembered per spelling: every REGISTER asks it of its source, its Via and its
    Contact, and ipaddress parses in microseconds what a lookup answers in a tenth."""
    h = host[1:-1] if host.startswith("[") else host
    if h.lower() == "localhost":
        h = "127.0.0.1"
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return None


def is_private(ip: IPAddress) -> bool:
    return any(ip in net for net in _PRIVATE if net.version == ip.version)


def _default_port(transport: Transport) -> int:
    return 5061 if transport.is_secure else 5060


def is_source(host: str, peer: Peer) -> bool:
    """Does ``host`` (as written in a header) name the address the message came from?
    Most do, spelled as the socket spells it: a string compare settles those."""
    if host == peer.host:
        return True
    ip = ip_of(host)
    return ip is not None and ip == ip_of(peer.host)


def detect_nat(via: ViaFacts, contact: Uri | None, peer: Peer) -> bool:
    if not is_source(via.host, peer):
        return True
    via_port = via.port or _default_port(peer.transport)
    if via.rport and via_port != peer.port and not _third_party_port(contact, via_port, peer):
        return True
    if isinstance(contact, SipUri) and contact.host != peer.host:
        if contact.host.lower().endswith(".invalid"):
            return True  # RFC 7118 browsers: nothing reaches that name but its source
        ip = ip_of(contact.host)
        if ip is not None and ip != ip_of(peer.host) and is_private(ip):
            return True
    return False


def _third_party_port(contact: Uri | None, via_port: int, peer: Peer) -> bool:
    """Does the Contact name the source address on a port that is neither the Via's
    sent-by port nor the source port?"""
    if not isinstance(contact, SipUri) or not is_source(contact.host, peer):
        return False
    return (contact.port or _default_port(peer.transport)) not in (via_port, peer.port)


def classify(
    *,
    contact: Uri,
    outbound: bool,
    path: tuple[str, ...],
    via: ViaFacts,
    peer: Peer,
    mode: NatMode,
) -> Reach:
    """How a new binding is reached (``path``: the Path values the REGISTER carried)."""
    if peer.flow_id is None and not path and mode is NatMode.AUTO:
        # the common case, a phone over UDP, in one look
        return _BEHIND_NAT if detect_nat(via, contact, peer) else _DIRECT
    if mode is NatMode.SOURCE:
        nat = True
    elif mode is NatMode.CONTACT:
        nat = False
    else:
        # with a Path the Contact is the edge proxy's business, not ours
        nat = detect_nat(via, None if path else contact, peer)
    if peer.flow_id is None:
        return Reach(nat=nat, flow_bound=False)
    if peer.transport in (Transport.WS, Transport.WSS) or outbound or nat:
        return Reach(nat=nat, flow_bound=True)
    if path:
        # an edge proxy registered through this connection: its Path is reached over it
        # when it names this very connection (or carries RFC 5626's ob)
        first = path_uri(path[0])
        if first is None:
            return Reach(nat=nat, flow_bound=True)
        return Reach(nat=nat, flow_bound=first.param("ob") is not None or _names(first, peer))
    if not isinstance(contact, SipUri):
        return Reach(nat=nat, flow_bound=True)
    if ip_of(contact.host) is None:
        # a name: browsers' .invalid, or a phone's own; the connection is the sure way
        flow = mode is NatMode.AUTO or contact.host.lower().endswith(".invalid")
        return Reach(nat=nat, flow_bound=flow)
    return Reach(nat=nat, flow_bound=_names(contact, peer))


def _names(uri: SipUri, peer: Peer) -> bool:
    """Does ``uri`` name the address the connection comes from (host and port)?"""
    ip = ip_of(uri.host)
    return (
        ip is not None
        and ip == ip_of(peer.host)
        and (uri.port or _default_port(peer.transport)) == peer.port
    )


def path_uri(value: str) -> SipUri | None:
    try:
        uri = parse_name_addr(value, "Path").uri
    except SipParseError:
        return None
    return uri if isinstance(uri, SipUri) else None
