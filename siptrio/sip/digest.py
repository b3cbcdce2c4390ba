"""HTTP Digest for SIP (RFC 3261 section 22, RFC 8760 SHA-256), sans-IO.

Nonces are stateless: a timestamp and an HMAC of it under a server secret, so any
nonce the server issued can be checked (and found stale) without remembering it.
Only what must be remembered to refuse a replay, the highest nonce-count seen per
nonce, is kept, by the caller. Comparisons of secrets are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from types import MappingProxyType

from ._abnf import LWS, split_top_level, unquote
from .errors import SipParseError

__all__ = [
    "ALGORITHMS",
    "Credentials",
    "challenge_value",
    "check_nonce",
    "digest_response",
    "ha1",
    "make_nonce",
    "nonce_issued",
    "parse_credentials",
]

ALGORITHMS = ("SHA-256", "MD5")  # in the order we offer them (RFC 8760 section 2.4)
_HASHES = MappingProxyType({"MD5": hashlib.md5, "SHA-256": hashlib.sha256})


def _h(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str) -> str:
    """H(username:realm:password): what the user store keeps instead of the password."""
    return _h(algorithm, f"{username}:{realm}:{password}")


def digest_response(
    *,
    ha1_value: str,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None,
    cnonce: str | None,
    qop: str | None,
) -> str:
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1_value}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1_value}:{nonce}:{ha2}")


# --- nonces ------------------------------------------------------------------------


def make_nonce(secret: bytes, now: float) -> str:
    stamp = f"{int(now * 1000):x}"
    mac = hmac.new(secret, stamp.encode(), hashlib.sha256).digest()[:12]
    return f"{stamp}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def check_nonce(secret: bytes, nonce: str, now: float, ttl: float) -> str:
    """'ok', 'stale' (ours, but too old or from the future) or 'bad' (not ours)."""
    stamp, dot, mac = nonce.partition(".")
    if not dot or not stamp or len(stamp) > 16:
        return "bad"
    expected = hmac.new(secret, stamp.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    ours = base64.urlsafe_b64encode(expected[:12]).rstrip(b"=")
    # bytes, not str: compare_digest refuses non-ASCII str (a 500 for anyone who tried)
    if not hmac.compare_digest(ours, mac.encode("utf-8", "surrogateescape")):
        return "bad"
    try:
        issued = int(stamp, 16) / 1000
    except ValueError:
        return "bad"
    if not (issued - 5 <= now <= issued + ttl):
        return "stale"
    return "ok"


def nonce_issued(nonce: str) -> float | None:
    """When a nonce was made (what its timestamp says); check_nonce says whether it is ours."""
    stamp = nonce.partition(".")[0]
    try:
        return int(stamp, 16) / 1000 if 0 < len(stamp) <= 16 else None
    except ValueError:
        return None


def challenge_value(realm: str, nonce: str, algorithm: str, *, stale: bool = False) -> str:
    value = f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'
    return value + (", stale=true" if stale else "")


# --- credentials ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str  # upper case: MD5 or SHA-256
    qop: str | None
    nc: str | None
    cnonce: str | None
    opaque: str | None


def parse_credentials(value: str) -> Credentials | None:
    """An Authorization / Proxy-Authorization value; None when the scheme is not Digest.

    RFC 4475 regaut01 sends an unknown scheme: that is not an error, just not ours.
    """
    value = value.strip(LWS)
    scheme, _, rest = value.partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    for part in split_top_level(rest, ",", "Authorization"):
        name, eq, v = part.partition("=")
        name = name.strip(LWS).lower()
        if not name:
            continue
        if not eq:
            raise SipParseError(f"Bad Authorization parameter {name!r}")
        params[name] = unquote(v.strip(LWS))
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in params]
    if missing:
        raise SipParseError(f"Authorization lacks {', '.join(missing)}")
    algorithm = params.get("algorithm", "MD5").upper()
    qop = params.get("qop")
    if qop is not None:
        qop = qop.lower()
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=algorithm,
        qop=qop,
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
    )
