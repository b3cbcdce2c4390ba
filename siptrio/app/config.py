"""The server configuration: the config.ini format, its defaults and its validation.

This module owns the mapping from an INI file (plus ``--set section.key=value``
overrides) to one frozen :class:`Config`, and every error message a user sees about
that file. Values are checked here, once, so the rest of the server can trust them;
whether files named in the config exist is left to the server, which can say why it
needs them. The annotated reference file is ``examples/config.ini``.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import io
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "AdminConfig",
    "AuthSection",
    "ClusterSection",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DnsSection",
    "LoggingConfig",
    "MediaSection",
    "ProxyConfig",
    "RegistrarSection",
    "RoutesSection",
    "SecuritySection",
    "SipConfig",
    "TlsConfig",
    "WebSocketConfig",
    "config_as_dict",
    "default_control_socket",
    "default_database_path",
    "load_config",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A config file or override the server cannot run with.

    ``str(error)`` is the whole message, ready to print: it already names the file
    and line (or the ``--set`` option), the section, the key and what is allowed.
    """


def default_database_path() -> str:
    """Bindings must survive a restart, so they live in the XDG state directory."""
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # unset, empty or relative: the spec says ignore it
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "siptrio", "siptrio.sqlite")


def default_control_socket() -> str:
    """A per-user path, so two users on one host never share a control socket."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime:
        return os.path.join(runtime, "siptrio", "control.sock")
    return f"/tmp/siptrio-{os.getuid()}/control.sock"


@dataclass(frozen=True, kw_only=True)
class SipConfig:
    listen_addr: tuple[str, ...] = ("127.0.0.1",)
    udp_port: int = 5060  # 0: ephemeral, for tests
    tcp_port: int = 5060
    domains: tuple[str, ...] = ()  # lower-cased; empty: any domain
    max_message_size: int = 65535
    max_headers: int = 256
    idle_timeout: float = 300.0  # stream connections without a binding
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    udp_enable: bool = True
    tcp_enable: bool = True
    advertised_address: str | None = None  # host put in Via and Record-Route


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    enable: bool = False
    listen_addr: tuple[str, ...] | None = None  # None: same as [sip]
    listen_port: int = 5061
    cert_file: str = "certs/server.pem"
    key_file: str = "certs/server.key"
    ca_file: str | None = None
    verify_client: str = "none"  # none | optional | required


@dataclass(frozen=True, kw_only=True)
class WebSocketConfig:
    enable: bool = True
    listen_addr: tuple[str, ...] | None = None  # None: same as [sip]
    listen_port: int = 8080
    wss_enable: bool = False
    wss_listen_port: int = 8443
    wss_cert_file: str = "certs/server.pem"
    wss_key_file: str = "certs/server.key"
    wss_ca_file: str | None = None  # client certificates are checked against it
    wss_verify_client: str = "none"  # none | optional | required
    allowed_origins: tuple[str, ...] = ("http://localhost:8088", "http://127.0.0.1:8088")
    allow_missing_origin: bool = True
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 10.0
    keepalive_mechanism: str = "ping"  # ping | crlf | both
    handshake_timeout: float = 5.0
    max_connections: int = 10000
    max_connections_per_ip: int = 100
    max_message_size: int = 65535


@dataclass(frozen=True, kw_only=True)
class RegistrarSection:
    min_expires: int = 60
    default_expires: int = 3600
    max_expires: int = 7200
    max_contacts: int = 10  # per AOR
    fast_path: bool = True  # tidy UDP REGISTERs skip the general path (core/fastreg.py)
    nat: str = "auto"  # auto | contact | source: how bindings are reached (core/routing/nat.py)
    database: str = field(default_factory=default_database_path)  # or ":memory:"
    backend: str = "sqlite"  # sqlite | redis
    redis_url: str = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    allowed_destinations: tuple[IPNetwork, ...] = ()
    record_route: bool = True
    max_dialog_duration: float = 43200.0
    outbound_proxy: str | None = None  # a sip:/sips: URI every non-local request goes to


@dataclass(frozen=True, kw_only=True)
class RoutesSection:
    """``[routes]``: NAME = MATCH -> HOP[, HOP ...], in the order written."""

    rules: tuple[tuple[str, str], ...] = ()  # (name, text), each checked by parse_rule


@dataclass(frozen=True, kw_only=True)
class DnsSection:
    servers: tuple[str, ...] = ()  # "IP" or "IP:PORT" ("[v6]:PORT"); empty: /etc/resolv.conf
    timeout: float = 2.0  # seconds for one lookup, every server tried


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    enable: bool = True
    listen_addr: str = "127.0.0.1"
    listen_port: int = 8088
    token: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClusterSection:
    """With [registrar] backend = redis, every siptrio sharing the Redis is a node."""

    node_id: str | None = None  # None: host name and process id
    internal_addr: str = "127.0.0.1"  # where other nodes send this node's traffic
    internal_port: int = 0  # 0: a free port, advertised in the heartbeat
    heartbeat_ttl: float = 5.0  # a node silent this long is dead: its flows' bindings go


@dataclass(frozen=True, kw_only=True)
class AuthSection:
    enable: bool = False
    realm: str | None = None  # None: the first [sip] domain, else "siptrio"
    nonce_ttl: float = 300.0
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")  # offered in this order
    # time-limited credentials (core/ephemeral.py): the first secret signs, all verify
    ephemeral_secrets: tuple[str, ...] = ()
    ephemeral_hash: str = "sha1"  # sha1 | sha256 | sha384 | sha512
    ephemeral_username_format: str = "expiry:user"  # or user:expiry
    ephemeral_check_user: bool = True  # the user part must be the To/From user
    ephemeral_max_ttl: int = 86400  # POST /credentials caps longer TTLs to this
    turn_uris: tuple[str, ...] = ()  # turn:/turns: URIs: /credentials adds a TURN credential


@dataclass(frozen=True, kw_only=True)
class SecuritySection:
    rate_limit: float = 100.0  # requests per second per source address ...
    rate_burst: int = 200  # ... with this much burst
    rate_limit_exempt: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    ban_after: int = 10  # failed authentications ...
    ban_window: float = 60.0  # ... within this many seconds ban the address ...
    ban_time: float = 600.0  # ... for this long
    max_connections: int = 10000  # TCP and TLS together
    max_connections_per_ip: int = 100
    first_message_timeout: float = 10.0  # a connection must send a valid SIP message by then


@dataclass(frozen=True, kw_only=True)
class MediaSection:
    rtpengine: tuple[str, ...] = ()  # "udp:127.0.0.1:2223", several for failover
    mode: str = "auto"  # auto | always | never
    timeout: float = 3.0  # seconds for one engine to answer
    on_failure: str = "reject"  # reject (503) | passthrough (SDP untouched)


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    enable: bool = True
    socket: str = field(default_factory=default_control_socket)


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    level: str = "INFO"
    sip_trace: bool = False


@dataclass(frozen=True, kw_only=True)
class Config:
    sip: SipConfig = field(default_factory=SipConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    registrar: RegistrarSection = field(default_factory=RegistrarSection)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    routes: RoutesSection = field(default_factory=RoutesSection)
    dns: DnsSection = field(default_factory=DnsSection)
    admin: AdminConfig = field(default_factory=AdminConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    media: MediaSection = field(default_factory=MediaSection)
    auth: AuthSection = field(default_factory=AuthSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    security: SecuritySection = field(default_factory=SecuritySection)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str | None = None  # the config file, None when running on defaults


def config_as_dict(config: Config) -> dict[str, Any]:
    """The effective config as JSON-able data, so ``check-config`` can show it."""
    result = _jsonable(config)
    assert isinstance(result, dict)
    return result


def _jsonable(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


# --- value parsers -----------------------------------------------------------------
# Each turns the raw text into a value or raises _BadValue saying what is allowed.

Parse = Callable[[str], Any]


class _BadValue(ValueError):
    pass


_INT_RE = re.compile(r"[+-]?[0-9]+")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _integer(low: int, high: int, what: str = "an integer") -> Parse:
    def parse(text: str) -> int:
        if _INT_RE.fullmatch(text) and low <= int(text) <= high:
            return int(text)
        raise _BadValue(f"expected {what} {low}..{high}")

    return parse


_port = _integer(0, 65535, "an integer port")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _BadValue("expected a number of seconds > 0, e.g. 0.5 or 30")
    return value


def _boolean(text: str) -> bool:
    try:
        return configparser.RawConfigParser.BOOLEAN_STATES[text.lower()]
    except KeyError:
        raise _BadValue("expected a boolean: true/false, yes/no, on/off or 1/0") from None


def _choice(*allowed: str, upper: bool = False) -> Parse:
    def parse(text: str) -> str:
        if text.lower() in allowed:
            return text.upper() if upper else text.lower()
        shown = [a.upper() if upper else a for a in allowed]
        raise _BadValue(f"expected one of {', '.join(shown)}")

    return parse


def _redis_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise _BadValue(f"expected a Redis URL, e.g. redis://127.0.0.1:6379/0; got {text!r}")
    return text.strip()


def _node_id(text: str) -> str | None:
    node = text.strip()
    if not node:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", node):
        raise _BadValue(f"expected letters, digits, '.', '_' or '-' (up to 63); got {node!r}")
    return node


def _optional_realm(text: str) -> str | None:
    realm = text.strip()
    if not realm:
        return None
    if '"' in realm or "\\" in realm or any(ord(c) < 32 for c in realm):
        raise _BadValue(
            f"expected a realm without quotes or control characters, e.g. example.com; "
            f"got {realm!r}"
        )
    return realm


def _algorithms(text: str) -> tuple[str, ...]:
    items = [item.upper() for item in _split(text)]
    if not items or any(i not in ("SHA-256", "MD5") for i in items) or len(set(items)) < len(items):
        raise _BadValue(
            "expected SHA-256, MD5 or both, comma-separated, in the order to offer them"
        )
    return tuple(items)


MIN_SECRET = 16  # characters: one issued credential lets anyone try secrets offline


def _secrets(text: str) -> tuple[str, ...]:
    items = _split(text)
    for index, item in enumerate(items, start=1):
        if len(item) < MIN_SECRET or any(ord(c) < 32 for c in item):
            raise _BadValue(
                f"expected a comma-separated list of secrets of {MIN_SECRET} characters or more "
                f"(no commas or control characters; e.g. `openssl rand -hex 32`); "
                f"secret {index} is {len(item)} characters"
            )
    if len(set(items)) != len(items):
        raise _BadValue("expected each secret once; one is listed twice")
    return tuple(items)


_TURN_URI_RE = re.compile(
    r"turns?:(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?(?:\?transport=(?:udp|tcp))?"
)


def _turn_uris(text: str) -> tuple[str, ...]:
    items = _split(text)
    for item in items:
        if not _TURN_URI_RE.fullmatch(item):
            raise _BadValue(
                f"expected a comma-separated list of TURN URIs (RFC 7065), e.g. "
                f"turn:turn.example.com:3478?transport=udp, turns:turn.example.com:5349; "
                f"{item!r} is not one"
            )
    return tuple(items)


def _engines(text: str) -> tuple[str, ...]:
    items = _split(text)
    for item in items:
        scheme, _, rest = item.partition(":")
        host, _, port = rest.rpartition(":")
        try:
            ok = scheme.lower() == "udp" and bool(_ip(host.strip("[]"))) and 0 < int(port) < 65536
        except (ValueError, _BadValue):
            ok = False
        if not ok:
            raise _BadValue(
                f"expected a comma-separated list of udp:HOST:PORT, e.g. udp:127.0.0.1:2223; "
                f"{item!r} is not one"
            )
    return tuple(items)


def _split(text: str) -> list[str]:
    """Commas separate items; so do newlines, for values continued on indented lines."""
    return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]


def _ip(item: str) -> str:
    try:  # brackets are how IPv6 literals appear in URIs; accept them here too
        return str(ipaddress.ip_address(item.removeprefix("[").removesuffix("]")))
    except ValueError:
        raise _BadValue(f"{item!r} is not an IPv4 or IPv6 address") from None


_ADDRESSES = "expected a comma-separated list of IPv4/IPv6 addresses, e.g. 127.0.0.1, ::1"


def _addresses(text: str) -> tuple[str, ...]:
    items = _split(text)
    if not items:
        raise _BadValue(f"{_ADDRESSES}; at least one")
    try:
        return tuple(_ip(item) for item in items)
    except _BadValue as e:
        raise _BadValue(f"{_ADDRESSES}; {e}") from None


def _addresses_or_same(text: str) -> tuple[str, ...] | None:
    return _addresses(text) if _split(text) else None


def _address(text: str) -> str:
    try:
        return _ip(text)
    except _BadValue as e:
        raise _BadValue(f"expected one IPv4 or IPv6 address, e.g. 127.0.0.1; {e}") from None


def _is_host(host: str) -> bool:
    if _HOSTNAME_RE.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _optional_host(text: str) -> str | None:
    host = text.strip().removeprefix("[").removesuffix("]").lower()
    if not host:
        return None
    if not _is_host(host):
        raise _BadValue(
            f"expected a host name or an IP address, e.g. sip.example.com; {text!r} is not one"
        )
    return host


def _domains(text: str) -> tuple[str, ...]:
    items = [item.lower() for item in _split(text)]
    for item in items:
        if not _is_host(item):
            raise _BadValue(
                f"expected a comma-separated list of domain names, e.g. example.com, "
                f"sip.example.org; {item!r} is not one"
            )
    return tuple(items)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(item: str) -> str:
    """Normalise to the form browsers send (lower case, no default port, no slash)."""
    parts = urlsplit(item)
    try:
        port = parts.port
    except ValueError:
        port = -1
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if (
        scheme not in _DEFAULT_PORTS
        or not _is_host(host)
        or port == -1
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "?" in item
        or "#" in item
    ):
        raise _BadValue(f"{item!r} is not an origin")
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _origins(text: str) -> tuple[str, ...]:
    items = _split(text)
    if items == ["*"]:
        return ("*",)
    try:
        if "*" in items:
            raise _BadValue("'*' (any origin) must be the only value")
        return tuple(_origin(item) for item in items)
    except _BadValue as e:
        raise _BadValue(
            f"expected * or a comma-separated list of origins scheme://host[:port] "
            f"(scheme http or https), e.g. http://localhost:8088; {e}"
        ) from None


def _networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _split(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _BadValue(
                f"expected a comma-separated list of networks in CIDR notation, "
                f"e.g. 10.0.0.0/8, 2001:db8::/32; {item!r} is not one"
            ) from None
    return tuple(networks)


def _sip_uri(text: str) -> str | None:
    from ..core.routing import parse_hop

    if not text.strip():
        return None
    try:
        return str(parse_hop(text))
    except ValueError as e:
        raise _BadValue(f"expected a sip: or sips: URI, e.g. sip:proxy.example.net; {e}") from None


def _route_rule(name: str) -> Parse:
    def parse(text: str) -> tuple[str, str]:
        from ..core.routing import parse_rule

        try:
            parse_rule(name, text)
        except ValueError as e:
            raise _BadValue(
                f"expected MATCH -> NEXT-HOP[, NEXT-HOP ...] with MATCH one of prefix TEXT, "
                f"user REGEX, domain NAME, nonlocal, unregistered; {e}"
            ) from None
        return (name, " ".join(text.split()))

    return parse


def _dns_servers(text: str) -> tuple[str, ...]:
    out = []
    for item in _split(text):
        host, port = item, None
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
        elif item.count(":") == 1:
            host, port = item.split(":")
        try:
            address = _ip(host)
            if port is not None and not 0 < int(port) < 65536:
                raise ValueError
        except (_BadValue, ValueError):
            raise _BadValue(
                f"expected a comma-separated list of DNS server addresses, each IP or IP:PORT "
                f"([IPv6]:PORT), e.g. 127.0.0.1:5353; {item!r} is not one"
            ) from None
        out.append(address if port is None else f"{host_ref(address)}:{int(port)}")
    return tuple(out)


def host_ref(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _path(text: str) -> str:
    if not text:
        raise _BadValue("expected a file path")
    return os.path.expanduser(text)


def _optional_path(text: str) -> str | None:
    return os.path.expanduser(text) if text else None


def _optional_text(text: str) -> str | None:
    return text or None


# --- the schema --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Section:
    attribute: str  # on Config
    cls: type
    keys: Mapping[str, Parse]
    paths: frozenset[str] = frozenset()  # resolved against the config file's directory
    # a section whose keys are names the user picks (``[routes]``): each value is parsed
    # with free(key), and the section's one field gets them all, in the order written
    free: Callable[[str], Parse] | None = None


_SECTIONS: dict[str, _Section] = {
    "sip": _Section(
        attribute="sip",
        cls=SipConfig,
        keys={
            "listen_addr": _addresses,
            "udp_port": _port,
            "tcp_port": _port,
            "domains": _domains,
            "max_message_size": _integer(1024, 1048576),
            "max_headers": _integer(16, 10000),
            "idle_timeout": _seconds,
            "t1": _seconds,
            "t2": _seconds,
            "t4": _seconds,
            "udp_enable": _boolean,
            "tcp_enable": _boolean,
            "advertised_address": _optional_host,
        },
    ),
    "sip_tls": _Section(
        attribute="tls",
        cls=TlsConfig,
        keys={
            "enable": _boolean,
            "listen_addr": _addresses_or_same,
            "listen_port": _port,
            "cert_file": _path,
            "key_file": _path,
            "ca_file": _optional_path,
            "verify_client": _choice("none", "optional", "required"),
        },
        paths=frozenset({"cert_file", "key_file", "ca_file"}),
    ),
    "sip_websocket": _Section(
        attribute="websocket",
        cls=WebSocketConfig,
        keys={
            "enable": _boolean,
            "listen_addr": _addresses_or_same,
            "listen_port": _port,
            "wss_enable": _boolean,
            "wss_listen_port": _port,
            "wss_cert_file": _path,
            "wss_key_file": _path,
            "wss_ca_file": _optional_path,
            "wss_verify_client": _choice("none", "optional", "required"),
            "allowed_origins": _origins,
            "allow_missing_origin": _boolean,
            "keepalive_interval": _seconds,
            "keepalive_timeout": _seconds,
            "keepalive_mechanism": _choice("ping", "crlf", "both"),
            "handshake_timeout": _seconds,
            "max_connections": _integer(1, 1_000_000),
            "max_connections_per_ip": _integer(1, 1_000_000),
            "max_message_size": _integer(1024, 1048576),
        },
        paths=frozenset({"wss_cert_file", "wss_key_file", "wss_ca_file"}),
    ),
    "registrar": _Section(
        attribute="registrar",
        cls=RegistrarSection,
        keys={
            "min_expires": _integer(1, 2**32 - 1, "an integer number of seconds"),
            "default_expires": _integer(1, 2**32 - 1, "an integer number of seconds"),
            "max_expires": _integer(1, 2**32 - 1, "an integer number of seconds"),
            "max_contacts": _integer(1, 1000),
            "fast_path": _boolean,
            "nat": _choice("auto", "contact", "source"),
            "database": _path,
            "backend": _choice("sqlite", "redis"),
            "redis_url": _redis_url,
        },
        paths=frozenset({"database"}),
    ),
    "cluster": _Section(
        attribute="cluster",
        cls=ClusterSection,
        keys={
            "node_id": _node_id,
            "internal_addr": _address,
            "internal_port": _port,
            "heartbeat_ttl": _seconds,
        },
    ),
    "proxy": _Section(
        attribute="proxy",
        cls=ProxyConfig,
        keys={
            "allowed_destinations": _networks,
            "record_route": _boolean,
            "max_dialog_duration": _seconds,
            "outbound_proxy": _sip_uri,
        },
    ),
    "routes": _Section(attribute="routes", cls=RoutesSection, keys={}, free=_route_rule),
    "dns": _Section(
        attribute="dns", cls=DnsSection, keys={"servers": _dns_servers, "timeout": _seconds}
    ),
    "admin": _Section(
        attribute="admin",
        cls=AdminConfig,
        keys={
            "enable": _boolean,
            "listen_addr": _address,
            "listen_port": _port,
            "token": _optional_text,
        },
    ),
    "control": _Section(
        attribute="control",
        cls=ControlConfig,
        keys={"enable": _boolean, "socket": _path},
        paths=frozenset({"socket"}),
    ),
    "auth": _Section(
        attribute="auth",
        cls=AuthSection,
        keys={
            "enable": _boolean,
            "realm": _optional_realm,
            "nonce_ttl": _seconds,
            "algorithms": _algorithms,
            "ephemeral_secrets": _secrets,
            "ephemeral_hash": _choice("sha1", "sha256", "sha384", "sha512"),
            "ephemeral_username_format": _choice("expiry:user", "user:expiry"),
            "ephemeral_check_user": _boolean,
            "ephemeral_max_ttl": _integer(1, 2**31 - 1, "an integer number of seconds"),
            "turn_uris": _turn_uris,
        },
    ),
    "security": _Section(
        attribute="security",
        cls=SecuritySection,
        keys={
            "rate_limit": _seconds,
            "rate_burst": _integer(1, 1_000_000),
            "rate_limit_exempt": _networks,
            "ban_after": _integer(1, 1_000_000),
            "ban_window": _seconds,
            "ban_time": _seconds,
            "max_connections": _integer(1, 1_000_000),
            "max_connections_per_ip": _integer(1, 1_000_000),
            "first_message_timeout": _seconds,
        },
    ),
    "media": _Section(
        attribute="media",
        cls=MediaSection,
        keys={
            "rtpengine": _engines,
            "mode": _choice("auto", "always", "never"),
            "timeout": _seconds,
            "on_failure": _choice("reject", "passthrough"),
        },
    ),
    "logging": _Section(
        attribute="logging",
        cls=LoggingConfig,
        keys={
            "level": _choice("debug", "info", "warning", "error", upper=True),
            "sip_trace": _boolean,
        },
    ),
}


# --- loading -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Setting:
    """One raw value and where it came from, so any later error can point back at it."""

    text: str
    where: str  # "config.ini:12" or "command line --set sip.udp_port"
    rank: tuple[int, int]  # later settings rank higher; cross-field errors blame those
    from_file: bool


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Read, override and validate; raise ConfigError on the first problem found."""
    settings: dict[tuple[str, str], _Setting] = {}
    source = None
    if path is not None:
        source = os.fspath(path)
        settings.update(_read_file(source))
    for index, (name, text) in enumerate((overrides or {}).items()):
        where = f"command line --set {name}"
        section, dot, key = name.partition(".")
        if not dot:
            raise ConfigError(f"{where}: expected SECTION.KEY=VALUE, e.g. sip.udp_port=5070")
        key = key.strip().lower()
        _check_known(where, section, key)
        settings[section, key] = _Setting(
            text=text.strip(), where=where, rank=(1, index), from_file=False
        )
    return _build(settings, source)


def _check_known(where: str, section: str, key: str | None) -> None:
    if section not in _SECTIONS:
        message = f"{where}: unknown section [{section}]; known sections: "
        message += ", ".join(sorted(_SECTIONS)) + _did_you_mean(section, _SECTIONS, "[{}]")
        raise ConfigError(message)
    keys = _SECTIONS[section].keys
    if key is not None and _SECTIONS[section].free is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}", key):
            raise ConfigError(
                f"{where}: [{section}] {key}: a rule name is letters, digits, '.', '_', '+' "
                f"or '-' (up to 63)"
            )
        return
    if key is not None and key not in keys:
        message = f"{where}: [{section}] {key}: unknown key; known keys in [{section}]: "
        message += ", ".join(sorted(keys)) + _did_you_mean(key, keys)
        raise ConfigError(message)


def _did_you_mean(word: str, known: Mapping[str, object], form: str = "{}") -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {form.format(close[0])}?" if close else ""


def _read_file(source: str) -> dict[tuple[str, str], _Setting]:
    try:
        with open(source, encoding="utf-8-sig") as file:
            text = file.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {source}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read config file {source}: not UTF-8 text ({e})") from None
    parser = _parser()
    section_lines, key_lines = _line_numbers(parser, text)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        lines = list(io.StringIO(text))
        message = _parse_error_message(source, e, lines, section_lines, key_lines)
        raise ConfigError(message) from None
    settings = {}
    for section in parser.sections():
        _check_known(f"{source}:{section_lines.get(section, 0)}", section, None)
        for key, value in parser.items(section, raw=True):
            line = key_lines.get((section, key), 0)
            _check_known(f"{source}:{line}", section, key)
            settings[section, key] = _Setting(
                text=value, where=f"{source}:{line}", rank=(0, line), from_file=True
            )
    return settings


def _parser() -> configparser.RawConfigParser:
    # No interpolation, so "%" is plain text (tokens); no inline comments, so ";" and
    # "#" are plain text too; and no DEFAULT section: a [DEFAULT] here is a typo.
    return configparser.RawConfigParser(
        interpolation=None,
        inline_comment_prefixes=None,
        empty_lines_in_values=False,
        default_section="\0no default section",
    )


def _line_numbers(
    parser: configparser.RawConfigParser, text: str
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Where each section and key first appears; configparser does not record it.

    This follows the line rules of RawConfigParser._read for the options set in
    _parser(): full-line comments, blank lines end a value, deeper indentation
    continues one.
    """
    sections: dict[str, int] = {}
    keys: dict[tuple[str, str], int] = {}
    section: str | None = None
    key: str | None = None
    indent = 0
    for lineno, line in enumerate(io.StringIO(text), start=1):  # as read_string does
        value = line.strip()
        if not value or value.startswith(("#", ";")):
            indent = 1 << 62
            continue
        line_indent = len(line) - len(line.lstrip())
        if section is not None and key and line_indent > indent:
            continue
        indent = line_indent
        if match := parser.SECTCRE.match(value):
            section, key = match.group("header"), None
            sections.setdefault(section, lineno)
        elif section is None:
            break  # configparser raises MissingSectionHeaderError here
        elif match := parser.OPTCRE.match(value):
            key = parser.optionxform(match.group("option").rstrip())
            keys.setdefault((section, key), lineno)
    return sections, keys


def _parse_error_message(
    source: str,
    error: configparser.Error,
    lines: list[str],
    section_lines: Mapping[str, int],
    key_lines: Mapping[tuple[str, str], int],
) -> str:
    match error:
        case configparser.MissingSectionHeaderError():
            return (
                f"{source}:{error.lineno}: {json.dumps(error.line.strip())} comes before any "
                f"[section] header; known sections: {', '.join(sorted(_SECTIONS))}"
            )
        case configparser.DuplicateSectionError():
            first = section_lines.get(error.section)
            return (
                f"{source}:{error.lineno}: duplicate section [{error.section}]; "
                f"first on line {first}"
            )
        case configparser.DuplicateOptionError():
            first = key_lines.get((error.section, error.option))
            return (
                f"{source}:{error.lineno}: [{error.section}] {error.option}: duplicate key; "
                f"first set on line {first}"
            )
        case configparser.ParsingError():
            lineno = error.errors[0][0]  # the line itself is stored as its repr()
            line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
            return (
                f"{source}:{lineno}: cannot parse {json.dumps(line)}: expected a [section] "
                f"header, key = value, or a comment line starting with # or ;"
            )
    return f"{source}: {error}"


def _build(settings: Mapping[tuple[str, str], _Setting], source: str | None) -> Config:
    base_dir = os.path.dirname(os.path.abspath(source)) if source is not None else None
    sections: dict[str, Any] = {}
    for name, spec in _SECTIONS.items():
        values: dict[str, Any] = {}
        if spec.free is not None:
            free = spec.free
            mine = sorted(
                ((key, setting) for (sec, key), setting in settings.items() if sec == name),
                key=lambda item: item[1].rank,
            )
            rules = []
            for key, given in mine:
                try:
                    rules.append(free(key)(given.text))
                except _BadValue as e:
                    raise ConfigError(_value_message(name, key, given, str(e))) from None
            sections[spec.attribute] = spec.cls(rules=tuple(rules))
            continue
        for key, parse in spec.keys.items():
            setting = settings.get((name, key))
            if setting is None:
                continue
            try:
                value = parse(setting.text)
            except _BadValue as e:
                raise ConfigError(_value_message(name, key, setting, str(e))) from None
            if key in spec.paths and isinstance(value, str):
                value = _resolve(value, base_dir if setting.from_file else None)
            values[key] = value
        sections[spec.attribute] = spec.cls(**values)
    config = Config(**sections, source=source)
    _check_relations(config, settings)
    return config


def _resolve(path: str, base_dir: str | None) -> str:
    """A file's relative paths mean the same thing whatever directory the server runs in."""
    if base_dir is None or path == ":memory:" or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def _value_message(section: str, key: str, setting: _Setting, expected: str) -> str:
    message = f"{setting.where}: [{section}] {key} = {json.dumps(setting.text)}: {expected}"
    if re.search(r"\s[#;]", setting.text):
        message += " (comments must be on a line of their own)"
    return message


def _check_relations(config: Config, settings: Mapping[tuple[str, str], _Setting]) -> None:
    """Checks across keys blame whichever of the keys was set last."""

    def fail(section: str, keys: tuple[str, ...], rule: str) -> None:
        values = getattr(config, _SECTIONS[section].attribute)
        blamed = max(
            ((settings[section, key], key) for key in keys if (section, key) in settings),
            key=lambda pair: pair[0].rank,
            default=None,
        )
        assert blamed is not None, "the defaults satisfy every check"
        setting, key = blamed
        got = ", ".join(f"{k} = {getattr(values, k)}" for k in keys)
        raise ConfigError(f"{setting.where}: [{section}] {key}: expected {rule}; got {got}")

    sip = config.sip
    if sip.t2 < sip.t1:
        fail("sip", ("t1", "t2"), "t2 >= t1")
    if config.auth.turn_uris and not config.auth.ephemeral_secrets:
        fail("auth", ("turn_uris",), "[auth] ephemeral_secrets too (TURN credentials need it)")
    reg = config.registrar
    if not reg.min_expires <= reg.default_expires <= reg.max_expires:
        keys = ("min_expires", "default_expires", "max_expires")
        fail("registrar", keys, "0 < min_expires <= default_expires <= max_expires")
