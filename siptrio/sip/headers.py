"""The header registry and the typed header values routing needs.

The registry knows compact forms (RFC 3261 section 7.3.3 and later RFCs), the
canonical spelling we send, and which headers are comma lists. Typed values (Via,
name-addr, CSeq) are parsed from one list element each and keep their source text,
so that forwarding and echoing do not rewrite what a client sent.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from ._abnf import (
    LWS,
    QVALUE,
    TOKEN_CHARS,
    BoundedCache,
    Params,
    format_params,
    get_param,
    is_token,
    parse_params,
    parse_quoted,
    parse_uint,
    remember,
    split_top_level,
    unquote,
)
from .errors import SipParseError
from .uri import SipUri, Uri, parse_hostport, parse_uri_untrusted

__all__ = [
    "COMPACT_FORMS",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_name",
    "display_name",
    "is_list_header",
    "parse_cseq",
    "parse_name_addr",
    "parse_token_list",
    "parse_via",
]

# Compact forms: RFC 3261 7.3.3 (i m e l f t v k c s), RFC 3265 (o u), RFC 3515 (r),
# RFC 3892 (b), RFC 4028 (x), RFC 4474 (y), RFC 3841 (d a j).
COMPACT_FORMS: MappingProxyType[str, str] = MappingProxyType(
    {
        "i": "call-id",
        "m": "contact",
        "e": "content-encoding",
        "l": "content-length",
        "f": "from",
        "t": "to",
        "v": "via",
        "k": "supported",
        "c": "content-type",
        "s": "subject",
        "o": "event",
        "u": "allow-events",
        "r": "refer-to",
        "b": "referred-by",
        "x": "session-expires",
        "y": "identity",
        "d": "request-disposition",
        "a": "accept-contact",
        "j": "reject-contact",
    }
)

_DISPLAY: MappingProxyType[str, str] = MappingProxyType(
    {
        "call-id": "Call-ID",
        "cseq": "CSeq",
        "www-authenticate": "WWW-Authenticate",
        "mime-version": "MIME-Version",
        "rack": "RAck",
        "rseq": "RSeq",
        "sip-etag": "SIP-ETag",
        "sip-if-match": "SIP-If-Match",
    }
)

# Headers whose grammar is a comma-separated list (RFC 3261 section 7.3.1). Others
# (Date, User-Agent, WWW-Authenticate, ...) may contain commas that are not separators.
_LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "require",
        "supported",
        "proxy-require",
        "unsupported",
        "allow",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "allow-events",
        "in-reply-to",
        "accept-contact",
        "reject-contact",
        "request-disposition",
    }
)

_name_cache: BoundedCache[bytes, str] = BoundedCache("header names", 4096)

# The same Via, From, To and Contact values come back in every message of a
# transaction and a dialog (request, retransmissions, 100, 180, 200, ACK, BYE):
# parsed values are immutable, so each spelling is parsed once and shared. Bounded
# by clearing, so a flood of unique values costs what no cache would.
PARSED_CACHE = 1024


def canonical_name(raw_name: bytes) -> str:
    """Lower-case long form of a header name as received (compact forms expanded)."""
    name = _name_cache.get(raw_name)
    if name is not None:
        return name
    text = raw_name.decode("ascii", errors="replace").lower()
    name = COMPACT_FORMS.get(text, text)
    if len(_name_cache) < _name_cache.bound:
        _name_cache[raw_name] = name
    return name


@functools.lru_cache(maxsize=1024)
def display_name(name: str) -> str:
    """The spelling siptrio sends for a (lower-case) header name."""
    special = _DISPLAY.get(name)
    if special:
        return special
    return "-".join(p.capitalize() for p in name.split("-"))


def is_list_header(name: str) -> bool:
    return name in _LIST_HEADERS


# --- Via -------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True, unsafe_hash=True)
class Via:
    """via-parm = sent-protocol LWS sent-by *( SEMI via-params )."""

    protocol: str  # "SIP/2.0"
    transport: str  # upper case: UDP, TCP, TLS, SCTP, WS, WSS, ...
    host: str
    port: int | None
    params: Params = ()
    text: str = field(default="", compare=False)

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return get_param(self.params, "received")

    @property
    def rport(self) -> str | None:
        """'' when the client asked for rport (RFC 3581), the port once filled in."""
        return get_param(self.params, "rport")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.text or self.serialise()

    def serialise(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"

    def with_param(self, name: str, value: str | None) -> Via:
        """Set (or add) a parameter in place, keeping the others' order."""
        return self.with_params({name: value})

    def with_params(self, changes: dict[str, str | None]) -> Via:
        """Set (or add) parameters in place, keeping the others' order; one rebuild."""
        wanted = {k.lower(): (k, v) for k, v in changes.items()}
        params: list[tuple[str, str | None]] = []
        for k, v in self.params:
            hit = wanted.pop(k.lower(), None)
            params.append((k, hit[1]) if hit is not None else (k, v))
        params.extend(wanted.values())
        text = f"{self.protocol}/{self.transport} {self.sent_by}{format_params(tuple(params))}"
        return Via(
            protocol=self.protocol,
            transport=self.transport,
            host=self.host,
            port=self.port,
            params=tuple(params),
            text=text,
        )


_SWS_COLON = re.compile(r"[ \t]*:[ \t]*")


_VIA_FAST = re.compile(
    r"SIP/(2\.0)/([A-Za-z]+) ([A-Za-z0-9\-_.]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?(;[^\s\"]*)?"
)


_via_cache: BoundedCache[str, Via] = BoundedCache("Via", PARSED_CACHE)


def parse_via(text: str) -> Via:
    """One Via list element, parsed once per spelling (see PARSED_CACHE)."""
    via = _via_cache.get(text)
    return via if via is not None else remember(_via_cache, text, _parse_via(text))


def remember_via(via: Via) -> None:
    """Put a Via we wrote ourselves (a stamped one) where parse_via will find it: the
    next hop echoes it in every response, spelled exactly as we sent it."""
    if via.text:
        remember(_via_cache, via.text, via)


def _parse_via(text: str) -> Via:
    """LWS is allowed around the '/' of sent-protocol."""
    m = _VIA_FAST.fullmatch(text)
    if (
        m is not None
        and m.group(3)[0] not in "-."
        and (m.group(4) is None or int(m.group(4)) <= 65535)
    ):
        # the common, tidy form: no LWS inside, no quoted parameters
        params = parse_params(m.group(5), "Via") if m.group(5) else ()
        for k, v in params:
            if v is None and k.lower() in ("branch", "received", "maddr", "ttl"):
                raise SipParseError(f"Via parameter {k} needs a value")
        return Via(
            protocol="SIP/2.0",
            transport=m.group(2).upper(),
            host=m.group(3),
            port=int(m.group(4)) if m.group(4) else None,
            params=params,
            text=text,
        )
    return _parse_via_slow(text)


def _parse_via_slow(text: str) -> Via:
    src = text
    text = text.strip(LWS)
    parts = text.split("/", 2)
    if len(parts) != 3:
        raise SipParseError("Malformed Via: no SIP/2.0/transport")
    name, version = parts[0].strip(LWS), parts[1].strip(LWS)
    rest = parts[2].lstrip(LWS)
    if name.upper() != "SIP" or not is_token(version):
        raise SipParseError(f"Malformed Via protocol {name}/{version}")
    i = 0
    while i < len(rest) and rest[i] in TOKEN_CHARS:
        i += 1
    transport = rest[:i]
    if not transport:
        raise SipParseError("Via without a transport")
    rest = rest[i:]
    stripped = rest.lstrip(LWS)
    if not stripped:
        raise SipParseError("Via without a sent-by")
    if len(stripped) == len(rest):
        raise SipParseError("Via needs whitespace between transport and sent-by")
    semi = stripped.find(";")
    sent_by = (stripped if semi < 0 else stripped[:semi]).strip(LWS)
    # sent-by = host [ COLON port ] with COLON = SWS ":" SWS: LWS is allowed around
    # the port's colon only, never inside the host ("10.0.0.1 0" is not 10.0.0.10).
    bracket = sent_by.rfind("]") + 1
    sent_by = sent_by[:bracket] + _SWS_COLON.sub(":", sent_by[bracket:])
    host, port = parse_hostport(sent_by, "Via sent-by")
    params = parse_params(stripped[semi:], "Via") if semi >= 0 else ()
    for k, v in params:
        lk = k.lower()
        if lk in ("branch", "received", "maddr", "ttl") and v is None:
            raise SipParseError(f"Via parameter {k} needs a value")
    return Via(
        protocol=f"SIP/{version}",
        transport=transport.upper(),
        host=host,
        port=port,
        params=params,
        text=src.strip(LWS),
    )


# --- name-addr / addr-spec ----------------------------------------------------------


@dataclass(kw_only=True, slots=True, unsafe_hash=True)
class NameAddr:
    """From, To, Contact, Route, Record-Route and Path values.

    ``uri_text`` is the URI exactly as sent and ``params`` the header parameters in
    their order and spelling, so a Contact can be echoed byte for byte.
    """

    display: str | None  # unquoted display name
    uri: Uri
    uri_text: str
    params: Params = ()
    text: str = field(default="", compare=False)

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    @property
    def expires(self) -> int | None:
        value = get_param(self.params, "expires")
        if value is None:
            return None
        return parse_uint(value, "Contact expires", clamp=True)

    @property
    def q(self) -> float | None:
        value = get_param(self.params, "q")
        if value is None:
            return None
        if not QVALUE.match(value):
            raise SipParseError(f"Bad q value {value!r}")
        return float(value)

    @property
    def instance(self) -> str | None:
        value = get_param(self.params, "+sip.instance")
        return unquote(value) if value else None

    @property
    def reg_id(self) -> int | None:
        value = get_param(self.params, "reg-id")
        if value is None:
            return None
        return parse_uint(value, "reg-id", maximum=2**31 - 1)

    @property
    def sip_uri(self) -> SipUri | None:
        return self.uri if isinstance(self.uri, SipUri) else None

    def __str__(self) -> str:
        return self.text or self.serialise()

    def serialise(self) -> str:
        name = f'"{_quote(self.display)}" ' if self.display is not None else ""
        return f"{name}<{self.uri_text}>{format_params(self.params)}"

    def with_params(self, params: Params) -> NameAddr:
        new = replace(self, params=params, text="")
        return replace(new, text=new.serialise())


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


_NAME_ADDR_FAST = re.compile(
    r"(?:\"((?:[^\"\\\x00-\x08\x0a-\x1f]|\\[^\x0a\x0d])*)\"[ \t]*"  # "quoted display"
    r"|([A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*)[ \t]*)?"  # or tokens
    r"<([^<>\s\"]+)>"  # <uri>
    r"((?:[ \t]*;[^\"]*)?)"  # ;params without quotes
)


_name_addr_cache: BoundedCache[str, NameAddr] = BoundedCache("name-addr", PARSED_CACHE)


def parse_name_addr(text: str, what: str) -> NameAddr:
    """From, To, Contact ... parsed once per spelling (see PARSED_CACHE)."""
    found = _name_addr_cache.get(text)
    if found is not None:
        return found
    return remember(_name_addr_cache, text, _parse_name_addr(text, what))


def _parse_name_addr(text: str, what: str) -> NameAddr:
    m = _NAME_ADDR_FAST.fullmatch(text)
    if m is not None:
        quoted, plain, uri_text, ptext = m.groups()
        display: str | None = None
        if quoted is not None:
            display = _unescape_quoted(quoted)
        elif plain:
            display = " ".join(plain.split())
        uri = parse_uri_untrusted(uri_text)
        params = parse_params(ptext, what) if ptext else ()
        return NameAddr(display=display, uri=uri, uri_text=uri_text, params=params, text=text)
    return _parse_name_addr_slow(text, what)


def _unescape_quoted(text: str) -> str:
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse_name_addr_slow(text: str, what: str) -> NameAddr:
    """( name-addr / addr-spec ) *( SEMI param ).

    In the addr-spec form everything after the first ';' is a header parameter and a
    URI containing ',', '?' or ';' must be in '<>' (RFC 3261 section 20.10); RFC 4475
    regbadct and cparam01 test exactly that.
    """
    src = text.strip(LWS)
    if not src:
        raise SipParseError(f"Empty {what}")
    display: str | None = None
    if src[0] == '"':
        display, end = parse_quoted(src, 0, what)
        rest = src[end:].lstrip(LWS)
        if not rest or rest[0] != "<":
            raise SipParseError(f"Quoted display name without <URI> in {what}")
        return _bracketed(display, rest, src, what)
    lt = src.find("<")
    semi = src.find(";")
    # A '<' after the first ';' is inside a parameter of an addr-spec (for example
    # +sip.instance="<urn:uuid:...>"), not the start of a name-addr.
    if lt >= 0 and (semi < 0 or lt < semi):
        name_part = src[:lt].strip(LWS)
        if name_part:
            for word in name_part.split():
                if not is_token(word):
                    raise SipParseError(f"Display name must be quoted in {what}")
            display = " ".join(name_part.split())
        return _bracketed(display, src[lt:], src, what)
    semi = src.find(";")
    uri_text = src if semi < 0 else src[:semi].rstrip(LWS)
    if "?" in uri_text or "," in uri_text:
        raise SipParseError(f"URI with '?' or ',' must be enclosed in <> in {what}")
    uri = parse_uri_untrusted(uri_text)
    params = parse_params(src[semi:], what) if semi >= 0 else ()
    return NameAddr(display=None, uri=uri, uri_text=uri_text, params=params, text=src)


def _bracketed(display: str | None, rest: str, src: str, what: str) -> NameAddr:
    gt = rest.find(">")
    if gt < 0:
        raise SipParseError(f"Unterminated <URI> in {what}")
    uri_text = rest[1:gt]
    uri = parse_uri_untrusted(uri_text)
    params = parse_params(rest[gt + 1 :], what)
    return NameAddr(display=display, uri=uri, uri_text=uri_text, params=params, text=src)


# --- CSeq and token lists ------------------------------------------------------------


@dataclass(kw_only=True, slots=True, unsafe_hash=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


_cseq_cache: BoundedCache[str, CSeq] = BoundedCache("CSeq", PARSED_CACHE)


def parse_cseq(text: str) -> CSeq:
    """CSeq = 1*DIGIT LWS Method; the number must fit 32 bits (RFC 4475 scalar02).

    "1 INVITE", "2 BYE" ... repeat across dialogs: parsed once per spelling.
    """
    found = _cseq_cache.get(text)
    return found if found is not None else remember(_cseq_cache, text, _parse_cseq(text))


def _parse_cseq(text: str) -> CSeq:
    parts = text.split()
    if len(parts) != 2:
        raise SipParseError("Malformed CSeq")
    number = parse_uint(parts[0], "CSeq number", maximum=2**32 - 1)
    if not is_token(parts[1]):
        raise SipParseError("Malformed CSeq method")
    return CSeq(number=number, method=parts[1])


def parse_token_list(values: list[str], what: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        for item in v.split(","):
            item = item.strip(LWS)
            if not item:
                continue
            if not is_token(item):
                raise SipParseError(f"Bad option tag {item[:30]!r} in {what}")
            out.append(item)
    return tuple(out)


def split_list(value: str, what: str) -> list[str]:
    """Elements of a comma list header; empty elements (',,') are malformed."""
    parts = split_top_level(value, ",", what)
    out = []
    for p in parts:
        p = p.strip(LWS)
        if not p:
            raise SipParseError(f"Empty element in {what}")
        out.append(p)
    return out
