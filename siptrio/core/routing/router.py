"""Where a request goes (RFC 3261 sections 16.5 and 16.6, RFC 3327, RFC 5626), sans-IO.

The proxy asks this module two questions. *Which targets?* For a request with a
Route set, the top Route (loose routing); for one of our users, each binding's
Contact with its Path as Route set; otherwise the first ``[routes]`` rule that takes
it, the outbound proxy, or the Request-URI itself when relaying there is allowed.
*Which next hops for a target, in what order?* A flow, a source address, a cluster
node, or a URI to locate by RFC 3263 (resolver.py), whose candidates are tried in
turn.

It also owns how we name ourselves (Via sent-by, Record-Route) and the guard that
keeps the proxy from being an open relay: a request leaves for an address outside our
domains only when the operator allowed it (``allowed_destinations``, a ``[routes]``
hop, the outbound proxy), or when it is the address a binding registered from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...sip.errors import SipParseError
from ...sip.headers import Via, parse_name_addr
from ...sip.message import Request
from ...sip.uri import SipUri, parse_uri_untrusted
from ..events import Action
from ..location import Binding, Location
from ..types import Clock, Listener, Peer, Transport
from .nat import NatMode, ip_of
from .resolver import Located, Resolver, ResolverConfig
from .rfc3263 import Candidate, LocateError, default_port, uri_transport
from .rules import RouteRule

__all__ = ["Locate", "Refuse", "Router", "RoutingConfig", "Target", "host_ref", "node_tag"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HOP_CACHE_SIZE = 10_000  # binding shapes whose next hop is remembered (cleared when full)
_UNKNOWN = object()


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    domains: tuple[str, ...] = ()
    allowed_destinations: tuple[IPNetwork, ...] = ()
    advertised_address: str | None = None
    node_id: str | None = None
    nat: NatMode = NatMode.AUTO
    routes: tuple[RouteRule, ...] = ()
    outbound_proxy: SipUri | None = None
    trust_contacts: bool = False  # REGISTERs are authenticated: honour every Contact
    dns: ResolverConfig = field(default_factory=ResolverConfig)


@dataclass(frozen=True, slots=True)
class Locate:
    """A next hop named by a URI, to be located (RFC 3263) when its turn comes.

    ``trusted``: the operator named it (a route, the outbound proxy); else a resolved
    address must be allowed, or be ``source`` (the address a binding came from).
    """

    uri: SipUri
    trusted: bool = False
    source: str | None = None
    local: tuple[str, int] | None = None  # the UDP socket a binding registered on
    request_uri: str | None = None  # sent with this hop's Request-URI instead of the target's


Hop = Peer | Locate


@dataclass(frozen=True, slots=True)
class Target:
    uri: str  # the Request-URI it is sent with
    route: tuple[str, ...]  # Route values put on top (a binding's Path, a node's token)
    hops: tuple[Hop, ...]  # where to send it, in the order to try (RFC 3263 4.3)
    binding: Binding | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    reason: str


def node_tag(node: str) -> str:
    """Six hex digits naming a cluster node in our branches and Record-Route entries."""
    return hashlib.sha256(node.encode()).hexdigest()[:6]


def host_ref(host: str) -> str:
    """A host as written in a URI or Via: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def hostport(host: str, port: int) -> str:
    return f"{host_ref(host)}:{port}"


def binding_ref(b: Binding) -> str:
    """A binding's AOR and key in a URI parameter: base64url, no padding, '~' between."""
    return "~".join(
        base64.urlsafe_b64encode(text.encode()).decode().rstrip("=") for text in (b.aor, b.key)
    )


def _uri_of(value: str) -> SipUri | None:
    """The URI of a Route/Path value or a Contact URI text; None if not sip:/sips:."""
    try:
        uri = (
            parse_name_addr(value, "Path").uri
            if value.lstrip().startswith(("<", '"'))
            else parse_uri_untrusted(value)
        )
    except SipParseError:
        return None
    return uri if isinstance(uri, SipUri) else None


class Router:
    def __init__(self, config: RoutingConfig, *, location: Location, stats: Counter[str]) -> None:
        self.config = config
        self.location = location
        self.stats = stats
        self.resolver = Resolver(config.dns, stats=stats)
        self.listeners: list[Listener] = []
        self._own: set[tuple[str, int]] = set()
        self._hops: dict[tuple[object, ...], Hop | None] = {}
        self._supported: tuple[Transport, ...] = (Transport.TCP, Transport.TLS)
        self._ipv6 = False
        # hosts the operator named as next hops: a Route to them is no relay
        self._trusted_hosts = _trusted_hosts(config)
        # cluster: other nodes' internal SIP addresses, and the key that signs flow tokens
        self.cluster_nodes: dict[str, tuple[str, int]] = {}
        self.internal: Listener | None = None
        self.cluster_secret = b""
        self.node_tag = node_tag(config.node_id) if config.node_id else ""

    def reconfigure(self, config: RoutingConfig) -> None:
        """A reload's settings: the next hops remembered under the old ones are forgotten
        (the DNS cache stays: names mean the same)."""
        self.config = config
        self._trusted_hosts = _trusted_hosts(config)
        self.set_listeners(self.listeners)  # clears the remembered hops too

    # --- our own addresses --------------------------------------------------------------

    def set_listeners(self, listeners: list[Listener]) -> None:
        self._hops.clear()
        self.listeners = list(listeners)
        self._own = {(li.host.lower(), li.port) for li in listeners}
        if self.config.advertised_address:
            self._own |= {(self.config.advertised_address, li.port) for li in listeners}
        udp = any(li.transport is Transport.UDP for li in listeners)
        self._supported = ((Transport.UDP,) if udp else ()) + (Transport.TCP, Transport.TLS)
        self._ipv6 = any(":" in li.host for li in listeners)

    def is_own(self, uri: SipUri) -> bool:
        host = uri.host_ip.lower()
        port = uri.port
        if port is None:
            t = uri.transport
            port = 5061 if uri.scheme == "sips" or t in ("tls",) else 5060
        return (host, port) in self._own or (
            host == "localhost" and ("127.0.0.1", port) in self._own
        )

    def is_own_address(self, host: str, port: int) -> bool:
        return (host.lower(), port) in self._own

    def listener(self, transport: Transport, family_of: str) -> Listener | None:
        v6 = ":" in family_of
        fallback = None
        for li in self.listeners:
            if li.transport is transport:
                if (":" in li.host) == v6:
                    return li
                fallback = fallback or li
        return fallback

    def is_local_domain(self, uri: SipUri) -> bool:
        """Is this Request-URI ours to look up in the location service?

        With ``domains`` configured only those are; without, our own addresses are,
        and any domain we hold registrations for (when no other port is named).
        """
        host = uri.host_ip.lower()
        if self.config.domains:
            return host in self.config.domains
        if self.is_own(uri):
            return True
        return uri.port is None and self.location.serves_domain(host)

    def is_node(self, uri: SipUri) -> bool:
        """Another node of the cluster: always reachable, never a relay."""
        return (uri.host_ip, uri.port or 5060) in self.cluster_nodes.values()

    def relay_allowed(self, host: str) -> bool:
        ip = ip_of(host)
        return ip is not None and any(ip in net for net in self.config.allowed_destinations)

    def _may_relay_to(self, host: str) -> bool:
        """Could a request for ``host`` (an address or a name) leave for it at all?"""
        if ip_of(host) is not None:
            return self.relay_allowed(host)
        return bool(self.config.allowed_destinations)  # a name: resolve, then check

    # --- how we name ourselves ------------------------------------------------------------

    def our_address(self, peer: Peer) -> tuple[str, int]:
        """How we name ourselves (Via sent-by, Record-Route) on the side of ``peer``."""
        t = peer.transport
        if t is Transport.UDP:
            host, port = peer.local_host, peer.local_port
        else:
            li = self.listener(t, peer.host)
            host, port = (li.host, li.port) if li else (peer.local_host, peer.local_port)
        if self.config.advertised_address:
            host = self.config.advertised_address
        elif host in ("0.0.0.0", "::") and peer.local_host not in ("0.0.0.0", "::"):
            host = peer.local_host  # an accepted connection knows its real local address
        return host, port

    def side_uri(self, peer: Peer) -> str:
        """Our address as a Record-Route entry for the side where ``peer`` is."""
        hp = hostport(*self.our_address(peer))
        if self.node_tag:
            hp += f";nd={self.node_tag}"
        t = peer.transport
        if t is Transport.UDP:
            return f"<sip:{hp};lr>"
        if t is Transport.TCP:
            return f"<sip:{hp};transport=tcp;lr>"
        if t is Transport.TLS:
            return f"<sips:{hp};lr>"
        if t is Transport.WS:
            return f"<sip:{hp};transport=ws;lr>"
        return f"<sips:{hp};transport=ws;lr>"

    def record_routes(self, inbound: Peer, outbound: Peer) -> list[str]:
        """RFC 5658: one entry per side when the sides differ, top entry facing the callee."""
        a = self.side_uri(inbound)
        b = self.side_uri(outbound)
        return [a] if a == b else [b, a]

    def via(self, dest: Peer, branch: str) -> Via:
        """Our Via for a request to ``dest``: the value parse_via would make of its text."""
        t = dest.transport
        host, port = self.our_address(dest)
        host = host_ref(host)
        udp = t is Transport.UDP
        return Via(
            protocol="SIP/2.0",
            transport=t.via_name,
            host=host,
            port=port,
            params=(("branch", branch), ("rport", None)) if udp else (("branch", branch),),
            text=f"SIP/2.0/{t.via_name} {host}:{port};branch={branch}{';rport' if udp else ''}",
        )

    # --- targets ------------------------------------------------------------------------------

    def initial(self, req: Request, wall: float) -> list[Target] | Refuse:
        """Targets of a request outside a dialog with no Route left (16.5)."""
        uri = req.uri
        assert isinstance(uri, SipUri)
        if self.is_local_domain(uri):
            aor = uri.aor()
            bindings = self.location.lookup(aor, wall)
            if bindings:
                targets = self.binding_targets(bindings)
                if targets:
                    return targets
                if any(b.reg_id is not None for b in bindings):
                    return Refuse(430, "Flow Failed")
                return Refuse(480, "Temporarily Unavailable")
            rule = self._rule_for(uri, local=True)
            if rule is not None:
                return [self._rule_target(req, uri, rule, local=True)]
            if self.location.flow_failed(aor):
                return Refuse(430, "Flow Failed")
            if self.location.known(aor):
                return Refuse(480, "Temporarily Unavailable")
            return Refuse(404, "Not Found")
        rule = self._rule_for(uri, local=False)
        if rule is not None:
            return [self._rule_target(req, uri, rule, local=False)]
        outbound = self.config.outbound_proxy
        if outbound is not None:
            self.stats["routed.outbound_proxy"] += 1
            return [Target(uri=req.uri_text, route=(), hops=(Locate(outbound, trusted=True),))]
        if self._may_relay_to(uri.host):
            return [Target(uri=req.uri_text, route=(), hops=(Locate(uri),))]
        self.stats["relay_denied"] += 1
        return Refuse(403, "Relaying denied")

    def via_route(self, req: Request) -> list[Target] | Refuse:
        """A request whose top Route (after ours) is someone else: loose routing (16.6)."""
        top = req.routes[0].uri
        if not isinstance(top, SipUri):
            return Refuse(416, "Unsupported URI Scheme in Route")
        trusted = self.is_node(top) or top.host_ip.lower() in self._trusted_hosts
        if not trusted and not self._may_relay_to(top.host):
            self.stats["relay_denied"] += 1
            return Refuse(403, "Relaying denied")
        return [Target(uri=req.uri_text, route=(), hops=(Locate(top, trusted=trusted),))]

    def to_uri(self, req: Request) -> list[Target] | None:
        """An in-dialog request we hold no dialog for, to an allowed Request-URI, or None."""
        uri = req.uri
        if isinstance(uri, SipUri) and self.relay_allowed(uri.host):
            return [Target(uri=req.uri_text, route=(), hops=(Locate(uri),))]
        return None

    def _rule_for(self, uri: SipUri, *, local: bool) -> RouteRule | None:
        for rule in self.config.routes:
            if rule.matches(uri, local=local):
                return rule
        return None

    def _rule_target(self, req: Request, uri: SipUri, rule: RouteRule, *, local: bool) -> Target:
        """A route's hops in order. A number dialled at our domain is sent on as each
        gateway's own: its host becomes the hop's (Kamailio's ds_select_domain and
        ds_next_domain), so a second gateway is not handed the first one's name."""
        self.stats[f"routed.{rule.name}"] += 1
        hops = tuple(
            Locate(
                h,
                trusted=True,
                request_uri=str(uri.evolve(host=h.host, port=h.port)) if local else None,
            )
            for h in rule.hops
        )
        return Target(uri=req.uri_text, route=(), hops=hops)

    def routed_out(self, uri: SipUri, wall: float) -> bool:
        """Would a request for this URI of our domains leave for a [routes] hop? (It has
        no binding and a rule names it.) Such a call costs money: it is no call *to* us."""
        if not self.config.routes or self.location.lookup(uri.aor(), wall):
            return False
        return self._rule_for(uri, local=True) is not None

    def binding_targets(self, bindings: Sequence[Binding]) -> list[Target]:
        targets: list[Target] = []
        for b in bindings:
            if self.remote(b):
                node = self.cluster_nodes.get(b.node or "")
                if node is None or self.internal is None:
                    continue  # its node is gone (or was never heard of): not usable
                dest = self.node_peer(node)
                hp = hostport(dest.host, dest.port)
                if b.flow_id is not None:
                    route = f"<sip:{hp};lr;ft={self.flow_token(b.flow_id)}>"
                else:
                    route = f"<sip:{hp};lr;bt={self.flow_token(binding_ref(b))}>"
                targets.append(Target(b.contact_uri, (*b.path, route), (dest,), b))
                continue
            hop = self.binding_hop(b)
            if hop is None:
                continue
            if (
                isinstance(hop, Peer)
                and hop.flow_id is None
                and self.is_own_address(hop.host, hop.port)
            ):
                self.stats["targets_skipped_self"] += 1
                continue
            targets.append(Target(b.contact_uri, b.path, (hop,), b))
        return targets

    def source_peer(self, b: Binding) -> Peer:
        """Where a binding's REGISTER came from: its flow, or its source from its socket."""
        return Peer(
            transport=b.transport,
            host=b.source_host,
            port=b.source_port,
            local_host=b.local_host,
            local_port=b.local_port,
            flow_id=b.flow_id,
        )

    def binding_hop(self, b: Binding) -> Hop | None:
        """RFC 3261 16.5 with RFC 3327 and RFC 5626: the first place to send a binding's
        requests. A flow or a NATed client: where it registered from. A Path: its first
        entry. Otherwise the Contact.

        Remembered per binding shape: every INVITE to a phone asks again, and the answer
        (a parse, address checks, a Peer) changes only when the binding does."""
        key = (
            b.contact_uri,
            b.path,
            b.transport,
            b.source_host,
            b.source_port,
            b.local_host,
            b.local_port,
            b.flow_id,
            b.nat,
        )
        hops = self._hops
        hop = hops.get(key, _UNKNOWN)
        if hop is _UNKNOWN:
            hop = self._binding_hop(b)
            if len(hops) >= HOP_CACHE_SIZE:
                hops.clear()
            hops[key] = hop
        return hop  # type: ignore[return-value]

    def _binding_hop(self, b: Binding) -> Hop | None:
        if b.flow_id is not None or b.nat:
            return self.source_peer(b)
        if b.path:
            first = _uri_of(b.path[0])
            if first is None:
                return self.source_peer(b)
            ip = ip_of(first.host)
            t = _transport_or(first, b.transport)
            if (
                ip is not None
                and str(ip) == b.source_host
                and (first.port or default_port(t)) == b.source_port
                and t is b.transport
            ):
                return self.source_peer(b)
            return self._hop_for(first, b)
        contact = _uri_of(b.contact_uri)
        if contact is None:
            return self.source_peer(b)  # tel: and other schemes: only the source knows
        return self._hop_for(contact, b)

    def _hop_for(self, uri: SipUri, b: Binding) -> Hop | None:
        locate = Locate(
            uri,
            trusted=self.config.trust_contacts,
            source=b.source_host,
            local=(b.local_host, b.local_port) if b.transport is Transport.UDP else None,
        )
        ip = ip_of(uri.host)
        if ip is None:
            return locate
        try:
            transport = uri_transport(uri) or (
                Transport.TLS if uri.scheme == "sips" else Transport.UDP
            )
        except LocateError:
            return None
        candidate = Candidate(transport, str(ip), uri.port or default_port(transport), None)
        peers = self.peers(locate, [candidate])
        return peers[0] if isinstance(peers, list) else None

    # --- locating next hops -------------------------------------------------------------------

    def locate(self, hop: Locate, clock: Clock, done: Located) -> list[Action]:
        return self.resolver.locate(
            hop.uri, supported=self._supported, ipv6=self._ipv6, clock=clock, done=done
        )

    def peers(self, hop: Locate, candidates: Sequence[Candidate]) -> list[Peer] | Refuse:
        """The candidates we may and can send to, as Peers, in their order; when none is
        left, why."""
        out: list[Peer] = []
        refusal = Refuse(503, f"Service Unavailable (cannot send to {hop.uri.host})")
        nodes = self.cluster_nodes.values()
        for c in candidates:
            allowed = hop.trusted or c.host == hop.source or self.relay_allowed(c.host)
            if not allowed and (c.host, c.port) not in nodes:
                self.stats["relay_denied"] += 1
                refusal = Refuse(403, f"Relaying denied ({c.host} is not an allowed destination)")
                continue
            if self.is_own_address(c.host, c.port):
                self.stats["targets_skipped_self"] += 1
                refusal = Refuse(482, "Loop Detected (the next hop is this server)")
                continue
            if (
                c.transport is Transport.UDP
                and hop.local is not None
                and (":" in hop.local[0]) == (":" in c.host)
            ):
                local = hop.local
            else:
                li = self.listener(c.transport, c.host)
                if li is None and c.transport is Transport.UDP:
                    continue
                li = (
                    li
                    or self.listener(Transport.UDP, c.host)
                    or self.listener(Transport.TCP, c.host)
                )
                if li is None:
                    continue
                local = (li.host, li.port)
            out.append(
                Peer(
                    transport=c.transport,
                    host=c.host,
                    port=c.port,
                    local_host=local[0],
                    local_port=local[1],
                    server_name=c.server_name,
                )
            )
        return out or refusal

    # --- the cluster: flows held by other nodes ------------------------------------------

    def node_peer(self, node: tuple[str, int]) -> Peer:
        internal = self.internal
        assert internal is not None
        return Peer(
            transport=Transport.UDP,
            host=node[0],
            port=node[1],
            local_host=internal.host,
            local_port=internal.port,
        )

    def node_by_tag(self, tag: str | None) -> tuple[str, int] | None:
        """The internal address of the other node whose tag this is, if any."""
        if not tag or tag == self.node_tag or self.internal is None:
            return None
        for name, addr in self.cluster_nodes.items():
            if node_tag(name) == tag:
                return addr
        return None

    def flow_token(self, flow_id: str) -> str:
        mac = hmac.new(self.cluster_secret, flow_id.encode(), hashlib.sha256).hexdigest()[:16]
        return f"{flow_id}.{mac}"

    def check_token(self, token: str) -> str | None:
        """The flow id or binding reference a token of ours carries, if its MAC is good."""
        ref, _, _mac = token.rpartition(".")
        if not self.cluster_secret or not hmac.compare_digest(
            self.flow_token(ref).encode(), token.encode()
        ):
            self.stats["flow_token_bad"] += 1
            return None
        return ref

    def remote(self, b: Binding) -> bool:
        """Held by another node: its flow, or a UDP socket that is not ours.

        (Workers of ``serve --workers`` share their UDP socket: those bindings are sent
        to directly.)
        """
        return (
            b.node is not None
            and self.config.node_id is not None
            and b.node != self.config.node_id
            and (b.flow_id is not None or (b.local_host.lower(), b.local_port) not in self._own)
        )


def _transport_or(uri: SipUri, fallback: Transport) -> Transport:
    try:
        return uri_transport(uri) or (Transport.TLS if uri.scheme == "sips" else fallback)
    except LocateError:
        return fallback


def _trusted_hosts(config: RoutingConfig) -> set[str]:
    hosts = {h.host_ip.lower() for r in config.routes for h in r.hops}
    if config.outbound_proxy is not None:
        hosts.add(config.outbound_proxy.host_ip.lower())
    return hosts
