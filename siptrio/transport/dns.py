"""DNS questions from the core, answered with dnspython on Trio.

The core (``core/routing``) runs RFC 3263 and keeps the cache; it asks one question
at a time through a ``Resolve`` action. This module only asks the network: through
``[dns] servers`` when set, else the system's ``/etc/resolv.conf``, with dnspython's
own cache off (the core's is the one that counts TTLs) and no search list (SIP names
are absolute).
"""

from __future__ import annotations

import logging

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from ..core.routing import Answer, NaptrRecord, SrvRecord

__all__ = ["DnsClient"]

log = logging.getLogger("siptrio.dns")


def _server(text: str) -> dns.nameserver.Do53Nameserver:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return dns.nameserver.Do53Nameserver(host, int(port or 53))
    if text.count(":") == 1:
        host, port = text.split(":")
        return dns.nameserver.Do53Nameserver(host, int(port))
    return dns.nameserver.Do53Nameserver(text, 53)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308: a negative answer lives as long as its SOA's minimum (capped by its TTL)."""
    if response is None:
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0


def _text(name: dns.name.Name) -> str:
    """A domain name without its final dot; the root (".": nothing here) as ""."""
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True)


class DnsClient:
    def __init__(self, servers: tuple[str, ...], timeout: float) -> None:
        self.problem: str | None = None
        try:
            resolver = dns.asyncresolver.Resolver(configure=not servers)
        except dns.resolver.NoResolverConfiguration as e:
            resolver = dns.asyncresolver.Resolver(configure=False)
            self.problem = f"no DNS servers: set [dns] servers ({e})"
        if servers:
            resolver.nameservers = [_server(s) for s in servers]
        resolver.lifetime = timeout
        resolver.timeout = timeout
        resolver.cache = None
        self._resolver = resolver
        self._backend = dns.asyncbackend.get_backend("trio")

    async def query(self, name: str, qtype: str) -> Answer:
        """The answer, an empty one (NODATA), or an error; never raises for DNS trouble."""
        if self.problem is not None:
            return Answer(error=self.problem)
        try:
            found = await self._resolver.resolve(
                name + ".",
                qtype,
                raise_on_no_answer=False,
                search=False,
                backend=self._backend,
            )
        except dns.resolver.NXDOMAIN as e:
            responses = list(e.responses().values())
            return Answer(error="nxdomain", ttl=_negative_ttl(responses[0] if responses else None))
        except dns.resolver.LifetimeTimeout:
            return Answer(error="timeout")
        except dns.resolver.NoNameservers:
            return Answer(error="no server answered (SERVFAIL or REFUSED)")
        except dns.exception.DNSException as e:
            log.warning("DNS lookup of %s %s failed: %s", qtype, name, e)
            return Answer(error=type(e).__name__)
        rrset = found.rrset
        if rrset is None:
            return Answer(ttl=_negative_ttl(found.response))
        records: list[NaptrRecord | SrvRecord | str] = []
        for rr in rrset:
            if qtype == "NAPTR":
                records.append(
                    NaptrRecord(
                        order=rr.order,
                        preference=rr.preference,
                        flags=rr.flags.decode(),
                        service=rr.service.decode(),
                        regexp=rr.regexp.decode(),
                        replacement=_text(rr.replacement),
                    )
                )
            elif qtype == "SRV":
                target = _text(rr.target)
                records.append(
                    SrvRecord(priority=rr.priority, weight=rr.weight, port=rr.port, target=target)
                )
            else:
                records.append(rr.address)
        return Answer(records=tuple(records), ttl=float(rrset.ttl))
