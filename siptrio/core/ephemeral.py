"""Time-limited credentials: the scheme of Kamailio's auth_ephemeral and coturn's REST API.

A web application's backend and siptrio share a secret. The backend hands a browser
a username that carries its own expiry, ``<expiry>:<user>`` (or the older
``<user>:<expiry>``), and the password ``base64(HMAC(secret, username))``; the
browser answers digest challenges with them like with any password. siptrio needs
no user database for them: it recomputes the password from the username, and
refuses the username once its expiry (Unix time) has passed. This is
draft-uberti-behave-turn-rest; Kamailio's ``auth_ephemeral`` checks it (its
``secret``, ``sha_algorithm`` and ``username_format`` parameters are the fields of
:class:`EphemeralConfig`) and coturn's ``use-auth-secret`` does for TURN.

Several secrets may be listed so that one can be rotated: the first signs what this
server issues, every one of them verifies. Sans-IO: the time is a parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

__all__ = [
    "HASHES",
    "EphemeralConfig",
    "EphemeralUsername",
    "UsernameFormat",
    "make_password",
    "make_username",
    "parse_username",
]

# auth_ephemeral's sha_algorithm 0..3; sha1 is the draft's, coturn's and Kamailio's default
HASHES: MappingProxyType[str, Callable[..., Any]] = MappingProxyType(
    {
        "sha1": hashlib.sha1,
        "sha256": hashlib.sha256,
        "sha384": hashlib.sha384,
        "sha512": hashlib.sha512,
    }
)
MAX_STAMP_DIGITS = 12  # far beyond any real expiry; keeps int() of untrusted text short


class UsernameFormat(Enum):
    EXPIRY_USER = "expiry:user"  # the draft's; auth_ephemeral username_format 1 (its default)
    USER_EXPIRY = "user:expiry"  # the pre-draft form; auth_ephemeral username_format 0


@dataclass(frozen=True, kw_only=True)
class EphemeralConfig:
    secrets: tuple[bytes, ...] = ()  # empty: no ephemeral credentials at all
    hash: str = "sha1"  # a key of HASHES
    username_format: UsernameFormat = UsernameFormat.EXPIRY_USER
    # True: the user part must be the To user of a REGISTER and the From user of other
    # requests (auth_ephemeral's autheph_check_to/_from after autheph_check); False: a
    # valid credential may act for any address (autheph_check alone)
    check_user: bool = True
    max_ttl: int = 86400  # seconds; longer requests to issue are capped

    @property
    def enabled(self) -> bool:
        return bool(self.secrets)


@dataclass(frozen=True, slots=True)
class EphemeralUsername:
    expires: int  # Unix time; the credential is good up to and including this second
    user: str  # "" for a bare timestamp; may be "user@domain" (then the domain counts too)

    def expired(self, now: float) -> bool:
        """As auth_ephemeral has it: expired once the current second is past ``expires``."""
        return int(now) > self.expires


def make_password(secret: bytes, username: str, hash: str = "sha1") -> str:
    """base64(HMAC(secret, username)), padded, as auth_ephemeral and coturn compute it."""
    mac = hmac.new(secret, username.encode("utf-8", "surrogateescape"), HASHES[hash])
    return base64.b64encode(mac.digest()).decode("ascii")


def make_username(user: str, expires: int, username_format: UsernameFormat) -> str:
    if username_format is UsernameFormat.USER_EXPIRY:
        return f"{user}:{expires}" if user else str(expires)
    return f"{expires}:{user}" if user else str(expires)


def parse_username(username: str, username_format: UsernameFormat) -> EphemeralUsername | None:
    """The expiry and user in a digest username, or None when it is not of the format.

    The split is at the first colon, as auth_ephemeral splits it; a username without
    one is a bare timestamp (coturn accepts those; they name no user).
    """
    first, colon, rest = username.partition(":")
    if not colon:
        stamp, user = username, ""
    elif username_format is UsernameFormat.USER_EXPIRY:
        user, stamp = first, rest
    else:
        stamp, user = first, rest
    if colon and not user:
        return None
    if not (0 < len(stamp) <= MAX_STAMP_DIGITS and stamp.isascii() and stamp.isdigit()):
        return None
    return EphemeralUsername(expires=int(stamp), user=user)
