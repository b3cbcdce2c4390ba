"""SIP requests and responses: raw header lines plus lazily parsed typed views.

A message is its start line, its header lines exactly as received and its body.
Typed values (Via, From, To, CSeq, Contact ...) are parsed on first use and cached;
headers nobody asks about stay bytes. Edits (add a Via, decrement Max-Forwards)
return a new message in which only the touched lines differ, so a forwarded request
is otherwise byte-identical to the one received: that is both the RFC's wish and the
fast path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

from ._abnf import LWS, BoundedCache, parse_uint, remember
from .errors import SipParseError
from .headers import (
    CSeq,
    NameAddr,
    Via,
    display_name,
    parse_cseq,
    parse_name_addr,
    parse_token_list,
    parse_via,
    split_list,
)
from .uri import Uri

if TYPE_CHECKING:
    from functools import cached_property as lazy
else:

    class lazy:  # used like functools.cached_property, hence the lower case
        """functools.cached_property without its lock.

        Python 3.11's cached_property takes a lock on every first access (removed in
        3.12); the typed views are computed a handful of times per message on the
        hot path, always by one thread, so the lock is pure cost.
        """

        __slots__ = ("func", "name")

        def __init__(self, func: Any) -> None:
            self.func = func
            self.name = func.__name__

        def __set_name__(self, owner: type, name: str) -> None:
            self.name = name

        def __get__(self, obj: Any, owner: type | None = None) -> Any:
            if obj is None:
                return self
            value = self.func(obj)
            obj.__dict__[self.name] = value
            return value


__all__ = [
    "HeaderField",
    "LazyRequest",
    "Message",
    "Request",
    "Response",
    "make_response",
    "reason_phrase",
]


@dataclass(slots=True, unsafe_hash=True)
class HeaderField:
    """One header line: lower-case long name, the line as received, the unfolded value."""

    name: str
    raw: bytes
    value: bytes

    @classmethod
    def make(cls, name: str, value: str | bytes) -> HeaderField:
        """A header line we write. Lines that repeat (Server, Supported, our
        Record-Route, Content-Length: 0, Max-Forwards: 69 ...) are made once."""
        key = (name, value)
        made = _made.get(key)
        if made is None:
            lname = name.lower()
            bvalue = value.encode("utf-8") if isinstance(value, str) else value
            made = cls(lname, display_name(lname).encode("ascii") + b": " + bvalue, bvalue)
            if lname not in PER_TRANSACTION:
                remember(_made, key, made)
        return made


# Headers whose lines name one transaction or dialog (a branch, a tag, a Call-ID): a
# cache of lines would fill with them and push out the lines that do repeat.
PER_TRANSACTION = frozenset({"via", "from", "to", "call-id", "cseq", "route", "authorization"})
MADE_CACHE = 1024
_made: BoundedCache[tuple[str, str | bytes], HeaderField] = BoundedCache(
    "header fields", MADE_CACHE
)


def index_of(headers: Iterable[HeaderField]) -> dict[str, tuple[bytes, ...]]:
    """Header values by name, in order (the parser builds the same while splitting)."""
    index: dict[str, tuple[bytes, ...]] = {}
    for h in headers:
        found = index.get(h.name)
        index[h.name] = (h.value,) if found is None else (*found, h.value)
    return index


def with_top_via(headers: tuple[HeaderField, ...], via: str | None) -> tuple[HeaderField, ...]:
    """The header lines with the first Via value replaced by ``via``, or removed (None).

    A line may carry several Via values; the others stay, after the new one. On the
    usual line of one value nothing is split.
    """
    out = list(headers)
    for i, h in enumerate(out):
        if h.name == "via":
            new = [HeaderField.make("via", via)] if via is not None else []
            if b"," in h.value:
                rest = split_list(_text(h.value, "via"), "Via")[1:]
                if rest:
                    new.append(HeaderField.make("via", ", ".join(rest)))
            out[i : i + 1] = new
            break
    return tuple(out)


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(f"Non-UTF-8 bytes in {display_name(name)}") from None


@dataclass(kw_only=True, eq=False)
class Message:
    headers: tuple[HeaderField, ...]
    body: bytes = b""

    # --- raw access ----------------------------------------------------------------

    def start_line(self) -> bytes:
        raise NotImplementedError

    def serialise(self) -> bytes:
        return b"\r\n".join([self.start_line(), *[h.raw for h in self.headers], b"", self.body])

    __bytes__ = serialise

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Message)
        return (
            self.start_line() == other.start_line()
            and [h.raw for h in self.headers] == [h.raw for h in other.headers]
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    @lazy
    def _index(self) -> dict[str, tuple[bytes, ...]]:
        """Header values by name, built once: the typed views each look up several.

        Tuples rather than lists: a message lives as long as its transaction (32 s
        on UDP), and the cyclic collector stops tracking tuples of bytes but scans
        every list on each pass.
        """
        return index_of(self.headers)

    def has(self, name: str) -> bool:
        return name in self._index

    def raw_values(self, name: str) -> list[bytes]:
        return list(self._index.get(name, ()))

    def values(self, name: str) -> list[str]:
        """Every value of a header, decoded; list headers not split."""
        found = self._index.get(name)
        if not found:
            return []
        return [_text(v, name) for v in found]

    def elements(self, name: str) -> list[str]:
        """Every element of a comma-list header, across all its lines, in order."""
        out: list[str] = []
        for v in self.values(name):
            out.extend(split_list(v, display_name(name)))
        return out

    def first(self, name: str) -> str | None:
        found = self._index.get(name)
        return _text(found[0], name) if found else None

    def single(self, name: str) -> str | None:
        """The value of a header that may appear at most once (RFC 4475 multi01)."""
        found = self._index.get(name)
        if not found:
            return None
        if len(found) > 1:
            raise SipParseError(f"More than one {display_name(name)} header")
        return _text(found[0], name)

    def required(self, name: str) -> str:
        value = self.single(name)
        if value is None:
            raise SipParseError(f"Missing {display_name(name)} header")
        return value

    # --- typed views -----------------------------------------------------------------

    @lazy
    def vias(self) -> tuple[Via, ...]:
        vias = tuple([parse_via(e) for e in self.elements("via")])
        if not vias:
            raise SipParseError("Missing Via header")
        return vias

    @property
    def top_via(self) -> Via:
        return self.vias[0]

    @lazy
    def from_(self) -> NameAddr:
        return _single_name_addr(self, "from")

    @lazy
    def to(self) -> NameAddr:
        return _single_name_addr(self, "to")

    @lazy
    def call_id(self) -> str:
        value = self.required("call-id").strip(LWS)
        if not value or " " in value or "\t" in value:
            raise SipParseError("Malformed Call-ID")
        return value

    @lazy
    def cseq(self) -> CSeq:
        return parse_cseq(self.required("cseq"))

    @lazy
    def max_forwards(self) -> int | None:
        value = self.single("max-forwards")
        if value is None:
            return None
        return parse_uint(value, "Max-Forwards", maximum=255)

    @lazy
    def content_length(self) -> int | None:
        value = self.single("content-length")
        return None if value is None else parse_uint(value, "Content-Length")

    @lazy
    def content_type(self) -> str | None:
        value = self.single("content-type")
        return value.strip(LWS) if value is not None else None

    @lazy
    def contact_star(self) -> bool:
        """``Contact: *`` (RFC 3261 section 10.2.2); mixing it with URIs is malformed."""
        elements = self.elements("contact")
        if "*" not in elements:
            return False
        if len(elements) != 1:
            raise SipParseError("Contact * must be the only Contact")
        return True

    @lazy
    def contacts(self) -> tuple[NameAddr, ...]:
        if self.contact_star:
            return ()
        return tuple(parse_name_addr(e, "Contact") for e in self.elements("contact"))

    @lazy
    def routes(self) -> tuple[NameAddr, ...]:
        return tuple(parse_name_addr(e, "Route") for e in self.elements("route"))

    @lazy
    def record_routes(self) -> tuple[NameAddr, ...]:
        return tuple(parse_name_addr(e, "Record-Route") for e in self.elements("record-route"))

    @lazy
    def paths(self) -> tuple[NameAddr, ...]:
        return tuple(parse_name_addr(e, "Path") for e in self.elements("path"))

    @lazy
    def expires(self) -> int | None:
        value = self.single("expires")
        # delta-seconds above 2**32-1 mean 2**32-1 (RFC 3261 section 20.19 / 25.1)
        return None if value is None else parse_uint(value, "Expires", clamp=True)

    @lazy
    def require(self) -> tuple[str, ...]:
        return parse_token_list(self.values("require"), "Require")

    @lazy
    def proxy_require(self) -> tuple[str, ...]:
        return parse_token_list(self.values("proxy-require"), "Proxy-Require")

    @lazy
    def supported(self) -> tuple[str, ...]:
        return parse_token_list(self.values("supported"), "Supported")

    @lazy
    def user_agent(self) -> str | None:
        return self.first("user-agent")

    # --- edits (each returns a new message) --------------------------------------------

    def with_headers(self, headers: Iterable[HeaderField]) -> Self:
        return self._with_headers(tuple(headers))

    def edited(self, headers: tuple[HeaderField, ...], changed: Iterable[str]) -> Self:
        """A copy with other header lines, keeping the views of every header not in
        ``changed`` (lower-case names): for a message that is read again after the
        edit, like a request whose top Via was stamped on arrival.
        """
        return self._carry_views(self._with_headers(headers), changed)

    def _carry_views(self, new: Self, changed: Iterable[str]) -> Self:
        """Give ``new`` this message's views, but those of the ``changed`` headers."""
        cached = self.__dict__
        fresh = new.__dict__
        views = _VIEWS
        headers = new.headers
        changed = set(changed)
        for attr, value in cached.items():
            name = views.get(attr)
            if name is not None and name not in changed:
                fresh[attr] = value
        index = cached.get("_index")
        if index is not None:
            index = index.copy()
            for name in changed:
                values = tuple([h.value for h in headers if h.name == name])
                if values:
                    index[name] = values
                else:
                    index.pop(name, None)
            fresh["_index"] = index
        return new

    def _with_headers(self, headers: tuple[HeaderField, ...]) -> Self:
        """A copy with other header lines and no cached views (they may differ).

        Spelled out per class: dataclasses.replace is generic and several times
        slower, and a forwarded message makes a few of these.
        """
        raise NotImplementedError

    # The edits below make messages that are mostly serialised and sent, not read:
    # their views are parsed again only if someone asks (``edited`` keeps them).

    def prepend(self, name: str, value: str | bytes) -> Self:
        """A new header line above all others (Via, Record-Route)."""
        return self._with_headers((HeaderField.make(name, value), *self.headers))

    def append(self, name: str, value: str | bytes) -> Self:
        return self._with_headers((*self.headers, HeaderField.make(name, value)))

    def remove(self, name: str) -> Self:
        lname = name.lower()
        return self._with_headers(tuple([h for h in self.headers if h.name != lname]))

    def set(self, name: str, *values: str | bytes) -> Self:
        """Replace every line of ``name`` with ``values``, where the first one stood."""
        lname = name.lower()
        new = [HeaderField.make(lname, v) for v in values]
        out: list[HeaderField] = []
        placed = False
        for h in self.headers:
            if h.name == lname:
                if not placed:
                    out.extend(new)
                    placed = True
                continue
            out.append(h)
        if not placed:
            out.extend(new)
        return self._with_headers(tuple(out))

    def with_body(self, body: bytes, content_type: str | None) -> Self:
        msg = self.set("content-length", str(len(body)))
        if content_type:
            msg = msg.set("content-type", content_type)
        return replace(msg, body=body)


# Each cached view and the one header it is parsed from: what an edit of that header
# invalidates and an edit of any other keeps.
_VIEWS: MappingProxyType[str, str] = MappingProxyType(
    {
        "vias": "via",
        "from_": "from",
        "to": "to",
        "call_id": "call-id",
        "cseq": "cseq",
        "max_forwards": "max-forwards",
        "content_length": "content-length",
        "content_type": "content-type",
        "contact_star": "contact",
        "contacts": "contact",
        "routes": "route",
        "record_routes": "record-route",
        "paths": "path",
        "expires": "expires",
        "require": "require",
        "proxy_require": "proxy-require",
        "supported": "supported",
        "user_agent": "user-agent",
    }
)


def _single_name_addr(msg: Message, name: str) -> NameAddr:
    value = msg.required(name)
    if "," not in value:  # one value, nothing to split (the usual case)
        text = value.strip(LWS)
        if not text:
            raise SipParseError(f"Empty element in {display_name(name)}")
        return parse_name_addr(text, display_name(name))
    # A comma outside quotes and <> means two values: RFC 4475 baddn and multi01.
    elements = split_list(value, display_name(name))
    if len(elements) != 1:
        raise SipParseError(f"More than one {display_name(name)} value")
    return parse_name_addr(elements[0], display_name(name))


@dataclass(kw_only=True, eq=False)
class Request(Message):
    method: str
    uri: Uri
    uri_text: str

    def start_line(self) -> bytes:
        return f"{self.method} {self.uri_text} SIP/2.0".encode()

    def _with_headers(self, headers: tuple[HeaderField, ...]) -> Self:
        return type(self)(
            headers=headers,
            body=self.body,
            method=self.method,
            uri=self.uri,
            uri_text=self.uri_text,
        )

    def with_uri(self, uri: Uri) -> Request:
        """Another Request-URI; every header view stays valid."""
        new = Request(
            headers=self.headers, body=self.body, method=self.method, uri=uri, uri_text=str(uri)
        )
        return self._carry_views(new, ())

    def transaction_tag(self) -> str:
        """A stable To tag for responses this server generates to this request.

        Derived from the request's identity, so a retransmitted request gets the same
        tag without the core keeping state for it.
        """
        via = self.vias[0]
        return tag_for(self.call_id, self.from_.tag, via.branch, via.sent_by, self.cseq.number)


class LazyRequest(Request):
    """A Request made from its bytes only when something reads it.

    The REGISTER fast path answers from the bytes; its server transaction keeps a
    request only for the rare answer it cannot make itself (a 500 when the store
    fails). Splitting the header lines for that every time would cost more than the
    rest of the fast path's parsing. ``load`` gives the request as the general path
    would have it; on the first read of anything this object becomes that request.
    ``method`` is known without loading (the transaction asks it on every answer);
    ``body`` reads b"" before loading (a class default), which is right: the fast
    path takes only REGISTERs without a body.
    """

    def __init__(self, method: str, load: Callable[[], Request]) -> None:  # not dataclass's
        self.__dict__["method"] = method
        self.__dict__["_load"] = load

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "_load" not in self.__dict__:
            raise AttributeError(name)
        load = self.__dict__.pop("_load")
        self.__dict__.update(load().__dict__)
        return getattr(self, name)


def tag_for(call_id: str, from_tag: str | None, branch: str | None, sent_by: str, cseq: int) -> str:
    """``Request.transaction_tag`` from the parts (the REGISTER fast path has no Request)."""
    seed = f"{call_id}|{from_tag}|{branch}|{sent_by}|{cseq}"
    return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


@dataclass(kw_only=True, eq=False)
class Response(Message):
    status: int
    reason: str

    def start_line(self) -> bytes:
        return f"SIP/2.0 {self.status} {self.reason}".encode()

    def _with_headers(self, headers: tuple[HeaderField, ...]) -> Self:
        return type(self)(headers=headers, body=self.body, status=self.status, reason=self.reason)


_REASONS = MappingProxyType(
    {
        100: "Trying",
        180: "Ringing",
        181: "Call Is Being Forwarded",
        182: "Queued",
        183: "Session Progress",
        200: "OK",
        202: "Accepted",
        301: "Moved Permanently",
        302: "Moved Temporarily",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        407: "Proxy Authentication Required",
        408: "Request Timeout",
        413: "Request Entity Too Large",
        415: "Unsupported Media Type",
        416: "Unsupported URI Scheme",
        420: "Bad Extension",
        423: "Interval Too Brief",
        430: "Flow Failed",
        480: "Temporarily Unavailable",
        481: "Call/Transaction Does Not Exist",
        482: "Loop Detected",
        483: "Too Many Hops",
        486: "Busy Here",
        487: "Request Terminated",
        488: "Not Acceptable Here",
        500: "Server Internal Error",
        501: "Not Implemented",
        503: "Service Unavailable",
        504: "Server Time-out",
        505: "Version Not Supported",
        513: "Message Too Large",
        600: "Busy Everywhere",
        603: "Decline",
    }
)


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_COPIED = ("via", "from", "to", "call-id", "cseq")


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    to_tag: str | None = None,
) -> Response:
    """A response per RFC 3261 section 8.2.6.2: Via, From, To, Call-ID, CSeq copied.

    The To tag is added for everything but 100 when the request had none; the Via
    lines are copied as they stand in ``request`` (so stamp received/rport first).
    """
    out: list[HeaderField] = []
    for h in request.headers:
        if h.name in _COPIED:
            if h.name == "to" and status != 100 and request.to.tag is None:
                tag = to_tag or request.transaction_tag()
                out.append(HeaderField.make("to", f"{request.to.text};tag={tag}"))
            else:
                out.append(h)
    out.extend(HeaderField.make(k, v) for k, v in headers)
    if body and content_type:
        out.append(HeaderField.make("content-type", content_type))
    out.append(HeaderField.make("content-length", str(len(body))))
    return Response(
        headers=tuple(out), body=body, status=status, reason=reason or reason_phrase(status)
    )
