"""Locating SIP servers (RFC 3263 section 4): NAPTR, then SRV, then A/AAAA, sans-IO.

The procedure is a generator: it yields the DNS questions it needs answered, one at a
time, and returns the ordered list of places to try. Whoever drives it answers from a
cache or the network; this module never sees either. That keeps the RFC's decisions
(which transport, which port, which order) in one readable function, testable with
plain dictionaries of records.

What the RFC says, as this code does it:

- 4.1, the transport: a ``transport`` parameter decides; else a numeric host or an
  explicit port means UDP (``sip:``) or TLS (``sips:``); else the NAPTR records of the
  host, filtered to the services we can use and sorted by order and preference; with no
  NAPTR, SRV queries for each transport we support; with no SRV either, UDP or TLS.
- 4.2, the address and port: a numeric host is used as it is; an explicit port skips
  SRV (A/AAAA only); otherwise the SRV records of the chosen transports, sorted by
  priority and, within a priority, by weight (RFC 2782), each target's A/AAAA records
  in turn; with no SRV, the host's own A/AAAA records on the default port.
- 4.3, failover: the list returned is the order in which to try; the caller moves to
  the next entry on a 503, a transport error or a timeout.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ...sip.uri import SipUri
from ..types import Transport

__all__ = [
    "Answer",
    "Candidate",
    "LocateError",
    "NaptrRecord",
    "QType",
    "Query",
    "SrvRecord",
    "locate",
]


class QType(enum.Enum):
    NAPTR = "NAPTR"
    SRV = "SRV"
    A = "A"
    AAAA = "AAAA"


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str  # a domain name without the trailing dot ("" for ".")


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot ("" for ".": no service here)


Record = NaptrRecord | SrvRecord | str  # str: an address from A or AAAA


@dataclass(frozen=True, slots=True)
class Query:
    name: str  # lower case, no trailing dot
    qtype: QType


@dataclass(frozen=True, slots=True)
class Answer:
    """What the DNS said. ``error`` is None for an answer, even an empty one (NODATA).

    ``error`` is "nxdomain" (the name does not exist) or a transient failure
    ("timeout", "servfail", ...); ``ttl`` is how long the answer may be kept.
    """

    records: tuple[Record, ...] = ()
    ttl: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place to send to: transport, address and port, and the name TLS checks."""

    transport: Transport
    host: str  # an IP address
    port: int
    server_name: str | None  # the URI's host for TLS (RFC 5922); None for a numeric host


class LocateError(Exception):
    """No place to send to. ``status`` is the answer the request gets (404 or 503)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# NAPTR services (RFC 3263 section 4.1, RFC 7118 section 5 for WebSocket)
SERVICES: MappingProxyType[str, Transport] = MappingProxyType(
    {
        "SIP+D2U": Transport.UDP,
        "SIP+D2T": Transport.TCP,
        "SIPS+D2T": Transport.TLS,
        "SIP+D2W": Transport.WS,
        "SIPS+D2W": Transport.WSS,
    }
)
_SRV_PREFIX: MappingProxyType[Transport, str] = MappingProxyType(
    {
        Transport.UDP: "_sip._udp",
        Transport.TCP: "_sip._tcp",
        Transport.TLS: "_sips._tcp",
        Transport.WS: "_sip._ws",
        Transport.WSS: "_sips._ws",
    }
)
_URI_TRANSPORTS: MappingProxyType[str, Transport] = MappingProxyType(
    {
        "udp": Transport.UDP,
        "tcp": Transport.TCP,
        "tls": Transport.TLS,
        "ws": Transport.WS,
        "wss": Transport.WSS,
    }
)

Locating = Generator[Query, Answer, list[Candidate]]


def default_port(transport: Transport) -> int:
    return 5061 if transport.is_secure else 5060


def _numeric(host: str) -> str | None:
    h = host[1:-1] if host.startswith("[") else host
    if h.lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return None


def uri_transport(uri: SipUri) -> Transport | None:
    """The transport a URI's parameter asks for (``sips:`` + tcp is TLS, + ws is WSS)."""
    t = uri.transport
    if t is None:
        return None
    transport = _URI_TRANSPORTS.get(t)
    if transport is None:
        raise LocateError(503, f"Service Unavailable (unknown transport {t!r} in {uri})")
    if uri.scheme == "sips":
        transport = {Transport.TCP: Transport.TLS, Transport.WS: Transport.WSS}.get(
            transport, transport
        )
    return transport


def locate(
    uri: SipUri,
    *,
    supported: Sequence[Transport],
    ipv6: bool = False,
    rng: random.Random | None = None,
) -> Locating:
    """Yield Queries, receive Answers, return the Candidates in the order to try them.

    ``supported`` lists the transports we can send over, most preferred first;
    ``ipv6`` whether AAAA records are worth asking for. Raises LocateError.
    """
    rng = rng or random.Random(0)
    secure = uri.scheme == "sips"
    host = uri.host_ip.lower().rstrip(".")
    name = None if _numeric(host) is not None else host
    wanted = uri_transport(uri)
    if wanted is not None and wanted not in supported:
        raise LocateError(503, f"Service Unavailable (cannot send over {wanted.value} to {uri})")
    usable = [t for t in supported if t.is_secure or not secure]
    if wanted is None and (name is None or uri.port is not None):
        wanted = Transport.TLS if secure else Transport.UDP  # RFC 3263 4.1
        if wanted not in supported:
            raise LocateError(503, f"Service Unavailable (cannot send over {wanted.value})")
    numeric = _numeric(host)
    if numeric is not None:
        assert wanted is not None
        server_name = None
        return [Candidate(wanted, numeric, uri.port or default_port(wanted), server_name)]
    assert name is not None
    if uri.port is not None:
        assert wanted is not None
        addresses = yield from _addresses(name, ipv6)
        return [Candidate(wanted, a, uri.port, name) for a in addresses]

    # SRV names to try, in order: from NAPTR, or one per usable transport
    srv_names: list[tuple[Transport, str]] = []
    if wanted is not None:
        srv_names = [(wanted, f"{_SRV_PREFIX[wanted]}.{name}")]
    else:
        naptr = yield Query(name, QType.NAPTR)
        _raise_transient(naptr, name)
        records = [r for r in naptr.records if isinstance(r, NaptrRecord)]
        records.sort(key=lambda r: (r.order, r.preference))
        for r in records:
            transport = SERVICES.get(r.service.upper())
            if r.flags.lower() != "s" or transport is None or transport not in usable:
                continue
            if r.replacement:
                srv_names.append((transport, r.replacement.lower().rstrip(".")))
        if not srv_names:
            srv_names = [(t, f"{_SRV_PREFIX[t]}.{name}") for t in usable]
    candidates: list[Candidate] = []
    srv_found = False
    for transport, srv_name in srv_names:
        answer = yield Query(srv_name, QType.SRV)
        if answer.error == "nxdomain":
            continue
        _raise_transient(answer, srv_name)
        srvs = [r for r in answer.records if isinstance(r, SrvRecord)]
        srv_found = srv_found or bool(srvs)
        for srv in order_srv(srvs, rng):
            if not srv.target:
                continue  # "." : the service is decidedly not available here
            try:
                addresses = yield from _addresses(srv.target.lower().rstrip("."), ipv6)
            except LocateError:
                continue  # one dead target does not spoil the others
            candidates += [Candidate(transport, a, srv.port, name) for a in addresses]
    if candidates:
        return candidates
    if srv_found:
        raise LocateError(503, f"Service Unavailable (no reachable SRV target for {name})")
    # no SRV: the host itself, on the default port (RFC 3263 4.2)
    transport = wanted or (Transport.TLS if secure else Transport.UDP)
    if transport not in supported:
        transport = usable[0] if usable else transport
    addresses = yield from _addresses(name, ipv6)
    return [Candidate(transport, a, default_port(transport), name) for a in addresses]


def _addresses(name: str, ipv6: bool) -> Generator[Query, Answer, list[str]]:
    a = yield Query(name, QType.A)
    found = [r for r in a.records if isinstance(r, str)]
    errors = [a]
    if ipv6:
        aaaa = yield Query(name, QType.AAAA)
        found += [r for r in aaaa.records if isinstance(r, str)]
        errors.append(aaaa)
    if found:
        return found
    if all(e.error == "nxdomain" for e in errors):
        raise LocateError(404, f"Not Found (no DNS records for {name})")
    transient = next((e.error for e in errors if e.error and e.error != "nxdomain"), None)
    if transient is not None:
        raise LocateError(503, f"Service Unavailable (DNS lookup for {name} failed: {transient})")
    raise LocateError(404, f"Not Found (no address records for {name})")


def _raise_transient(answer: Answer, name: str) -> None:
    if answer.error is not None and answer.error != "nxdomain":
        raise LocateError(
            503, f"Service Unavailable (DNS lookup for {name} failed: {answer.error})"
        )


def order_srv(records: list[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782: lowest priority first; within one, a weighted random order."""
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        group.sort(key=lambda r: r.weight)  # zero weights first, as RFC 2782 asks
        while group:
            total = sum(r.weight for r in group)
            pick = rng.uniform(0, total) if total else 0.0
            running = 0
            for index, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    out.append(group.pop(index))
                    break
    return out
