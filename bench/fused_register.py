"""What a REGISTER costs in this interpreter when the code is written for one shape.

`FusedRegistrar.handle` takes the bytes of a tidy UDP REGISTER, like SIPp's
`register.xml` sends, and does in one function what siptrio's parser, transaction
layer and registrar do for it: the bare CR/LF/NUL check, the Request-Line, one of each
header, Via, From, To and Contact by regular expression, CSeq, Call-ID and
Max-Forwards, Expires with the minimum and the clamp, the AOR, the binding key, the
Call-ID/CSeq order, the per-AOR limit, a `Binding` put in a `Location`, the event and the
store change, a To tag, the 200 with every live Contact, and the answer kept by branch
for retransmissions. It returns None for anything else, where a real server would have
to fall back on the general path. It knows no auth, Path, outbound, `Contact: *`,
escapes, compact forms or folded lines.

`parse_micro.py` measures it beside siptrio's path: the ratio is what the layers
(typed header values, lazy views, transaction objects, a response built from header
fields) cost in CPython 3.11. It is not a registrar; siptrio does not use it.
"""

from __future__ import annotations

import hashlib
import re

from siptrio.core.events import BindingEvent, BindingEventKind, Persist
from siptrio.core.location import Binding, Location
from siptrio.core.types import Peer

_REQUEST_LINE = re.compile(rb"REGISTER (sips?:[^ ]+) SIP/2\.0")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_PARAMS = rf"((?:;{_TOKEN}(?:={_TOKEN})?)*)"
_VIA = re.compile(rf"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9\-_.]+)(?::([0-9]{{1,5}}))?{_PARAMS}")
_NAME_ADDR = re.compile(
    r"<(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]+)@)?([A-Za-z0-9][A-Za-z0-9\-_.]*)"
    r"(?::([0-9]{1,5}))?((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+)?)*)>"
    + _PARAMS
)
_NAMES = {
    b"via": "via",
    b"from": "from",
    b"to": "to",
    b"call-id": "call-id",
    b"cseq": "cseq",
    b"contact": "contact",
    b"expires": "expires",
    b"max-forwards": "max-forwards",
    b"content-length": "content-length",
    b"user-agent": "user-agent",
}
MIN_EXPIRES, MAX_EXPIRES, DEFAULT_EXPIRES, MAX_CONTACTS = 60, 7200, 3600, 10


class FusedRegistrar:
    def __init__(self) -> None:
        self.location = Location()
        self.answered: dict[tuple[str, str, str | None], bytes] = {}

    def handle(
        self, data: bytes, peer: Peer, now: float
    ) -> tuple[bytes, Persist, BindingEvent] | bytes | None:
        """(200, store change, event) for a new REGISTER, the kept 200 for a
        retransmission, None for anything this sketch does not know."""
        end = data.find(b"\r\n\r\n")
        head = data[:end]
        lines = head.count(b"\r\n")
        if end < 0 or head.count(b"\r") != lines or head.count(b"\n") != lines or b"\0" in head:
            return None
        first, *rest = head.split(b"\r\n")
        if _REQUEST_LINE.fullmatch(first) is None:
            return None
        h: dict[str, str] = {}
        for line in rest:
            name, colon, value = line.partition(b":")
            known = _NAMES.get(name.rstrip(b" \t").lower())
            if not colon or known is None or known in h or not value.isascii():
                return None  # unknown, repeated or odd: the general path's business
            h[known] = value.strip(b" \t").decode("ascii")
        via = _VIA.fullmatch(h.get("via", ""))
        fr = _NAME_ADDR.fullmatch(h.get("from", ""))
        to = _NAME_ADDR.fullmatch(h.get("to", ""))
        contact = _NAME_ADDR.fullmatch(h.get("contact", ""))
        if via is None or fr is None or to is None or contact is None or to.group(2) is None:
            return None
        branch = None
        for p in via.group(4)[1:].split(";"):
            k, _, v = p.partition("=")
            if k.lower() == "branch":
                branch = v
        txn = (branch or "", via.group(2), via.group(3))
        kept = self.answered.get(txn)
        if kept is not None:
            return kept
        number, _, method = h.get("cseq", "").partition(" ")
        call_id = h.get("call-id", "")
        mf = h.get("max-forwards", "70")
        if method != "REGISTER" or not number.isdigit() or not call_id or " " in call_id:
            return None
        if not mf.isdigit() or int(mf) > 255 or contact.group(6):
            return None  # Contact parameters (expires, q, instance ...) are not for a sketch
        expires = int(h["expires"]) if "expires" in h else DEFAULT_EXPIRES
        if expires < MIN_EXPIRES:
            return None  # 423
        expires = min(expires, MAX_EXPIRES)
        aor = f"sip:{to.group(2)}@{to.group(3).lower()}"
        current = self.location.bindings(aor)
        uri_text = contact.group(0)[1:-1]
        key = f"uri:{uri_text.lower()}"
        old = current.get(key)
        cseq = int(number)
        if old is not None and old.call_id == call_id and cseq <= old.cseq:
            return None  # 400
        if old is None and len(current) >= MAX_CONTACTS:
            return None  # 403
        binding = Binding(
            aor=aor,
            key=key,
            contact_uri=uri_text,
            contact_params="",
            q=None,
            expires_at=now + expires,
            call_id=call_id,
            cseq=cseq,
            instance=None,
            reg_id=None,
            path=(),
            user_agent=h.get("user-agent"),
            transport=peer.transport,
            source_host=peer.host,
            source_port=peer.port,
            local_host=peer.local_host,
            local_port=peer.local_port,
            flow_id=peer.flow_id,
            registered_at=old.registered_at if old is not None else now,
            updated_at=now,
        )
        self.location.put(binding)
        tag = hashlib.blake2s(f"{call_id}|{branch}".encode(), digest_size=6).hexdigest()
        contacts = "".join(
            f"Contact: {b.contact_header(now)}\r\n" for b in self.location.lookup(aor, now)
        )
        answer = (
            f"SIP/2.0 200 OK\r\nVia: {h['via']}\r\nFrom: {h['from']}\r\n"
            f"To: {h['to']};tag={tag}\r\nCall-ID: {call_id}\r\nCSeq: {h['cseq']}\r\n"
            f"{contacts}Supported: path, outbound\r\nServer: siptrio\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        self.answered[txn] = answer
        kind = BindingEventKind.ADDED if old is None else BindingEventKind.REFRESHED
        return answer, Persist(upserts=(binding,)), BindingEvent(kind=kind, binding=binding)
