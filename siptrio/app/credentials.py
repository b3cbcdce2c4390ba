"""Issuing time-limited credentials: what ``POST /credentials`` and ``siptrio credentials`` say.

A web application's backend asks for a credential for one of its users and hands it
to that user's browser, which registers with it (README, "Credentials for a web
app"). Both ways of asking compute the same thing from the same ``[auth]`` keys
(core/ephemeral.py is the scheme); they differ only in where the WebSocket URIs come
from: the admin API names its bound listeners, the CLI the configured ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..core.ephemeral import EphemeralConfig, UsernameFormat, make_password, make_username
from ..core.types import Listener, Transport
from .config import Config

__all__ = [
    "DEFAULT_TTL",
    "CredentialError",
    "CredentialRequest",
    "IssuedCredential",
    "configured_websocket_uris",
    "ephemeral_config",
    "issue_credential",
    "websocket_uris",
]

DEFAULT_TTL = 3600  # seconds, when the request names none (capped by ephemeral_max_ttl)
MAX_USER = 128
# RFC 3261's user characters but ':' (the username's separator), ',' and '%', and an
# optional @domain (auth_ephemeral then checks the domain too)
_USER_RE = re.compile(
    r"[A-Za-z0-9_.!~*'()&=+$;?/-]{1,128}(?:@(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+))?"
)
USER_PATTERN = _USER_RE.pattern


class CredentialError(ValueError):
    """A request the configuration or the rules refuse; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def ephemeral_config(config: Config) -> EphemeralConfig:
    """The ``[auth]`` keys as the sans-IO checker takes them."""
    auth = config.auth
    return EphemeralConfig(
        secrets=tuple(s.encode("utf-8") for s in auth.ephemeral_secrets),
        hash=auth.ephemeral_hash,
        username_format=UsernameFormat(auth.ephemeral_username_format),
        check_user=auth.ephemeral_check_user,
        max_ttl=auth.ephemeral_max_ttl,
    )


# --- the JSON ----------------------------------------------------------------------------


class CredentialRequest(BaseModel):
    """What ``POST /credentials`` takes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user: str = Field(
        min_length=1,
        max_length=MAX_USER + 256,
        pattern=f"^{USER_PATTERN}$",
        description=(
            'The user part of the address the credential is for ("alice"), or '
            '"alice@example.com" to tie it to a domain too.'
        ),
    )
    ttl: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description=(
            f"Seconds the credential is good for (default {DEFAULT_TTL}); more than "
            "[auth] ephemeral_max_ttl is capped, and the answer says so."
        ),
    )


class TurnCredential(BaseModel):
    """coturn's REST API answer (draft-uberti-behave-turn-rest), also an RTCIceServer."""

    username: str
    password: str
    credential: str = Field(description="The password again, under RTCIceServer's name.")
    ttl: int
    uris: list[str]


class IssuedCredential(BaseModel):
    username: str = Field(description="The digest username: expiry and user.")
    password: str = Field(description="base64(HMAC(first secret, username)).")
    expires: int = Field(description="Unix time after which the credential is refused.")
    ttl: int = Field(description="Seconds from now to expires.")
    capped: bool = Field(description="Whether the TTL asked for was over the maximum.")
    message: str | None = Field(default=None, description="Why the TTL was capped.")
    realm: str = Field(description="The digest realm the credential answers.")
    uris: list[str] = Field(description="siptrio's WebSocket listeners, WSS first.")
    turn: TurnCredential | None = Field(
        default=None, description="A TURN credential, when [auth] turn_uris is set."
    )


# --- issuing -----------------------------------------------------------------------------


def check_user_untrusted(user: str) -> str:
    if not _USER_RE.fullmatch(user) or len(user.partition("@")[0]) > MAX_USER:
        raise CredentialError(
            f"user {user!r} is not a usable SIP user: letters, digits and -_.!~*'()&=+$;?/ "
            f"(up to {MAX_USER}), optionally @domain",
            field="user",
        )
    return user


def issue_credential(
    config: Config, realm: str, user: str, ttl: int | None, now: float, uris: list[str]
) -> dict[str, Any]:
    """A credential for ``user``, good for ``ttl`` seconds (capped) from ``now``."""
    eph = ephemeral_config(config)
    if not eph.enabled:
        raise CredentialError(
            "this server issues no credentials: set [auth] ephemeral_secrets", status=409
        )
    user = check_user_untrusted(user)
    asked = DEFAULT_TTL if ttl is None else ttl
    if asked < 1:
        raise CredentialError(f"ttl {asked}: expected 1 second or more", field="ttl")
    granted = min(asked, eph.max_ttl)
    expires = int(now) + granted
    username = make_username(user, expires, eph.username_format)
    issued = IssuedCredential(
        username=username,
        password=make_password(eph.secrets[0], username, eph.hash),
        expires=expires,
        ttl=granted,
        capped=granted < asked,
        message=(
            f"ttl {asked} is over [auth] ephemeral_max_ttl = {eph.max_ttl}: capped to {granted}"
            if granted < asked
            else None
        ),
        realm=realm,
        uris=uris,
    )
    if config.auth.turn_uris:
        # coturn reads the timestamp first, whatever the SIP side's format
        turn_username = make_username(user, expires, UsernameFormat.EXPIRY_USER)
        password = make_password(eph.secrets[0], turn_username, eph.hash)
        issued.turn = TurnCredential(
            username=turn_username,
            password=password,
            credential=password,
            ttl=granted,
            uris=list(config.auth.turn_uris),
        )
    return issued.model_dump()


# --- where to register ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _uris(endpoints: Iterable[_Endpoint], advertised: str | None) -> list[str]:
    """WSS before WS; the advertised address for the host; nothing for a wildcard."""
    out: list[str] = []
    for e in sorted(endpoints, key=lambda e: e.scheme != "wss"):
        host = advertised or e.host
        if host in ("0.0.0.0", "::") or not e.port:
            continue
        uri = _Endpoint(e.scheme, host, e.port).uri
        if uri not in out:
            out.append(uri)
    return out


def websocket_uris(listeners: Iterable[Listener], config: Config) -> list[str]:
    """The bound WS and WSS listeners, as a browser would connect to them."""
    schemes = {Transport.WSS: "wss", Transport.WS: "ws"}
    return _uris(
        (
            _Endpoint(schemes[li.transport], li.host, li.port)
            for li in listeners
            if li.transport in schemes
        ),
        config.sip.advertised_address,
    )


def configured_websocket_uris(config: Config) -> list[str]:
    """The WS and WSS listeners the config asks for (port 0 ones cannot be named)."""
    ws = config.websocket
    endpoints = []
    for host in ws.listen_addr or config.sip.listen_addr:
        if ws.wss_enable:
            endpoints.append(_Endpoint("wss", host, ws.wss_listen_port))
        if ws.enable:
            endpoints.append(_Endpoint("ws", host, ws.listen_port))
    return _uris(endpoints, config.sip.advertised_address)
