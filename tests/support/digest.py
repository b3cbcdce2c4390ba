"""Answering digest challenges the way SIP.js and JsSIP do (qop=auth, MD5 by default)."""

from __future__ import annotations

import hashlib
import re
import uuid

_H = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def challenges(values: list[str]) -> dict[str, dict[str, str]]:
    """WWW-/Proxy-Authenticate values by algorithm."""
    out = {}
    for v in values:
        params = dict(
            re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', v)
            and [(k, a or b) for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', v)]
        )
        out[params.get("algorithm", "MD5").upper()] = params
    return out


def authorization(
    challenge: dict[str, str],
    *,
    method: str,
    uri: str,
    user: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
    algorithm: str = "MD5",
) -> str:
    h = _H[algorithm]

    def hx(text: str) -> str:
        return h(text.encode()).hexdigest()

    realm, nonce = challenge["realm"], challenge["nonce"]
    cnonce = cnonce or uuid.uuid4().hex[:12]
    ha1 = hx(f"{user}:{realm}:{password}")
    ha2 = hx(f"{method}:{uri}")
    ncv = f"{nc:08x}"
    response = hx(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
    return (
        f'Digest algorithm={algorithm}, username="{user}", realm="{realm}", nonce="{nonce}", '
        f'uri="{uri}", response="{response}", qop=auth, cnonce="{cnonce}", nc={ncv}'
    )
