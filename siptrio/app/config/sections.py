"""The settings themselves: one frozen dataclass per config.ini section, and the whole.

What the rest of the server reads. Values here have been checked (values.py) and
never need checking again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

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
    # reverse proxies whose PROXY header or X-Forwarded-For/Forwarded name the client
    trusted_proxies: tuple[IPNetwork, ...] = ()


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
    overload_delay: float = 0.1  # standing queueing delay from which new requests get 503
    overload_retry_after: int = 5  # seconds, in those 503s' Retry-After


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
    format: str = "text"  # text | json (one object per line)
    file: str | None = None  # None: stderr; reopened on SIGHUP


@dataclass(frozen=True, kw_only=True)
class CaptureSection:
    hep: str | None = None  # "udp:HOST:PORT": every SIP message as HEPv3 (Homer, sngrep)
    hep_id: int = 2001  # the capture agent id in each packet (Homer's "capture_id")


@dataclass(frozen=True, kw_only=True)
class CdrSection:
    enable: bool = True  # one call record per call attempt, kept in the store
    retention_days: int = 30  # older records are deleted (once an hour)


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
    capture: CaptureSection = field(default_factory=CaptureSection)
    cdr: CdrSection = field(default_factory=CdrSection)
    source: str | None = None  # the config file, None when running on defaults
    # the --set overrides, in order: a reload reads the file again and applies them again
    overrides: tuple[tuple[str, str], ...] = ()


def jsonable(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value
