"""Who may do what: digest authentication decisions and bans of guessing addresses.

REGISTER is challenged with 401, other requests from our own domains with 407
(RFC 3261 section 22). Answers never tell an unknown user from a wrong password:
both are computed the same way and get the same challenge. An address that fails
``ban_after`` times within ``ban_window`` is banned for ``ban_time``; the I/O layer
drops its traffic. Sans-IO: time is ``now``, users come from the store via the
shell, and nothing here sleeps.

Beside the stored users, time-limited credentials (core/ephemeral.py) authenticate
without a user record: their password is recomputed from the username under each
listed secret. A stored user's name wins over an ephemeral reading of it. An
expired one is told so (the only failure whose reason reaches the client: the
expiry is in the username the client sent, so saying it gives nothing away): 401
when its nonce predates the expiry, 403 when the client answered a challenge issued
after it, since another challenge cannot help.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..sip.digest import (
    ALGORITHMS,
    Credentials,
    challenge_value,
    check_nonce,
    digest_response,
    ha1,
    make_nonce,
    nonce_issued,
    parse_credentials,
)
from ..sip.errors import SipParseError
from ..sip.message import Request
from ..sip.uri import SipUri
from .ephemeral import EphemeralConfig, EphemeralUsername, make_password, parse_username

__all__ = ["AuthConfig", "AuthResult", "Authenticator"]

MAX_NONCES = 100_000  # nonce-counts remembered for replay protection


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    enabled: bool = False
    realm: str = "siptrio"
    nonce_ttl: float = 300.0
    ban_after: int = 10  # failed authentications ...
    ban_window: float = 60.0  # ... within this many seconds ...
    ban_time: float = 600.0  # ... ban the address this long
    ephemeral: EphemeralConfig = field(default_factory=EphemeralConfig)
    # offered in this order; SIPp answers only the first and knows only MD5
    algorithms: tuple[str, ...] = ALGORITHMS


EXPIRED = "credential expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    user: str | None  # the authenticated digest username, or None: challenge (again)
    stale: bool = False
    failed: bool = False  # counts towards a ban
    reason: str = ""  # for the log
    told: str = ""  # what the client may be told, after the status's own phrase
    final: bool = False  # 403 rather than another challenge: it cannot help


class Authenticator:
    def __init__(self, config: AuthConfig, secret: bytes) -> None:
        self.config = config
        self._secret = secret
        self.users: dict[str, dict[str, str]] = {}  # username -> {algorithm: HA1}
        self._nc: OrderedDict[str, int] = OrderedDict()
        self._failures: dict[str, deque[float]] = {}
        self._banned: dict[str, float] = {}
        # an HA1 to check unknown users against, so they take as long as known ones
        self._dummy = {a: ha1("\x00nobody", config.realm, "\x00", a) for a in ALGORITHMS}

    def reconfigure(self, config: AuthConfig) -> None:
        """A reload's settings. Nonces stay good (same secret); a new realm makes the
        old ones fail as any other realm's would, and its users come from the store."""
        self.config = config
        self._dummy = {a: ha1("\x00nobody", config.realm, "\x00", a) for a in ALGORITHMS}

    # --- challenges -------------------------------------------------------------------

    def rekey(self, secret: bytes) -> None:
        """Sign nonces with ``secret`` from now on (a cluster's shared one)."""
        self._secret = secret

    def challenge(self, *, proxy: bool, now: float, stale: bool = False) -> list[tuple[str, str]]:
        """One challenge per algorithm, SHA-256 first by default (clients take the first
        they know)."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        nonce = make_nonce(self._secret, now)
        return [
            (name, challenge_value(self.config.realm, nonce, a, stale=stale))
            for a in self.config.algorithms
        ]

    # --- verification -----------------------------------------------------------------

    def verify(self, request: Request, *, proxy: bool, now: float) -> AuthResult:
        name = "proxy-authorization" if proxy else "authorization"
        return self.verify_values(request.values(name), request.method, now=now)

    def verify_values(self, values: list[str], method: str, *, now: float) -> AuthResult:
        """``verify`` for the (Proxy-)Authorization values of a ``method`` request.

        Nothing changes unless it succeeds: only a right answer uses up its nonce-count.
        """
        creds = self.credentials(values)
        if creds is None:
            return AuthResult(user=None, reason="no credentials")
        if creds.algorithm not in self.config.algorithms:
            return AuthResult(user=None, failed=True, reason=f"algorithm {creds.algorithm}")
        if creds.qop not in (None, "auth"):
            return AuthResult(user=None, failed=True, reason=f"qop {creds.qop}")
        nonce_state = check_nonce(self._secret, creds.nonce, now, self.config.nonce_ttl)
        if nonce_state == "bad":
            return AuthResult(user=None, failed=True, reason="not our nonce")
        known = self.users.get(creds.username)
        ephemeral = None if known is not None else self._ephemeral_username(creds.username)
        if ephemeral is not None:
            ha1s = [
                ha1(creds.username, self.config.realm, password, creds.algorithm)
                for password in self._ephemeral_passwords(creds.username)
            ]
        else:
            ha1s = [(known or {}).get(creds.algorithm) or self._dummy[creds.algorithm]]
        given = creds.response.encode("utf-8", "surrogateescape")
        right = False
        for ha1_value in ha1s:  # every secret, without stopping at a match
            expected = digest_response(
                ha1_value=ha1_value,
                algorithm=creds.algorithm,
                method=method,
                uri=creds.uri,
                nonce=creds.nonce,
                nc=creds.nc,
                cnonce=creds.cnonce,
                qop=creds.qop,
            )
            right |= hmac.compare_digest(expected.encode(), given)
        right = right and (known is not None or ephemeral is not None)
        if not right:
            return AuthResult(user=None, failed=True, reason="wrong credentials")
        if ephemeral is not None and ephemeral.expired(now):
            return self._expired(creds, ephemeral)
        if nonce_state == "stale":
            return AuthResult(user=None, stale=True, reason="stale nonce")
        if not self._fresh_count(creds):
            return AuthResult(user=None, failed=True, reason="replayed nonce-count")
        return AuthResult(user=creds.username)

    def _ephemeral_username(self, username: str) -> EphemeralUsername | None:
        if not self.config.ephemeral.enabled:
            return None
        return parse_username(username, self.config.ephemeral.username_format)

    def _ephemeral_passwords(self, username: str) -> list[str]:
        eph = self.config.ephemeral
        return [make_password(secret, username, eph.hash) for secret in eph.secrets]

    def _expired(self, creds: Credentials, ephemeral: EphemeralUsername) -> AuthResult:
        """Right for a credential that has run out: 403 if the nonce came after its end."""
        issued = nonce_issued(creds.nonce)
        final = issued is not None and ephemeral.expired(issued)
        return AuthResult(
            user=None,
            failed=True,
            final=final,
            told=EXPIRED,
            reason=f"credential {creds.username!r} expired",
        )

    def may_claim(self, username: str, uri: object) -> bool:
        """Whether ``username``, once authenticated, may use ``uri`` as its own address
        (the To of its REGISTER, the From of other requests).

        A stored user only its own user part; an ephemeral credential the user part
        it names (and its domain, for ``user@domain``), or, without
        ``check_user``, any address.
        """
        if not isinstance(uri, SipUri):
            return False
        if username in self.users or not self.config.ephemeral.enabled:
            return uri.user == username
        ephemeral = self._ephemeral_username(username)
        if ephemeral is None:
            return uri.user == username
        if not self.config.ephemeral.check_user:
            return True
        user, at, domain = ephemeral.user.partition("@")
        if not user or uri.user != user:
            return False
        return not at or domain.lower() == uri.host.lower()

    def credentials(self, values: list[str]) -> Credentials | None:
        """The first Digest credentials for our realm."""
        for value in values:
            try:
                creds = parse_credentials(value)
            except SipParseError:
                continue
            if creds is not None and creds.realm == self.config.realm:
                return creds
        return None

    def _fresh_count(self, creds: Credentials) -> bool:
        """RFC 2617 nonce-count: each use of a nonce must count higher than the last."""
        if creds.qop is None:
            key, count = creds.nonce, 0
            if key in self._nc:
                return False  # without qop a nonce is good for one request
        else:
            try:
                count = int(creds.nc or "", 16)
            except ValueError:
                return False
            key = f"{creds.nonce}|{creds.cnonce}"
            if count <= self._nc.get(key, 0):
                return False
        self._nc[key] = count
        self._nc.move_to_end(key)
        while len(self._nc) > MAX_NONCES:
            self._nc.popitem(last=False)
        return True

    # --- bans -----------------------------------------------------------------------------

    def failed(self, address: str, now: float) -> bool:
        """Count a failure; True when it just got the address banned."""
        times = self._failures.setdefault(address, deque())
        times.append(now)
        while times and times[0] < now - self.config.ban_window:
            times.popleft()
        if len(times) >= self.config.ban_after:
            self._banned[address] = now + self.config.ban_time
            del self._failures[address]
            return True
        return False

    def is_banned(self, address: str, now: float) -> bool:
        until = self._banned.get(address)
        if until is None:
            return False
        if until <= now:
            del self._banned[address]
            return False
        return True

    def banned(self, now: float) -> dict[str, float]:
        return {a: until - now for a, until in self._banned.items() if until > now}

    def purge(self, now: float) -> None:
        for address in [a for a, until in self._banned.items() if until <= now]:
            del self._banned[address]
        for address in [
            a for a, t in self._failures.items() if not t or t[-1] < now - self.config.ban_window
        ]:
            del self._failures[address]
