"""The registrar's decisions (RFC 3261 section 10.3, RFC 5626 section 6, RFC 3327).

Given a REGISTER, where it came from and the time, compute the new binding set for
the AOR, all or nothing, and the response. The caller makes the changes durable and
only then sends the response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sip.errors import SipParseError
from ..sip.headers import NameAddr
from ..sip.message import Request, Response, make_response
from ..sip.uri import SipUri
from .events import BindingEvent, BindingEventKind
from .location import Binding, Location
from .routing.nat import NatMode, ViaFacts, classify, ip_of, is_source
from .routing.router import IPNetwork
from .types import Peer

__all__ = ["RegisterOutcome", "Registrar", "RegistrarConfig", "Reject"]

SUPPORTED_OPTIONS = ("path", "outbound")


@dataclass(frozen=True, kw_only=True)
class RegistrarConfig:
    min_expires: int = 60
    default_expires: int = 3600
    max_expires: int = 7200
    max_contacts: int = 10  # per AOR
    domains: tuple[str, ...] = ()  # empty: any domain
    node: str | None = None  # in a cluster: stamped on bindings (who holds their flow)
    nat: NatMode = NatMode.AUTO
    # A Contact we would send to at another address than the REGISTER's source must be
    # inside these, unless REGISTERs are authenticated (trust_contacts)
    allowed_contacts: tuple[IPNetwork, ...] = ()
    trust_contacts: bool = False


@dataclass(kw_only=True)
class RegisterOutcome:
    response: Response
    upserts: list[Binding] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)
    events: list[BindingEvent] = field(default_factory=list)


class Reject(Exception):
    """A REGISTER refused with ``status``; the fast path takes it as 'not mine'."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def serves_domain(domains: tuple[str, ...], host: str) -> bool:
    return not domains or host.lower() in domains


class Registrar:
    def __init__(self, config: RegistrarConfig, location: Location, *, server: str) -> None:
        self.config = config
        self.location = location
        self._server = server

    def register(self, request: Request, peer: Peer, now: float) -> RegisterOutcome:
        try:
            return self._register(request, peer, now)
        except Reject as r:
            return RegisterOutcome(response=self._respond(request, r.status, r.reason, r.headers))
        except SipParseError as e:
            return RegisterOutcome(response=self._respond(request, e.status, e.reason))

    def _respond(
        self, request: Request, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        return make_response(request, status, reason, headers=(*headers, ("Server", self._server)))

    def _register(self, request: Request, peer: Peer, now: float) -> RegisterOutcome:
        cfg = self.config
        ruri = request.uri
        if not isinstance(ruri, SipUri):
            raise Reject(416, "Unsupported URI Scheme (REGISTER needs a sip: or sips: Request-URI)")
        if not serves_domain(cfg.domains, ruri.host):
            raise Reject(403, f"Domain {ruri.host} is not served here")
        to_uri = request.to.uri
        if not isinstance(to_uri, SipUri):
            raise Reject(400, "Address-of-record must be a sip: or sips: URI")
        if not serves_domain(cfg.domains, to_uri.host):
            raise Reject(403, f"Domain {to_uri.host} is not served here")
        aor = to_uri.aor()
        current = self.location.bindings(aor)

        if request.contact_star:
            if request.expires != 0:
                raise Reject(400, "Contact * requires Expires: 0")
            for b in current.values():
                self._check_order(b, request.call_id, request.cseq.number)
            return self._apply(request, aor, [], list(current.values()), now, replaced=[])

        contacts = request.contacts
        if not contacts:
            return self._ok(request, aor, now)

        header_expires = request.expires
        with_reg_id = [
            c for c in contacts if c.reg_id is not None and self._requested(c, header_expires) != 0
        ]
        if len(with_reg_id) > 1:
            raise Reject(400, "More than one Contact with reg-id (RFC 5626 section 6)")

        upserts: list[Binding] = []
        deletes: list[Binding] = []
        replaced: list[Binding] = []
        path = tuple(p.text for p in request.paths)
        top = request.top_via
        via = ViaFacts(host=top.host, port=top.port, rport=top.rport is not None)
        first_hop = request.paths[0].uri if request.paths else None
        path_host = first_hop.host if isinstance(first_hop, SipUri) else None
        for contact in contacts:
            old, binding = self.contact_binding(
                contact,
                aor,
                current,
                header_expires=header_expires,
                call_id=request.call_id,
                cseq=request.cseq.number,
                user_agent=request.user_agent,
                path=path,
                path_host=path_host,
                via=via,
                peer=peer,
                now=now,
            )
            if binding is None:
                if old is not None:
                    deletes.append(old)
                continue
            if old is not None and old.flow_id and old.flow_id != peer.flow_id:
                replaced.append(old)
            upserts.append(binding)
        self.check_limit(aor, current, upserts, deletes, now)
        return self._apply(request, aor, upserts, deletes, now, replaced=replaced)

    def contact_binding(
        self,
        contact: NameAddr,
        aor: str,
        current: dict[str, Binding],
        *,
        header_expires: int | None,
        call_id: str,
        cseq: int,
        user_agent: str | None,
        path: tuple[str, ...],
        path_host: str | None,
        via: ViaFacts,
        peer: Peer,
        now: float,
    ) -> tuple[Binding | None, Binding | None]:
        """(the binding it replaces, the new one or None to remove it) for one Contact.

        Raises Reject. The REGISTER fast path (fastreg.py) decides with this too, so
        both paths keep one set of rules.
        """
        cfg = self.config
        if not isinstance(contact.uri, SipUri) and contact.uri.scheme not in ("tel",):
            raise Reject(400, f"Unsupported Contact URI scheme {contact.uri.scheme}")
        requested = self._requested(contact, header_expires)
        if requested != 0 and requested < cfg.min_expires:
            raise Reject(
                423,
                f"Interval Too Brief (minimum {cfg.min_expires} s)",
                (("Min-Expires", str(cfg.min_expires)),),
            )
        expires = min(requested, cfg.max_expires)
        key = self._binding_key(contact)
        old = current.get(key)
        if old is not None:
            self._check_order(old, call_id, cseq)
        if expires == 0:
            return old, None
        if contact.params:
            contact_params = "".join(
                f";{k}" if v is None else f";{k}={v}"
                for k, v in contact.params
                if k.lower() != "expires"
            )
            q, instance, reg_id = contact.q, contact.instance, contact.reg_id
        else:  # most phones: nothing to look for
            contact_params, q, instance, reg_id = "", None, None, None
        reach = classify(
            contact=contact.uri,
            outbound=instance is not None and reg_id is not None,
            path=path,
            via=via,
            peer=peer,
            mode=cfg.nat,
        )
        aimed = path_host if path else getattr(contact.uri, "host", None)
        if not (reach.nat or reach.flow_bound or cfg.trust_contacts or aimed == peer.host):
            self._check_aim(aimed, peer)
        binding = Binding(
            aor=aor,
            key=key,
            contact_uri=contact.uri_text,
            contact_params=contact_params,
            q=q,
            expires_at=now + expires,
            call_id=call_id,
            cseq=cseq,
            instance=instance,
            reg_id=reg_id,
            path=path,
            user_agent=user_agent,
            transport=peer.transport,
            source_host=peer.host,
            source_port=peer.port,
            local_host=peer.local_host,
            local_port=peer.local_port,
            flow_id=peer.flow_id if reach.flow_bound else None,
            registered_at=old.registered_at if old is not None else now,
            updated_at=now,
            node=cfg.node,
            nat=reach.nat,
        )
        return old, binding

    def _check_aim(self, host: str | None, peer: Peer) -> None:
        """A Contact (or first Path hop) we will send to must not aim our traffic at a
        third party: another address than the REGISTER's is allowed only inside
        ``allowed_contacts``. Host names are checked once resolved (routing)."""
        if host is None:
            return  # tel: and other schemes are reached at the source
        if is_source(host, peer):
            return
        ip = ip_of(host)
        if ip is None:
            return
        if any(ip in net for net in self.config.allowed_contacts):
            return
        raise Reject(
            403,
            f"Forbidden: Contact address {ip} is not the address this REGISTER came from "
            f"({peer.host}); allow it in [proxy] allowed_destinations or authenticate",
        )

    def check_limit(
        self,
        aor: str,
        current: dict[str, Binding],
        upserts: list[Binding],
        deletes: list[Binding],
        now: float,
    ) -> None:
        """Raises Reject when new bindings would take the AOR over max_contacts."""
        if len(current) + len(upserts) <= self.config.max_contacts:
            return  # even all of them live could not be too many
        live_after = {k for k, b in current.items() if b.expires_at > now}
        live_after -= {b.key for b in deletes}
        live_after |= {b.key for b in upserts}
        new_keys = {b.key for b in upserts} - set(current)
        if new_keys and len(live_after) > self.config.max_contacts:
            raise Reject(403, f"Too many contacts for {aor} (limit {self.config.max_contacts})")

    def _requested(self, contact: NameAddr, header_expires: int | None) -> int:
        value = contact.expires
        if value is None:
            value = header_expires
        if value is None:
            value = self.config.default_expires
        return min(value, 2**32 - 1)

    @staticmethod
    def _binding_key(contact: NameAddr) -> str:
        """RFC 5626: the same instance and reg-id is the same binding on any flow."""
        instance = contact.instance
        if instance is not None:
            reg_id = contact.reg_id
            return f"instance:{instance}" + (f"|{reg_id}" if reg_id is not None else "")
        uri = contact.uri
        return "uri:" + (uri.key() if isinstance(uri, SipUri) else str(uri))

    @staticmethod
    def _check_order(old: Binding, call_id: str, cseq: int) -> None:
        if old.call_id == call_id and cseq <= old.cseq:
            raise Reject(400, f"CSeq {cseq} is not higher than {old.cseq} for this Call-ID")

    def _apply(
        self,
        request: Request,
        aor: str,
        upserts: list[Binding],
        deletes: list[Binding],
        now: float,
        *,
        replaced: list[Binding],
    ) -> RegisterOutcome:
        events: list[BindingEvent] = []
        for b in deletes:
            self.location.remove(aor, b.key)
            events.append(BindingEvent(kind=BindingEventKind.REMOVED, binding=b))
        for b in replaced:
            events.append(BindingEvent(kind=BindingEventKind.REPLACED, binding=b))
        for b in upserts:
            old = self.location.put(b)
            kind = BindingEventKind.ADDED if old is None else BindingEventKind.REFRESHED
            events.append(BindingEvent(kind=kind, binding=b))
        outcome = self._ok(request, aor, now)
        outcome.upserts = upserts
        outcome.deletes = [(aor, b.key) for b in deletes]
        outcome.events = events
        return outcome

    def _ok(self, request: Request, aor: str, now: float) -> RegisterOutcome:
        headers: list[tuple[str, str]] = [
            ("Contact", b.contact_header(now)) for b in self.location.lookup(aor, now)
        ]
        if request.paths and "path" in request.supported:
            headers.extend(("Path", p.text) for p in request.paths)
        if "outbound" in request.supported and any(c.reg_id is not None for c in request.contacts):
            headers.append(("Require", "outbound"))
        headers.append(("Supported", ", ".join(SUPPORTED_OPTIONS)))
        headers.append(("Server", self._server))
        return RegisterOutcome(response=make_response(request, 200, "OK", headers=headers))
