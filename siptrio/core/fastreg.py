"""The REGISTER fast path: a tidy REGISTER from bytes to its pending 200, in one pass.

Phones refresh their bindings all day, and the general path spends most of a
REGISTER's cost in its layers: lazy views over a Request, a stamped copy of it, a
Response built from header fields (bench/README.md). This module owns the one
decision the general path does not make: whether a datagram is a REGISTER of the
plain shape almost every phone sends (one Via, one Contact without RFC 5626
parameters, no Require, Path or body, ASCII) that adds or refreshes one binding.

If so it does what the general path would do. The rules are shared: the
registrar's contact_binding and check_limit, the authenticator, SipUri.aor and
key, tag_for, the same ServerTransaction. What is written again here, smaller, is
the reading and the writing: strict subsets of the general grammar (below), the
Via stamp (stamp_via), and the 200 (make_response), byte for byte.

Anything else, and anything the general path would refuse, returns None before a
single change is made, and the general path takes the message from the start.
tests/core/test_fastreg.py runs both paths on the same messages (and on random
mutations of them) and asserts the same bytes out, the same bindings and the same
counters: that is what keeps the two equal.
"""

from __future__ import annotations

import re
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..sip._abnf import get_param, parse_uint
from ..sip.errors import SipParseError
from ..sip.headers import COMPACT_FORMS, NameAddr, display_name, parse_cseq, parse_token_list
from ..sip.message import LazyRequest, Request, tag_for
from ..sip.parser import _check_controls, parse_message_untrusted
from ..sip.uri import SipUri, parse_uri_untrusted
from .events import Action, BindingEvent, BindingEventKind, Persist, Publish
from .registrar import SUPPORTED_OPTIONS, Reject, serves_domain
from .routing.nat import ViaFacts
from .stamp import stamp_via
from .types import Clock, Peer

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

__all__ = ["FastRegister"]

# Headers a REGISTER may carry here, once each. The registrar reads them all.
_USED = frozenset(
    {"via", "from", "to", "call-id", "cseq", "contact", "expires", "max-forwards"}
    | {"content-length", "user-agent", "authorization"}
)
# Supported may come in several lines; the registrar reads it for every REGISTER, so
# it must be a token list (a fault in it is the general path's 400).
_SUPPORTED_HEADER = "supported"
# The general path does not look at these in a REGISTER, so any value and any number
# of them will do.
_IGNORED = frozenset({"allow", "allow-events", "accept", "date", "organization"})
_KNOWN = _USED | _IGNORED | {_SUPPORTED_HEADER}
_NAMES = MappingProxyType(
    {n: n for n in _KNOWN}
    | {short: long for short, long in COMPACT_FORMS.items() if long in _KNOWN}
    # ... and as most phones spell them, found without rstrip() and lower()
    | {display_name(n): n for n in _KNOWN}
)
_COPIED = frozenset({"via", "from", "to", "call-id", "cseq"})  # make_response's
_SUPPORTED = ", ".join(SUPPORTED_OPTIONS)

# Strict subsets of the general grammar (headers._VIA_FAST, headers._NAME_ADDR_FAST,
# uri._SIP_FAST, _abnf._PARAMS_FAST): no IPv6, no escapes, no quoted or spaced
# parameters, no URI headers. What they do not match goes the general way.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_HOST = r"[A-Za-z0-9][A-Za-z0-9\-.]*"
_USER = r"[A-Za-z0-9\-_.!~*'()&=+$]+"
_UPARAM = r"[A-Za-z0-9\-_.!~*'()/:&+$]+"
_PARAMS = rf"((?:;{_TOKEN}(?:={_TOKEN})?)*)"
_VIA = re.compile(rf"SIP/2\.0/([A-Za-z]+) ({_HOST})(?::([0-9]{{1,5}}))?{_PARAMS}")
_NAME_ADDR = re.compile(
    rf'(?:"[^"\\\x00-\x1f\x7f]*"[ \t]*|{_TOKEN}(?:[ \t]+{_TOKEN})*[ \t]*)?'
    rf"<((sips?):(?:({_USER})@)?({_HOST})(?::([0-9]{{1,5}}))?((?:;{_UPARAM}(?:={_UPARAM})?)*))>"
    + _PARAMS
)
_VALUED = ("branch", "received", "maddr", "ttl")  # Via parameters that need a value


def _params(text: str) -> tuple[tuple[str, str | None], ...]:
    """parse_params for what _PARAMS matched."""
    if not text:
        return ()
    out = []
    for p in text[1:].split(";"):
        name, eq, value = p.partition("=")
        out.append((name, value if eq else None))
    return tuple(out)


def _stamped(
    transport: str, sent_by: str, params: tuple[tuple[str, str | None], ...], stamp: dict[str, str]
) -> str:
    """The Via line stamp_via writes: Via.with_params(stamp), then with_top_via."""
    out = [f"Via: SIP/2.0/{transport} {sent_by}"]
    for k, v in params:
        lk = k.lower()
        if lk in stamp:
            v = stamp.pop(lk)
        out.append(f";{k}" if v is None else f";{k}={v}")
    out.extend(f";{k}={v}" for k, v in stamp.items())
    return "".join(out)


def _uri(m: re.Match[str]) -> SipUri:
    """The SipUri uri._parse_uri makes of what _NAME_ADDR matched."""
    port = m[5]
    if port is not None and int(port) > 65535:
        raise SipParseError("port out of range")  # the general path says so
    return SipUri(
        scheme=m[2],
        user=m[3],
        password=None,
        host=m[4],
        port=int(port) if port is not None else None,
        params=_params(m[6]),
        text=m[1],
    )


def _general_request(data: bytes, peer: Peer) -> Request:
    """The request as the general path keeps it in its transaction: parsed, stamped."""
    request = parse_message_untrusted(data)
    assert isinstance(request, Request)
    return stamp_via(request, peer)


class FastRegister:
    def __init__(self, dispatcher: Dispatcher, *, max_size: int, max_headers: int) -> None:
        self.dispatcher = dispatcher
        self.max_size = max_size
        self.max_headers = max_headers
        server = dispatcher.config.server_name
        tail = f"Supported: {_SUPPORTED}\r\nServer: {server}\r\nContent-Length: 0\r\n\r\n"
        self._tail = tail.encode()
        # a plain dict of the instance's: a read-only mapping costs a method call a line
        self._names = dict(_NAMES)

    def handle(self, data: bytes, peer: Peer, clock: Clock) -> list[Action] | None:
        """The actions the general path would return for ``data``, or None: not mine.

        ``data`` must start with ``REGISTER `` (the shell looks before calling).
        """
        if len(data) > self.max_size:
            return None
        # On a flow (TCP, TLS, a browser's WebSocket) too: RFC 5626's replaced bindings
        # come with reg-id and +sip.instance, and a binding that moves off a flow, which
        # are both given back below.
        try:
            return self._handle(data, peer, clock)
        except (SipParseError, Reject, ValueError, KeyError):
            # ValueError: bytes that are not ASCII; KeyError: a missing header. The
            # general path finds the same fault and names it.
            return None

    def _handle(self, data: bytes, peer: Peer, clock: Clock) -> list[Action] | None:
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data):
            return None  # a body, or bytes after the header section
        head = data[:end]
        _check_controls(head)
        lines = head.decode("ascii").split("\r\n")
        if len(lines) > self.max_headers + 1:
            return None
        start = lines[0]
        if not start.endswith(" SIP/2.0") or start.count(" ") != 2:
            return None
        uri_text = start[9:-8]
        ruri = parse_uri_untrusted(uri_text)  # the same few spellings: cached
        if not isinstance(ruri, SipUri) or ruri.headers:
            return None

        # one pass over the header lines, as parser._header_lines splits them
        h: dict[str, str] = {}
        copied: list[tuple[str, str]] = []  # what a response copies, in order
        supported: list[str] = []
        names = self._names
        for line in lines[1:]:
            raw_name, colon, raw_value = line.partition(":")
            name = names.get(raw_name) or names.get(raw_name.rstrip(" \t").lower())
            if name is None or not colon:
                return None  # Require, Path, Route, a folded line ...: the general path
            if name in _USED:
                if name in h:
                    return None
                h[name] = raw_value.strip(" \t")
                if name in _COPIED:
                    copied.append((name, line))
            elif name == _SUPPORTED_HEADER:
                supported.append(raw_value.strip(" \t"))
        if h.get("content-length", "0") != "0":
            return None
        if supported:
            parse_token_list(supported, "Supported")  # as Request.supported does

        via_m = _VIA.fullmatch(h["via"])
        from_m = _NAME_ADDR.fullmatch(h["from"])
        to_m = _NAME_ADDR.fullmatch(h["to"])
        contact_m = _NAME_ADDR.fullmatch(h["contact"])
        if via_m is None or from_m is None or to_m is None or contact_m is None:
            return None
        via_port = int(via_m[3]) if via_m[3] is not None else None
        if via_port is not None and via_port > 65535:
            return None
        via_host = via_m[2]
        sent_by = via_host if via_port is None else f"{via_host}:{via_port}"  # 0070 is 70
        via_params = _params(via_m[4])
        branch = rport = None  # Via.branch and Via.rport: the first of each name
        for k, v in via_params:
            lk = k.lower()
            if v is None and lk in _VALUED:
                return None
            if lk == "branch" and branch is None:
                branch = v
            elif lk == "rport" and rport is None:
                rport = "" if v is None else v
        if branch is None or not branch.startswith("z9hG4bK") or len(branch) == 7:
            return None  # RFC 2543 transaction matching
        if from_m[5] is not None and int(from_m[5]) > 65535:
            return None  # the From tag is all the answer needs; _uri would say this
        from_tag = get_param(_params(from_m[7]), "tag")
        to_uri = _uri(to_m)
        to_tag = get_param(_params(to_m[7]), "tag")
        call_id = h["call-id"]
        if not call_id or " " in call_id or "\t" in call_id:
            return None
        cseq = parse_cseq(h["cseq"])
        if cseq.method != "REGISTER":
            return None
        if "max-forwards" in h:
            parse_uint(h["max-forwards"], "Max-Forwards", maximum=255)
        d = self.dispatcher
        stats = d.stats

        key = (branch, sent_by.lower(), "REGISTER")  # transaction.server_key
        layer = d.layer
        txn = layer.servers.get(key)
        if txn is not None:
            stats["register_fast"] += 1
            stats["requests_in.REGISTER"] += 1
            stats["retransmissions_absorbed"] += 1
            return d.plumbing.actions(txn.on_retransmission(clock.now), clock)

        # --- what the registrar would decide; nothing has changed so far --------------
        contact = NameAddr(
            display=None,  # contact_binding does not read it
            uri=_uri(contact_m),
            uri_text=contact_m[1],
            params=_params(contact_m[7]),
            text=h["contact"],
        )
        if contact.reg_id is not None or contact.instance is not None:
            return None  # RFC 5626: Require: outbound in the answer, flows replaced
        registrar = d.registrar
        domains = registrar.config.domains
        if not (serves_domain(domains, ruri.host) and serves_domain(domains, to_uri.host)):
            return None
        expires = h.get("expires")
        wall = clock.wall
        aor = to_uri.aor()
        current = d.location.bindings(aor)
        old, binding = registrar.contact_binding(
            contact,
            aor,
            current,
            header_expires=(
                parse_uint(expires, "Expires", clamp=True) if expires is not None else None
            ),
            call_id=call_id,
            cseq=cseq.number,
            user_agent=h.get("user-agent"),
            path=(),
            path_host=None,
            via=ViaFacts(via_host, via_port, rport is not None),
            peer=peer,
            now=wall,
        )
        if binding is None or (old is not None and old.flow_id):
            return None  # removals, and a binding that moves off a flow
        registrar.check_limit(aor, current, [binding], [], wall)
        if d.auth.config.enabled and (peer.host, peer.port) not in d.trusted:
            given = h.get("authorization")
            if given is None:
                return None  # the challenge
            creds = d.auth.credentials([given])
            if creds is None or not d.auth.may_claim(creds.username, to_uri):
                return None  # a 403 or a challenge
            if d.auth.verify_values([given], "REGISTER", now=wall).user is None:
                return None  # nothing was used up: the general path counts the failure
            stats["auth_ok"] += 1

        # --- from here on it is taken ----------------------------------------------------
        stats["register_fast"] += 1
        stats["requests_in.REGISTER"] += 1
        if rport == "":
            stamp: dict[str, str] | None = {"rport": str(peer.port), "received": peer.host}
        elif via_host != peer.host:
            stamp = {"received": peer.host}
        else:
            stamp = None
        request = LazyRequest("REGISTER", partial(_general_request, data, peer))
        txn = layer.new_server(
            request, peer, reliable=peer.transport.is_stream, key=key, now=clock.now
        )
        previous = d.location.put(binding)
        kind = BindingEventKind.ADDED if previous is None else BindingEventKind.REFRESHED

        # make_response(request, 200, "OK", headers=<the registrar's>).serialise()
        tag = None
        if to_tag is None:
            tag = tag_for(call_id, from_tag, branch, sent_by, cseq.number)
        out = ["SIP/2.0 200 OK"]
        for name, line in copied:
            if name == "via" and stamp is not None:
                out.append(_stamped(via_m[1].upper(), sent_by, via_params, stamp))
            elif name == "to" and tag is not None:
                out.append(f"To: {h['to']};tag={tag}")
            else:
                out.append(line)
        for b in d.location.lookup(aor, wall):
            out.append(f"Contact: {b.contact_header(wall)}")
        out.append("")
        d.answer_when_stored(key, "\r\n".join(out).encode() + self._tail)
        return [
            Persist(upserts=(binding,), txn_key=txn.key),
            Publish(event=BindingEvent(kind=kind, binding=binding)),
        ]
