"""Time-limited credentials computed the way auth_ephemeral's documentation says, by openssl.

``base64(hmac-<hash>(secret, username))`` with the ``openssl`` command line, not
Python's hmac: what siptrio computes is checked against a second implementation.
"""

from __future__ import annotations

import base64
import subprocess
import time
from dataclasses import dataclass

SECRET = "the-first-secret-0123456789"  # signs what siptrio issues
SECOND = "the-second-secret-abcdefghij"  # still listed: verifies
RETIRED = "a-retired-secret-zyxwvutsrqp"  # no longer listed


def openssl_password(secret: str, username: str, hash: str = "sha1") -> str:
    mac = subprocess.run(
        ["openssl", "dgst", f"-{hash}", "-hmac", secret, "-binary"],
        input=username.encode(),
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout
    return base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Credential:
    username: str
    password: str
    expires: int


def credential(
    user: str,
    *,
    ttl: int = 3600,
    secret: str = SECRET,
    hash: str = "sha1",
    user_first: bool = False,
    expires: int | None = None,
) -> Credential:
    """``<expiry>:<user>`` (or ``<user>:<expiry>``) and its password, by openssl."""
    at = int(time.time()) + ttl if expires is None else expires
    username = f"{user}:{at}" if user_first else f"{at}:{user}"
    return Credential(username, openssl_password(secret, username, hash), at)
